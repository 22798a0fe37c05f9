package engine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
)

// recorder is an Observer that keeps copies of what it is told.
type recorder struct {
	mu        sync.Mutex
	stored    []storedCall
	delivered []string // "user/device/seq"
	groups    []GroupChange
}

type storedCall struct {
	msg     persist.Message
	inboxes []string
	seqs    []uint64
	dup     bool
}

func (r *recorder) MessageStored(m *persist.Message, inboxes []string, seqs []uint64, dup bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Deep copies: the strings may point into a request buffer.
	ins := make([]string, len(inboxes))
	for i, in := range inboxes {
		ins[i] = strings.Clone(in)
	}
	r.stored = append(r.stored, storedCall{cloneMessage(*m), ins, slices.Clone(seqs), dup})
}

func (r *recorder) Delivered(user, device string, seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.delivered = append(r.delivered, fmt.Sprint(user, "/", device, "/", seq))
}

func (r *recorder) GroupChanged(ch GroupChange) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch.Members = slices.Clone(ch.Members)
	r.groups = append(r.groups, ch)
}

func (r *recorder) snapshot() []storedCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.stored)
}

// TestObserverSeesEveryMessageInSeqOrder: protocol sends from both event
// loops and server-API sends (as a user and as the system) to one inbox
// are each reported once, after their ack, and, for the stores that
// complete appends in order, in seq order per inbox (the API's sends
// included, although they wait on other goroutines).
func TestObserverSeesEveryMessageInSeqOrder(t *testing.T) {
	for _, kind := range []string{"inline", "async", "sync"} {
		t.Run(kind, func(t *testing.T) {
			rec := &recorder{}
			s := startServer(t, func(c *Config) {
				c.Store = storeKinds[kind]()
				c.SendRate, c.SendBurst = 1e9, 1<<30
				c.Observer = rec
			})
			ctx := t.Context()
			if _, err := s.CreateUser(ctx, "rcv", ""); err != nil {
				t.Fatal(err)
			}
			if _, err := s.CreateUser(ctx, "api", ""); err != nil {
				t.Fatal(err)
			}
			const senders, each = 4, 100
			var wg sync.WaitGroup
			for i := range senders {
				c := dial(t, s, codec.Protobuf)
				c.login(fmt.Sprint("s", i), "pc")
				wg.Go(func() {
					for j := range each {
						var ack pb.SendAck
						if e := c.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint(j), To: "rcv", Body: []byte("x")}, &ack); e != nil {
							t.Errorf("send: %s", e.Message)
							return
						}
					}
				})
			}
			for i := range 2 {
				wg.Go(func() {
					for j := range each {
						from := ""
						if i == 1 {
							from = "api"
						}
						if _, err := s.Send(context.Background(), Outgoing{From: from, To: "rcv", ClientMsgID: fmt.Sprint("a", j), Body: []byte("y")}); err != nil {
							t.Errorf("Send: %v", err)
							return
						}
					}
				})
			}
			wg.Wait()
			want := (senders + 2) * each
			var calls []storedCall
			poll(t, "every message reported", func() bool { calls = rec.snapshot(); return len(calls) >= want })
			last := map[string]uint64{}
			seen := map[string]bool{}
			for _, c := range calls {
				if c.dup {
					t.Fatalf("a first send reported as a duplicate: %+v", c)
				}
				key := c.msg.From + "/" + c.msg.ClientMsgID
				if seen[key] {
					t.Fatalf("%s reported twice", key)
				}
				seen[key] = true
				for i, in := range c.inboxes {
					if kind != "sync" && c.seqs[i] != last[in]+1 {
						t.Fatalf("inbox %s: seq %d reported after %d", in, c.seqs[i], last[in])
					}
					last[in] = max(last[in], c.seqs[i])
				}
			}
			if len(calls) != want || last["rcv"] != uint64(want) {
				t.Fatalf("%d calls, rcv's last seq %d; want %d of each", len(calls), last["rcv"], want)
			}
		})
	}
}

