package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/lb"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/persist"
)

// Transport carries requests between nodes: forwarded appends (with a
// reply), pushes and kicks (best effort, no reply). Two implementations:
// Links (direct TCP links, the default) and redislink.Transport (Redis
// pub/sub); both pass the conformance suite in mesh/transporttest.
//
// Contract shared by every implementation:
//   - Append never reports success without the owner's reply carrying the
//     store's result. Every failure to reach the owner or to hear back in
//     time (no such peer, link down, bounded queue full, the caller's
//     deadline or the transport's default timeout reached, transport
//     closed) returns an error wrapping cluster.ErrForward at once or within
//     the timeout; it never hangs. A store error on the owner comes back as
//     a meshpb.RemoteError that unwraps to the same persist sentinel.
//   - Requests to one node are sent in call order over one ordered channel,
//     and the receiver starts handling them in that order; pushes and kicks
//     are handled one at a time in arrival order, so per-user order holds
//     for sequential callers.
//   - Every outbound queue is bounded; a full queue fails an Append with
//     cluster.ErrForward and drops a Push or Kick.
//   - All methods are safe for concurrent use. Close stops every goroutine
//     the transport started and waits for handler calls in flight.
type Transport interface {
	// Start begins serving requests from peers by calling h, as node
	// self. It returns once peers can reach this node. After a failed
	// Start, Close releases whatever was started.
	Start(ctx context.Context, self membership.NodeInfo, h cluster.Handler) error
	// Addr is the address peers dial after Start (self.MeshAddr with the
	// port resolved), or "" for a transport that needs none.
	Addr() string
	// SetPeers replaces the set of nodes this node may send to (the
	// registry's view; this node itself is ignored). A peer whose address
	// or boot epoch changed is reconnected; a peer that left is dropped and
	// its requests in flight fail with cluster.ErrForward.
	SetPeers(peers []membership.NodeInfo)
	// Append forwards an append to node and waits for its result (see the
	// contract above). Without a ctx deadline a transport default (2 s)
	// applies.
	Append(ctx context.Context, node string, msg persist.Message, inboxes []string) (persist.AppendResult, error)
	// AppendEntries is Append for a message that is stored already: the
	// owner writes only the inboxes' entries (an APPEND with entries_only).
	AppendEntries(ctx context.Context, node string, msg persist.Message, inboxes []string) (persist.AppendResult, error)
	// Admin runs an operator action on node's connections and returns how
	// many it acted on. Failures as for Append.
	Admin(ctx context.Context, node string, req cluster.AdminRequest) (int, error)
	// Push queues msg for the local devices of targets on node. It never
	// blocks; it drops the push when node is unknown or its queue is full.
	Push(node string, msg persist.Message, targets []cluster.PushTarget)
	// Kick queues a kick of (user, device, connID) on node, like Push.
	Kick(node, user, device string, connID uint64)
	// Signal queues sig for the local devices of its users on node, like
	// Push.
	Signal(node string, sig cluster.Signal)
	// Close stops the transport. It is idempotent.
	Close() error
}

// DefaultLoadInterval is how often a Cluster publishes its connection count.
const DefaultLoadInterval = 2 * time.Second

// Config configures a Cluster.
type Config struct {
	// Self is what this node publishes. ID is required; BootEpoch 0 is
	// replaced by membership.NewBootEpoch(). A MeshAddr with port 0 is replaced by
	// the transport's bound address.
	Self membership.NodeInfo
	// Registry publishes Self and supplies membership. Required. The
	// Cluster registers and deregisters but never closes it.
	Registry membership.Registry
	// Transport carries requests to peers. Required. The Cluster starts
	// and closes it.
	Transport Transport
	// VirtualNodes is the ownership ring's point count per node (0 selects
	// lb.DefaultVirtualNodes). Every node of a cluster must use the same
	// value, or they disagree on owners.
	VirtualNodes int
	// LoadInterval is how often Conns is read and published (default
	// DefaultLoadInterval). The registry is only written when the count
	// changed.
	LoadInterval time.Duration
	// Conns returns the node's live client connection count; nil publishes
	// nothing but weight and draining changes.
	Conns func() int64
	// Logger receives membership changes and failures (default
	// slog.Default()).
	Logger *slog.Logger
	// AdvertiseMeshAddr, when set, is the mesh address published for peers
	// instead of the transport's own listen address: for a proxy or NAT in
	// front of the mesh listener (fault tests put a TCP fault proxy there).
	AdvertiseMeshAddr string
}

