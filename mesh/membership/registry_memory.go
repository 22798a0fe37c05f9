package membership

import (
	"context"
	"fmt"
	"sync"
)

// MemoryHub is an in-process membership namespace: every MemoryRegistry
// made by one hub sees the nodes registered through the others, instantly
// and consistently. It backs single-node mode (NewMemoryRegistry) and
// in-process multi-node tests. A hub has no background goroutines and needs
// no closing. It is safe for concurrent use.
type MemoryHub struct {
	mu      sync.Mutex
	holders map[string]*MemoryRegistry // node ID -> registry whose node is published
	regs    map[*MemoryRegistry]struct{}
	changed chan struct{} // closed (and replaced) on every state change
}

// NewMemoryHub returns an empty hub.
func NewMemoryHub() *MemoryHub {
	return &MemoryHub{
		holders: make(map[string]*MemoryRegistry),
		regs:    make(map[*MemoryRegistry]struct{}),
		changed: make(chan struct{}),
	}
}

// MemoryRegistry is the in-memory Registry. Registrations are visible to
// every registry of the same hub as soon as Register returns; the view of a
// registry is always the hub's current membership. There is no backend to
// lose, so ErrUnavailable never occurs. Safe for concurrent use.
type MemoryRegistry struct {
	hub      *MemoryHub
	readOnly bool
	feed     ViewFeed

	// Guarded by hub.mu.
	desired   *NodeInfo // what Register/Update asked for; nil when deregistered
	published bool      // desired is the hub's entry for desired.ID
	closed    bool
}

var _ Registry = (*MemoryRegistry)(nil)

// NewMemoryRegistry returns a registry on a private hub: the single-node
// default, which sees only its own node.
func NewMemoryRegistry() *MemoryRegistry { return NewMemoryHub().NewRegistry() }

// NewRegistry returns a new, unregistered registry on h. Until Register it
// works as a pure watcher.
func (h *MemoryHub) NewRegistry() *MemoryRegistry { return h.add(false) }

// NewWatcher returns a read-only registry on h: Register, Update and
// Deregister return ErrReadOnly.
func (h *MemoryHub) NewWatcher() *MemoryRegistry { return h.add(true) }

func (h *MemoryHub) add(readOnly bool) *MemoryRegistry {
	r := &MemoryRegistry{hub: h, readOnly: readOnly}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.regs[r] = struct{}{}
	r.feed.Publish(h.viewLocked())
	return r
}

// viewLocked returns the published nodes. h.mu must be held.
func (h *MemoryHub) viewLocked() []NodeInfo {
	view := make([]NodeInfo, 0, len(h.holders))
	for _, r := range h.holders {
		view = append(view, *r.desired)
	}
	return view
}

// changedLocked publishes the view to every registry and wakes waiters.
// h.mu must be held.
func (h *MemoryHub) changedLocked() {
	view := h.viewLocked()
	for r := range h.regs {
		r.feed.Publish(view)
	}
	close(h.changed)
	h.changed = make(chan struct{})
}

// placeLocked tries to publish r.desired, replacing a holder with an older
// boot epoch. h.mu must be held; r.desired must be set.
func (h *MemoryHub) placeLocked(r *MemoryRegistry) {
	id := r.desired.ID
	holder := h.holders[id]
	switch {
	case holder == nil || holder == r:
	case holder.desired.BootEpoch < r.desired.BootEpoch:
		holder.published = false // superseded: it waits for the ID like any other
	default:
		return
	}
	h.holders[id] = r
	r.published = true
}

// releaseLocked removes r's entry and hands the ID to the waiting
// registration with the highest boot epoch, if any. h.mu must be held.
func (h *MemoryHub) releaseLocked(r *MemoryRegistry) {
	if !r.published {
		return
	}
	id := r.desired.ID
	delete(h.holders, id)
	r.published = false
	var next *MemoryRegistry
	for o := range h.regs {
		if o != r && !o.closed && o.desired != nil && o.desired.ID == id &&
			(next == nil || o.desired.BootEpoch > next.desired.BootEpoch) {
			next = o
		}
	}
	if next != nil {
		h.placeLocked(next)
	}
}

// Register implements Registry.
func (r *MemoryRegistry) Register(ctx context.Context, self NodeInfo) error {
	if err := ValidateNode(self); err != nil {
		return err
	}
	return r.set(ctx, self, true)
}

// Update implements Registry.
func (r *MemoryRegistry) Update(ctx context.Context, self NodeInfo) error {
	if err := ValidateNode(self); err != nil {
		return err
	}
	return r.set(ctx, self, false)
}

func (r *MemoryRegistry) set(ctx context.Context, self NodeInfo, register bool) error {
	h := r.hub
	h.mu.Lock()
	switch {
	case r.closed:
		h.mu.Unlock()
		return ErrClosed
	case r.readOnly:
		h.mu.Unlock()
		return ErrReadOnly
	case r.desired == nil && !register:
		h.mu.Unlock()
		return ErrNotRegistered
	case r.desired != nil && r.desired.ID != self.ID && register:
		h.mu.Unlock()
		return fmt.Errorf("%w: %q registered, not %q", ErrAlreadyRegistered, r.desired.ID, self.ID)
	case r.desired != nil && r.desired.ID != self.ID:
		h.mu.Unlock()
		return fmt.Errorf("%w: update of %q names %q", ErrInvalidNode, r.desired.ID, self.ID)
	}
	r.desired = &self
	h.placeLocked(r)
	h.changedLocked()
	for {
		if r.closed {
			h.mu.Unlock()
			return ErrClosed
		}
		if r.desired == nil {
			h.mu.Unlock()
			return fmt.Errorf("%w: deregistered concurrently", ErrNotRegistered)
		}
		if r.published {
			h.mu.Unlock()
			return nil
		}
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("membership: node %q not published: %w: %w", self.ID, ErrIDConflict, ctx.Err())
		}
		h.mu.Lock()
	}
}

// Deregister implements Registry.
func (r *MemoryRegistry) Deregister(ctx context.Context) error {
	h := r.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case r.closed:
		return ErrClosed
	case r.readOnly:
		return ErrReadOnly
	case r.desired == nil:
		return nil
	}
	h.releaseLocked(r)
	r.desired = nil
	h.changedLocked()
	return nil
}

// Nodes implements Registry.
func (r *MemoryRegistry) Nodes() []NodeInfo { return r.feed.View() }

// Watch implements Registry.
func (r *MemoryRegistry) Watch(ctx context.Context) <-chan []NodeInfo {
	return r.feed.Subscribe(ctx)
}

// Close implements Registry.
func (r *MemoryRegistry) Close() error {
	h := r.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if r.closed {
		return nil
	}
	if r.desired != nil {
		h.releaseLocked(r)
		r.desired = nil
	}
	r.closed = true
	delete(h.regs, r)
	h.changedLocked()
	r.feed.Close()
	return nil
}
