package clusterkit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/imgn/imgn/internal/testsvc"
)

// Secret is the JWT secret every node of a clusterkit cluster uses.
const Secret = "clusterkit-secret"

// Config describes a cluster for Start. Zero fields take the defaults
// documented on each.
type Config struct {
	// Bin holds imd and imrouter. Required (see Build).
	Bin string
	// Dir holds logs and service data. Default: a new temporary directory,
	// removed by Close.
	Dir string
	// LogDir holds the nodes' and routers' logs. Default Dir.
	LogDir string
	// Nodes is the number of imd nodes Start starts at the same instant.
	// Default 3. (StartServices starts none.)
	Nodes int
	// ZKSessionTimeout of nodes and router. Default 2s.
	ZKSessionTimeout time.Duration
	// StopGrace is how long a service's Stop waits after SIGTERM before
	// it kills (testsvc.WithStopGrace). Default 3s.
	StopGrace time.Duration
	// Mesh is the node-to-node transport, "direct" (default) or "redis".
	Mesh string
	// NodeArgs are appended to every node's flags (e.g. --idle-timeout).
	NodeArgs []string
	// Router starts imrouter (consistent hash) when true.
	Router bool
	// ProxyDeps routes each node's ZooKeeper, Redis and MongoDB
	// connections through its own proxies; ProxyClients puts a proxy in
	// front of each node's client listener (see the package comment).
	ProxyDeps, ProxyClients bool
	// WS gives every node a WebSocket listener on a free loopback port
	// (Node.WSListen; behind Node.WSProxy with ProxyClients). The router
	// still hands out the TCP addresses: Cluster.ClientConfigWS maps them.
	WS bool
	// Logf receives progress lines; nil discards.
	Logf func(format string, args ...any)
}

// Cluster is a running set of services, nodes and (optionally) a router.
//
// Nodes and routers are added by one goroutine (the test or tool that
// owns the cluster); the other methods may be called from any goroutine
// once that is done.
type Cluster struct {
	cfg              Config
	Dir              string
	ZK, Redis, Mongo *testsvc.Service
	Nodes            []*Node
	Router           *Proc  // the router of Config.Router
	RouterAddr       string // host:port of that router's HTTP listener
	DB               string
	routers          []*Proc // every router started, for Close
	ownDir           bool
}

