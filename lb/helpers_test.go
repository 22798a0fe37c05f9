package lb

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
)

// numKeys is the number of random keys in distribution tests: 1,000,000
// normally, 100,000 under the race detector.
var numKeys = func() int {
	if raceEnabled {
		return 100_000
	}
	return 1_000_000
}()

// testKeys returns numKeys random user IDs, the same on every run.
var testKeys = sync.OnceValue(func() []string {
	r := rand.New(rand.NewPCG(20240601, 7))
	keys := make([]string, numKeys)
	for i := range keys {
		keys[i] = "user-" + strconv.FormatUint(r.Uint64(), 36)
	}
	return keys
})

// equalNodes returns n nodes "node-0".. of the given weight.
func equalNodes(n, weight int) []Node {
	nodes := make([]Node, n)
	for i := range nodes {
		id := fmt.Sprintf("node-%d", i)
		nodes[i] = Node{ID: id, Addr: "10.0.0.1:" + strconv.Itoa(7000+i), Weight: weight}
	}
	return nodes
}

// ids returns the IDs of nodes.
func idsOf(nodes []Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.ID
	}
	return out
}

// samplingSlack is the relative slack to add to a tolerance for a count
// whose expectation is mean: five standard deviations of sampling noise
// when the race detector shrinks the sample, else 0 (the keys are fixed, so
// a normal run is deterministic for the ring).
func samplingSlack(mean float64) float64 {
	if !raceEnabled {
		return 0
	}
	return 5 / math.Sqrt(mean)
}

// checkShares fails t if any count is off its expected share of total by
// more than tol (relative to the expectation).
func checkShares(t *testing.T, counts map[string]int, want map[string]float64, total int, tol float64) {
	t.Helper()
	worst := 0.0
	for id, share := range want {
		exp := share * float64(total)
		dev := (float64(counts[id]) - exp) / exp
		worst = max(worst, math.Abs(dev))
		if math.Abs(dev) > tol {
			t.Errorf("node %s: %d picks, want %.0f ±%.1f%% (off by %+.2f%%)", id, counts[id], exp, tol*100, dev*100)
		}
	}
	for id := range counts {
		if _, ok := want[id]; !ok {
			t.Errorf("unexpected node %s picked %d times", id, counts[id])
		}
	}
	t.Logf("worst deviation %.2f%% (tolerance %.1f%%)", worst*100, tol*100)
}

// mustNew returns New(name, opts...) or fails t.
func mustNew(t testing.TB, name string, opts ...Option) Balancer {
	t.Helper()
	b, err := New(name, opts...)
	if err != nil {
		t.Fatalf("New(%q): %v", name, err)
	}
	return b
}

// mustUpdate calls b.Update(nodes) or fails t.
func mustUpdate(t testing.TB, b Balancer, nodes []Node) {
	t.Helper()
	if err := b.Update(nodes); err != nil {
		t.Fatalf("%s Update: %v", b.Name(), err)
	}
}

// mustRing returns NewRing(nodes, vnodes) or fails t.
func mustRing(t testing.TB, nodes []Node, vnodes int) *Ring {
	t.Helper()
	r, err := NewRing(nodes, vnodes)
	if err != nil {
		t.Fatalf("NewRing: %v", err)
	}
	return r
}
