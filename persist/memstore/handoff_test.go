package memstore

import (
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
)

// doneFunc adapts a function to persist.AppendCompleter.
type doneFunc func(*persist.AppendOp)

func (f doneFunc) AppendDone(op *persist.AppendOp) { f(op) }

func handOffOp(id uint64, from, to string, done persist.AppendCompleter) *persist.AppendOp {
	return &persist.AppendOp{
		Msg:     persist.Message{ID: id, From: from, To: to, ClientMsgID: fmt.Sprint("c", id), Timestamp: 1},
		Inboxes: []string{from, to},
		Done:    done,
	}
}

// TestHandOffReturnsWhileCombining: while one caller combines (here held
// inside its own op's completion), another caller is never made to wait: its
// TryAppendAsync fails, its HandOffAppend returns with the op not yet
// complete, and the combiner completes the handed-off ops after its own, in
// the order they were handed over, with its own runner.
func TestHandOffReturnsWhileCombining(t *testing.T) {
	s := New()
	entered, release := make(chan struct{}), make(chan struct{})
	type completion struct {
		id     uint64
		seq    uint64
		runner any
		err    error
	}
	var got []completion // appended under the store's lock
	record := doneFunc(func(op *persist.AppendOp) {
		c := completion{id: op.Msg.ID, runner: s.Runner(), err: op.Err}
		if op.Err == nil {
			c.seq = op.Result.Seqs[1]
		}
		got = append(got, c)
	})
	first := handOffOp(1, "alice", "bob", doneFunc(func(op *persist.AppendOp) {
		record(op)
		close(entered)
		<-release
	}))
	combined := make(chan bool)
	go func() { combined <- s.TryAppendAsync(first, "loop-A") }()
	<-entered

	second := handOffOp(2, "carol", "bob", record)
	if s.TryAppendAsync(second, "loop-B") {
		t.Fatal("TryAppendAsync ran while another call was combining")
	}
	s.HandOffAppend(second, "loop-B")
	s.HandOffAppend(handOffOp(3, "dave", "bob", record), "loop-B")
	s.comb.mu.Lock()
	queued := len(s.comb.q)
	s.comb.mu.Unlock()
	if queued != 2 {
		t.Fatalf("%d ops queued for the combiner, want 2", queued)
	}
	close(release)
	if !<-combined {
		t.Fatal("the first TryAppendAsync did not combine")
	}
	want := []completion{{1, 1, "loop-A", nil}, {2, 2, "loop-A", nil}, {3, 3, "loop-A", nil}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("completions %v, want %v", got, want)
	}
	// The queue is empty and no one combines: the next call runs at once.
	var ran bool
	if !s.TryAppendAsync(handOffOp(4, "erin", "bob", doneFunc(func(op *persist.AppendOp) {
		ran = op.Err == nil && op.Result.Seqs[1] == 4 && s.Runner() == "loop-C"
	})), "loop-C") || !ran {
		t.Fatal("an uncontended TryAppendAsync did not complete its op before returning")
	}
}

// TestHandOffQueueIsBounded: with maxHandedOff ops waiting for a combiner
// that does not progress, one more HandOffAppend waits instead of growing
// the queue, and completes once the combiner moves on.
func TestHandOffQueueIsBounded(t *testing.T) {
	s := New()
	entered, release := make(chan struct{}), make(chan struct{})
	var n int // completions, under the store's lock
	count := doneFunc(func(op *persist.AppendOp) {
		if op.Err != nil {
			t.Errorf("append %d: %v", op.Msg.ID, op.Err)
		}
		n++
	})
	go s.TryAppendAsync(handOffOp(1, "alice", "bob", doneFunc(func(op *persist.AppendOp) {
		count(op)
		close(entered)
		<-release
	})), nil)
	<-entered
	for i := range maxHandedOff {
		s.HandOffAppend(handOffOp(uint64(i+2), "carol", "bob", count), nil)
	}
	extra := make(chan struct{})
	go func() {
		s.HandOffAppend(handOffOp(maxHandedOff+2, "dave", "bob", count), nil)
		close(extra)
	}()
	time.Sleep(20 * time.Millisecond) // let the extra call reach the full queue
	s.comb.mu.Lock()
	queued := len(s.comb.q)
	s.comb.mu.Unlock()
	if queued != maxHandedOff {
		t.Fatalf("%d ops queued, want the bound %d", queued, maxHandedOff)
	}
	close(release)
	<-extra
	// The extra op was queued behind the first batch or ran in a combiner
	// of its own; either way it is complete once the store is idle.
	s.mu.Lock()
	total := n
	s.mu.Unlock()
	if total != maxHandedOff+2 {
		t.Fatalf("%d appends completed, want %d", total, maxHandedOff+2)
	}
}

