package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
)

// asyncStore is a persist.AsyncAppender with a committer goroutine, as the
// embedded store has: appends queue, the committer takes them in batches,
// stores each batch and completes its ops in order. It can fail appends on
// demand (nothing stored) and hold the committer (an fsync that blocks).
type asyncStore struct {
	persist.Store // a memory store, seen only through persist.Store: not NonBlocking
	queue         chan *persist.AppendOp
	done          chan struct{}

	handed atomic.Int64 // appends handed over by AppendAsync so far

	mu       sync.Mutex
	failNext int           // fail this many appends with ErrUnavailable
	hold     chan struct{} // when set, the committer waits for it to close before committing
	batches  int
	// afterBatch, when set (batchedStore), runs on the committer after
	// each batch's completions.
	afterBatch func()
}

// batchedStore is an asyncStore that is also persist.BatchCompleting, as
// the embedded store is.
type batchedStore struct {
	*asyncStore
	hooks persist.BatchHooks
}

func newBatchedStore() *batchedStore {
	b := &batchedStore{asyncStore: &asyncStore{Store: memstore.New(), queue: make(chan *persist.AppendOp, 4096), done: make(chan struct{})}}
	b.afterBatch = b.hooks.Run
	go b.commit()
	return b
}

// OnBatchCompleted implements persist.BatchCompleting.
func (b *batchedStore) OnBatchCompleted(f func()) (remove func()) { return b.hooks.Add(f) }

func newAsyncStore() *asyncStore {
	a := &asyncStore{Store: memstore.New(), queue: make(chan *persist.AppendOp, 4096), done: make(chan struct{})}
	go a.commit()
	return a
}

// AppendAsync implements persist.AsyncAppender.
func (a *asyncStore) AppendAsync(op *persist.AppendOp) {
	a.handed.Add(1)
	a.queue <- op
}

// Append implements persist.MessageStore through the committer.
func (a *asyncStore) Append(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	return persist.AppendWait(ctx, a, msg, inboxes)
}

func (a *asyncStore) commit() {
	defer close(a.done)
	batch := make([]*persist.AppendOp, 0, 256)
	for op := range a.queue {
		batch = append(batch[:0], op)
	fill:
		for len(batch) < cap(batch) {
			select {
			case op, ok := <-a.queue:
				if !ok {
					break fill
				}
				batch = append(batch, op)
			default:
				break fill
			}
		}
		a.mu.Lock()
		hold := a.hold
		a.batches++
		a.mu.Unlock()
		if hold != nil {
			<-hold
		}
		for _, op := range batch {
			a.mu.Lock()
			fail := a.failNext > 0
			if fail {
				a.failNext--
			}
			a.mu.Unlock()
			if fail {
				op.Result, op.Err = persist.AppendResult{}, fmt.Errorf("async store: %w", persist.ErrUnavailable)
			} else {
				seqs := op.Result.Seqs[:0]
				op.Result, op.Err = a.Store.Append(context.Background(), op.Msg, op.Inboxes)
				op.Result.Seqs = append(seqs, op.Result.Seqs...)
			}
		}
		for _, op := range batch {
			op.InBatch = a.afterBatch != nil
			op.Done.AppendDone(op)
		}
		if a.afterBatch != nil {
			a.afterBatch()
		}
	}
}

// holdCommits makes the committer wait before its next batch until release
// is called (holdStore).
func (a *asyncStore) holdCommits(t testing.TB) (release func()) { return holdStore(t, &a.mu, &a.hold) }

// holdStore sets *hold, under mu, to a channel a test store waits on, and
// returns release, which clears it and closes the channel. release is
// idempotent and also runs at t's cleanup, before the server's shutdown
// (registered earlier, so it runs later), which waits for every append: a
// test that fails while holding cannot hang.
func holdStore(t testing.TB, mu *sync.Mutex, hold *chan struct{}) (release func()) {
	ch := make(chan struct{})
	mu.Lock()
	*hold = ch
	mu.Unlock()
	release = sync.OnceFunc(func() {
		mu.Lock()
		*hold = nil
		mu.Unlock()
		close(ch)
	})
	t.Cleanup(release)
	return release
}

// Close stops the committer, then the memory store.
func (a *asyncStore) Close() error {
	close(a.queue)
	<-a.done
	return a.Store.Close()
}

var _ persist.AsyncAppender = (*asyncStore)(nil)
