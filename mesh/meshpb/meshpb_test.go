package meshpb_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/mesh/meshpb"
	"github.com/imgn/imgn/persist"
)

func TestErrorRoundTrip(t *testing.T) {
	for _, want := range []error{
		persist.ErrUnavailable, persist.ErrInvalid, persist.ErrClosed, persist.ErrNotFound,
		persist.ErrUserExists, persist.ErrGroupExists, persist.ErrGroupFull,
		context.Canceled, context.DeadlineExceeded, cluster.ErrForward,
	} {
		e := meshpb.ErrorOf(fmt.Errorf("ctx: %w", want))
		b, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		var back meshpb.Error
		if err := proto.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		got := back.Err("n2")
		if !errors.Is(got, want) {
			t.Errorf("%v came back as %v (code %v)", want, got, back.Code)
		}
		var re *meshpb.RemoteError
		if !errors.As(got, &re) || re.Node != "n2" {
			t.Errorf("%v: not a RemoteError from n2", got)
		}
		// A RemoteError passed on keeps its code.
		if again := meshpb.ErrorOf(got); again.Code != back.Code {
			t.Errorf("re-encoding changed the code %v -> %v", back.Code, again.Code)
		}
	}
	plain := meshpb.ErrorOf(errors.New("boom")).Err("n2")
	if plain == nil || errors.Unwrap(plain) != nil || plain.Error() != "mesh: node n2: boom" {
		t.Errorf("unclassified error: %v", plain)
	}
	if meshpb.ErrorOf(nil) != nil || (*meshpb.Error)(nil).Err("x") != nil {
		t.Error("nil errors")
	}
}

func TestAppendResultConversions(t *testing.T) {
	m := persist.Message{ID: 1, From: "a", To: "g", Group: true, ClientMsgID: "c", Timestamp: 5, Kind: 2, Body: []byte{0, 1}}
	res := persist.AppendResult{Msg: m, Seqs: []uint64{3, 4}, Duplicate: true}
	got, err := meshpb.NewAppendResult(res, nil).Result("n")
	if err != nil || got.Msg.ID != 1 || !got.Msg.Group || got.Msg.ClientMsgID != "c" || string(got.Msg.Body) != "\x00\x01" || len(got.Seqs) != 2 || !got.Duplicate {
		t.Fatalf("round trip %+v %v", got, err)
	}
	if _, err := meshpb.NewAppendResult(res, persist.ErrClosed).Result("n"); !errors.Is(err, persist.ErrClosed) {
		t.Fatalf("error result: %v", err)
	}
	// Malformed replies are errors, never successes.
	for _, r := range []*meshpb.AppendResult{nil, {}, {Seqs: []uint64{1}}} {
		if _, err := r.Result("n"); err == nil {
			t.Errorf("%v accepted as a success", r)
		}
	}
	if (*meshpb.Message)(nil).ToPersist().ID != 0 || len(meshpb.ToTargets([]*meshpb.PushTarget{nil, {User: "u"}})) != 1 {
		t.Error("nil handling")
	}
}
