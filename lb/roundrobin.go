package lb

import "sync"

// roundRobin is nginx's smooth weighted round robin: on each pick every
// candidate's current weight grows by its weight, the largest current
// weight wins (the first in ID order on a tie), and the winner's current
// weight drops by the sum of the candidates' weights. Over any window of
// sum(weights) picks each node is picked exactly weight times, and picks of
// a heavy node are spread out rather than bunched.
//
// Excluded nodes sit out a pick entirely, as nginx does with peers it has
// already tried. The state is guarded by a mutex, so concurrent callers
// each get their own step of one shared sequence.
type roundRobin struct {
	mu      sync.Mutex
	nodes   []Node
	ids     []string
	current []int64
}

var _ Balancer = (*roundRobin)(nil)

func newRoundRobin() *roundRobin { return &roundRobin{} }

func (b *roundRobin) Name() string { return RoundRobin }

// Update keeps the current weight of every node that stays in the set with
// the same weight, so frequent Updates (registry refreshes) continue the
// sequence instead of restarting it, which would favour the first node.
func (b *roundRobin) Update(nodes []Node) error {
	el, ids, err := prepare(nodes)
	if err != nil {
		return err
	}
	cur := make([]int64, len(el))
	b.mu.Lock()
	defer b.mu.Unlock()
	// Both ID lists are sorted: merge to carry over the current weight of
	// every node whose weight is unchanged. The others start at 0.
	for i, j := 0, 0; i < len(ids) && j < len(b.ids); {
		switch {
		case ids[i] < b.ids[j]:
			i++
		case ids[i] > b.ids[j]:
			j++
		default:
			if el[i].Weight == b.nodes[j].Weight {
				cur[i] = b.current[j]
			}
			i++
			j++
		}
	}
	b.nodes, b.ids, b.current = el, ids, cur
	return nil
}

// Pick holds the balancer's mutex for one O(N) pass and does not allocate.
func (b *roundRobin) Pick(_ string, exclude ...string) (Node, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ex excludeSet
	if len(exclude) > 0 {
		ex = resolveExclude(b.ids, exclude)
	}
	best := -1
	var total int64
	for i := range b.nodes {
		if ex.n > 0 && ex.has(i) {
			continue
		}
		w := int64(b.nodes[i].Weight)
		b.current[i] += w
		total += w
		if best < 0 || b.current[i] > b.current[best] {
			best = i
		}
	}
	if best < 0 {
		return Node{}, ErrNoAvailableNode
	}
	b.current[best] -= total
	return b.nodes[best], nil
}
