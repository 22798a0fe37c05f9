//go:build !race

package lb

import "testing"

// TestPickDoesNotAllocate asserts the hot path's allocation budget: zero
// per Pick for every strategy, with and without an exclude list (passed as
// an existing slice), and zero for Ring.Owner and Hash64. The race detector
// adds allocations, hence the build tag.
func TestPickDoesNotAllocate(t *testing.T) {
	nodes := equalNodes(50, DefaultWeight)
	keys := testKeys()[:1000]
	exclude := []string{"node-3", "node-17", "ghost"}
	for _, name := range Strategies() {
		b := mustNew(t, name)
		mustUpdate(t, b, nodes)
		i := 0
		if n := testing.AllocsPerRun(1000, func() {
			i++
			_, _ = b.Pick(keys[i%len(keys)])
		}); n != 0 {
			t.Errorf("%s Pick: %v allocs, want 0", name, n)
		}
		if n := testing.AllocsPerRun(1000, func() {
			i++
			_, _ = b.Pick(keys[i%len(keys)], exclude...)
		}); n != 0 {
			t.Errorf("%s Pick with exclude: %v allocs, want 0", name, n)
		}
	}
	ring := mustRing(t, nodes, 0)
	i := 0
	var sink uint64
	for name, f := range map[string]func(){
		"Ring.Owner":                 func() { i++; ring.Owner(keys[i%len(keys)]) },
		"Ring.Owner with exclude":    func() { i++; ring.Owner(keys[i%len(keys)], exclude...) },
		"Ring.Owner with literal ex": func() { i++; ring.Owner(keys[i%len(keys)], "node-1", "node-2") },
		"Hash64":                     func() { i++; sink += Hash64(keys[i%len(keys)]) },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s: %v allocs, want 0", name, n)
		}
	}
}
