package lb

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// checkPick states the contract of Pick for any node set and exclude list:
// an error only when no eligible node is left, and never an ineligible or
// excluded node.
func checkPick(t *testing.T, b Balancer, nodes []Node, key string, exclude []string) {
	t.Helper()
	avail := map[string]Node{}
	for _, n := range nodes {
		if n.eligible() && !slices.Contains(exclude, n.ID) {
			avail[n.ID] = n
		}
	}
	got, err := b.Pick(key, exclude...)
	if len(avail) == 0 {
		if !errors.Is(err, ErrNoAvailableNode) {
			t.Fatalf("%s: Pick(%q, %q) = %+v, %v over %+v; want ErrNoAvailableNode", b.Name(), key, exclude, got, err, nodes)
		}
		return
	}
	if err != nil {
		t.Fatalf("%s: Pick(%q, %q) over %+v: %v", b.Name(), key, exclude, nodes, err)
	}
	if want, ok := avail[got.ID]; !ok || want.Addr != got.Addr || want.Weight != got.Weight {
		t.Fatalf("%s: Pick(%q, %q) = %+v, not an available node of %+v", b.Name(), key, exclude, got, nodes)
	}
}

// validSet reports whether Update should accept nodes.
func validSet(nodes []Node) bool {
	seen := map[string]bool{}
	for _, n := range nodes {
		if n.ID == "" || n.Weight < 0 || n.Weight > MaxWeight || n.Active < 0 || seen[n.ID] {
			return false
		}
		seen[n.ID] = true
	}
	return true
}

// TestPropertyRandomSets feeds every strategy random node sets (zero and
// negative weights, draining nodes, duplicate and empty IDs, huge counts)
// and random exclude lists.
func TestPropertyRandomSets(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	bals := make([]Balancer, 0, 4)
	for _, name := range Strategies() {
		bals = append(bals, mustNew(t, name, WithVirtualNodes(1+r.IntN(50))))
	}
	for range 400 {
		nodes := make([]Node, r.IntN(7))
		for i := range nodes {
			nodes[i] = Node{
				ID:       []string{"", "a", "b", "c", "d", "e", "f", "g"}[r.IntN(8)],
				Addr:     fmt.Sprint(r.IntN(100)),
				Weight:   []int{-1, 0, 0, 1, 2, 100, 7777, MaxWeight, MaxWeight + 1}[r.IntN(9)],
				Active:   []int64{-1, 0, 5, 1 << 62}[r.IntN(4)],
				Draining: r.IntN(4) == 0,
			}
		}
		for _, b := range bals {
			err := b.Update(nodes)
			if validSet(nodes) != (err == nil) {
				t.Fatalf("%s: Update(%+v) = %v", b.Name(), nodes, err)
			}
			if err != nil {
				continue
			}
			for k := range 20 {
				var exclude []string
				for range r.IntN(4) {
					exclude = append(exclude, string(rune('a'+r.IntN(8))))
				}
				checkPick(t, b, nodes, fmt.Sprint(k), exclude)
			}
		}
	}
}

// FuzzPick decodes a node set and a pick from the input and checks the
// Pick contract for every strategy. `go test` runs the corpus entries added
// below; `go test -fuzz=FuzzPick ./lb/` explores.
func FuzzPick(f *testing.F) {
	f.Add([]byte{}, "alice", "")
	f.Add([]byte{'a', 0, 0, 'b', 0, 1}, "bob", "a")
	f.Add([]byte{'a', 100, 0, 'b', 100, 2, 'c', 255, 1}, "carol", "b")
	f.Add([]byte{'a', 1, 0, 'a', 1, 0}, "dup", "")
	f.Fuzz(func(t *testing.T, data []byte, key, exclude string) {
		var nodes []Node
		for ; len(data) >= 3 && len(nodes) < 16; data = data[3:] {
			nodes = append(nodes, Node{
				ID:       string(rune('a' + data[0]%8)),
				Weight:   int(int8(data[1])) * 80, // negative, zero, above MaxWeight
				Draining: data[2]&1 == 1,
				Active:   int64(data[2] >> 1),
			})
			if data[0]%9 == 0 {
				nodes[len(nodes)-1].ID = ""
			}
		}
		var ex []string
		if exclude != "" {
			ex = []string{exclude}
		}
		for _, name := range Strategies() {
			b := mustNew(t, name, WithVirtualNodes(3))
			err := b.Update(nodes)
			if validSet(nodes) != (err == nil) {
				t.Fatalf("%s: Update(%+v) = %v", name, nodes, err)
			}
			if err != nil {
				checkPick(t, b, nil, key, ex) // the initial empty set stays
				continue
			}
			checkPick(t, b, nodes, key, ex)
		}
	})
}
