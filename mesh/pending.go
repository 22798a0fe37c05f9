package mesh

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/persist"
)

// This file is the sending side that every Transport shares: the table of
// requests awaiting their replies, the budget a request carries, the
// error a failed forward returns, and the check of the limits every
// transport's config has.

// ForwardError builds the error of a request to node that failed before a
// reply: it wraps cluster.ErrForward (retryable for the client) and cause.
func ForwardError(node, what string, cause error) error {
	if cause != nil {
		return fmt.Errorf("%w: node %s: %s: %w", cluster.ErrForward, node, what, cause)
	}
	return fmt.Errorf("%w: node %s: %s", cluster.ErrForward, node, what)
}

// RequestBudget bounds ctx by def when it has no deadline and returns the
// time left in milliseconds (at least 1), which the request announces so
// that the owner stops working on it when the sender has given up. The
// caller must call cancel. It fails, wrapping cluster.ErrForward, when ctx
// has ended already.
func RequestBudget(ctx context.Context, node string, def time.Duration) (_ context.Context, cancel context.CancelFunc, budgetMs uint32, err error) {
	cancel = func() {}
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, def)
	}
	if err := ctx.Err(); err != nil {
		return ctx, cancel, 0, ForwardError(node, "not sent", err)
	}
	dl, _ := ctx.Deadline()
	ms := max(time.Until(dl).Milliseconds(), 1)
	return ctx, cancel, uint32(min(ms, 1<<31)), nil
}

// CheckLimits reports the problems of the settings every transport has:
// the request timeout, the per-peer queue, the requests handled at once
// and the largest frame body (each transport's Validate adds its own).
func CheckLimits(requestTimeout time.Duration, queueSize, maxInflight, maxBody int) []error {
	var errs []error
	if requestTimeout < 0 {
		errs = append(errs, fmt.Errorf("RequestTimeout must not be negative, got %s", requestTimeout))
	}
	if queueSize < 0 || maxInflight < 0 {
		errs = append(errs, fmt.Errorf("QueueSize (%d) and MaxInflight (%d) must not be negative", queueSize, maxInflight))
	}
	if maxBody < 0 || maxBody > 1<<30 {
		errs = append(errs, fmt.Errorf("MaxBody must be in 1..%d, got %d", 1<<30, maxBody))
	}
	return errs
}

// CallResult is the outcome of one request: an APPEND's result, an ADMIN's
// count, or the error.
type CallResult struct {
	Res   persist.AppendResult
	Count int
	Err   error
}

// Pending is a table of requests awaiting their replies, by request id
// (the frame's seq), each sent to one peer (a PendingPeer of the table).
// Every request gets exactly one outcome: whoever removes it from the
// table (Complete, Forget, Fail, FailAll) owns it. The table bounds the
// requests waiting per peer. Its methods are safe for concurrent use and
// never block: outcomes go to channels with room for one.
type Pending struct {
	mu    sync.Mutex
	seq   uint32
	calls map[uint32]*pendingCall
}

type pendingCall struct {
	peer *PendingPeer
	done chan CallResult
}

// PendingPeer is one peer's share of a Pending table. Its fields are
// guarded by the table's lock.
type PendingPeer struct {
	id      string
	waiting int
	refused error // new requests fail with it while set
}

// NewPeer returns the handle for requests to peer id. A peer that leaves
// and comes back gets a new handle, so that a refusal of the old one
// (Refuse) stays with it.
func (t *Pending) NewPeer(id string) *PendingPeer { return &PendingPeer{id: id} }

// Add registers a request to p and returns its id (never 0) and the
// channel of its outcome. It fails with p's refusal, or when limit
// requests to p are waiting already.
func (t *Pending) Add(p *PendingPeer, limit int) (uint32, <-chan CallResult, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case p.refused != nil:
		return 0, nil, p.refused
	case p.waiting >= limit:
		return 0, nil, ForwardError(p.id, fmt.Sprintf("queue full (%d requests waiting)", limit), nil)
	}
	if t.calls == nil {
		t.calls = make(map[uint32]*pendingCall)
	}
	for {
		t.seq++
		if _, used := t.calls[t.seq]; t.seq != 0 && !used {
			break
		}
	}
	c := &pendingCall{peer: p, done: make(chan CallResult, 1)}
	t.calls[t.seq] = c
	p.waiting++
	return t.seq, c.done, nil
}

// take removes id; t.mu must be held.
func (t *Pending) take(id uint32) *pendingCall {
	c := t.calls[id]
	if c != nil {
		delete(t.calls, id)
		c.peer.waiting--
	}
	return c
}

// Forget removes id, reporting whether it was still waiting (and the
// caller now owns its outcome).
func (t *Pending) Forget(id uint32) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.take(id) != nil
}

// Waiting reports whether id still awaits its outcome (a writer skips
// requests whose caller gave up).
func (t *Pending) Waiting(id uint32) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.calls[id] != nil
}

// PeerOf returns the peer id request id went to, if it is waiting.
func (t *Pending) PeerOf(id uint32) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.calls[id]; c != nil {
		return c.peer.id, true
	}
	return "", false
}

// Complete delivers r as the outcome of id if it is still waiting.
func (t *Pending) Complete(id uint32, r CallResult) {
	t.mu.Lock()
	c := t.take(id)
	t.mu.Unlock()
	if c != nil {
		c.done <- r
	}
}

// Wait returns the outcome of id, or ok false when ctx ends first while
// id still waits (it is forgotten then: a late reply is ignored).
func (t *Pending) Wait(ctx context.Context, id uint32, done <-chan CallResult) (_ CallResult, ok bool) {
	select {
	case r := <-done:
		return r, true
	case <-ctx.Done():
		if t.Forget(id) {
			return CallResult{}, false
		}
		return <-done, true // completed concurrently: the outcome is on its way
	}
}

// Fail fails every request waiting for p with err.
func (t *Pending) Fail(p *PendingPeer, err error) {
	var failed []*pendingCall
	t.mu.Lock()
	for id, c := range t.calls {
		if c.peer == p {
			failed = append(failed, t.take(id))
		}
	}
	t.mu.Unlock()
	for _, c := range failed {
		c.done <- CallResult{Err: err}
	}
}

// Refuse makes Add fail with err for p until Refuse(p, nil).
func (t *Pending) Refuse(p *PendingPeer, err error) {
	t.mu.Lock()
	p.refused = err
	t.mu.Unlock()
}

// FailAll fails every waiting request with ForwardError(peer, why).
func (t *Pending) FailAll(why string) {
	t.mu.Lock()
	failed := t.calls
	t.calls = nil
	for _, c := range failed {
		c.peer.waiting--
	}
	t.mu.Unlock()
	for _, c := range failed {
		c.done <- CallResult{Err: ForwardError(c.peer.id, why, nil)}
	}
}