// Cluster implements cluster.Cluster over a membership.Registry (membership), a
// consistent-hash ring (inbox ownership) and a Transport (forwarding).
//
// Inbox ownership: the owner of a user's inbox is lb.Ring.Owner(user) over
// every member of the current registry view, each with the same weight
// (lb.DefaultWeight), whatever its published weight or draining flag. Weight
// 0 and draining mean "no new client connections" (the router's business);
// a node keeps owning its inboxes until it leaves the registry, so changing
// a weight or starting a drain never moves an inbox, and the ring changes
// only when a member joins or leaves. All nodes that see the same member
// IDs compute the same owners. During a membership change nodes may briefly
// disagree; the store's unique (user, seq) index fences the stale writer.
//
// Until the first registry view arrives (before Start returns), and
// whenever the view is empty, Owner names this node. A view that lacks
// this node (its registration expired) gives it no inboxes, like every
// other node's view.
//
// A Cluster is safe for concurrent use; Owner, Live, NodeID and BootEpoch
// never block and do not allocate.
type Cluster struct {
	cfg Config
	log *slog.Logger
	id  string

	view atomic.Pointer[clusterView]
	h    atomic.Pointer[handlerBox]

	mu      sync.Mutex // guards self, state, cancel
	self    membership.NodeInfo
	state   int // stateNew, stateStarted, stateClosed
	cancel  context.CancelFunc
	pubMu   sync.Mutex // serialises registry updates, so the latest wins
	wg      sync.WaitGroup
	selfIn  chan struct{} // closed when a view containing this node was applied
	selfSet sync.Once
}

type handlerBox struct{ h cluster.Handler }

const (
	stateNew = iota
	stateStarted
	stateClosed
)

// clusterView is one applied registry view. Never mutated once stored.
type clusterView struct {
	members map[string]membership.NodeInfo
	ids     []string // sorted member IDs the ring was built from
	ring    *lb.Ring
}

var _ cluster.Cluster = (*Cluster)(nil)

// ErrClusterConfig marks an invalid Config (New) or a misuse of the
// Cluster's lifecycle (Start twice, Start after Close).
var ErrClusterConfig = errors.New("mesh: invalid cluster configuration")

// New validates cfg, applies defaults and returns an unstarted Cluster.
func New(cfg Config) (*Cluster, error) {
	if cfg.Self.BootEpoch == 0 {
		cfg.Self.BootEpoch = membership.NewBootEpoch()
	}
	if cfg.LoadInterval == 0 {
		cfg.LoadInterval = DefaultLoadInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var errs []error
	if err := membership.ValidateNode(cfg.Self); err != nil {
		errs = append(errs, err)
	}
	if cfg.Registry == nil {
		errs = append(errs, errors.New("a membership.Registry is required"))
	}
	if cfg.Transport == nil {
		errs = append(errs, errors.New("a Transport is required"))
	}
	if cfg.VirtualNodes < 0 || cfg.VirtualNodes > lb.MaxVirtualNodes {
		errs = append(errs, fmt.Errorf("VirtualNodes must be in 0..%d, got %d", lb.MaxVirtualNodes, cfg.VirtualNodes))
	}
	if cfg.LoadInterval < 0 {
		errs = append(errs, fmt.Errorf("LoadInterval must not be negative, got %s", cfg.LoadInterval))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrClusterConfig, err)
	}
	return &Cluster{
		cfg:    cfg,
		log:    cfg.Logger.With("node", cfg.Self.ID),
		id:     cfg.Self.ID,
		self:   cfg.Self,
		selfIn: make(chan struct{}),
	}, nil
}