// Start launches ZooKeeper, Redis and the dev MongoDB concurrently, then
// the nodes at the same instant, waits until every node sees every other,
// then starts the router. On error everything started is stopped.
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	c, err := StartServices(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	for i := range cfg.Nodes {
		if _, err := c.NewNode(fmt.Sprintf("n%d", i+1)); err != nil {
			return nil, err
		}
	}
	if err := c.StartNodesTogether(ctx, c.Nodes...); err != nil {
		return nil, err
	}
	if err := c.WaitMembers(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	if cfg.Router {
		if c.Router, c.RouterAddr, err = c.StartRouter(ctx); err != nil {
			return nil, err
		}
		// Ready once it routes: its view holds the nodes.
		err = Poll(ctx, 20*time.Second, "router sees the nodes", func() bool {
			var v any
			return GetJSON(ctx, "http://"+c.RouterAddr+"/v1/route?uid=probe", &v) == nil
		})
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

// StartServices launches ZooKeeper, Redis and the dev MongoDB
// concurrently and returns a cluster without nodes (cfg.Nodes and
// cfg.Router are ignored): add them with NewNode and StartRouter. On
// error everything started is stopped.
func StartServices(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if cfg.Bin == "" {
		return nil, errors.New("clusterkit: Config.Bin is required")
	}
	if cfg.ZKSessionTimeout == 0 {
		cfg.ZKSessionTimeout = 2 * time.Second
	}
	if cfg.Mesh == "" {
		cfg.Mesh = "direct"
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 3 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	c := &Cluster{cfg: cfg, Dir: cfg.Dir, DB: fmt.Sprintf("ck%d", time.Now().UnixNano())}
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "imgn-clusterkit-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	}
	if c.cfg.LogDir == "" {
		c.cfg.LogDir = c.Dir
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, k := range []string{testsvc.KindZooKeeper, testsvc.KindRedis, testsvc.KindMongo} {
		wg.Go(func() {
			s, err := testsvc.Launch(ctx, k, filepath.Join(c.Dir, k), 0, testsvc.WithStopGrace(cfg.StopGrace))
			errs[i] = err
			switch k {
			case testsvc.KindZooKeeper:
				c.ZK = s
			case testsvc.KindRedis:
				c.Redis = s
			default:
				c.Mongo = s
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.Logf("services: zk %s redis %s mongo %s", c.ZK.Addr, c.Redis.Addr, c.Mongo.Addr)
	return c, nil
}

// NewNode prepares (does not start) node id with the cluster's flags,
// then Config.NodeArgs, then args, and adds it to Nodes so that Close
// stops it.
func (c *Cluster) NewNode(id string, args ...string) (*Node, error) {
	zk, redis, mongo := c.ZK.Addr, c.Redis.Addr, c.Mongo.URI()
	var zp, rp, mp *testsvc.Proxy
	if c.cfg.ProxyDeps {
		var err error
		if zp, err = testsvc.NewProxy(c.ZK.Addr); err != nil {
			return nil, err
		}
		if rp, err = testsvc.NewProxy(c.Redis.Addr); err != nil {
			return nil, err
		}
		if mp, err = testsvc.NewProxy(c.Mongo.Addr); err != nil {
			return nil, err
		}
		zk, redis, mongo = zp.Addr, rp.Addr, "mongodb://"+mp.Addr+"/"
	}
	deps := &Deps{ZK: zk, Redis: redis, MongoURI: mongo, MongoDB: c.DB, Mesh: c.cfg.Mesh, Secret: Secret,
		ZKSessionTimeout: c.cfg.ZKSessionTimeout}
	// Fast enough for tests: no send limit in the way, short drains.
	tuning := []string{"--send-rate", "100000", "--send-burst", "100000", "--goaway-window", "500ms",
		"--shutdown-timeout", "5s", "--log-level", "warn"}
	n, err := NewNode(NodeSpec{Bin: c.cfg.Bin, Dir: c.cfg.LogDir, ID: id, Deps: deps, ClientProxy: c.cfg.ProxyClients, WS: c.cfg.WS,
		Args: slices.Concat(tuning, c.cfg.NodeArgs, args)})
	if err != nil {
		for _, p := range []*testsvc.Proxy{zp, rp, mp} {
			if p != nil {
				p.Close()
			}
		}
		return nil, err
	}
	n.ZKProxy, n.RedisProxy, n.MongoProxy = zp, rp, mp
	if c.cfg.ProxyDeps {
		if n.MeshProxy, err = testsvc.NewProxy(n.Mesh); err != nil {
			n.Close()
			return nil, err
		}
		n.Args = append(n.Args, "--mesh-advertise", n.MeshProxy.Addr)
	}
	c.Nodes = append(c.Nodes, n)
	return n, nil
}

// AddNode creates and starts one more node, n<k> for the k-th.
func (c *Cluster) AddNode(ctx context.Context, args ...string) (*Node, error) {
	n, err := c.NewNode(fmt.Sprintf("n%d", len(c.Nodes)+1), args...)
	if err != nil {
		return nil, err
	}
	return n, n.Start(ctx)
}

// StartNodesTogether spawns the given (stopped) nodes behind one barrier,
// so they register in ZooKeeper at the same moment, and waits until each is
// ready.
func (c *Cluster) StartNodesTogether(ctx context.Context, nodes ...*Node) error {
	var wg sync.WaitGroup
	gate := make(chan struct{})
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Go(func() {
			<-gate
			errs[i] = n.Start(ctx)
		})
	}
	close(gate)
	wg.Wait()
	return errors.Join(errs...)
}

// Live returns the nodes whose process runs and is not paused.
func (c *Cluster) Live() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if n.Running() && !n.Paused() {
			out = append(out, n)
		}
	}
	return out
}

// Converged reports whether every running, unpaused node is ready and sees
// exactly the set of running, unpaused nodes.
func (c *Cluster) Converged(ctx context.Context) bool {
	live := c.Live()
	want := make([]string, len(live))
	for i, n := range live {
		want[i] = n.ID
	}
	slices.Sort(want)
	for _, n := range live {
		if !n.Ready(ctx) {
			return false
		}
		got, err := n.Members(ctx)
		if err != nil {
			return false
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return false
		}
	}
	return true
}

// WaitMembers waits until Converged.
func (c *Cluster) WaitMembers(ctx context.Context, d time.Duration) error {
	return Poll(ctx, d, "membership convergence", func() bool { return c.Converged(ctx) })
}

// StartRouter starts one more imrouter on the cluster's ZooKeeper with
// extra args (e.g. --lb) and waits until its /readyz answers (it has a
// membership view). It returns the process and its HTTP host:port; Close
// stops it.
func (c *Cluster) StartRouter(ctx context.Context, args ...string) (*Proc, string, error) {
	name := "imrouter"
	if len(c.routers) > 0 {
		name += strconv.Itoa(len(c.routers) + 1)
	}
	p, addr, err := NewRouter(RouterSpec{Bin: c.cfg.Bin, Dir: c.cfg.LogDir, Name: name, ZK: c.ZK.Addr,
		Args: append([]string{"--zk-session-timeout", c.cfg.ZKSessionTimeout.String(), "--log-level", "warn"}, args...)})
	if err != nil {
		return nil, "", err
	}
	if err := p.Start(); err != nil {
		return nil, "", err
	}
	c.routers = append(c.routers, p)
	return p, addr, p.WaitHTTP(ctx, "http://"+addr+"/readyz", 30*time.Second)
}

// RouterSpec describes an imrouter for NewRouter.
type RouterSpec struct {
	Bin    string // directory holding imrouter
	Dir    string // directory for the log <Name>.log
	Name   string // default imrouter
	Listen string // HTTP listener; default a free loopback port
	ZK     string // ZooKeeper host:port
	Args   []string
}

// NewRouter prepares (does not start) an imrouter process and returns it
// with its HTTP host:port.
func NewRouter(spec RouterSpec) (*Proc, string, error) {
	if spec.Name == "" {
		spec.Name = "imrouter"
	}
	if spec.Listen == "" {
		var err error
		if spec.Listen, err = FreeAddr(); err != nil {
			return nil, "", err
		}
	}
	return &Proc{Name: spec.Name, Path: filepath.Join(spec.Bin, "imrouter"),
		Args:    append([]string{"--listen", spec.Listen, "--zk", spec.ZK}, spec.Args...),
		LogPath: filepath.Join(spec.Dir, spec.Name+".log")}, spec.Listen, nil
}

// RouterURL is the router's base URL ("" without a router).
func (c *Cluster) RouterURL() string {
	if c.RouterAddr == "" {
		return ""
	}
	return "http://" + c.RouterAddr
}

// Node returns the node with id, or nil.
func (c *Cluster) Node(id string) *Node {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// FlushRedis sends FLUSHALL to the cluster's Redis.
func (c *Cluster) FlushRedis() error { return FlushAll(c.Redis.Addr) }

// FlushAll sends FLUSHALL to the Redis at addr.
func FlushAll(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("*1\r\n$8\r\nFLUSHALL\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "+OK\r\n" {
		return fmt.Errorf("FLUSHALL: %q", buf[:n])
	}
	return nil
}

// Close kills the router and nodes, stops the services and removes Dir if
// Start created it.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for _, r := range c.routers {
		wg.Go(func() { _ = r.Kill() })
	}
	for _, n := range c.Nodes {
		wg.Go(n.Close)
	}
	wg.Wait()
	for _, s := range []*testsvc.Service{c.ZK, c.Redis, c.Mongo} {
		if s != nil {
			wg.Go(func() { _ = s.Kill() })
		}
	}
	wg.Wait()
	if c.ownDir {
		_ = os.RemoveAll(c.Dir)
	}
}

// Single starts one imd node without cluster flags (memory store unless
// args say otherwise) in dir, with JWT secret Secret.
func Single(ctx context.Context, bin, dir string, args ...string) (*Node, error) {
	n, err := NewNode(NodeSpec{Bin: bin, Dir: dir, ID: "single",
		Args: append([]string{"--store", "memory", "--jwt-secret", Secret, "--log-level", "warn"}, args...)})
	if err != nil {
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}
