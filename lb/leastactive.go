package lb

import (
	"math/bits"
	"math/rand/v2"
	"sync/atomic"
)

// leastActive is the least-active strategy: Pick returns the eligible node
// with the fewest active connections per unit of weight, ties broken
// uniformly at random.
//
// Active counts come from Update (the registry's published counts). Between
// two Updates, each Pick counts one more connection on the node it returns,
// because the caller is about to connect there; without this a burst of
// picks between two registry refreshes would all land on the same node.
// The next Update replaces these estimates with the published counts.
type leastActive struct {
	snap atomic.Pointer[activeSnapshot]
}

type activeSnapshot struct {
	nodes []Node
	ids   []string
	slots []activeSlot // parallel to nodes
}

// activeSlot holds what Pick reads per node, packed for locality.
type activeSlot struct {
	// active is Node.Active plus the picks since the snapshot was made.
	// It is unsigned so that even a wrapped counter compares as large.
	active atomic.Uint64
	weight uint64
}

var _ Balancer = (*leastActive)(nil)

func newLeastActive() *leastActive {
	b := &leastActive{}
	b.snap.Store(&activeSnapshot{})
	return b
}

func (b *leastActive) Name() string { return LeastActive }

func (b *leastActive) Update(nodes []Node) error {
	el, ids, err := prepare(nodes)
	if err != nil {
		return err
	}
	s := &activeSnapshot{nodes: el, ids: ids, slots: make([]activeSlot, len(el))}
	for i := range el {
		s.slots[i].weight = uint64(el[i].Weight)
		s.slots[i].active.Store(uint64(el[i].Active))
	}
	b.snap.Store(s)
	return nil
}

// Pick scans every node (O(N)), never locks and does not allocate.
func (b *leastActive) Pick(_ string, exclude ...string) (Node, error) {
	s := b.snap.Load()
	var ex excludeSet
	if len(exclude) > 0 {
		ex = resolveExclude(s.ids, exclude)
	}
	best, ties := -1, uint64(0)
	var bestA, bestW uint64
	var rng uint64 // splitmix64 state for tie-breaks, seeded on first use
	for i := range s.slots {
		if ex.n > 0 && ex.has(i) {
			continue
		}
		a, w := s.slots[i].active.Load(), s.slots[i].weight
		if best < 0 {
			best, ties, bestA, bestW = i, 1, a, w
			continue
		}
		// Compare a/w with bestA/bestW exactly: a*bestW vs bestA*w in
		// 128 bits.
		h1, l1 := bits.Mul64(a, bestW)
		h2, l2 := bits.Mul64(bestA, w)
		if h1 < h2 || (h1 == h2 && l1 < l2) {
			best, ties, bestA, bestW = i, 1, a, w
		} else if h1 == h2 && l1 == l2 {
			// Reservoir sampling: each tied node ends up chosen with
			// probability 1/ties. One call to the shared generator per
			// Pick; a local splitmix64 stream after that.
			ties++
			if rng == 0 {
				rng = rand.Uint64() | 1
			}
			rng += 0x9e3779b97f4a7c15
			if hi, _ := bits.Mul64(splitmix64(rng), ties); hi == 0 {
				best, bestA, bestW = i, a, w
			}
		}
	}
	if best < 0 {
		return Node{}, ErrNoAvailableNode
	}
	s.slots[best].active.Add(1)
	return s.nodes[best], nil
}

// splitmix64 is the output function of the SplitMix64 generator.
func splitmix64(x uint64) uint64 {
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
