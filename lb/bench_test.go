package lb

import (
	"fmt"
	"strconv"
	"testing"
)

// benchKeys are 64Ki distinct user IDs, cycled through by the benchmarks
// so that ring lookups do not hit the same cache lines every time.
var benchKeys = func() []string {
	keys := make([]string, 1<<16)
	for i := range keys {
		keys[i] = "user-" + strconv.Itoa(i*7919+100000)
	}
	return keys
}()

// BenchmarkPick measures one Pick per strategy and node count, with equal
// weights and DefaultVirtualNodes.
func BenchmarkPick(b *testing.B) {
	for _, name := range Strategies() {
		for _, n := range []int{3, 50, 500} {
			b.Run(fmt.Sprintf("%s/nodes=%d", name, n), func(b *testing.B) {
				bal := mustNew(b, name)
				mustUpdate(b, bal, equalNodes(n, DefaultWeight))
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, err := bal.Pick(benchKeys[i&(len(benchKeys)-1)]); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}

// BenchmarkPickExclude is Pick with one excluded node (client failover).
func BenchmarkPickExclude(b *testing.B) {
	exclude := []string{"node-1"}
	for _, name := range Strategies() {
		b.Run(fmt.Sprintf("%s/nodes=50", name), func(b *testing.B) {
			bal := mustNew(b, name)
			mustUpdate(b, bal, equalNodes(50, DefaultWeight))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := bal.Pick(benchKeys[i&(len(benchKeys)-1)], exclude...); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkPickParallel is Pick from all Ps at once: lock-free strategies
// scale, round robin serialises on its mutex.
func BenchmarkPickParallel(b *testing.B) {
	for _, name := range Strategies() {
		b.Run(fmt.Sprintf("%s/nodes=50", name), func(b *testing.B) {
			bal := mustNew(b, name)
			mustUpdate(b, bal, equalNodes(50, DefaultWeight))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := bal.Pick(benchKeys[i&(len(benchKeys)-1)]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

// BenchmarkRingBuild is the cost of a membership change for the
// consistent-hash strategy: a full ring build.
func BenchmarkRingBuild(b *testing.B) {
	for _, n := range []int{50, 500} {
		nodes := equalNodes(n, DefaultWeight)
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NewRing(nodes, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUpdate is a registry refresh that changes only Active counts:
// the consistent-hash strategy reuses its ring.
func BenchmarkUpdate(b *testing.B) {
	for _, name := range Strategies() {
		b.Run(fmt.Sprintf("%s/nodes=500", name), func(b *testing.B) {
			bal := mustNew(b, name)
			nodes := equalNodes(500, DefaultWeight)
			mustUpdate(b, bal, nodes)
			b.ReportAllocs()
			i := int64(0)
			for b.Loop() {
				i++
				nodes[0].Active = i
				if err := bal.Update(nodes); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkHash64(b *testing.B) {
	b.ReportAllocs()
	i := 0
	var sink uint64
	for b.Loop() {
		sink += Hash64(benchKeys[i&(len(benchKeys)-1)])
		i++
	}
	_ = sink
}
