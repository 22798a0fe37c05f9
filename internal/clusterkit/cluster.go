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
	// Nodes is the number of imd nodes, started at the same instant.
	// Default 3.
	Nodes int
	// ZKSessionTimeout of nodes and router. Default 2s.
	ZKSessionTimeout time.Duration
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
type Cluster struct {
	cfg              Config
	Dir              string
	ZK, Redis, Mongo *testsvc.Service
	Nodes            []*Node
	Router           *Proc
	RouterAddr       string // host:port of imrouter's HTTP listener
	DB               string
	ownDir           bool
}

// Start launches ZooKeeper, Redis and the dev MongoDB concurrently, then
// the nodes at the same instant, waits until every node sees every other,
// then starts the router. On error everything started is stopped.
func Start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if cfg.Bin == "" {
		return nil, errors.New("clusterkit: Config.Bin is required")
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.ZKSessionTimeout == 0 {
		cfg.ZKSessionTimeout = 2 * time.Second
	}
	if cfg.Mesh == "" {
		cfg.Mesh = "direct"
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	c = &Cluster{cfg: cfg, Dir: cfg.Dir, DB: fmt.Sprintf("ck%d", time.Now().UnixNano())}
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "imgn-clusterkit-"); err != nil {
			return nil, err
		}
		c.ownDir = true
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
			s, err := testsvc.Launch(ctx, k, filepath.Join(c.Dir, k), 0, testsvc.WithStopGrace(3*time.Second))
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
		return c, err
	}
	cfg.Logf("services: zk %s redis %s mongo %s", c.ZK.Addr, c.Redis.Addr, c.Mongo.Addr)
	for i := range cfg.Nodes {
		n, err := c.newNode(fmt.Sprintf("n%d", i+1))
		if err != nil {
			return c, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	if err := c.StartNodesTogether(ctx, c.Nodes...); err != nil {
		return c, err
	}
	if err := c.WaitMembers(ctx, 30*time.Second); err != nil {
		return c, err
	}
	if cfg.Router {
		if err := c.startRouter(ctx); err != nil {
			return c, err
		}
	}
	return c, nil
}

func (c *Cluster) newNode(id string) (*Node, error) {
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
	n, err := NewNode(NodeSpec{Bin: c.cfg.Bin, Dir: c.Dir, ID: id, ClientProxy: c.cfg.ProxyClients, WS: c.cfg.WS})
	if err != nil {
		return nil, err
	}
	n.ZKProxy, n.RedisProxy, n.MongoProxy = zp, rp, mp
	if c.cfg.ProxyDeps {
		if n.MeshProxy, err = testsvc.NewProxy(n.Mesh); err != nil {
			return nil, err
		}
		n.Args = append(n.Args, "--mesh-advertise", n.MeshProxy.Addr)
	}
	n.Args = append(n.Args, "--mesh-listen", n.Mesh, "--advertise", n.Advertise,
		"--zk", zk, "--zk-session-timeout", c.cfg.ZKSessionTimeout.String(), "--redis", redis,
		"--mongo-uri", mongo, "--mongo-db", c.DB, "--mesh", c.cfg.Mesh, "--jwt-secret", Secret,
		"--send-rate", "100000", "--send-burst", "100000", "--goaway-window", "500ms",
		"--shutdown-timeout", "5s", "--log-level", "warn")
	n.Args = append(n.Args, c.cfg.NodeArgs...)
	return n, nil
}

// AddNode creates and starts one more node.
func (c *Cluster) AddNode(ctx context.Context) (*Node, error) {
	n, err := c.newNode(fmt.Sprintf("n%d", len(c.Nodes)+1))
	if err != nil {
		return nil, err
	}
	c.Nodes = append(c.Nodes, n)
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

func (c *Cluster) startRouter(ctx context.Context) error {
	p, err := testsvc.FreePort()
	if err != nil {
		return err
	}
	c.RouterAddr = "127.0.0.1:" + strconv.Itoa(p)
	c.Router = &Proc{Name: "imrouter", Path: filepath.Join(c.cfg.Bin, "imrouter"),
		Args: []string{"--listen", c.RouterAddr, "--zk", c.ZK.Addr, "--zk-session-timeout", c.cfg.ZKSessionTimeout.String(),
			"--log-level", "warn"},
		LogPath: filepath.Join(c.Dir, "imrouter.log")}
	if err := c.Router.start(); err != nil {
		return err
	}
	return Poll(ctx, 20*time.Second, "router ready", func() bool {
		var v any
		return GetJSON(ctx, "http://"+c.RouterAddr+"/v1/route?uid=probe", &v) == nil
	})
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
	if c.Router != nil {
		_ = c.Router.Kill()
	}
	var wg sync.WaitGroup
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
