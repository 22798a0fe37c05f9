package lb

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Strategy names accepted by [New]. They are also the values of
// [Balancer.Name].
const (
	ConsistentHash = "consistent-hash"
	LeastActive    = "least-active"
	WeightedRandom = "weighted-random"
	RoundRobin     = "round-robin"
)

// Weights.
const (
	// DefaultWeight is the weight of a normal node. A node of weight
	// DefaultWeight gets the configured number of virtual nodes on a [Ring];
	// other weights scale that number linearly. Registries should publish
	// DefaultWeight unless an operator sets something else. Note that the
	// zero value of [Node].Weight is 0, which means "no new work".
	DefaultWeight = 100
	// MaxWeight is the largest accepted weight (100 times a normal node). It
	// bounds the size of a ring and keeps every weight sum far from overflow.
	MaxWeight = 10000
)

// Sentinel errors. Validation errors are wrapped with the offending node's
// ID; test for them with [errors.Is].
var (
	// ErrNoAvailableNode means no node may be picked: the set is empty,
	// every node is draining or has weight 0, or every eligible node was
	// excluded. A router answers it with "service unavailable".
	ErrNoAvailableNode = errors.New("lb: no available node")
	// ErrUnknownStrategy is returned by New for a name that is not one of
	// the strategy constants.
	ErrUnknownStrategy = errors.New("lb: unknown strategy")
	// ErrEmptyID means a node has an empty ID.
	ErrEmptyID = errors.New("lb: empty node id")
	// ErrDuplicateID means two nodes share an ID.
	ErrDuplicateID = errors.New("lb: duplicate node id")
	// ErrNegativeWeight means a node has a weight below 0.
	ErrNegativeWeight = errors.New("lb: negative weight")
	// ErrWeightTooLarge means a node has a weight above MaxWeight.
	ErrWeightTooLarge = errors.New("lb: weight too large")
	// ErrNegativeActive means a node reports a negative connection count.
	ErrNegativeActive = errors.New("lb: negative active count")
	// ErrInvalidVirtualNodes means a virtual-node count is negative or
	// above MaxVirtualNodes.
	ErrInvalidVirtualNodes = errors.New("lb: invalid virtual node count")
	// ErrRingTooLarge means a ring would need more than MaxRingPoints
	// points.
	ErrRingTooLarge = errors.New("lb: ring too large")
)

// Node describes one server for balancing.
//
// A node is eligible (may be picked) only when Weight > 0 and Draining is
// false. Weight 0 or Draining means "no new work": the node is valid and may
// be listed, but no strategy ever returns it.
type Node struct {
	// ID identifies the node; it must be non-empty and unique in a set.
	// The consistent-hash ring positions depend only on IDs and weights.
	ID string
	// Addr is the address clients should dial. It is carried, not used.
	Addr string
	// Weight is the node's relative capacity, 0..MaxWeight. DefaultWeight
	// (100) is a normal node; 0 means no new work.
	Weight int
	// Active is the node's current number of connections (>= 0). Only the
	// least-active strategy reads it.
	Active int64
	// Draining marks a node that is shutting down: it takes no new work.
	Draining bool
	// Meta holds free-form attributes (region, admin address, ...). Update
	// copies the map; the copy inside a Node returned by Pick is shared by
	// all callers and must be treated as read-only.
	Meta map[string]string
}

// eligible reports whether n may be picked.
func (n *Node) eligible() bool { return n.Weight > 0 && !n.Draining }

// Balancer picks a node for a key from the current node set.
//
// Every implementation returned by New is safe for concurrent use: Pick may
// run on any number of goroutines while Update runs. Pick does not allocate
// (given an existing exclude slice of at most 8 known IDs) and, except for
// round-robin, which holds a mutex for one pass over the nodes, never
// blocks. No method panics on any input.
type Balancer interface {
	// Update validates nodes and, if they are valid, replaces the node set.
	// On error the previous set stays in force. Update copies nodes (and
	// their Meta maps), so the caller may reuse the slice. Each call
	// installs its set atomically; if Updates race, the last to install
	// wins, so feed a balancer from one goroutine (the registry watcher).
	Update(nodes []Node) error
	// Pick chooses an eligible node for key, never one whose ID is in
	// exclude. IDs in exclude that are not in the set are ignored. When no
	// node qualifies it returns ErrNoAvailableNode. Only the consistent-hash
	// strategy uses key; the others ignore it. The result is the Node as
	// given to the last Update (for least-active, Active is the published
	// count, not the estimate that includes picks since). Pick does not
	// retain exclude; passing an existing slice (Pick(k, ids...)) keeps the
	// call site from allocating one.
	Pick(key string, exclude ...string) (Node, error)
	// Name returns the strategy name, one of the strategy constants.
	Name() string
}

