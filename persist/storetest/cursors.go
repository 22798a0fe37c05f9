package storetest

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/imgn/imgn/persist"
)

// testAsyncCursors checks a persist.AsyncCursorSetter: each write completes
// once, with the outcome SetCursor would return, and is readable once its
// done has run; the cursor only moves forward, also under writes from
// several goroutines at once (as event loops make them); invalid
// arguments are answered before SetCursorAsync returns.
func testAsyncCursors(t *testing.T, s persist.Store) {
	cs := s.(persist.AsyncCursorSetter)
	ctx := context.Background()
	set := func(user string, seq uint64) error {
		done := make(chan error, 2) // room for a second call, caught below
		cs.SetCursorAsync(user, "d1", seq, func(err error) { done <- err })
		err := <-done
		if len(done) != 0 {
			t.Fatalf("SetCursorAsync(%s, %d): done called twice", user, seq)
		}
		return err
	}
	for _, step := range []struct{ seq, want uint64 }{{5, 5}, {9, 9}, {7, 9}} {
		if err := set("bob", step.seq); err != nil {
			t.Fatalf("SetCursorAsync(%d): %v", step.seq, err)
		}
		if got, err := s.Cursor(ctx, "bob", "d1"); err != nil || got != step.want {
			t.Fatalf("after SetCursorAsync(%d): Cursor = %d, %v; want %d", step.seq, got, err, step.want)
		}
	}

	const writers, each = 4, 50
	errs := make(chan error, writers*each)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				cs.SetCursorAsync("carol", "d1", uint64(g*each+i+1), func(err error) { errs <- err })
			}
		})
	}
	wg.Wait()
	for range writers * each {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent SetCursorAsync: %v", err)
		}
	}
	if got, err := s.Cursor(ctx, "carol", "d1"); err != nil || got != writers*each {
		t.Fatalf("Cursor after %d concurrent writes = %d, %v; want %d", writers*each, got, err, writers*each)
	}

	returned := false
	cs.SetCursorAsync("", "d1", 1, func(err error) {
		if returned || !errors.Is(err, persist.ErrInvalid) {
			t.Errorf("empty user: done(%v) after return %v; want ErrInvalid before", err, returned)
		}
	})
	returned = true
}