// Start starts the transport (serving peers by calling h), registers this
// node, and waits until the registry's view includes it, so that the
// ownership ring is known when Start returns. It then follows membership
// and publishes the connection count every LoadInterval until Close. If ctx
// ends first, Start undoes what it did and returns an error wrapping
// ctx.Err(). Start may be called once.
func (c *Cluster) Start(ctx context.Context, h cluster.Handler) error {
	if h == nil {
		return fmt.Errorf("%w: nil ClusterHandler", ErrClusterConfig)
	}
	c.mu.Lock()
	if c.state != stateNew {
		c.mu.Unlock()
		return fmt.Errorf("%w: Start called twice or after Close", ErrClusterConfig)
	}
	c.state = stateStarted
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	self := c.self
	c.mu.Unlock()
	c.h.Store(&handlerBox{h})

	if err := c.cfg.Transport.Start(ctx, self, h); err != nil {
		c.Close()
		return fmt.Errorf("mesh: start transport: %w", err)
	}
	if addr := c.cfg.Transport.Addr(); addr != "" || c.cfg.AdvertiseMeshAddr != "" {
		if c.cfg.AdvertiseMeshAddr != "" {
			addr = c.cfg.AdvertiseMeshAddr
		}
		c.mu.Lock()
		c.self.MeshAddr = addr
		self = c.self
		c.mu.Unlock()
	}
	c.pubMu.Lock()
	err := c.cfg.Registry.Register(ctx, self)
	c.pubMu.Unlock()
	if err != nil {
		c.Close()
		return fmt.Errorf("mesh: register %s: %w", c.id, err)
	}
	c.mu.Lock()
	if c.state != stateStarted { // Close ran meanwhile
		c.mu.Unlock()
		return fmt.Errorf("mesh: %s: closed during Start", c.id)
	}
	views := c.cfg.Registry.Watch(runCtx)
	c.wg.Add(2)
	go c.watchLoop(views)
	go c.loadLoop(runCtx)
	c.mu.Unlock()
	select {
	case <-c.selfIn:
		return nil
	case <-ctx.Done():
		c.Close()
		return fmt.Errorf("mesh: %s: waiting for the registry view to include this node: %w", c.id, ctx.Err())
	}
}

// Close deregisters this node (so that peers stop routing to it), stops
// following membership and closes the transport. No goroutine of the
// Cluster or its transport is left when Close returns. It is idempotent;
// after Close, Append fails with cluster.ErrForward and Push and Kick drop.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return nil
	}
	started := c.state == stateStarted
	c.state = stateClosed
	cancel := c.cancel
	c.mu.Unlock()
	if !started {
		return nil
	}
	cancel()
	c.wg.Wait()
	ctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	c.pubMu.Lock()
	derr := c.cfg.Registry.Deregister(ctx)
	c.pubMu.Unlock()
	if errors.Is(derr, membership.ErrClosed) {
		derr = nil // the registry went first: nothing is published any more
	}
	terr := c.cfg.Transport.Close()
	c.h.Store(nil)
	return errors.Join(derr, terr)
}

// watchLoop applies registry views until the watch channel closes.
func (c *Cluster) watchLoop(views <-chan []membership.NodeInfo) {
	defer c.wg.Done()
	for v := range views {
		c.apply(v)
	}
}

