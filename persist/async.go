package persist

import (
	"context"
	"slices"
	"sync"
)

// This file holds the asynchronous append seam: how the engine hands appends
// to a store without a goroutine waiting on each one, and learns of their
// completion in commit order.

// AppendOp is one append handed to an AsyncAppender. The caller fills Msg,
// Inboxes and Done, and may give Result.Seqs spare capacity (the store
// reuses it instead of allocating); the store sets Result and Err, then
// calls Done.AppendDone(op) exactly once.
//
// Ownership: from AppendAsync until Done is called the store owns op; the
// caller must not touch op or the memory that Msg's strings, Msg.Body and
// Inboxes refer to. The store copies whatever it keeps beyond Done. After
// calling Done the store never touches op again, so the caller may reuse it
// (and the memory it refers to) from inside Done.
type AppendOp struct {
	Msg     Message
	Inboxes []string
	// Result and Err are the outcome, as Append would return them. On
	// success Result.Msg is Msg (a fresh insert; its strings and Body are
	// the caller's) or the stored original (a duplicate; store-owned
	// memory, valid only until Done returns: a store may reuse it once
	// the message expires, so copy what must outlive Done).
	Result AppendResult
	Err    error
	Done   AppendCompleter
	// InBatch is set by a BatchCompleting store on the ops it completes
	// in a batch on its completing goroutine: their AppendDone calls are
	// followed, on that goroutine, by the functions registered with
	// OnBatchCompleted.
	InBatch bool
}

// BatchCompleting is implemented by an AsyncAppender that completes ops in
// batches on one goroutine of its own (the embedded store completes each
// synced commit's ops together). It lets a caller do once per batch what
// the batch's completions queued, such as writing each connection's
// output once, from that goroutine, instead of waking another goroutine to
// do it.
type BatchCompleting interface {
	// OnBatchCompleted registers f, called on the completing goroutine
	// after every batch of AppendDone calls made with op.InBatch set,
	// before the next batch's; remove unregisters it (after remove
	// returns, f is not running and is not called again). f must not
	// block.
	OnBatchCompleted(f func()) (remove func())
}

// BatchHooks is the registry a BatchCompleting store keeps: Add is its
// OnBatchCompleted, and its completing goroutine calls Run after each
// batch. Safe for concurrent use; Run holds the registry's lock while the
// functions run, so a remove waits for a run in progress.
type BatchHooks struct {
	mu  sync.Mutex
	fns []*func() // pointers: a func value cannot be compared, its box can
}

// Add registers f and returns the function that unregisters it.
func (h *BatchHooks) Add(f func()) (remove func()) {
	fp := &f
	h.mu.Lock()
	h.fns = append(h.fns, fp)
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.fns = slices.DeleteFunc(h.fns, func(g *func()) bool { return g == fp })
	}
}

// Run calls every registered function, in registration order.
func (h *BatchHooks) Run() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range h.fns {
		(*f)()
	}
}

// AppendCompleter is told when an AppendOp is complete.
type AppendCompleter interface {
	// AppendDone is called once per op, on a goroutine of the store's
	// choosing (see AsyncAppender for the order). It must not block: it
	// runs on the store's committer (or the goroutine that completes
	// its commits), or for a NonBlocking store under the store's own
	// lock.
	AppendDone(op *AppendOp)
}

// AsyncAppender is a MessageStore that takes appends without making a
// goroutine wait for each: its committer collects them into batches, and
// completes them in commit order.
//
// Order: ops that share an inbox complete in the order of their seqs in
// that inbox, one Done returning before the next starts. Since a store
// assigns seqs in the order AppendAsync was called (for appends to one
// inbox), a caller that does its follow-up work (pushing the message) inside
// Done does it in seq order.
type AsyncAppender interface {
	MessageStore
	// AppendAsync queues op and returns without waiting for I/O. When the
	// store cannot take it (closed, or its bounded queue is full) op is
	// completed with ErrClosed or ErrUnavailable, possibly before
	// AppendAsync returns. Malformed arguments complete with ErrInvalid.
	AppendAsync(op *AppendOp)
}

// NonBlocking is implemented by stores none of whose calls wait for I/O
// (the in-memory store). The engine runs such a store's calls on its event
// loops instead of handing them to workers. Its AppendAsync completes op
// (calls Done) before returning, on the caller's goroutine.
type NonBlocking interface {
	NonBlocking()
}

// AppendWait is the synchronous Append built on AppendAsync, for stores
// that implement Append this way: it queues an op for msg and waits for its
// completion or for ctx. When ctx ends first it returns ctx.Err() and the
// op, left to the store, may still complete (the caller treats that like
// ErrUnavailable and retries with the same ClientMsgID). msg and inboxes
// must therefore stay unchanged until the op completes, even after ctx ends:
// do not pass memory that will be reused.
func AppendWait(ctx context.Context, s AsyncAppender, msg Message, inboxes []string) (AppendResult, error) {
	if err := ctx.Err(); err != nil {
		return AppendResult{}, err
	}
	w := &waiter{ch: make(chan struct{})}
	op := &AppendOp{Msg: msg, Inboxes: inboxes, Done: w}
	s.AppendAsync(op)
	select {
	case <-w.ch:
		return op.Result, op.Err
	case <-ctx.Done():
		select {
		case <-w.ch: // finished at the same moment: report the real outcome
			return op.Result, op.Err
		default:
			return AppendResult{}, ctx.Err()
		}
	}
}

type waiter struct{ ch chan struct{} }

func (w *waiter) AppendDone(*AppendOp) { close(w.ch) }

// AsyncCursorSetter is a store that takes cursor updates (SetCursor)
// without making a goroutine wait: a server's event loop hands a PUSH_ACK's
// cursor to it directly instead of parking a worker goroutine per
// connection until the write is durable.
type AsyncCursorSetter interface {
	// SetCursorAsync queues SetCursor(user, device, seq) and returns without
	// waiting. done is called once with the outcome, as SetCursor would
	// return it: on the store's own goroutine once the write is durable or
	// has failed, or on the caller's before SetCursorAsync returns when the
	// arguments are invalid or the store is closed or its queue full. done
	// must not block.
	SetCursorAsync(user, device string, seq uint64, done func(error))
}
