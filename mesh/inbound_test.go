package mesh

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/mesh/meshpb"
	"github.com/imgn/imgn/persist"
)

// recorder is a cluster.Handler that records every call as one line.
type recorder struct {
	mu       sync.Mutex
	calls    []string
	appendFn func(ctx context.Context) (persist.AppendResult, error)
	deadline time.Duration // the last append context's remaining time
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf(format, args...))
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

func (r *recorder) appendCall(ctx context.Context, what string, msg persist.Message, in []string) (persist.AppendResult, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		return persist.AppendResult{}, errors.New("append context without a deadline")
	}
	r.mu.Lock()
	r.deadline = time.Until(dl)
	r.mu.Unlock()
	r.add("%s %d %v", what, msg.ID, in)
	if r.appendFn != nil {
		return r.appendFn(ctx)
	}
	return persist.AppendResult{Msg: msg, Seqs: []uint64{5, 6}[:len(in)]}, nil
}

func (r *recorder) HandleAppend(ctx context.Context, msg persist.Message, in []string) (persist.AppendResult, error) {
	return r.appendCall(ctx, "append", msg, in)
}
func (r *recorder) HandleAppendEntries(ctx context.Context, msg persist.Message, in []string) (persist.AppendResult, error) {
	return r.appendCall(ctx, "entries", msg, in)
}
func (r *recorder) HandleAdmin(req cluster.AdminRequest) int {
	r.add("admin %d %s %s", req.Kind, req.Text, req.User)
	return 3
}
func (r *recorder) HandlePush(msg persist.Message, targets []cluster.PushTarget) {
	r.add("push %d %v", msg.ID, targets)
}
func (r *recorder) HandleKick(user, device string, connID uint64) {
	r.add("kick %s %s %d", user, device, connID)
}
func (r *recorder) HandleSignal(sig cluster.Signal) {
	r.add("signal %v %#x %s", sig.Users, sig.Cmd, sig.Body)
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestInboundOneWay(t *testing.T) {
	h := &recorder{}
	in := Inbound{Handler: h, RequestTimeout: time.Second}
	for _, c := range []struct {
		cmd  codec.Command
		body proto.Message
		want string
	}{
		{meshpb.CmdPush, &meshpb.PushRequest{Msg: &meshpb.Message{Id: 9}, Targets: []*meshpb.PushTarget{{User: "bob", Seq: 4}, {User: "al", Seq: 1}}}, "push 9 [{bob 4} {al 1}]"},
		{meshpb.CmdKick, &meshpb.KickRequest{User: "bob", Device: "phone", ConnId: 12}, "kick bob phone 12"},
		{meshpb.CmdSignal, &meshpb.SignalRequest{Users: []string{"a", "b"}, Cmd: 0x44, Body: []byte("typing")}, "signal [a b] 0x44 typing"},
	} {
		req, err := in.Dispatch(c.cmd, mustMarshal(t, c.body))
		if req != nil || err != nil {
			t.Fatalf("%s: Dispatch = %v, %v; want nil, nil", c.cmd, req, err)
		}
		if got := h.take(); !reflect.DeepEqual(got, []string{c.want}) {
			t.Fatalf("%s: handler saw %q, want %q", c.cmd, got, c.want)
		}
	}
}

// serve runs req and returns what it encoded, one entry per encode call.
func serve(t *testing.T, req *Request, fail int) ([]codec.Command, []proto.Message, error) {
	t.Helper()
	var cmds []codec.Command
	var replies []proto.Message
	err := req.Serve(context.Background(), func(cmd codec.Command, m proto.Message) error {
		cmds = append(cmds, cmd)
		replies = append(replies, proto.Clone(m))
		if len(cmds) <= fail {
			return fmt.Errorf("encode failure %d", len(cmds))
		}
		return nil
	})
	return cmds, replies, err
}

func TestInboundAppend(t *testing.T) {
	h := &recorder{}
	in := Inbound{Handler: h, RequestTimeout: 5 * time.Second}
	body := mustMarshal(t, &meshpb.AppendRequest{
		Msg: &meshpb.Message{Id: 7, Body: []byte("hi")}, Inboxes: []string{"a", "b"},
		ReplyTo: "n2", ReplyEpoch: 42,
	})
	req, err := in.Dispatch(meshpb.CmdAppend, body)
	if err != nil || req == nil {
		t.Fatalf("Dispatch = %v, %v", req, err)
	}
	if got := h.take(); len(got) != 0 {
		t.Fatalf("Dispatch ran the handler: %q", got)
	}
	if to, epoch := req.ReplyTo(); req.Command() != meshpb.CmdAppend || to != "n2" || epoch != 42 {
		t.Fatalf("request = %s to %q epoch %d", req.Command(), to, epoch)
	}
	clear(body) // Dispatch must not keep the body
	cmds, replies, err := serve(t, req, 0)
	if err != nil || len(cmds) != 1 || cmds[0] != meshpb.CmdAppendResult {
		t.Fatalf("Serve encoded %v, err %v", cmds, err)
	}
	res := replies[0].(*meshpb.AppendResult)
	if res.ToEpoch != 42 || !reflect.DeepEqual(res.Seqs, []uint64{5, 6}) || res.Msg.GetId() != 7 || string(res.Msg.GetBody()) != "hi" {
		t.Fatalf("reply = %v", res)
	}
	if got := h.take(); !reflect.DeepEqual(got, []string{"append 7 [a b]"}) {
		t.Fatalf("handler saw %q", got)
	}
	if h.deadline <= time.Second || h.deadline > 5*time.Second {
		t.Fatalf("append without timeout_ms ran with %s left, want RequestTimeout's 5s", h.deadline)
	}

	// entries_only, an announced budget, and a store error.
	h.appendFn = func(context.Context) (persist.AppendResult, error) {
		return persist.AppendResult{}, fmt.Errorf("disk: %w", persist.ErrUnavailable)
	}
	req, err = in.Dispatch(meshpb.CmdAppend, mustMarshal(t, &meshpb.AppendRequest{
		Msg: &meshpb.Message{Id: 8}, Inboxes: []string{"c"}, EntriesOnly: true, TimeoutMs: 100,
	}))
	if err != nil {
		t.Fatal(err)
	}
	_, replies, err = serve(t, req, 0)
	if err != nil {
		t.Fatal(err)
	}
	res = replies[0].(*meshpb.AppendResult)
	if res.Error.GetCode() != meshpb.ErrorCode_ERROR_CODE_UNAVAILABLE || res.ToEpoch != 0 {
		t.Fatalf("reply = %v, want ERROR_CODE_UNAVAILABLE", res)
	}
	if got := h.take(); !reflect.DeepEqual(got, []string{"entries 8 [c]"}) {
		t.Fatalf("handler saw %q", got)
	}
	if h.deadline > 100*time.Millisecond {
		t.Fatalf("append with timeout_ms 100 ran with %s left", h.deadline)
	}
}

func TestInboundAdmin(t *testing.T) {
	h := &recorder{}
	in := Inbound{Handler: h}
	req, err := in.Dispatch(meshpb.CmdAdmin, mustMarshal(t, &meshpb.AdminRequest{
		Kind: meshpb.AdminKind_ADMIN_KIND_BROADCAST, Text: "noon", ReplyTo: "n3", ReplyEpoch: 8,
	}))
	if err != nil || req.Command() != meshpb.CmdAdmin {
		t.Fatalf("Dispatch = %v, %v", req, err)
	}
	if got := h.take(); len(got) != 0 {
		t.Fatalf("Dispatch ran the handler: %q", got)
	}
	cmds, replies, err := serve(t, req, 0)
	if err != nil || !reflect.DeepEqual(cmds, []codec.Command{meshpb.CmdAdminResult}) {
		t.Fatalf("Serve encoded %v, err %v", cmds, err)
	}
	if res := replies[0].(*meshpb.AdminResult); res.Count != 3 || res.ToEpoch != 8 || res.Error != nil {
		t.Fatalf("reply = %v", res)
	}
	if got := h.take(); !reflect.DeepEqual(got, []string{fmt.Sprintf("admin %d noon ", cluster.AdminBroadcast)}) {
		t.Fatalf("handler saw %q", got)
	}

	req, err = in.Dispatch(meshpb.CmdAdmin, mustMarshal(t, &meshpb.AdminRequest{Kind: meshpb.AdminKind_ADMIN_KIND_KICK}))
	if err != nil {
		t.Fatal(err)
	}
	if _, replies, err = serve(t, req, 0); err != nil {
		t.Fatal(err)
	}
	if res := replies[0].(*meshpb.AdminResult); res.Error.GetCode() != meshpb.ErrorCode_ERROR_CODE_INVALID {
		t.Fatalf("kick without a user: reply %v, want ERROR_CODE_INVALID", res)
	}
	if got := h.take(); len(got) != 0 {
		t.Fatalf("an invalid admin request reached the handler: %q", got)
	}
}

func TestInboundEncodeFailure(t *testing.T) {
	h := &recorder{}
	in := Inbound{Handler: h}
	for _, cmd := range []codec.Command{meshpb.CmdAppend, meshpb.CmdAdmin} {
		var body proto.Message = &meshpb.AppendRequest{Msg: &meshpb.Message{Id: 1}, Inboxes: []string{"a"}, ReplyEpoch: 5}
		if cmd == meshpb.CmdAdmin {
			body = &meshpb.AdminRequest{Kind: meshpb.AdminKind_ADMIN_KIND_BROADCAST, ReplyEpoch: 5}
		}
		req, err := in.Dispatch(cmd, mustMarshal(t, body))
		if err != nil {
			t.Fatal(err)
		}
		// The reply does not encode: the requester gets the error instead.
		cmds, replies, err := serve(t, req, 1)
		want := meshpb.CmdAppendResult
		if cmd == meshpb.CmdAdmin {
			want = meshpb.CmdAdminResult
		}
		if !reflect.DeepEqual(cmds, []codec.Command{want, want}) {
			t.Fatalf("%s: encoded %v, want %s twice", cmd, cmds, want)
		}
		if err != nil || len(replies) != 2 {
			t.Fatalf("%s: Serve = %v after %d encodes, want the error reply", cmd, err, len(replies))
		}
		var e *meshpb.Error
		var epoch int64
		switch r := replies[1].(type) {
		case *meshpb.AppendResult:
			e, epoch = r.Error, r.ToEpoch
		case *meshpb.AdminResult:
			e, epoch = r.Error, r.ToEpoch
		}
		if e == nil || e.Message != "encode failure 1" || epoch != 5 {
			t.Fatalf("%s: fallback reply %v", cmd, replies[1])
		}
		// Neither encodes: nothing to send, and Serve says so.
		if _, _, err := serve(t, req, 2); err == nil {
			t.Fatalf("%s: Serve succeeded with no reply encoded", cmd)
		}
	}
}

func TestInboundBadRequests(t *testing.T) {
	h := &recorder{}
	in := Inbound{Handler: h}
	garbage := []byte{0xff, 0xff, 0xff}
	for _, c := range []struct {
		cmd  codec.Command
		body []byte
	}{
		{meshpb.CmdAppend, garbage},
		{meshpb.CmdAdmin, garbage},
		{meshpb.CmdPush, garbage},
		{meshpb.CmdKick, garbage},
		{meshpb.CmdSignal, garbage},
		// Not requests: replies, link-level commands, unassigned codes,
		// client commands.
		{meshpb.CmdAppendResult, nil},
		{meshpb.CmdAdminResult, nil},
		{meshpb.CmdHello, nil},
		{meshpb.CmdPing, nil},
		{meshpb.CmdError, nil},
		{codec.Command(0xCB), nil},
		{codec.CmdSend, nil},
	} {
		req, err := in.Dispatch(c.cmd, c.body)
		if req != nil || !errors.Is(err, ErrBadRequest) {
			t.Fatalf("%s with body %x: Dispatch = %v, %v; want ErrBadRequest", c.cmd, c.body, req, err)
		}
	}
	if got := h.take(); len(got) != 0 {
		t.Fatalf("bad requests reached the handler: %q", got)
	}
}