// apply installs view: the transport learns the peers first, then the ring
// and the member map are swapped, so an owner named by the new ring always
// has a peer.
func (c *Cluster) apply(view []membership.NodeInfo) {
	old := c.view.Load()
	members := make(map[string]membership.NodeInfo, len(view))
	ids := make([]string, 0, len(view))
	peers := make([]membership.NodeInfo, 0, len(view))
	for _, n := range view {
		members[n.ID] = n
		ids = append(ids, n.ID)
		if n.ID != c.id {
			peers = append(peers, n)
		}
	}
	slices.Sort(ids)
	nv := &clusterView{members: members, ids: ids}
	if old != nil && slices.Equal(old.ids, ids) {
		nv.ring = old.ring
	} else {
		nodes := make([]lb.Node, len(ids))
		for i, id := range ids {
			nodes[i] = lb.Node{ID: id, Weight: lb.DefaultWeight}
		}
		ring, err := lb.NewRing(nodes, c.cfg.VirtualNodes)
		if err != nil {
			c.log.Error("mesh: ownership ring not rebuilt; keeping the previous one", "err", err)
			if old != nil {
				nv.ring = old.ring
			}
		} else {
			nv.ring = ring
		}
		c.log.Info("mesh: membership changed", "members", ids)
	}
	c.cfg.Transport.SetPeers(peers)
	c.view.Store(nv)
	if _, ok := members[c.id]; ok {
		c.selfSet.Do(func() { close(c.selfIn) })
	}
}

// loadLoop publishes the connection count every LoadInterval.
func (c *Cluster) loadLoop(ctx context.Context) {
	defer c.wg.Done()
	if c.cfg.Conns == nil {
		return
	}
	t := time.NewTicker(c.cfg.LoadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := max(c.cfg.Conns(), 0)
		uctx, cancel := context.WithTimeout(ctx, c.cfg.LoadInterval)
		err := c.update(uctx, func(self *membership.NodeInfo) bool {
			if self.Conns == n {
				return false
			}
			self.Conns = n
			return true
		})
		cancel()
		if err != nil && ctx.Err() == nil {
			c.log.Warn("mesh: publish load", "err", err)
		}
	}
}

// update applies change to the published info and, if it changed anything,
// publishes it. Updates are serialised so that the last one wins.
func (c *Cluster) update(ctx context.Context, change func(*membership.NodeInfo) bool) error {
	c.pubMu.Lock()
	defer c.pubMu.Unlock()
	c.mu.Lock()
	self := c.self
	if !change(&self) {
		c.mu.Unlock()
		return nil
	}
	c.self = self
	state := c.state
	c.mu.Unlock()
	if state != stateStarted {
		return nil // published by Start, or no longer published
	}
	if err := c.cfg.Registry.Update(ctx, self); err != nil {
		return fmt.Errorf("mesh: update %s: %w", c.id, err)
	}
	return nil
}

// SetWeight publishes a new weight (>= 0; 0 means "no new connections").
// It does not change inbox ownership. Before Start it only changes what
// Start registers. When ctx ends before the registry confirms, the new
// weight stays recorded and is published in the background (see membership.Registry).
func (c *Cluster) SetWeight(ctx context.Context, w int) error {
	if w < 0 {
		return fmt.Errorf("%w: negative weight %d", membership.ErrInvalidNode, w)
	}
	return c.update(ctx, func(self *membership.NodeInfo) bool {
		if self.Weight == w {
			return false
		}
		self.Weight = w
		return true
	})
}

// SetDraining publishes the draining flag, like SetWeight. A draining node
// keeps owning its inboxes until it leaves the registry (Close).
func (c *Cluster) SetDraining(ctx context.Context, draining bool) error {
	return c.update(ctx, func(self *membership.NodeInfo) bool {
		if self.Draining == draining {
			return false
		}
		self.Draining = draining
		return true
	})
}

// Self returns what this node publishes now (MeshAddr resolved after
// Start).
func (c *Cluster) Self() membership.NodeInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.self
}

// Members returns the current view of live members, sorted by ID (nil
// before the first view).
func (c *Cluster) Members() []membership.NodeInfo {
	v := c.view.Load()
	if v == nil {
		return nil
	}
	out := make([]membership.NodeInfo, 0, len(v.ids))
	for _, id := range v.ids {
		out = append(out, v.members[id])
	}
	return out
}

// NodeID implements cluster.Cluster.
func (c *Cluster) NodeID() string { return c.id }

// BootEpoch implements cluster.Cluster.
func (c *Cluster) BootEpoch() int64 { return c.cfg.Self.BootEpoch }