// Option configures New.
type Option func(*config)

type config struct {
	vnodes int
	err    error
}

// WithVirtualNodes sets the number of ring points of a node of weight
// DefaultWeight for the consistent-hash strategy (see NewRing); 0 selects
// DefaultVirtualNodes. Other strategies ignore it. An invalid count makes New
// return ErrInvalidVirtualNodes. A router and the cluster agree on owners
// only if they use the same count.
func WithVirtualNodes(n int) Option {
	return func(c *config) {
		if n < 0 || n > MaxVirtualNodes {
			c.err = fmt.Errorf("%w: %d", ErrInvalidVirtualNodes, n)
			return
		}
		if n == 0 {
			n = DefaultVirtualNodes
		}
		c.vnodes = n
	}
}

// New returns an empty balancer for the named strategy (one of
// ConsistentHash, LeastActive, WeightedRandom, RoundRobin). Call Update to
// give it nodes; until then Pick returns ErrNoAvailableNode. An unknown name
// returns ErrUnknownStrategy.
func New(name string, opts ...Option) (Balancer, error) {
	c := config{vnodes: DefaultVirtualNodes}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.err != nil {
		return nil, c.err
	}
	switch name {
	case ConsistentHash:
		return newHashBalancer(c.vnodes), nil
	case LeastActive:
		return newLeastActive(), nil
	case WeightedRandom:
		return newWeightedRandom(), nil
	case RoundRobin:
		return newRoundRobin(), nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownStrategy, name)
}

// Strategies returns the names New accepts, in a fresh slice.
func Strategies() []string {
	return []string{ConsistentHash, LeastActive, WeightedRandom, RoundRobin}
}

// prepare validates nodes and returns copies of the eligible ones sorted by
// ID, with their Meta maps cloned, plus their IDs in the same order. Sorting
// makes every strategy independent of the order a registry lists nodes in.
func prepare(nodes []Node) ([]Node, []string, error) {
	out := make([]Node, 0, len(nodes))
	for i := range nodes {
		n := &nodes[i]
		switch {
		case n.ID == "":
			return nil, nil, fmt.Errorf("%w (node %d)", ErrEmptyID, i)
		case n.Weight < 0:
			return nil, nil, fmt.Errorf("%w: node %q weight %d", ErrNegativeWeight, n.ID, n.Weight)
		case n.Weight > MaxWeight:
			return nil, nil, fmt.Errorf("%w: node %q weight %d > %d", ErrWeightTooLarge, n.ID, n.Weight, MaxWeight)
		case n.Active < 0:
			return nil, nil, fmt.Errorf("%w: node %q active %d", ErrNegativeActive, n.ID, n.Active)
		}
		out = append(out, *n)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	for i := 1; i < len(out); i++ {
		if out[i].ID == out[i-1].ID {
			return nil, nil, fmt.Errorf("%w: %q", ErrDuplicateID, out[i].ID)
		}
	}
	out = slices.DeleteFunc(out, func(n Node) bool { return !n.eligible() })
	ids := make([]string, len(out))
	for i := range out {
		ids[i] = out[i].ID
		if out[i].Meta != nil {
			out[i].Meta = maps.Clone(out[i].Meta)
		}
	}
	return slices.Clip(out), ids, nil
}

// excludeSet is a set of member indices resolved from exclude IDs. Up to
// len(small) members it lives on the caller's stack; beyond that it uses a
// heap bitmap (an allocation, only for unusually long exclude lists).
type excludeSet struct {
	n     int      // distinct members excluded
	small [8]int32 // the first n members when big == nil
	big   []bool   // membership by index when n > len(small)
}

// resolveExclude maps exclude IDs to indices into ids (sorted, unique).
// Unknown IDs and repeats are ignored.
func resolveExclude(ids, exclude []string) excludeSet {
	var s excludeSet
	for _, id := range exclude {
		i, ok := slices.BinarySearch(ids, id)
		if !ok || s.has(i) {
			continue
		}
		if s.big == nil && s.n < len(s.small) {
			s.small[s.n] = int32(i)
		} else {
			if s.big == nil {
				s.big = make([]bool, len(ids))
				for _, j := range s.small {
					s.big[j] = true
				}
			}
			s.big[i] = true
		}
		s.n++
	}
	return s
}

// has reports whether member i is excluded.
func (s *excludeSet) has(i int) bool {
	if s.big != nil {
		return s.big[i]
	}
	for _, j := range s.small[:s.n] {
		if int(j) == i {
			return true
		}
	}
	return false
}
