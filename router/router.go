// Package router is the core of imrouter: it follows cluster membership
// through a membership.Watcher, keeps an lb.Balancer fed with the live nodes, and
// answers "which node should this user connect to?" over HTTP
// (GET /v1/route?uid=). It is a library so that cmd/imrouter, tests and
// other binaries can embed it.
//
// # Guarantees
//
//   - Stateless: a Router holds nothing but the latest membership view, so
//     any number of routers can run side by side behind a load balancer or
//     DNS. Two routers over the same view and configuration give identical
//     consistent-hash answers (the ring is deterministic across processes).
//   - A node with weight 0 or the draining flag is never returned, nor one
//     that publishes no client address. When no node qualifies the answer
//     is an error (HTTP 503 with a reason), never a crash and never an
//     empty address: the original design's nextInt(0) crash on all-zero weights
//     cannot happen.
//   - Consistent hashing agrees with inbox ownership. Members are converted
//     as lb.Node{ID, Addr: ClientAddr, Weight, Active: Conns, Draining} and
//     placed on an lb ring with the same virtual-node count the cluster
//     uses (lb.DefaultVirtualNodes unless both are configured otherwise).
//     While every member publishes lb.DefaultWeight and none is draining,
//     a user is routed to exactly the node mesh.Cluster names as the owner
//     of their inbox. A draining or weight-0 member has no points on the
//     router's ring, so its users go to the node that will own their inbox
//     once it has left; a member with another weight has more or fewer
//     points, which moves the users of those points only. See
//     docs/router.md.
//   - When the registry backend is unreachable the Watcher keeps serving
//     its last view, and so does the Router.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/internal/defaults"
	"github.com/imgn/imgn/lb"
	"github.com/imgn/imgn/mesh/membership"
)

// ErrConfig marks an invalid Config passed to New.
var ErrConfig = errors.New("router: invalid configuration")

// Config configures a Router. Zero fields take the default documented on
// each.
type Config struct {
	// Watcher supplies the live members (required). The Router subscribes
	// with Watch and never closes the Watcher: its owner does, after
	// closing the Router.
	Watcher membership.Watcher
	// Strategy is one of lb.Strategies(): "consistent-hash" (default),
	// "least-active", "weighted-random" or "round-robin".
	Strategy string
	// VirtualNodes is the ring point count of a node of weight
	// lb.DefaultWeight, for consistent-hash (default lb.DefaultVirtualNodes).
	// It must equal the cluster's mesh.Config.VirtualNodes, or routing and
	// inbox ownership disagree.
	VirtualNodes int
	// Logger receives membership changes and problems (default
	// slog.Default()).
	Logger *slog.Logger
	// Registry receives the Router's metrics and is what /metrics serves.
	// nil means a private registry (only the Router's metrics). Register
	// at most one Router per Registry: a second one makes New fail.
	Registry *prometheus.Registry
}

// Route is one routing answer: the node a client should connect to.
type Route struct {
	// NodeID is the chosen node's ID.
	NodeID string `json:"node_id"`
	// Addr is the node's client address, host:port; never empty.
	Addr string `json:"addr"`
	// Strategy is the strategy that chose it.
	Strategy string `json:"strategy"`
}

// UnavailableError is returned by Pick when no node may be chosen. It
// matches lb.ErrNoAvailableNode with errors.Is. The HTTP handler answers it
// with 503 {"error":"no available node","reason":Reason}.
type UnavailableError struct {
	// Reason says why, for operators: no view yet, no live nodes, every
	// node draining or at weight 0, or every usable node excluded.
	Reason string
}

func (e *UnavailableError) Error() string { return "router: no available node: " + e.Reason }

// Unwrap returns lb.ErrNoAvailableNode.
func (e *UnavailableError) Unwrap() error { return lb.ErrNoAvailableNode }

