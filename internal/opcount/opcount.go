// Package opcount counts the round trips a client makes to a backing
// service, by operation name, for tests (Snapshot) and for Prometheus (a
// counter vector with one label, op). The stores use it to report
// imgn_store_ops_total and imgn_redis_ops_total.
package opcount

import (
	"maps"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Counter counts operations by name. It is safe for concurrent use; Inc
// does not allocate once a name has been seen.
type Counter struct {
	vec *prometheus.CounterVec
	reg prometheus.Registerer

	mu     sync.RWMutex
	counts map[string]*entry
}

type entry struct {
	n atomic.Uint64
	c prometheus.Counter
}

// New returns a counter registered as name (help text help, label "op")
// in reg; with a nil reg it only counts for Snapshot. Registering the same
// name twice in one registry is an error.
func New(reg prometheus.Registerer, name, help string) (*Counter, error) {
	c := &Counter{counts: map[string]*entry{}, reg: reg}
	c.vec = prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"op"})
	if reg != nil {
		if err := reg.Register(c.vec); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Inc counts one op.
func (c *Counter) Inc(op string) {
	c.mu.RLock()
	e := c.counts[op]
	c.mu.RUnlock()
	if e == nil {
		c.mu.Lock()
		if e = c.counts[op]; e == nil {
			e = &entry{c: c.vec.WithLabelValues(op)}
			c.counts[op] = e
		}
		c.mu.Unlock()
	}
	e.n.Add(1)
	e.c.Inc()
}

// Snapshot returns the counts so far.
func (c *Counter) Snapshot() map[string]uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]uint64, len(c.counts))
	for op, e := range c.counts {
		out[op] = e.n.Load()
	}
	return out
}

// Total is the sum of Snapshot.
func Total(m map[string]uint64) uint64 {
	var n uint64
	for v := range maps.Values(m) {
		n += v
	}
	return n
}

// Unregister removes the counter from its registry (a no-op without one).
func (c *Counter) Unregister() {
	if c.reg != nil {
		c.reg.Unregister(c.vec)
	}
}
