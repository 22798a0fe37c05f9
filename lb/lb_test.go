package lb

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

func TestNew(t *testing.T) {
	for _, name := range Strategies() {
		b, err := New(name)
		if err != nil || b == nil || b.Name() != name {
			t.Errorf("New(%q) = %v, %v", name, b, err)
		}
	}
	for _, name := range []string{"", "random", "consistenthash", "Round-Robin", "leastactive"} {
		if b, err := New(name); !errors.Is(err, ErrUnknownStrategy) || b != nil {
			t.Errorf("New(%q) = %v, %v; want ErrUnknownStrategy", name, b, err)
		}
	}
	for _, n := range []int{-1, MaxVirtualNodes + 1} {
		if _, err := New(ConsistentHash, WithVirtualNodes(n)); !errors.Is(err, ErrInvalidVirtualNodes) {
			t.Errorf("WithVirtualNodes(%d): err = %v", n, err)
		}
	}
	if _, err := New(RoundRobin, nil, WithVirtualNodes(0)); err != nil {
		t.Errorf("nil option / zero vnodes: %v", err)
	}
}

// TestRules runs every shared rule against every strategy.
func TestRules(t *testing.T) {
	for _, name := range Strategies() {
		t.Run(name, func(t *testing.T) {
			for _, rule := range rules {
				t.Run(rule.name, func(t *testing.T) { rule.f(t, mustNew(t, name)) })
			}
		})
	}
}

