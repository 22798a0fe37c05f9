package lb

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// TestConcurrentPickAndUpdate races pickers (with and without exclude)
// against an updater that switches between node sets, including an empty
// set, an all-draining set and invalid sets. Run it with -race. Every pick
// must return a node eligible in one of the sets, or ErrNoAvailableNode.
func TestConcurrentPickAndUpdate(t *testing.T) {
	setA := equalNodes(8, DefaultWeight)
	setB := equalNodes(12, DefaultWeight)[4:] // overlaps A in node-4..7
	setB[0].Weight = 300
	setB[1].Draining = true
	drained := slices.Clone(setA)
	for i := range drained {
		drained[i].Draining = true
	}
	sets := [][]Node{setA, setB, nil, drained, {{ID: "x", Weight: -1}}, {{ID: ""}}}
	valid := map[string]bool{}
	for _, s := range sets[:2] {
		for _, n := range s {
			if n.eligible() {
				valid[n.ID] = true
			}
		}
	}
	pickers, picks := 4, 5000
	if raceEnabled {
		picks = 2000
	}
	for _, name := range Strategies() {
		t.Run(name, func(t *testing.T) {
			b := mustNew(t, name)
			mustUpdate(t, b, setA)
			var wg sync.WaitGroup
			var done atomic.Bool // pickers finished
			errc := make(chan error, pickers+1)
			for p := range pickers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					exclude := []string{"node-4", fmt.Sprintf("node-%d", p)}
					for i := range picks {
						var ex []string
						if i%3 == 0 {
							ex = exclude
						}
						n, err := b.Pick(fmt.Sprintf("user-%d-%d", p, i), ex...)
						switch {
						case errors.Is(err, ErrNoAvailableNode):
						case err != nil:
							errc <- err
							return
						case !valid[n.ID] || slices.Contains(ex, n.ID):
							errc <- fmt.Errorf("picked %q (exclude %v)", n.ID, ex)
							return
						}
					}
				}()
			}
			var updater sync.WaitGroup
			updater.Add(1)
			go func() {
				defer updater.Done()
				r := rand.New(rand.NewPCG(9, 9))
				for n := 0; n < 50 || !done.Load(); n++ {
					s := sets[r.IntN(len(sets))]
					if err := b.Update(s); err != nil && len(s) > 0 && s[0].ID != "" && s[0].Weight >= 0 {
						errc <- fmt.Errorf("valid Update failed: %v", err)
						return
					}
				}
			}()
			wg.Wait()
			done.Store(true)
			updater.Wait()
			close(errc)
			for err := range errc {
				t.Error(err)
			}
		})
	}
}

// TestConcurrentRoundRobinIsFair: concurrent callers share one sequence,
// so after whole cycles every node has exactly its share.
func TestConcurrentRoundRobinIsFair(t *testing.T) {
	b := mustNew(t, RoundRobin)
	nodes, _ := weightedSet()
	mustUpdate(t, b, nodes)
	const goroutines, each = 4, 2500 // 10 cycles of 1000
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[string]int{}
			for range each {
				n, err := b.Pick("")
				if err != nil {
					t.Error(err)
					return
				}
				local[n.ID]++
			}
			mu.Lock()
			for id, c := range local {
				counts[id] += c
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, n := range nodes {
		if want := n.Weight * 10; counts[n.ID] != want {
			t.Errorf("%s: %d picks, want %d", n.ID, counts[n.ID], want)
		}
	}
}