// TestObserverDuplicatesCursorsAndGroups: a retried send is reported as a
// duplicate with its original seqs; PUSH_ACK moves are reported; group
// creation, joins and leaves over the protocol and the API are reported.
func TestObserverDuplicatesCursorsAndGroups(t *testing.T) {
	rec := &recorder{}
	s := startServer(t, func(c *Config) { c.Observer = rec })
	a := dial(t, s, codec.JSON)
	a.login("alice", "pc")
	b := dial(t, s, codec.JSON)
	b.login("bob", "phone")
	var ack1, ack2 pb.SendAck
	a.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "c1", To: "bob", Body: []byte("hi")}, &ack1)
	a.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "c1", To: "bob", Body: []byte("hi")}, &ack2)
	calls := rec.snapshot()
	if len(calls) != 2 || calls[0].dup || !calls[1].dup || !slices.Equal(calls[1].seqs, calls[0].seqs) || calls[1].msg.ID != calls[0].msg.ID {
		t.Fatalf("send and its retry reported as %+v", calls)
	}
	b.waitPushes(1)
	b.send(codec.CmdPushAck, &pb.PushAck{UpToSeq: 1})
	poll(t, "the cursor move reported", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return slices.Equal(rec.delivered, []string{"bob/phone/1"})
	})

	var g pb.GroupInfo
	a.mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "team", Members: []string{"bob"}}, &g)
	if _, err := s.CreateUser(t.Context(), "carol", "secret1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddGroupMember(t.Context(), g.GroupId, "carol"); err != nil {
		t.Fatal(err)
	}
	b.mustCall(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: g.GroupId}, nil)
	rec.mu.Lock()
	groups := slices.Clone(rec.groups)
	rec.mu.Unlock()
	want := []struct {
		kind     GroupChangeKind
		user, by string
	}{{GroupCreated, "alice", "alice"}, {GroupMemberAdded, "carol", ""}, {GroupMemberRemoved, "bob", "bob"}}
	if len(groups) != len(want) {
		t.Fatalf("group changes %+v", groups)
	}
	for i, w := range want {
		if ch := groups[i]; ch.Kind != w.kind || ch.User != w.user || ch.By != w.by || ch.Group != g.GroupId || ch.Time == 0 {
			t.Errorf("change %d = %+v, want %+v", i, ch, w)
		}
	}
	if !slices.Equal(groups[0].Members, []string{"alice", "bob"}) || groups[0].Name != "team" {
		t.Errorf("created group reported as %+v", groups[0])
	}
}

