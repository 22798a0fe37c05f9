package memstore

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/imgn/imgn/persist"
)

// TestHandOffCombiningIsBounded: while other callers keep handing ops
// over faster than one combiner completes them (the other event loops of a
// saturated node), no combining call serves more than its bounded turn: at
// most its own op and (maxCombinedBatches+1)*maxHandedOff handed-off ones.
// Without the bound the first combiner never found its queue empty and
// completed every op of the run, its own loop unread and the store's lock
// held throughout. Every op is still completed exactly once.
func TestHandOffCombiningIsBounded(t *testing.T) {
	const producers, each = 3, 3000
	s := New()
	var mu sync.Mutex
	byRunner := map[any]int{} // ops completed per combining call
	var completed atomic.Int64
	done := doneFunc(func(*persist.AppendOp) {
		// Runner() names the combining call: each call below passes a
		// runner of its own.
		mu.Lock()
		byRunner[s.Runner()]++
		mu.Unlock()
		completed.Add(1)
		for range 200 { // a completion that takes a while: producers outrun the combiner
			_ = completed.Load()
		}
	})
	var ids atomic.Uint64
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := fmt.Sprint("p", p)
			for i := range each {
				runner := new(int) // a distinct runner per call
				s.HandOffAppend(handOffOp(ids.Add(1), from, fmt.Sprint("to", i%7), done), runner)
			}
		}()
	}
	wg.Wait()
	if n := completed.Load(); n != producers*each {
		t.Fatalf("%d ops completed, want %d", n, producers*each)
	}
	limit := 1 + (maxCombinedBatches+1)*maxHandedOff
	most := 0
	for _, n := range byRunner {
		most = max(most, n)
	}
	if most > limit {
		t.Fatalf("one combining call completed %d ops; its turn allows %d", most, limit)
	}
	if len(byRunner) < 2 {
		t.Fatalf("%d combining calls for %d ops: the hand-off was never contended", len(byRunner), producers*each)
	}
	t.Logf("%d combining calls, the longest turn %d ops", len(byRunner), most)
}