// Router answers routing questions from the latest membership view. Create
// it with New and stop it with Close. All methods are safe for concurrent
// use.
type Router struct {
	strategy string
	log      *slog.Logger
	bal      lb.Balancer
	reg      *prometheus.Registry
	m        *metrics
	view     atomic.Pointer[view] // nil until the first membership view
	handler  http.Handler

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// view is one applied membership view. Never mutated once stored.
type view struct {
	nodes     []membership.NodeInfo // every live member, sorted by ID
	available int                   // members a strategy may pick
	invalid   []string              // members the balancer rejected (never picked)
	at        time.Time             // when the view was applied
}

// WithDefaults returns c with every zero field set to its default. It
// does not validate.
func (c Config) WithDefaults() Config {
	defaults.Set(&c.Strategy, lb.ConsistentHash)
	defaults.Set(&c.VirtualNodes, lb.DefaultVirtualNodes)
	defaults.Set(&c.Logger, slog.Default())
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	return c
}

// Validate reports every problem of c (after WithDefaults), wrapping
// ErrConfig; it changes nothing.
func (c Config) Validate() error {
	_, err := c.balancer()
	if c.Watcher == nil {
		err = errors.Join(errors.New("a Watcher is required"), err)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

// balancer makes c's load balancer.
func (c Config) balancer() (lb.Balancer, error) {
	return lb.New(c.Strategy, lb.WithVirtualNodes(c.VirtualNodes))
}

// New applies cfg's defaults, validates it, subscribes to cfg.Watcher and
// returns a running Router. It does not wait for a membership view: until
// the first one arrives, Pick reports "no membership view yet" and Ready
// is false.
func New(cfg Config) (*Router, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	bal, err := cfg.balancer()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	m := newMetrics(cfg.Strategy)
	if err := m.register(cfg.Registry); err != nil {
		return nil, fmt.Errorf("%w: metrics: %w", ErrConfig, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Router{
		strategy: cfg.Strategy,
		log:      cfg.Logger.With("component", "router"),
		bal:      bal,
		reg:      cfg.Registry,
		m:        m,
		cancel:   cancel,
		done:     make(chan struct{}),
	}
	r.handler = r.newHandler()
	views := cfg.Watcher.Watch(ctx)
	go r.watchLoop(ctx, views)
	return r, nil
}

// Close stops following membership and waits for the Router's goroutine.
// It does not close the Watcher. The handler keeps answering from the last
// view. Close is idempotent and returns nil.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		r.cancel()
		<-r.done
	})
	return nil
}

// Strategy returns the balancing strategy's name.
func (r *Router) Strategy() string { return r.strategy }

// Ready reports whether a membership view has been received.
func (r *Router) Ready() bool { return r.view.Load() != nil }

// Nodes returns the live members of the current view, sorted by ID, in a
// new slice (nil before the first view).
func (r *Router) Nodes() []membership.NodeInfo {
	v := r.view.Load()
	if v == nil {
		return nil
	}
	return slices.Clone(v.nodes)
}

// watchLoop applies every view the Watcher delivers until ctx ends. If the
// Watcher closes its channel (it was closed), the last view stays in force.
func (r *Router) watchLoop(ctx context.Context, views <-chan []membership.NodeInfo) {
	defer close(r.done)
	for nodes := range views {
		r.apply(nodes)
	}
	if ctx.Err() == nil {
		r.log.Warn("membership watcher closed; keeping the last view")
	}
}

// apply installs one membership view. It runs on the watch goroutine only,
// which is what lb.Balancer.Update asks for.
func (r *Router) apply(nodes []membership.NodeInfo) {
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b membership.NodeInfo) int { return strings.Compare(a.ID, b.ID) })
	lbNodes := make([]lb.Node, 0, len(nodes))
	var invalid []string
	available := 0
	for i, n := range nodes {
		ln := toLB(n)
		if err := checkNode(ln); err != nil || i > 0 && nodes[i-1].ID == n.ID {
			// One bad entry must not freeze routing for everyone: leave it
			// out (it is never picked) and say so.
			invalid = append(invalid, n.ID)
			r.log.Warn("member not routable: invalid registry entry", "node", n.ID, "err", err)
			continue
		}
		lbNodes = append(lbNodes, ln)
		if ln.Weight > 0 && !ln.Draining && ln.Addr != "" {
			available++
		}
	}
	if err := r.bal.Update(lbNodes); err != nil {
		// Unreachable after checkNode; kept as a safety net.
		r.log.Error("membership view not applied; keeping the previous one", "err", err)
		return
	}
	old := r.view.Swap(&view{nodes: nodes, available: available, invalid: invalid, at: time.Now()})
	r.m.nodes.Set(float64(len(nodes)))
	r.m.available.Set(float64(available))
	r.m.views.Inc()
	if old == nil || !sameMembers(old.nodes, nodes) || old.available != available {
		r.log.Info("membership", "members", ids(nodes), "available", available)
	}
}