// TestDisabledAccountCannotLogIn: a disabled account is refused with a
// password and with a token minted before, its sessions end, and enabling
// it restores both logins.
func TestDisabledAccountCannotLogIn(t *testing.T) {
	s := startServer(t, nil)
	ctx := t.Context()
	if _, err := s.CreateUser(ctx, "dora", "password1"); err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.MintToken(ctx, "dora", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if sub, err := auth.VerifyToken(testSecret, tok, time.Now()); err != nil || sub != "dora" {
		t.Fatalf("minted token: %q, %v", sub, err)
	}
	live := dial(t, s, codec.JSON)
	live.mustCall(codec.CmdLogin, &pb.LoginRequest{User: "dora", Password: "password1", Device: "pc"}, nil)
	kicked, err := s.SetDisabled(ctx, "dora", true)
	if err != nil || kicked != 1 {
		t.Fatalf("SetDisabled = %d, %v; want 1 session ended", kicked, err)
	}
	live.waitFrame(codec.CmdKick, 5*time.Second)
	for _, req := range []*pb.LoginRequest{{User: "dora", Password: "password1", Device: "pc"}, {Token: tok, Device: "pc"}} {
		c := dial(t, s, codec.JSON)
		if e := c.wantError(codec.CmdLogin, req, codec.CodeAuthFailed); !strings.Contains(e.Message, "disabled") {
			t.Errorf("login of a disabled account: %q", e.Message)
		}
	}
	if _, _, err := s.MintToken(ctx, "dora", time.Hour); ErrorCode(err) != codec.CodeAuthFailed {
		t.Fatalf("MintToken for a disabled account: %v", err)
	}
	if _, err := s.Send(ctx, Outgoing{From: "dora", To: "dora", Body: []byte("x")}); ErrorCode(err) != codec.CodeAuthFailed {
		t.Fatalf("Send as a disabled account: %v", err)
	}
	if err := s.SetPassword(ctx, "dora", "password2"); err != nil {
		t.Fatal(err)
	}
	if u, _ := s.User(ctx, "dora"); !u.Disabled() {
		t.Fatal("a new password enabled the account")
	}
	if _, err := s.SetDisabled(ctx, "dora", false); err != nil {
		t.Fatal(err)
	}
	dial(t, s, codec.JSON).mustCall(codec.CmdLogin, &pb.LoginRequest{User: "dora", Password: "password2", Device: "pc"}, nil)
	dial(t, s, codec.JSON).mustCall(codec.CmdLogin, &pb.LoginRequest{Token: tok, Device: "tab"}, nil)
	dial(t, s, codec.JSON).wantError(codec.CmdLogin, &pb.LoginRequest{User: "dora", Password: "password1", Device: "x"}, codec.CodeAuthFailed)
}

// TestSendAsUserPushesEveryDevice: Send as a user stores in both inboxes
// and pushes to the sender's devices as well (no connection sent it); a
// retry is a duplicate; a group send needs membership.
func TestSendAsUserPushesEveryDevice(t *testing.T) {
	s := startServer(t, nil)
	ctx := t.Context()
	a := dial(t, s, codec.Protobuf)
	a.login("alice", "pc")
	b := dial(t, s, codec.Protobuf)
	b.login("bob", "pc")
	sent, err := s.Send(ctx, Outgoing{From: "alice", To: "bob", ClientMsgID: "k1", Body: []byte("hello")})
	if err != nil || sent.Duplicate || !slices.Equal(sent.Inboxes, []string{"alice", "bob"}) || !slices.Equal(sent.Seqs, []uint64{1, 1}) {
		t.Fatalf("Send = %+v, %v", sent, err)
	}
	for who, c := range map[string]*rawClient{"alice": a, "bob": b} {
		if p := c.waitPushes(1)[0]; string(p.Body) != "hello" || p.From != "alice" || p.MsgId != sent.Msg.ID {
			t.Errorf("%s pushed %+v", who, p)
		}
	}
	again, err := s.Send(ctx, Outgoing{From: "alice", To: "bob", ClientMsgID: "k1", Body: []byte("hello")})
	if err != nil || !again.Duplicate || again.Msg.ID != sent.Msg.ID || !slices.Equal(again.Seqs, sent.Seqs) {
		t.Fatalf("retry = %+v, %v", again, err)
	}
	var g pb.GroupInfo
	b.mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "b"}, &g)
	if _, err := s.Send(ctx, Outgoing{From: "alice", To: g.GroupId, Group: true, Body: []byte("x")}); ErrorCode(err) != codec.CodeNotGroupMember {
		t.Fatalf("group send by a non-member: %v", err)
	}
	sys, err := s.Send(ctx, Outgoing{To: g.GroupId, Group: true, Body: []byte("notice")})
	if err != nil || !slices.Equal(sys.Inboxes, []string{"bob"}) || !strings.HasPrefix(sys.Msg.ClientMsgID, "sys-") {
		t.Fatalf("system send to a group = %+v, %v", sys, err)
	}
	for _, bad := range []Outgoing{{To: "nobody"}, {From: "ghost", To: "bob"}, {To: "no such"}, {To: "bob", ClientMsgID: strings.Repeat("x", 65)}} {
		if _, err := s.Send(ctx, bad); err == nil {
			t.Errorf("Send(%+v) succeeded", bad)
		}
	}
}