// Owner implements cluster.Cluster (see the ownership rules on Cluster).
func (c *Cluster) Owner(user string) (node string, local bool) {
	v := c.view.Load()
	if v == nil || v.ring == nil {
		return c.id, true
	}
	id, ok := v.ring.Owner(user)
	if !ok {
		return c.id, true
	}
	return id, id == c.id
}

// Live implements cluster.Cluster: node is in the current view with exactly
// bootEpoch. This node with its own epoch is always live (its routes are
// never stale to itself, even while its registration is being renewed).
func (c *Cluster) Live(node string, bootEpoch int64) bool {
	if node == c.id {
		return bootEpoch == c.cfg.Self.BootEpoch
	}
	v := c.view.Load()
	if v == nil {
		return false
	}
	n, ok := v.members[node]
	return ok && n.BootEpoch == bootEpoch
}

// handler returns the handler given to Start, or nil outside Start..Close.
func (c *Cluster) handler() cluster.Handler {
	if b := c.h.Load(); b != nil {
		return b.h
	}
	return nil
}

// Append implements cluster.Cluster. node == this node runs the handler
// directly; other nodes go through the transport.
func (c *Cluster) Append(ctx context.Context, node string, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	if node != c.id {
		return c.cfg.Transport.Append(ctx, node, msg, inboxes)
	}
	h, err := c.localHandler()
	if err != nil {
		return persist.AppendResult{}, err
	}
	return h.HandleAppend(ctx, msg, inboxes)
}

// AppendEntries implements cluster.Cluster, like Append.
func (c *Cluster) AppendEntries(ctx context.Context, node string, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	if node != c.id {
		return c.cfg.Transport.AppendEntries(ctx, node, msg, inboxes)
	}
	h, err := c.localHandler()
	if err != nil {
		return persist.AppendResult{}, err
	}
	return h.HandleAppendEntries(ctx, msg, inboxes)
}

// localHandler returns this node's handler, or an ErrForward when the
// cluster is not running.
func (c *Cluster) localHandler() (cluster.Handler, error) {
	h := c.handler()
	if h == nil {
		return nil, fmt.Errorf("%w: cluster %s not running", cluster.ErrForward, c.id)
	}
	return h, nil
}

// Admin implements cluster.Cluster: req goes to every member of the current
// view at once (this node's handler directly), and each answer is waited
// for until ctx ends (the transport's request timeout without a deadline).
func (c *Cluster) Admin(ctx context.Context, req cluster.AdminRequest) []cluster.NodeCount {
	var ids []string
	if v := c.view.Load(); v != nil {
		ids = v.ids
	}
	if !slices.Contains(ids, c.id) {
		ids = append(slices.Clone(ids), c.id)
		slices.Sort(ids)
	}
	out := make([]cluster.NodeCount, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		out[i].Node = id
		if id == c.id {
			if h, err := c.localHandler(); err != nil {
				out[i].Err = err
			} else {
				out[i].Count = h.HandleAdmin(req)
			}
			continue
		}
		wg.Go(func() { out[i].Count, out[i].Err = c.cfg.Transport.Admin(ctx, id, req) })
	}
	wg.Wait()
	return out
}

// Push implements cluster.Cluster (best effort, never blocks on the
// network).
func (c *Cluster) Push(node string, msg persist.Message, targets []cluster.PushTarget) {
	if node == c.id {
		if h := c.handler(); h != nil {
			h.HandlePush(msg, targets)
		}
		return
	}
	c.cfg.Transport.Push(node, msg, targets)
}

// Signal implements cluster.Cluster (best effort, never blocks on the
// network).
func (c *Cluster) Signal(node string, sig cluster.Signal) {
	if node == c.id {
		if h := c.handler(); h != nil {
			h.HandleSignal(sig)
		}
		return
	}
	c.cfg.Transport.Signal(node, sig)
}

// Kick implements cluster.Cluster (best effort).
func (c *Cluster) Kick(node, user, device string, connID uint64) {
	if node == c.id {
		if h := c.handler(); h != nil {
			h.HandleKick(user, device, connID)
		}
		return
	}
	c.cfg.Transport.Kick(node, user, device, connID)
}
