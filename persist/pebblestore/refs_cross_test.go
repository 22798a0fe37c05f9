package pebblestore

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/imgn/imgn/persist"
)

// TestRefsCrossTheInlineBound: a retry that takes a message from 4 inbox
// entries (carried by its record) to 5 (a refs record), after the message
// was recalled, keeps the record recalled and every entry findable: by a
// further retry, by replay, by a second recall, and after reopening.
func TestRefsCrossTheInlineBound(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	m := persist.Message{ID: 100, From: "al", To: "g", Group: true, ClientMsgID: "c1", Timestamp: 1000, Body: []byte("x")}
	four := []string{"al", "bo", "cy", "di"}
	if _, err := s.Append(ctx, m, four); err != nil {
		t.Fatal(err)
	}
	if hasKey(t, s, keyID(nil, tRefs, m.ID)) {
		t.Fatal("4 entries got a refs record")
	}
	if _, err := s.Recall(ctx, persist.EventRequest{User: "al", Target: m.ID, ID: 200, Timestamp: 1001}); err != nil {
		t.Fatal(err)
	}
	five := append(slices.Clone(four), "ed")
	res, err := s.Append(ctx, m, five)
	if err != nil || !res.Duplicate {
		t.Fatalf("retry with a fifth inbox: %+v %v", res, err)
	}
	t.Logf("retry seqs %v", res.Seqs)
	check := func(s *Store) {
		t.Helper()
		if !hasKey(t, s, keyID(nil, tRefs, m.ID)) {
			t.Fatal("5 entries but no refs record")
		}
		dm, ev, inline, err := decodeMessageRefs(m.ID, rawGet(t, s, keyID(nil, tMessage, m.ID)), nil, true)
		if err != nil || inline || ev != 200 || !dm.Recalled || len(dm.Body) != 0 {
			t.Fatalf("record after the retry: %+v ev %d inline %v %v", dm, ev, inline, err)
		}
		again, err := s.Append(ctx, m, five)
		if err != nil || !again.Duplicate || !slices.Equal(again.Seqs, res.Seqs) {
			t.Fatalf("second retry: %+v %v, want seqs %v", again, err, res.Seqs)
		}
		var got []string
		err = s.ReplayFrom(ctx, 0, func(msg *persist.Message, inboxes []string, seqs []uint64) error {
			got = append(got, msg.ClientMsgID+":"+strings.Join(inboxes, ","))
			return nil
		})
		if err != nil || len(got) == 0 || got[0] != "c1:"+strings.Join(five, ",") {
			t.Fatalf("replay %q %v", got, err)
		}
		if r, err := s.Recall(ctx, persist.EventRequest{User: "al", Target: m.ID, ID: 201, Timestamp: 1002}); err != nil || !r.Duplicate || r.Event.ID != 200 {
			t.Fatalf("repeat recall: %+v %v", r, err)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s)
}
