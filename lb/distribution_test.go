package lb

import (
	"fmt"
	"testing"
)

// weightedSet has weights 1:2:3:4 (sum 1000).
func weightedSet() ([]Node, map[string]float64) {
	nodes := []Node{
		{ID: "w100", Weight: 100},
		{ID: "w200", Weight: 200},
		{ID: "w300", Weight: 300},
		{ID: "w400", Weight: 400},
	}
	want := map[string]float64{}
	for _, n := range nodes {
		want[n.ID] = float64(n.Weight) / 1000
	}
	return nodes, want
}

// TestStrategyDistribution: numKeys picks over equal nodes (3, 10, 50) and
// over weights 1:2:3:4 give every node its share, for every strategy:
//   - consistent-hash: ±10%/±10%/±15% on equal nodes, ±10% weighted (the
//     ring's spread; see TestRingDistribution);
//   - weighted-random: ±4% (at 50 nodes one node's sampling error at
//     1,000,000 picks is 0.7%, so ±4% is 5.7 standard deviations: no flakes);
//   - round-robin: exact (every sum(weights) picks is one full cycle);
//   - least-active, with every pick counted as a new connection (simulated
//     connection growth) and the registry's count republished every 1000
//     picks: within 1% (it balances active/weight to within one
//     connection).
func TestStrategyDistribution(t *testing.T) {
	keys := testKeys()
	tol := map[string]float64{WeightedRandom: 0.04, RoundRobin: 0, LeastActive: 0.01}
	type set struct {
		name  string
		nodes []Node
		want  map[string]float64
		ring  float64 // consistent-hash tolerance
	}
	var sets []set
	for _, tt := range []struct {
		n    int
		ring float64
	}{{3, 0.10}, {10, 0.10}, {50, 0.15}} {
		nodes := equalNodes(tt.n, DefaultWeight)
		want := map[string]float64{}
		for _, n := range nodes {
			want[n.ID] = 1 / float64(tt.n)
		}
		sets = append(sets, set{fmt.Sprintf("equal-%d", tt.n), nodes, want, tt.ring})
	}
	wn, ww := weightedSet()
	sets = append(sets, set{"weights-1:2:3:4", wn, ww, 0.10})

	for _, name := range Strategies() {
		for _, s := range sets {
			t.Run(name+"/"+s.name, func(t *testing.T) {
				b := mustNew(t, name)
				nodes := append([]Node(nil), s.nodes...)
				mustUpdate(t, b, nodes)
				picks := len(keys)
				if name == RoundRobin {
					sum := 0
					for _, n := range nodes {
						sum += n.Weight
					}
					picks -= picks % sum // whole cycles
				}
				counts := make(map[string]int, len(nodes))
				for i, k := range keys[:picks] {
					n, err := b.Pick(k)
					if err != nil {
						t.Fatal(err)
					}
					counts[n.ID]++
					if name == LeastActive && (i+1)%1000 == 0 {
						// The registry republishes the true counts.
						for j := range nodes {
							nodes[j].Active = int64(counts[nodes[j].ID])
						}
						mustUpdate(t, b, nodes)
					}
				}
				tl, ok := tol[name]
				if !ok {
					tl = s.ring
				}
				minShare := 1.0
				for _, w := range s.want {
					minShare = min(minShare, w)
				}
				if name != RoundRobin && name != LeastActive {
					tl += samplingSlack(minShare * float64(picks))
				}
				checkShares(t, counts, s.want, picks, tl)
			})
		}
	}
}

// TestLeastActiveConvergesFromSkew: starting from uneven loads, new
// connections go to the emptier nodes until loads per weight even out.
func TestLeastActiveConvergesFromSkew(t *testing.T) {
	b := mustNew(t, LeastActive)
	nodes := []Node{
		{ID: "a", Weight: 100, Active: 900},
		{ID: "b", Weight: 100, Active: 0},
		{ID: "c", Weight: 200, Active: 100},
	}
	mustUpdate(t, b, nodes)
	active := map[string]int64{"a": 900, "b": 0, "c": 100}
	for range 3000 {
		active[mustPick(t, b, "").ID]++
	}
	// Total 4000 connections over weight 400: 10 per unit.
	want := map[string]int64{"a": 1000, "b": 1000, "c": 2000}
	for id, w := range want {
		if d := active[id] - w; d < -2 || d > 2 {
			t.Errorf("%s has %d connections, want %d ± 2", id, active[id], w)
		}
	}
}