// toLB converts a registry member to a balancer node. This exact mapping
// (with the same virtual-node count) is what makes consistent-hash routing
// agree with inbox ownership; see the package doc.
func toLB(n membership.NodeInfo) lb.Node {
	return lb.Node{ID: n.ID, Addr: n.ClientAddr, Weight: n.Weight, Active: n.Conns, Draining: n.Draining}
}

// checkNode applies lb's validation rules to one node, so that a single
// bad entry can be left out instead of failing the whole Update.
func checkNode(n lb.Node) error {
	switch {
	case n.ID == "":
		return lb.ErrEmptyID
	case n.Weight < 0:
		return fmt.Errorf("%w: %d", lb.ErrNegativeWeight, n.Weight)
	case n.Weight > lb.MaxWeight:
		return fmt.Errorf("%w: %d > %d", lb.ErrWeightTooLarge, n.Weight, lb.MaxWeight)
	case n.Active < 0:
		return fmt.Errorf("%w: %d", lb.ErrNegativeActive, n.Active)
	}
	return nil
}

func sameMembers(a, b []membership.NodeInfo) bool {
	return slices.EqualFunc(a, b, func(x, y membership.NodeInfo) bool {
		return x.ID == y.ID && x.Weight == y.Weight && x.Draining == y.Draining && x.ClientAddr == y.ClientAddr
	})
}

func ids(nodes []membership.NodeInfo) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.ID
	}
	return out
}

// Pick chooses the node uid should connect to, never one whose ID is in
// exclude. It returns an *UnavailableError (errors.Is lb.ErrNoAvailableNode)
// when no node qualifies. A returned Route always has a non-empty Addr: a
// member that publishes no client address is passed over like an excluded
// one. uid is not validated here (the HTTP handler does); only
// consistent-hash uses it.
func (r *Router) Pick(uid string, exclude ...string) (Route, error) {
	v := r.view.Load()
	if v == nil {
		return Route{}, &UnavailableError{Reason: "no membership view received yet"}
	}
	ex := exclude
	for range len(v.nodes) + 1 {
		n, err := r.bal.Pick(uid, ex...)
		if err != nil {
			return Route{}, &UnavailableError{Reason: reason(v, exclude)}
		}
		if n.Addr != "" {
			return Route{NodeID: n.ID, Addr: n.Addr, Strategy: r.strategy}, nil
		}
		ex = append(slices.Clip(ex), n.ID)
	}
	return Route{}, &UnavailableError{Reason: reason(v, exclude)}
}

// reason explains why nothing could be picked from v.
func reason(v *view, exclude []string) string {
	if len(v.nodes) == 0 {
		return "no live nodes in the registry"
	}
	var draining, zero, noAddr, excluded int
	for _, n := range v.nodes {
		switch {
		case slices.Contains(v.invalid, n.ID):
		case n.Draining:
			draining++
		case n.Weight == 0:
			zero++
		case n.ClientAddr == "":
			noAddr++
		case slices.Contains(exclude, n.ID):
			excluded++
		}
	}
	var parts []string
	add := func(k int, what string) {
		if k > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", k, what))
		}
	}
	add(draining, "draining")
	add(zero, "at weight 0")
	add(noAddr, "without a client address")
	add(len(v.invalid), "with an invalid registry entry")
	add(excluded, "excluded by the client")
	if len(parts) == 0 {
		return fmt.Sprintf("%d live nodes, none usable", len(v.nodes))
	}
	return fmt.Sprintf("%d live node(s), none usable: %s", len(v.nodes), strings.Join(parts, ", "))
}