var rules = []struct {
	name string
	f    func(t *testing.T, b Balancer)
}{
	{"empty before Update", func(t *testing.T, b Balancer) {
		wantNone(t, b, "alice")
	}},
	{"empty set", func(t *testing.T, b Balancer) {
		mustUpdate(t, b, nil)
		wantNone(t, b, "alice")
		mustUpdate(t, b, []Node{})
		wantNone(t, b, "alice")
	}},
	{"all weights zero (seed nextInt(0) crash)", func(t *testing.T, b Balancer) {
		// The original design's nodes all published weight 0 and its weighted random
		// crashed in nextInt(0). Here that set is valid and has no node
		// to give.
		mustUpdate(t, b, equalNodes(5, 0))
		wantNone(t, b, "alice")
	}},
	{"all draining", func(t *testing.T, b Balancer) {
		nodes := equalNodes(5, DefaultWeight)
		for i := range nodes {
			nodes[i].Draining = true
		}
		mustUpdate(t, b, nodes)
		wantNone(t, b, "alice")
	}},
	{"zero weight and draining never picked", func(t *testing.T, b Balancer) {
		nodes := equalNodes(6, DefaultWeight)
		nodes[0].Weight = 0
		nodes[2].Draining = true
		nodes[4].Weight, nodes[4].Draining = 0, true
		nodes[5].Active = 0 // least-active would prefer it were it eligible
		for i := range 4 {
			nodes[[]int{1, 3, 5}[i%3]].Active = 1000
		}
		mustUpdate(t, b, nodes)
		seen := map[string]int{}
		for i := range 3000 {
			n := mustPick(t, b, fmt.Sprintf("user-%d", i))
			seen[n.ID]++
		}
		for _, id := range []string{"node-0", "node-2", "node-4"} {
			if seen[id] > 0 {
				t.Errorf("ineligible %s picked %d times", id, seen[id])
			}
		}
		for _, id := range []string{"node-1", "node-3", "node-5"} {
			if seen[id] == 0 {
				t.Errorf("eligible %s never picked: %v", id, seen)
			}
		}
	}},
	{"single node", func(t *testing.T, b Balancer) {
		mustUpdate(t, b, []Node{{ID: "only", Addr: "h:1", Weight: 1, Meta: map[string]string{"r": "eu"}}})
		for i := range 10 {
			n := mustPick(t, b, fmt.Sprint(i))
			if n.ID != "only" || n.Addr != "h:1" || n.Weight != 1 || n.Meta["r"] != "eu" {
				t.Fatalf("Pick = %+v", n)
			}
		}
		wantNone(t, b, "k", "only")
	}},
	{"exclude", func(t *testing.T, b Balancer) {
		nodes := equalNodes(5, DefaultWeight)
		mustUpdate(t, b, nodes)
		all := idsOf(nodes)
		wantNone(t, b, "alice", all...)
		wantNone(t, b, "alice", append([]string{"ghost", "node-0"}, all...)...)
		for i := range 500 {
			key := fmt.Sprintf("user-%d", i)
			ex := []string{"node-1", "node-3", "ghost", "node-1"}
			n := mustPick(t, b, key, ex...)
			if slices.Contains(ex, n.ID) {
				t.Fatalf("Pick(%q, %v) = excluded %s", key, ex, n.ID)
			}
			if n := mustPick(t, b, key, all[:4]...); n.ID != "node-4" {
				t.Fatalf("Pick excluding all but node-4 = %s", n.ID)
			}
		}
		// Excluding the only eligible node leaves none, even with
		// ineligible nodes in the set.
		nodes[0].Weight = 0
		nodes[1].Draining = true
		nodes = nodes[:3]
		mustUpdate(t, b, nodes)
		wantNone(t, b, "alice", "node-2")
	}},
	{"exclude more than 8", func(t *testing.T, b Balancer) {
		nodes := equalNodes(30, DefaultWeight)
		mustUpdate(t, b, nodes)
		ex := idsOf(nodes[:29])
		for i := range 50 {
			if n := mustPick(t, b, fmt.Sprint(i), ex...); n.ID != "node-29" {
				t.Fatalf("Pick = %s, want node-29", n.ID)
			}
		}
		wantNone(t, b, "k", idsOf(nodes)...)
	}},
	{"invalid sets are rejected and the old set kept", func(t *testing.T, b Balancer) {
		mustUpdate(t, b, []Node{{ID: "keep", Weight: DefaultWeight}})
		for _, tt := range []struct {
			nodes []Node
			want  error
		}{
			{[]Node{{ID: "a", Weight: -1}}, ErrNegativeWeight},
			{[]Node{{ID: "a", Weight: 1}, {ID: "b", Weight: -100, Draining: true}}, ErrNegativeWeight},
			{[]Node{{ID: "a", Weight: MaxWeight + 1}}, ErrWeightTooLarge},
			{[]Node{{ID: "a", Weight: 1}, {ID: "", Weight: 1}}, ErrEmptyID},
			{[]Node{{ID: "a", Weight: 1}, {ID: "b", Weight: 1}, {ID: "a", Weight: 0}}, ErrDuplicateID},
			{[]Node{{ID: "a", Weight: 1, Active: -1}}, ErrNegativeActive},
		} {
			if err := b.Update(tt.nodes); !errors.Is(err, tt.want) {
				t.Errorf("Update(%v) = %v, want %v", tt.nodes, err, tt.want)
			}
			if n := mustPick(t, b, "alice"); n.ID != "keep" {
				t.Errorf("after rejected Update, Pick = %s, want keep", n.ID)
			}
		}
	}},
	{"Update copies its input", func(t *testing.T, b Balancer) {
		nodes := []Node{{ID: "a", Weight: 1, Meta: map[string]string{"k": "v"}}}
		mustUpdate(t, b, nodes)
		nodes[0].ID, nodes[0].Weight = "changed", 0
		nodes[0].Meta["k"] = "changed"
		n := mustPick(t, b, "alice")
		if n.ID != "a" || n.Meta["k"] != "v" {
			t.Errorf("Pick after caller mutation = %+v", n)
		}
	}},
	{"order of nodes does not matter", func(t *testing.T, b Balancer) {
		if b.Name() == WeightedRandom || b.Name() == LeastActive {
			t.Skip("random choice")
		}
		nodes := equalNodes(7, DefaultWeight)
		nodes[2].Weight = 300
		// Two fresh balancers fed the same set in different orders give
		// the same sequence.
		a, c := mustNew(t, b.Name()), mustNew(t, b.Name())
		mustUpdate(t, a, nodes)
		rev := slices.Clone(nodes)
		slices.Reverse(rev)
		mustUpdate(t, c, rev)
		for i := range 200 {
			key := fmt.Sprintf("user-%d", i)
			if x, y := mustPick(t, a, key), mustPick(t, c, key); x.ID != y.ID {
				t.Fatalf("pick %d: %s vs %s with nodes reversed", i, x.ID, y.ID)
			}
		}
	}},
}

