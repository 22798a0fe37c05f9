package lb

import (
	"fmt"
	"math/bits"
	"sort"
)

// Ring sizing.
const (
	// DefaultVirtualNodes is the number of ring points of a node of weight
	// DefaultWeight (10 points per unit of weight).
	//
	// A node's share of the keys varies with a standard deviation of about
	// 1/sqrt(points), so 1000 points give about 3.2%: 1,000,000 random keys
	// over 3, 10 and 50 equal nodes land within ±10%, ±10% and ±15% of the
	// mean (measured: 6.1%, 5.8%, 6.9%; TestRingDistribution). The classic
	// 160 (ketama) gives about 8%, and up to 25% off the mean at 50 nodes. Because the ring has a bucket
	// index, the count costs memory and build time but barely lookup time:
	// a 500-node ring has 500,000 points (about 7 MB) and builds in ~15 ms.
	DefaultVirtualNodes = 1000
	// MaxVirtualNodes is the largest accepted virtual-node count.
	MaxVirtualNodes = 10000
	// MaxRingPoints bounds the total number of points on one ring (about
	// 64 MiB), so no input can exhaust memory.
	MaxRingPoints = 1 << 22
)

// Ring is an immutable consistent-hash ring over the eligible members of a
// node set. It is what the consistent-hash strategy uses, exported so that
// the cluster can compute inbox ownership with exactly the same answers.
//
// Layout: member m with weight w has p = round(vnodes*w/DefaultWeight)
// points (at least 1), at positions xxh64(m.ID, seed=i) for i in [0, p)
// (XXH64 seeded with i). A key is hashed with Hash64 (XXH64 seeded with
// 0) and owned by the member of the first point at or after that hash,
// wrapping around; a tie between two members' equal points goes to the
// smaller ID.
//
// Guarantees:
//   - Determinism: the same eligible members (same IDs and weights, in any
//     order) and the same vnodes give identical answers in every process,
//     on every platform and across restarts. Addr, Active and Meta do not
//     matter.
//   - Minimal disruption: adding a member moves only keys that the new
//     member now owns (about 1/(N+1) of them); removing one moves only the
//     keys it owned. A member that is draining or has weight 0 gets no
//     points, which gives exactly the answers the ring will give once the
//     member is gone.
//   - A Ring is safe for concurrent use; Owner does not allocate.
type Ring struct {
	points []uint64 // sorted point positions
	owners []int32  // owners[i] is the member index of points[i]
	// index narrows the binary search: the points in bucket k (positions
	// with top bits k) are points[index[k]:index[k+1]]. About one point
	// per bucket, so a lookup touches two or three cache lines whatever
	// the ring's size.
	index  []uint32
	shift  uint     // 64 - log2(len(index)-1)
	ids    []string // eligible member IDs, sorted
	counts []int32  // counts[m] is the number of points of member m
	vnodes int
}

// NewRing builds a ring over the eligible nodes (Weight > 0 and not
// Draining) of nodes. vnodes is the number of points of a node of weight
// DefaultWeight; 0 selects DefaultVirtualNodes. The node set is validated
// like Balancer.Update (ErrEmptyID, ErrDuplicateID, ErrNegativeWeight, ...);
// a set with no eligible node gives an empty ring whose Owner reports
// false. Building costs O(P log P) for P points (a few milliseconds for 500
// nodes at the default count) and allocates the ring.
func NewRing(nodes []Node, vnodes int) (*Ring, error) {
	if vnodes < 0 || vnodes > MaxVirtualNodes {
		return nil, fmt.Errorf("%w: %d", ErrInvalidVirtualNodes, vnodes)
	}
	if vnodes == 0 {
		vnodes = DefaultVirtualNodes
	}
	el, ids, err := prepare(nodes)
	if err != nil {
		return nil, err
	}
	return buildRing(el, ids, vnodes)
}

// pointCount is the number of points of a member with weight w > 0.
func pointCount(vnodes, w int) int {
	p := (vnodes*w + DefaultWeight/2) / DefaultWeight
	return max(p, 1)
}

