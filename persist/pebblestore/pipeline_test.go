package pebblestore

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/persist"
)

// syncFault is an afterSync hook: once armed, the next sync to return
// waits for release and then reports errInjected (with pass, its own
// outcome).
type syncFault struct {
	armed   atomic.Bool
	pass    bool
	entered chan struct{}
	gate    chan struct{}
	once    sync.Once
}

// release lets the held sync return. openFaulted also calls it before
// Close: a failure while a sync is held must not leave Close waiting.
func (f *syncFault) release() { f.once.Do(func() { close(f.gate) }) }

var errInjected = errors.New("injected sync failure")

func newSyncFault() *syncFault {
	return &syncFault{entered: make(chan struct{}, 1), gate: make(chan struct{})}
}

func (f *syncFault) hook(err error) error {
	if !f.armed.CompareAndSwap(true, false) {
		return err
	}
	f.entered <- struct{}{}
	<-f.gate
	if f.pass {
		return err
	}
	return errInjected
}

// openFaulted opens a store whose syncs go through a syncFault (pass: its
// own outcome) and whose built counter counts the batches the committer
// started, holding one message (ID 1 at seq 1 of "u"). The test's end
// releases the fault, then closes the store.
func openFaulted(t *testing.T, pass bool) (*Store, *syncFault, *atomic.Int64) {
	t.Helper()
	fault := newSyncFault()
	fault.pass = pass
	built := new(atomic.Int64)
	s, err := Open(Options{Dir: t.TempDir(), afterSync: fault.hook, beforeCommit: func(int) { built.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		fault.release()
		s.Close()
	})
	if _, err := s.Append(t.Context(), persist.Message{ID: 1, From: "a", ClientMsgID: "warm"}, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	return s, fault, built
}

// TestPipelineSyncFailure: a batch whose sync fails fails its appends, and
// so does the batch the committer built on top of it meanwhile (its seqs
// follow the failed one's); completions keep queue order; then the store
// recovers: new appends get the next seqs without a gap, a retry of a
// failed append finds what the failed batch wrote, and readers see a
// gap-free inbox.
func TestPipelineSyncFailure(t *testing.T) {
	s, fault, _ := openFaulted(t, false)
	ctx := t.Context()
	done := make(chan *chanOp, 16)
	async := func(id uint64, inboxes ...string) *chanOp {
		o := &chanOp{done: done}
		o.AppendOp = persist.AppendOp{Msg: persist.Message{ID: id, From: "a", ClientMsgID: strconv.FormatUint(id, 10)},
			Inboxes: inboxes, Done: o}
		s.AppendAsync(&o.AppendOp)
		return o
	}
	fault.armed.Store(true)
	async(2, "u", "v")
	<-fault.entered // the first batch is applied and its sync has returned; its outcome waits
	// Three appends behind it: however the committer batches them they
	// fit in the pipeline's other flights (pipelineDepth 4), so all of
	// them are applied on top of the batch whose sync fails.
	if pipelineDepth < 1+3 {
		t.Fatalf("pipelineDepth %d: the test needs room for three batches behind the failing one", pipelineDepth)
	}
	for id := uint64(3); id <= 5; id++ {
		async(id, "u")
	}
	testutil.Until(t, 10*time.Second, "the appends behind it applied", func() bool {
		last, err := AppliedLastSeq(s, "u")
		return err == nil && last == 5
	})
	fault.release()
	for want := uint64(2); want <= 5; want++ {
		o := <-done
		if o.Msg.ID != want {
			t.Fatalf("completion of message %d, want %d (queue order)", o.Msg.ID, want)
		}
		if !errors.Is(o.Err, persist.ErrUnavailable) || !errors.Is(o.Err, errInjected) {
			t.Fatalf("message %d: %v; want ErrUnavailable from the failed sync", o.Msg.ID, o.Err)
		}
	}
	if st := s.StoreStats(); st.FailedCommits < 2 {
		t.Fatalf("FailedCommits = %d, want at least 2 (the failed batch and those built on it)", st.FailedCommits)
	}
	// The store goes on: the next append takes the seq after what the
	// database holds, and a retry of a failed append is a duplicate of it.
	r, err := s.Append(ctx, persist.Message{ID: 6, From: "a", ClientMsgID: "6"}, []string{"u"})
	if err != nil || !slices.Equal(r.Seqs, []uint64{6}) {
		t.Fatalf("append after the failure: %+v, %v; want seq 6", r, err)
	}
	r, err = s.Append(ctx, persist.Message{ID: 9, From: "a", ClientMsgID: "2"}, []string{"u", "v"})
	if err != nil || !r.Duplicate || !slices.Equal(r.Seqs, []uint64{2, 1}) {
		t.Fatalf("retry of a failed append: %+v, %v; want the duplicate at [2 1]", r, err)
	}
	es, err := s.ReadInbox(ctx, "u", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range es {
		if e.Seq != uint64(i+1) || e.Msg.ID != e.Seq {
			t.Fatalf("inbox entry %d: seq %d message %d; want a gap-free inbox", i, e.Seq, e.Msg.ID)
		}
	}
	if len(es) != 6 {
		t.Fatalf("%d inbox entries, want 6", len(es))
	}
}

// TestPipelineStress: many appenders, small batches so that several are in
// the pipeline at once (up to its depth, checked), readers alongside. Every inbox's seqs are gap-free,
// also as readers see them while batches are in flight, and after a reopen every acknowledged append is there at the
// seqs it was acknowledged with.
func TestPipelineStress(t *testing.T) {
	dir := t.TempDir()
	// Batches built minus batches whose sync returned: above one, the
	// committer built a batch while another synced. Syncs are stretched a
	// little so that they overlap on any disk.
	var inFlight, maxInFlight atomic.Int64
	s, err := Open(Options{Dir: dir, MaxBatch: 8,
		beforeCommit: func(int) {
			// Only the committer writes maxInFlight.
			if n := inFlight.Add(1); n > maxInFlight.Load() {
				maxInFlight.Store(n)
			}
		},
		afterSync: func(err error) error {
			time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
			inFlight.Add(-1)
			return err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	const writers, perWriter = 16, 150
	type acked struct {
		id      uint64
		inboxes []string
		seqs    []uint64
	}
	var (
		mu   sync.Mutex
		acks []acked
	)
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Go(func() {
			var seen uint64
			inbox := "all"
			if r == 1 {
				inbox = "r0"
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				es, err := s.ReadInbox(t.Context(), inbox, seen, 64)
				if err != nil {
					t.Errorf("ReadInbox: %v", err)
					return
				}
				for _, e := range es {
					if e.Seq != seen+1 {
						t.Errorf("inbox %s: seq %d after %d: a reader saw a gap", inbox, e.Seq, seen)
						return
					}
					seen = e.Seq
				}
			}
		})
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			done := make(chan *chanOp, 1)
			for i := range perWriter {
				id := uint64(w*perWriter + i + 1)
				inboxes := []string{"w" + strconv.Itoa(w), "all", "r" + strconv.Itoa(rng.IntN(4))}
				m := persist.Message{ID: id, From: "w" + strconv.Itoa(w), ClientMsgID: strconv.Itoa(i), Body: []byte("x")}
				var r persist.AppendResult
				var err error
				if i%2 == 0 {
					r, err = s.Append(t.Context(), m, inboxes)
				} else {
					o := &chanOp{done: done}
					o.AppendOp = persist.AppendOp{Msg: m, Inboxes: inboxes, Done: o}
					s.AppendAsync(&o.AppendOp)
					<-done
					r, err = o.Result, o.Err
				}
				if err != nil {
					t.Errorf("append %d: %v", id, err)
					return
				}
				mu.Lock()
				acks = append(acks, acked{id, inboxes, slices.Clone(r.Seqs)})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	if t.Failed() {
		s.Close()
		return
	}
	if st := s.StoreStats(); st.Commits < 50 {
		t.Errorf("%d commits for %d appends in batches of at most 8: want many", st.Commits, writers*perWriter)
	}
	switch m := maxInFlight.Load(); {
	case m < 2:
		t.Errorf("at most %d batch in the pipeline at once: the test did not exercise overlapping batches", m)
	case m > pipelineDepth:
		t.Errorf("%d batches in the pipeline at once, above its depth %d", m, pipelineDepth)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at := map[string]map[uint64]uint64{} // inbox -> seq -> message
	for _, a := range acks {
		for i, in := range a.inboxes {
			if at[in] == nil {
				at[in] = map[uint64]uint64{}
			}
			if prev, dup := at[in][a.seqs[i]]; dup {
				t.Fatalf("inbox %s seq %d acknowledged for messages %d and %d", in, a.seqs[i], prev, a.id)
			}
			at[in][a.seqs[i]] = a.id
		}
	}
	for in, bySeq := range at {
		es, err := s.ReadInbox(t.Context(), in, 0, len(bySeq)+10)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) != len(bySeq) {
			t.Fatalf("inbox %s: %d entries after reopen, %d acknowledged", in, len(es), len(bySeq))
		}
		for i, e := range es {
			if e.Seq != uint64(i+1) {
				t.Fatalf("inbox %s: entry %d at seq %d: not gap-free", in, i, e.Seq)
			}
			if e.Msg.ID != bySeq[e.Seq] {
				t.Fatalf("inbox %s seq %d: message %d, acknowledged %d", in, e.Seq, e.Msg.ID, bySeq[e.Seq])
			}
		}
	}
}

// TestPipelineSyncFailureFailsDerivedAnswers: a request that wrote nothing
// but answered from what a failed batch wrote (CreateUser finding the user
// that batch created) fails with the batch it was built in: its answer
// rests on writes that are not known to be durable.
func TestPipelineSyncFailureFailsDerivedAnswers(t *testing.T) {
	s, fault, built := openFaulted(t, false)
	ctx := t.Context()
	fault.armed.Store(true)
	base := built.Load()
	first, second := make(chan error, 1), make(chan error, 1)
	go func() { first <- s.CreateUser(ctx, persist.User{ID: "x"}) }()
	<-fault.entered // the batch creating x is applied; its sync's outcome waits
	go func() { second <- s.CreateUser(ctx, persist.User{ID: "x"}) }()
	testutil.Until(t, 10*time.Second, "the second CreateUser built", func() bool { return built.Load() >= base+2 })
	// An append queued behind it: once it is applied, the second
	// CreateUser's batch is built.
	done := make(chan *chanOp, 1)
	o := &chanOp{done: done}
	o.AppendOp = persist.AppendOp{Msg: persist.Message{ID: 3, From: "a", ClientMsgID: "3"}, Inboxes: []string{"u"}, Done: o}
	s.AppendAsync(&o.AppendOp)
	testutil.Until(t, 10*time.Second, "the append behind it applied", func() bool {
		last, err := AppliedLastSeq(s, "u")
		return err == nil && last == 2
	})
	fault.release()
	if err := <-first; !errors.Is(err, persist.ErrUnavailable) {
		t.Fatalf("CreateUser in the failed batch: %v, want ErrUnavailable", err)
	}
	if err := <-second; !errors.Is(err, persist.ErrUnavailable) {
		t.Fatalf("CreateUser built on the failed batch: %v, want ErrUnavailable (not an answer from the failed write)", err)
	}
	if <-done; !errors.Is(o.Err, persist.ErrUnavailable) {
		t.Fatalf("append built on the failed batch: %v, want ErrUnavailable", o.Err)
	}
}

// TestPipelineMaintenanceFailure: a maintenance request that fails after
// writing, between a batch waiting for its sync and the next one: its batch
// is dropped (its write never visible), what it changed in the committer's
// caches is forgotten (the next append takes the seq after the applied
// batch, not the head the failed request set), and the batches around it
// complete.
func TestPipelineMaintenanceFailure(t *testing.T) {
	s, hold, built := openFaulted(t, true)
	ctx := t.Context()
	done := make(chan *chanOp, 2)
	async := func(id uint64) *chanOp {
		o := &chanOp{done: done}
		o.AppendOp = persist.AppendOp{Msg: persist.Message{ID: id, From: "a", ClientMsgID: strconv.FormatUint(id, 10)},
			Inboxes: []string{"u"}, Done: o}
		s.AppendAsync(&o.AppendOp)
		return o
	}
	hold.armed.Store(true)
	base := built.Load()
	async(2)
	<-hold.entered // applied; its sync's outcome waits
	errBoom := errors.New("maintenance failed after writing")
	maintErr := make(chan error, 1)
	go func() {
		maintErr <- s.write(ctx, &writeReq{alone: true, apply: func(c *committer) error {
			c.put(keyString(nil, tUser, "ghost"), appendUser(nil, &persist.User{ID: "ghost"}))
			e, err := c.head("u")
			if err != nil {
				return err
			}
			c.setHead(e, head{last: 100, first: 1})
			return errBoom
		}})
	}()
	testutil.Until(t, 10*time.Second, "the maintenance request built", func() bool { return built.Load() >= base+2 })
	async(3)
	testutil.Until(t, 10*time.Second, "the append behind it applied", func() bool {
		last, err := AppliedLastSeq(s, "u")
		return err == nil && last == 3
	})
	hold.release()
	for want := uint64(2); want <= 3; want++ {
		o := <-done
		if o.Msg.ID != want || o.Err != nil || !slices.Equal(o.Result.Seqs, []uint64{want}) {
			t.Fatalf("completion of message %d: seqs %v, %v; want message %d at seq %d", o.Msg.ID, o.Result.Seqs, o.Err, want, want)
		}
	}
	if err := <-maintErr; !errors.Is(err, errBoom) || !errors.Is(err, persist.ErrUnavailable) {
		t.Fatalf("maintenance request: %v; want its own error as ErrUnavailable", err)
	}
	if _, err := s.GetUser(ctx, "ghost"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("GetUser of the dropped batch's write: %v, want ErrNotFound", err)
	}
	if last, err := s.LastSeq(ctx, "u"); err != nil || last != 3 {
		t.Fatalf("LastSeq = %d, %v; want 3", last, err)
	}
}

// batchRecorder completes ops for TestOnBatchCompleted.
type batchRecorder struct {
	done, notInBatch atomic.Int64
	wg               sync.WaitGroup
}

func (r *batchRecorder) AppendDone(op *persist.AppendOp) {
	if op.Err != nil || !op.InBatch {
		r.notInBatch.Add(1)
	}
	r.done.Add(1)
	r.wg.Done()
}

// TestOnBatchCompleted: the registered function runs on the completer after
// every batch's completions (so it sees every op completed before it), the
// ops carry InBatch, and once removed the function is not called again.
func TestOnBatchCompleted(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	r := &batchRecorder{}
	var runs, seen atomic.Int64
	remove := s.OnBatchCompleted(func() {
		runs.Add(1)
		seen.Store(r.done.Load())
	})
	const n = 500
	r.wg.Add(n)
	for i := range n {
		id := strconv.Itoa(i)
		s.AppendAsync(&persist.AppendOp{Msg: persist.Message{ID: uint64(i + 1), From: "a", To: "b", ClientMsgID: id, Timestamp: 1, Body: []byte(id)},
			Inboxes: []string{"a", "b"}, Done: r})
	}
	r.wg.Wait()
	testutil.Until(t, 10*time.Second, "the hook after the last batch", func() bool { return seen.Load() == n })
	if bad := r.notInBatch.Load(); bad != 0 {
		t.Fatalf("%d ops completed with an error or without InBatch", bad)
	}
	if runs.Load() == 0 || runs.Load() > n {
		t.Fatalf("%d hook runs for %d ops", runs.Load(), n)
	}
	remove()
	before := runs.Load()
	r.wg.Add(1)
	s.AppendAsync(&persist.AppendOp{Msg: persist.Message{ID: n + 1, From: "a", To: "b", ClientMsgID: "last", Timestamp: 1, Body: []byte("x")},
		Inboxes: []string{"a", "b"}, Done: r})
	r.wg.Wait()
	// A second hook, registered now, runs after that batch at the latest.
	var later atomic.Bool
	defer s.OnBatchCompleted(func() { later.Store(true) })()
	r.wg.Add(1)
	s.AppendAsync(&persist.AppendOp{Msg: persist.Message{ID: n + 2, From: "a", To: "b", ClientMsgID: "later", Timestamp: 1, Body: []byte("y")},
		Inboxes: []string{"a", "b"}, Done: r})
	r.wg.Wait()
	testutil.Until(t, 10*time.Second, "the second hook", later.Load)
	if runs.Load() != before {
		t.Fatal("the hook ran after it was removed")
	}
}