func wantNone(t *testing.T, b Balancer, key string, exclude ...string) {
	t.Helper()
	if n, err := b.Pick(key, exclude...); !errors.Is(err, ErrNoAvailableNode) || n.ID != "" {
		t.Fatalf("%s Pick(%q, %v) = %+v, %v; want ErrNoAvailableNode", b.Name(), key, exclude, n, err)
	}
}

func mustPick(t *testing.T, b Balancer, key string, exclude ...string) Node {
	t.Helper()
	n, err := b.Pick(key, exclude...)
	if err != nil {
		t.Fatalf("%s Pick(%q, %v): %v", b.Name(), key, exclude, err)
	}
	return n
}

// TestConsistentHashMatchesRing: the router's balancer and the cluster's
// Ring give identical answers for the same members and vnode count.
func TestConsistentHashMatchesRing(t *testing.T) {
	nodes := equalNodes(12, DefaultWeight)
	nodes[1].Weight = 50
	nodes[5].Draining = true
	nodes[8].Weight = 0
	for _, vnodes := range []int{0, 160} {
		b := mustNew(t, ConsistentHash, WithVirtualNodes(vnodes))
		mustUpdate(t, b, nodes)
		ring := mustRing(t, nodes, vnodes)
		for _, k := range testKeys()[:20_000] {
			n := mustPick(t, b, k)
			id, _ := ring.Owner(k)
			if n.ID != id {
				t.Fatalf("vnodes %d: Pick(%q) = %s, Ring.Owner = %s", vnodes, k, n.ID, id)
			}
			n = mustPick(t, b, k, id)
			id2, _ := ring.Owner(k, id)
			if n.ID != id2 {
				t.Fatalf("vnodes %d: Pick(%q, %s) = %s, Ring.Owner = %s", vnodes, k, id, n.ID, id2)
			}
		}
	}
}

// TestConsistentHashRebuildsOnlyOnLayoutChange: Updates that change only
// Addr, Active, Meta or ineligible nodes reuse the ring; ID or weight
// changes among eligible nodes rebuild it.
func TestConsistentHashRebuildsOnlyOnLayoutChange(t *testing.T) {
	b := newHashBalancer(DefaultVirtualNodes)
	nodes := equalNodes(5, DefaultWeight)
	mustUpdate(t, b, nodes)
	ring := b.snap.Load().ring

	same := slices.Clone(nodes)
	same[0].Addr, same[1].Active, same[2].Meta = "moved:1", 99, map[string]string{"a": "b"}
	slices.Reverse(same)
	same = append(same, Node{ID: "idle", Weight: 0}, Node{ID: "leaving", Weight: 100, Draining: true})
	mustUpdate(t, b, same)
	if b.snap.Load().ring != ring {
		t.Error("ring rebuilt for a change that does not move keys")
	}
	if n := mustPick(t, b, "k", "node-1", "node-2", "node-3", "node-4"); n.Addr != "moved:1" {
		t.Errorf("Pick returned stale Addr %q", n.Addr)
	}
	for _, change := range []func([]Node) []Node{
		func(n []Node) []Node { n[0].Weight = 200; return n },
		func(n []Node) []Node { n[0].Draining = true; return n },
		func(n []Node) []Node { return n[1:] },
		func(n []Node) []Node { return append(n, Node{ID: "new", Weight: 100}) },
	} {
		mustUpdate(t, b, nodes)
		before := b.snap.Load().ring
		mustUpdate(t, b, change(slices.Clone(nodes)))
		if b.snap.Load().ring == before {
			t.Error("ring not rebuilt after a layout change")
		}
	}
}

// TestRoundRobinNginxSequence: the smooth weighted round robin of nginx
// gives a, a, b, a, c, a, a for weights 5, 1, 1 (nginx's own example).
func TestRoundRobinNginxSequence(t *testing.T) {
	b := mustNew(t, RoundRobin)
	mustUpdate(t, b, []Node{{ID: "c", Weight: 1}, {ID: "a", Weight: 5}, {ID: "b", Weight: 1}})
	var got []string
	for range 14 {
		got = append(got, mustPick(t, b, "").ID)
	}
	want := []string{"a", "a", "b", "a", "c", "a", "a", "a", "a", "b", "a", "c", "a", "a"}
	if !slices.Equal(got, want) {
		t.Fatalf("sequence %v, want %v", got, want)
	}
}

