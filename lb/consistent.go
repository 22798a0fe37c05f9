package lb

import (
	"sync"
	"sync/atomic"
)

// hashBalancer is the consistent-hash strategy: Pick returns the Ring owner
// of the key.
type hashBalancer struct {
	vnodes int
	mu     sync.Mutex // serialises Update
	snap   atomic.Pointer[hashSnapshot]
}

type hashSnapshot struct {
	nodes []Node // eligible, sorted by ID; index = ring member index
	ring  *Ring
}

var _ Balancer = (*hashBalancer)(nil)

func newHashBalancer(vnodes int) *hashBalancer {
	b := &hashBalancer{vnodes: vnodes}
	b.snap.Store(&hashSnapshot{ring: &Ring{vnodes: vnodes}})
	return b
}

func (b *hashBalancer) Name() string { return ConsistentHash }

// Update rebuilds the ring only when the eligible IDs or their weights
// changed; otherwise (Addr, Active or Meta changes, or non-eligible nodes
// coming and going) it reuses the current ring. The new snapshot is
// published with one atomic store; Pick never locks.
func (b *hashBalancer) Update(nodes []Node) error {
	el, ids, err := prepare(nodes)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	ring := b.snap.Load().ring
	if !ring.sameLayout(el, b.vnodes) {
		if ring, err = buildRing(el, ids, b.vnodes); err != nil {
			return err
		}
	}
	b.snap.Store(&hashSnapshot{nodes: el, ring: ring})
	return nil
}

// Pick returns the ring owner of key. It does not allocate and never locks.
func (b *hashBalancer) Pick(key string, exclude ...string) (Node, error) {
	s := b.snap.Load()
	m := s.ring.owner(Hash64(key), exclude)
	if m < 0 {
		return Node{}, ErrNoAvailableNode
	}
	return s.nodes[m], nil
}
