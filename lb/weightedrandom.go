package lb

import (
	"math/rand/v2"
	"sort"
	"sync/atomic"
)

// weightedRandom is the weighted-random strategy: each eligible node is
// picked with probability weight/total, by a binary search over prefix sums
// of the weights.
type weightedRandom struct {
	snap atomic.Pointer[randomSnapshot]
}

type randomSnapshot struct {
	nodes  []Node
	ids    []string
	prefix []uint64 // prefix[i] = sum of weights of nodes[0..i]
}

var _ Balancer = (*weightedRandom)(nil)

func newWeightedRandom() *weightedRandom {
	b := &weightedRandom{}
	b.snap.Store(&randomSnapshot{})
	return b
}

func (b *weightedRandom) Name() string { return WeightedRandom }

func (b *weightedRandom) Update(nodes []Node) error {
	el, ids, err := prepare(nodes)
	if err != nil {
		return err
	}
	s := &randomSnapshot{nodes: el, ids: ids, prefix: make([]uint64, len(el))}
	var sum uint64
	for i := range el {
		sum += uint64(el[i].Weight) // > 0 for eligible nodes
		s.prefix[i] = sum
	}
	b.snap.Store(s)
	return nil
}

// Pick never locks and does not allocate. It is O(log N) without exclude
// and O(N) with one. The random source is math/rand/v2's global generator,
// which is safe for concurrent use.
func (b *weightedRandom) Pick(_ string, exclude ...string) (Node, error) {
	s := b.snap.Load()
	n := len(s.nodes)
	if n == 0 {
		return Node{}, ErrNoAvailableNode
	}
	total := s.prefix[n-1]
	if len(exclude) > 0 {
		if ex := resolveExclude(s.ids, exclude); ex.n > 0 {
			return s.pickExcluding(&ex)
		}
	}
	r := rand.Uint64N(total) // total > 0: every eligible weight is > 0
	i := sort.Search(n, func(i int) bool { return s.prefix[i] > r })
	return s.nodes[i], nil
}

// pickExcluding draws over the weights of the nodes not in ex.
func (s *randomSnapshot) pickExcluding(ex *excludeSet) (Node, error) {
	var total uint64
	for i := range s.nodes {
		if !ex.has(i) {
			total += uint64(s.nodes[i].Weight)
		}
	}
	if total == 0 {
		return Node{}, ErrNoAvailableNode
	}
	r := rand.Uint64N(total)
	for i := range s.nodes {
		if ex.has(i) {
			continue
		}
		w := uint64(s.nodes[i].Weight)
		if r < w {
			return s.nodes[i], nil
		}
		r -= w
	}
	return Node{}, ErrNoAvailableNode // unreachable: r < total
}