// TestRoundRobinSurvivesRefresh: a registry refresh (Update with the same
// weights) before every pick continues the sequence. Restarting it would
// always return the first node, as the original design's round robin did.
func TestRoundRobinSurvivesRefresh(t *testing.T) {
	b := mustNew(t, RoundRobin)
	nodes := equalNodes(3, DefaultWeight)
	counts := map[string]int{}
	for i := range 300 {
		nodes[0].Active = int64(i) // load changes, weights do not
		mustUpdate(t, b, nodes)
		counts[mustPick(t, b, "").ID]++
	}
	for _, n := range nodes {
		if counts[n.ID] != 100 {
			t.Errorf("%s picked %d of 300 times, want 100: %v", n.ID, counts[n.ID], counts)
		}
	}
}

// TestRoundRobinExcludeSitsOut: an excluded node neither wins nor gains
// current weight, so after the exclusion ends the sequence is still fair.
func TestRoundRobinExcludeSitsOut(t *testing.T) {
	b := mustNew(t, RoundRobin)
	mustUpdate(t, b, equalNodes(3, 1))
	counts := map[string]int{}
	for range 30 {
		counts[mustPick(t, b, "", "node-0").ID]++
	}
	for range 300 {
		counts[mustPick(t, b, "").ID]++
	}
	if counts["node-0"] != 100 || counts["node-1"] != 115 || counts["node-2"] != 115 {
		t.Errorf("counts %v", counts)
	}
}

// TestLeastActivePrefersFewestPerWeight checks the score active/weight.
func TestLeastActivePrefersFewestPerWeight(t *testing.T) {
	b := mustNew(t, LeastActive)
	mustUpdate(t, b, []Node{
		{ID: "a", Weight: 100, Active: 10}, // 0.1 per unit
		{ID: "b", Weight: 300, Active: 20}, // 0.067 per unit
		{ID: "c", Weight: 50, Active: 4},   // 0.08 per unit
	})
	if n := mustPick(t, b, ""); n.ID != "b" {
		t.Errorf("Pick = %s, want b", n.ID)
	}
	if n := mustPick(t, b, "", "b"); n.ID != "c" {
		t.Errorf("Pick excluding b = %s, want c", n.ID)
	}
	// Huge counts compare exactly, without overflow.
	mustUpdate(t, b, []Node{
		{ID: "a", Weight: MaxWeight, Active: 1<<63 - 1},
		{ID: "b", Weight: MaxWeight - 1, Active: 1<<63 - 2},
	})
	if n := mustPick(t, b, ""); n.ID != "a" {
		t.Errorf("Pick with huge counts = %s, want a", n.ID)
	}
}

// TestLeastActiveTiesAreRandom: among nodes with the same score, each is
// picked; a naive implementation's first-wins bias would
// send every fresh router to the same node.
func TestLeastActiveTiesAreRandom(t *testing.T) {
	b := mustNew(t, LeastActive)
	nodes := equalNodes(3, DefaultWeight)
	counts := map[string]int{}
	for range 3000 {
		mustUpdate(t, b, nodes) // fresh counts: a three-way tie
		counts[mustPick(t, b, "").ID]++
	}
	for _, n := range nodes {
		if c := counts[n.ID]; c < 800 || c > 1200 {
			t.Errorf("%s won %d of 3000 ties, want about 1000", n.ID, c)
		}
	}
}

// TestLeastActiveCountsPicks: between Updates a burst of picks spreads
// instead of all going to the node that was least loaded at the last
// refresh.
func TestLeastActiveCountsPicks(t *testing.T) {
	b := mustNew(t, LeastActive)
	mustUpdate(t, b, []Node{{ID: "a", Weight: 100, Active: 50}, {ID: "b", Weight: 100}})
	counts := map[string]int{}
	for range 150 {
		counts[mustPick(t, b, "").ID]++
	}
	if counts["b"] != 100 || counts["a"] != 50 {
		t.Errorf("counts %v, want b 50 (to catch up), then 50 each", counts)
	}
}