// buildRing builds a ring over eligible nodes sorted by ID.
//
// The points are uniformly distributed, so they are sorted by a counting
// sort on their top bits (which also yields the bucket index) followed by a
// sort inside each bucket, holding about one point: O(P) expected.
func buildRing(el []Node, ids []string, vnodes int) (*Ring, error) {
	r := &Ring{ids: ids, counts: make([]int32, len(el)), vnodes: vnodes}
	total := 0
	for i := range el {
		p := pointCount(vnodes, el[i].Weight)
		r.counts[i] = int32(p)
		total += p
		if total > MaxRingPoints {
			return nil, fmt.Errorf("%w: more than %d points", ErrRingTooLarge, MaxRingPoints)
		}
	}
	// Bucket k holds the positions whose top b bits are k; 2^b <= total.
	b := max(bits.Len(uint(total))-1, 0)
	r.shift = uint(64 - b)
	r.index = make([]uint32, 1<<b+1)
	pos := make([]uint64, 0, total) // in member order
	for i, id := range ids {
		for j := range int(r.counts[i]) {
			h := xxh64(id, uint64(j))
			pos = append(pos, h)
			r.index[h>>r.shift+1]++
		}
	}
	for k := 1; k < len(r.index); k++ {
		r.index[k] += r.index[k-1]
	}
	// Scatter into buckets; next[k] is the next free slot of bucket k.
	r.points = make([]uint64, total)
	r.owners = make([]int32, total)
	next := make([]uint32, len(r.index)-1)
	copy(next, r.index)
	p := 0
	for i := range ids {
		for range int(r.counts[i]) {
			h := pos[p]
			p++
			k := h >> r.shift
			r.points[next[k]] = h
			r.owners[next[k]] = int32(i)
			next[k]++
		}
	}
	for k := 0; k+1 < len(r.index); k++ {
		lo, hi := r.index[k], r.index[k+1]
		switch ps := (pointSlice{r.points[lo:hi], r.owners[lo:hi]}); {
		case hi-lo > 16:
			sort.Sort(ps) // only if the hash were badly skewed
		case hi-lo > 1:
			for i := 1; i < ps.Len(); i++ {
				for j := i; j > 0 && ps.Less(j, j-1); j-- {
					ps.Swap(j, j-1)
				}
			}
		}
	}
	return r, nil
}

// pointSlice sorts points by position, then owner (member index, so the
// smaller ID wins a tie).
type pointSlice struct {
	pos   []uint64
	owner []int32
}

func (s pointSlice) Len() int { return len(s.pos) }
func (s pointSlice) Less(i, j int) bool {
	return s.pos[i] < s.pos[j] || (s.pos[i] == s.pos[j] && s.owner[i] < s.owner[j])
}
func (s pointSlice) Swap(i, j int) {
	s.pos[i], s.pos[j] = s.pos[j], s.pos[i]
	s.owner[i], s.owner[j] = s.owner[j], s.owner[i]
}

// sameLayout reports whether a ring over the eligible nodes el (sorted by
// ID) with vnodes would equal r, so r can be reused.
func (r *Ring) sameLayout(el []Node, vnodes int) bool {
	if r == nil || r.vnodes != vnodes || len(r.ids) != len(el) {
		return false
	}
	for i := range el {
		if r.ids[i] != el[i].ID || int(r.counts[i]) != pointCount(vnodes, el[i].Weight) {
			return false
		}
	}
	return true
}

// Owner returns the ID of the member that owns key, skipping members whose
// ID is in exclude: with exclude it walks clockwise from the key's position
// to the first point of a member not excluded, which is the owner the ring
// would name if those members were removed. ok is false when the ring has
// no member left to choose. Owner is safe for concurrent use and does not
// allocate (unless exclude names more than 8 members).
func (r *Ring) Owner(key string, exclude ...string) (id string, ok bool) {
	m := r.owner(Hash64(key), exclude)
	if m < 0 {
		return "", false
	}
	return r.ids[m], true
}

// Len returns the number of members on the ring (eligible nodes).
func (r *Ring) Len() int {
	if r == nil {
		return 0
	}
	return len(r.ids)
}

// owner returns the member index owning hash h, or -1. A nil or zero Ring
// is empty.
func (r *Ring) owner(h uint64, exclude []string) int {
	if r == nil {
		return -1
	}
	n := len(r.points)
	if n == 0 {
		return -1
	}
	// Binary search for the first point >= h within h's bucket. If no
	// point of the bucket qualifies, the search ends at index[k+1]: the
	// first point of the next non-empty bucket, or n, which wraps to 0.
	k := h >> r.shift
	if k+1 >= uint64(len(r.index)) {
		return -1 // unreachable: index covers every k
	}
	lo, hi := int(r.index[k]), int(r.index[k+1])
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if r.points[mid] < h {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == n {
		lo = 0
	}
	if len(exclude) == 0 {
		return int(r.owners[lo])
	}
	ex := resolveExclude(r.ids, exclude)
	if ex.n == 0 {
		return int(r.owners[lo])
	}
	if ex.n >= len(r.ids) {
		return -1
	}
	// Some member is not excluded and every member has a point, so the
	// walk ends within one turn.
	for i := lo; ; {
		if m := int(r.owners[i]); !ex.has(m) {
			return m
		}
		if i++; i == n {
			i = 0
		}
	}
}
