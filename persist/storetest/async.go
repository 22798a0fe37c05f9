package storetest

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/imgn/imgn/persist"
)

// burstOp is one op of testAsyncBurst with what the serial model expects.
type burstOp struct {
	persist.AppendOp
	t       *testing.T
	running *atomic.Int32
	done    *sync.WaitGroup
	mu      *sync.Mutex
	order   *[]int // completion order (indexes into the burst)
	i       int

	wantErr  error
	wantDup  bool
	wantID   uint64
	wantSeqs []uint64
}

func (o *burstOp) AppendDone(*persist.AppendOp) {
	if n := o.running.Add(1); n != 1 {
		o.t.Errorf("op %d: AppendDone runs while %d others do (completions must not overlap)", o.i, n-1)
	}
	o.mu.Lock()
	*o.order = append(*o.order, o.i)
	o.mu.Unlock()
	o.running.Add(-1)
	o.done.Done()
}

// testAsyncBurst hands an AsyncAppender thousands of appends at once, so
// they share batches: retries of messages stored earlier in the same burst
// (some adding inboxes), message-ID clashes, many inboxes per op, one hot
// inbox. Every outcome must be what a serial store would give, and ops that
// share an inbox must complete in the order of their seqs there.
func testAsyncBurst(t *testing.T, s persist.Store) {
	as := s.(persist.AsyncAppender)
	const n = 3000
	type stored struct {
		id   uint64
		refs map[string]uint64
	}
	dedup := map[[2]string]*stored{}
	ids := map[uint64]bool{}
	heads := map[string]uint64{}
	var running atomic.Int32
	var mu sync.Mutex
	var order []int
	var completed sync.WaitGroup
	ops := make([]*burstOp, n)
	for i := range n {
		from := fmt.Sprint("s", i%20)
		m := msg(uint64(i+1), from, fmt.Sprint("c", i))
		inboxes := []string{"hot", fmt.Sprint("u", i%50)}
		switch {
		case i%7 == 3 && i > 3: // retry of op i-3 with one more inbox
			m.ClientMsgID = ops[i-3].Msg.ClientMsgID
			m.From = ops[i-3].Msg.From
			inboxes = append(slices.Clone(ops[i-3].Inboxes), fmt.Sprint("late", i%4))
			inboxes = slices.Compact(inboxes)
		case i%11 == 5 && i > 0: // reuses the ID of op i-1 for another key
			m.ID = ops[i-1].Msg.ID
		case i%13 == 0: // a group of 30
			for j := range 30 {
				inboxes = append(inboxes, fmt.Sprint("g", i%3, "-", j))
			}
		}
		if i%7 == 3 && i > 3 && slices.Contains(ops[i-3].Inboxes, inboxes[len(inboxes)-1]) {
			inboxes = inboxes[:len(inboxes)-1]
		}
		o := &burstOp{t: t, running: &running, done: &completed, mu: &mu, order: &order, i: i}
		o.AppendOp = persist.AppendOp{Msg: m, Inboxes: inboxes, Done: o}
		ops[i] = o
		// The serial model.
		key := [2]string{m.From, m.ClientMsgID}
		if st := dedup[key]; st != nil {
			o.wantDup, o.wantID = true, st.id
			for _, in := range inboxes {
				if _, ok := st.refs[in]; !ok {
					heads[in]++
					st.refs[in] = heads[in]
				}
				o.wantSeqs = append(o.wantSeqs, st.refs[in])
			}
			continue
		}
		if ids[m.ID] {
			o.wantErr = persist.ErrInvalid
			continue
		}
		st := &stored{id: m.ID, refs: map[string]uint64{}}
		for _, in := range inboxes {
			heads[in]++
			st.refs[in] = heads[in]
			o.wantSeqs = append(o.wantSeqs, heads[in])
		}
		dedup[key], ids[m.ID], o.wantID = st, true, m.ID
	}
	completed.Add(n)
	for _, o := range ops {
		as.AppendAsync(&o.AppendOp)
	}
	completed.Wait()
	if t.Failed() {
		return
	}
	pos := make([]int, n) // completion position of each op
	for p, i := range order {
		pos[i] = p
	}
	// assigned[inbox][seq]: the completion position of the op that got seq
	// in inbox (the first to report it; retries report it again later).
	assigned := map[string]map[uint64]int{}
	for i, o := range ops {
		if !errors.Is(o.Err, o.wantErr) || (o.wantErr == nil && o.Err != nil) {
			t.Fatalf("op %d: err %v, want %v", i, o.Err, o.wantErr)
		}
		if o.wantErr != nil {
			continue
		}
		if o.Result.Duplicate != o.wantDup || o.Result.Msg.ID != o.wantID || !slices.Equal(o.Result.Seqs, o.wantSeqs) {
			t.Fatalf("op %d (%s/%s to %v): Duplicate=%v id %d seqs %v; a serial store gives Duplicate=%v id %d seqs %v",
				i, o.Msg.From, o.Msg.ClientMsgID, o.Inboxes, o.Result.Duplicate, o.Result.Msg.ID, o.Result.Seqs, o.wantDup, o.wantID, o.wantSeqs)
		}
		for j, in := range o.Inboxes {
			if assigned[in] == nil {
				assigned[in] = map[uint64]int{}
			}
			if p, ok := assigned[in][o.Result.Seqs[j]]; !ok || pos[i] < p {
				assigned[in][o.Result.Seqs[j]] = pos[i]
			}
		}
	}
	for in, bySeq := range assigned {
		seqs := slices.Sorted(maps.Keys(bySeq))
		for k := 1; k < len(seqs); k++ {
			if bySeq[seqs[k]] < bySeq[seqs[k-1]] {
				t.Fatalf("inbox %s: the op given seq %d completed before the one given seq %d", in, seqs[k], seqs[k-1])
			}
		}
	}
	for in, head := range heads {
		es := mustRead(t, s, in, 0, int(head)+10)
		if uint64(len(es)) != head {
			t.Fatalf("inbox %s: %d entries, the serial model has %d", in, len(es), head)
		}
		for k, e := range es {
			if e.Seq != uint64(k+1) {
				t.Fatalf("inbox %s: entry %d has seq %d (gap)", in, k, e.Seq)
			}
		}
	}
}