// TestHandOffStress: many goroutines append to one shared inbox the way the
// engine's event loops do (TryAppendAsync, else copy and HandOffAppend).
// Every op completes exactly once, before the last call returns; the shared
// inbox's seqs complete in increasing order with no gap; each goroutine's
// ops complete in the order it handed them over. Run it with -race.
func TestHandOffStress(t *testing.T) {
	const goroutines, perG = 8, 2000
	s := New()
	var (
		lastSeq uint64 // of "shared", in completion order (store lock)
		next    [goroutines]int
		total   int
		failed  error
	)
	var handedOver atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		user := fmt.Sprint("sender-", g)
		wg.Go(func() {
			for i := range perG {
				done := doneFunc(func(op *persist.AppendOp) {
					switch {
					case failed != nil:
					case op.Err != nil:
						failed = op.Err
					case op.Result.Seqs[1] != lastSeq+1:
						failed = fmt.Errorf("shared inbox: seq %d completed after %d", op.Result.Seqs[1], lastSeq)
					case i != next[g]:
						failed = fmt.Errorf("%s: op %d completed when op %d was next", user, i, next[g])
					}
					lastSeq = op.Result.Seqs[1]
					next[g]++
					total++
					if total%16 == 0 {
						// Hold the lock across a reschedule now and then, as a
						// loop descheduled mid-append does: the others queue.
						runtime.Gosched()
					}
				})
				op := handOffOp(uint64(g*perG+i+1), user, "shared", done)
				if !s.TryAppendAsync(op, g) {
					handedOver.Add(1)
					s.HandOffAppend(op, g)
				}
			}
		})
	}
	wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if failed != nil {
		t.Fatal(failed)
	}
	if total != goroutines*perG || lastSeq != goroutines*perG {
		t.Fatalf("%d completions, last seq %d; want %d of each", total, lastSeq, goroutines*perG)
	}
	if handedOver.Load() == 0 {
		t.Fatal("no append was handed over: the test did not exercise the hand-off")
	}
	t.Logf("%d of %d appends handed over", handedOver.Load(), goroutines*perG)
	if s.comb.busy || len(s.comb.q) != 0 {
		t.Fatalf("combiner left busy=%v with %d queued", s.comb.busy, len(s.comb.q))
	}
}

// BenchmarkAppendContended: two goroutines (two event loops) append 1:1
// messages to disjoint inboxes through the lock (AppendAsync) or the
// hand-off (TryAppendAsync, else HandOffAppend), flat out or paced at 100k
// appends/s in all (bursts of 50 per loop every millisecond, as a loop
// reads them from its connections). Besides ns/op it
// reports, per append, how long the call kept its caller (call-p99-us,
// call-max-us: the time a loop could not serve its other connections) and
// how long the message waited for its completion (done-p99-us,
// done-max-us: what its sender sees; paced, from when its burst was due). Timing-based: compare the two modes
// in one run, on the same machine.
func BenchmarkAppendContended(b *testing.B) {
	for _, run := range []struct {
		mode  string
		paced bool
	}{{"lock", false}, {"handoff", false}, {"lock", true}, {"handoff", true}} {
		mode, name := run.mode, run.mode+"/flat"
		if run.paced {
			name = run.mode + "/100k"
		}
		b.Run(name, func(b *testing.B) {
			s := newWith(b, persist.Retention{InboxMax: 1000, DedupWindow: 2 * time.Second})
			const loops, ring = 2, 4096
			per := b.N/loops + 1
			call := make([][]int64, loops)
			done := make([][]int64, loops)
			var ids atomic.Uint64
			body := make([]byte, 64)
			b.ResetTimer()
			var wg sync.WaitGroup
			for g := range loops {
				call[g], done[g] = make([]int64, per), make([]int64, per)
				wg.Go(func() {
					type slot struct {
						op    persist.AppendOp
						start time.Time
						i     int
						free  atomic.Bool
					}
					slots := make([]slot, ring)
					var users [100]string
					for i := range users {
						users[i] = fmt.Sprintf("loop%d-user-%02d", g, i)
					}
					for i := range slots {
						sl := &slots[i]
						sl.free.Store(true)
						sl.op.Result.Seqs = make([]uint64, 0, 2)
						sl.op.Inboxes = make([]string, 2)
						sl.op.Done = doneFunc(func(*persist.AppendOp) {
							done[g][sl.i] = int64(time.Since(sl.start))
							sl.free.Store(true)
						})
					}
					next := time.Now()
					for i := range per {
						if run.paced && i%50 == 0 {
							next = next.Add(time.Millisecond)
							if d := time.Until(next); d > 0 {
								time.Sleep(d)
							}
						}
						sl := &slots[i%ring]
						for !sl.free.Load() {
							runtime.Gosched()
						}
						sl.free.Store(false)
						p := i % 50
						id := ids.Add(1)
						sl.op.Inboxes[0], sl.op.Inboxes[1] = users[2*p], users[2*p+1]
						sl.op.Msg = persist.Message{ID: id, From: users[2*p], To: users[2*p+1], ClientMsgID: strconv.FormatUint(id, 10), Timestamp: 1, Body: body}
						sl.i = i
						sl.start = time.Now()
						t0 := sl.start
						if run.paced {
							// A message's wait counts from when its burst
							// was due, as a client's does: time spent
							// blocked in an earlier call of the burst
							// counts too (no coordinated omission).
							sl.start = next
						}
						if mode == "lock" {
							s.AppendAsync(&sl.op)
						} else if !s.TryAppendAsync(&sl.op, g) {
							s.HandOffAppend(&sl.op, g)
						}
						call[g][i] = int64(time.Since(t0))
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			for name, v := range map[string][][]int64{"call": call, "done": done} {
				all := slices.Concat(v...)
				slices.Sort(all)
				b.ReportMetric(float64(all[len(all)*99/100])/1e3, name+"-p99-us")
				b.ReportMetric(float64(all[len(all)-1])/1e3, name+"-max-us")
			}
		})
	}
}
