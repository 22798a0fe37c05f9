package mesh

import (
	"context"
	"errors"
	"testing"

	"github.com/imgn/imgn/cluster"
)

// TestPendingOutcomes: each request gets exactly one outcome; the limit is
// per peer; Fail and Refuse touch one peer only; a request forgotten by
// Wait ignores its late reply; FailAll ends the rest.
func TestPendingOutcomes(t *testing.T) {
	var tab Pending
	a, b := tab.NewPeer("a"), tab.NewPeer("b")
	id1, done1, err := tab.Add(a, 2)
	if err != nil || id1 == 0 {
		t.Fatal(id1, err)
	}
	id2, done2, _ := tab.Add(a, 2)
	if _, _, err := tab.Add(a, 2); !errors.Is(err, cluster.ErrForward) {
		t.Fatalf("third request to a with limit 2: %v", err)
	}
	idB, doneB, err := tab.Add(b, 2)
	if err != nil || idB == id1 || idB == id2 {
		t.Fatalf("b: id %d (a has %d, %d), %v", idB, id1, id2, err)
	}
	if p, ok := tab.PeerOf(idB); !ok || p != "b" {
		t.Fatalf("PeerOf(%d) = %q %v", idB, p, ok)
	}

	tab.Complete(id1, CallResult{Count: 7})
	tab.Complete(id1, CallResult{Count: 8}) // no longer waiting: ignored
	if r, ok := tab.Wait(context.Background(), id1, done1); !ok || r.Count != 7 {
		t.Fatalf("id1: %+v %v", r, ok)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok := tab.Wait(ctx, id2, done2); ok || tab.Waiting(id2) {
		t.Fatal("Wait on an ended ctx did not give up on id2")
	}
	tab.Complete(id2, CallResult{Count: 1})
	select {
	case r := <-done2:
		t.Fatalf("a forgotten request got %+v", r)
	default:
	}

	gone := errors.New("a gone")
	tab.Refuse(a, gone)
	if _, _, err := tab.Add(a, 2); err != gone {
		t.Fatalf("refused peer: %v", err)
	}
	id3, done3, _ := tab.Add(b, 2)
	tab.Fail(a, gone) // nothing of b's
	if !tab.Waiting(idB) || !tab.Waiting(id3) {
		t.Fatal("Fail(a) touched b's requests")
	}
	tab.Refuse(a, nil)
	if _, _, err := tab.Add(a, 2); err != nil {
		t.Fatalf("after Refuse(a, nil): %v", err)
	}
	tab.FailAll("closed")
	for _, d := range []<-chan CallResult{doneB, done3} {
		if r := <-d; !errors.Is(r.Err, cluster.ErrForward) {
			t.Fatalf("FailAll: %+v", r)
		}
	}
	if tab.Waiting(idB) {
		t.Fatal("FailAll left a request waiting")
	}
	// The limit counts only waiting requests: b has room for two again.
	for range 2 {
		if _, _, err := tab.Add(b, 2); err != nil {
			t.Fatal(err)
		}
	}
}
