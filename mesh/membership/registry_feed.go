package membership

import (
	"cmp"
	"context"
	"slices"
	"sync"
)

// ViewFeed holds a registry's current member view and fans it out to
// Watch subscribers. It is the building block Registry implementations
// share; applications do not need it.
//
// Delivery is level-triggered: each subscriber has a channel with a buffer
// of one; publishing replaces an undelivered view with the new one, so
// Publish never blocks on a slow reader and a reader always ends up with
// the latest view. Every subscriber gets its own copy of each view.
//
// The zero value is ready to use. A ViewFeed is safe for concurrent use.
type ViewFeed struct {
	mu     sync.Mutex
	known  bool       // a view has been published
	view   []NodeInfo // sorted by ID; never mutated after publication
	subs   map[*subscriber]struct{}
	closed bool
}

type subscriber struct {
	ch   chan []NodeInfo
	stop func() bool // unregisters the context.AfterFunc
}

// Publish makes nodes the current view (after sorting a copy by ID) and
// delivers it to every subscriber, unless it equals the current view. It
// reports whether the view changed. The first Publish always counts as a
// change, even of an empty view. nodes is not retained. Publish after Close
// is a no-op.
func (f *ViewFeed) Publish(nodes []NodeInfo) bool {
	view := slices.Clone(nodes)
	slices.SortFunc(view, func(a, b NodeInfo) int { return cmp.Compare(a.ID, b.ID) })
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.known && slices.Equal(f.view, view) {
		return false
	}
	f.known = true
	f.view = view
	for s := range f.subs {
		s.offer(view)
	}
	return true
}

// offer replaces the undelivered view of s, if any, with view. The feed's
// lock must be held: it serialises senders, so the send cannot block.
func (s *subscriber) offer(view []NodeInfo) {
	select {
	case <-s.ch:
	default:
	}
	s.ch <- slices.Clone(view)
}

// View returns a copy of the current view (nil before the first Publish).
func (f *ViewFeed) View() []NodeInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.known {
		return nil
	}
	return slices.Clone(f.view)
}

// Known reports whether a view has been published.
func (f *ViewFeed) Known() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.known
}

// Subscribe returns a channel that receives the current view at once (if
// known) and every later change, until ctx ends or the feed is closed; the
// channel is then closed. After Close, Subscribe returns a closed channel.
func (f *ViewFeed) Subscribe(ctx context.Context) <-chan []NodeInfo {
	s := &subscriber{ch: make(chan []NodeInfo, 1)}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || ctx.Err() != nil {
		close(s.ch)
		return s.ch
	}
	if f.subs == nil {
		f.subs = make(map[*subscriber]struct{})
	}
	f.subs[s] = struct{}{}
	if f.known {
		s.offer(f.view)
	}
	s.stop = context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.subs[s]; ok {
			delete(f.subs, s)
			close(s.ch)
		}
	})
	return s.ch
}

// Close closes every subscriber channel; later Publish calls are ignored.
// It is idempotent.
func (f *ViewFeed) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.closed = true
	for s := range f.subs {
		s.stop()
		close(s.ch)
	}
	f.subs = nil
}
