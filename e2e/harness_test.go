package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/internal/clusterkit"
	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/internal/testutil"
)

// The e2e tests drive real processes through internal/clusterkit; this
// file only binds its error-returning API to a *testing.T.

// freeAddr returns a free loopback address.
func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := clusterkit.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// cluster is a clusterkit cluster owned by one test: ZooKeeper, Redis and
// MongoDB, and the nodes the test adds.
type cluster struct {
	*clusterkit.Cluster
	t                *testing.T
	zk, redis, mongo *testsvc.Service
}

// node is one imd process of a cluster; id, listen and admin copy the
// clusterkit.Node's (they never change across restarts).
type node struct {
	*clusterkit.Node
	t                 *testing.T
	id, listen, admin string
	logPath           string
}

// newCluster starts the services for a cluster whose nodes talk over
// meshMode (direct or redis); Cleanup stops everything.
func newCluster(t *testing.T, meshMode string) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bin, err := clusterkit.Binaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := clusterkit.StartServices(ctx, clusterkit.Config{Bin: bin, Dir: t.TempDir(), LogDir: logDir(t),
		Mesh: meshMode, NodeArgs: []string{"--log-level", "info"},
		StopGrace: 10 * time.Second}) // a loaded machine's FerretDB may take a while to stop
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	return &cluster{Cluster: kc, t: t, zk: kc.ZK, redis: kc.Redis, mongo: kc.Mongo}
}

// prepare makes node id with extra flags without starting it; on failure
// the test's log shows the end of the node's log.
func (c *cluster) prepare(id string, extra ...string) *node {
	c.t.Helper()
	kn, err := c.NewNode(id, extra...)
	if err != nil {
		c.t.Fatal(err)
	}
	n := &node{Node: kn, t: c.t, id: kn.ID, listen: kn.Listen, admin: kn.Admin, logPath: kn.LogPath}
	c.t.Cleanup(func() {
		if c.t.Failed() {
			c.t.Logf("--- log of %s ---\n%s", n.id, n.LogTail(4000))
		}
	})
	return n
}

// addNode starts a new imd process named id.
func (c *cluster) addNode(id string, extra ...string) *node {
	c.t.Helper()
	n := c.prepare(id, extra...)
	n.start()
	return n
}

// startRouter runs an imrouter with the given strategy on the cluster's
// ZooKeeper and returns its URL.
func (c *cluster) startRouter(strategy string) string {
	c.t.Helper()
	_, addr, err := c.StartRouter(c.t.Context(), "--lb", strategy)
	if err != nil {
		c.t.Fatal(err)
	}
	return "http://" + addr
}

// logDir is where the nodes' logs go: $E2E_LOG_DIR/<test name> when that
// variable is set (kept for reading after the run), else a directory the
// test removes.
func logDir(t *testing.T) string {
	root := os.Getenv("E2E_LOG_DIR")
	if root == "" {
		return t.TempDir()
	}
	dir := filepath.Join(root, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// start (re)starts the process and waits until it is ready.
func (n *node) start() {
	n.t.Helper()
	if err := n.Start(n.t.Context()); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) signal(sig syscall.Signal) { _ = n.Signal(sig) }

// kill sends SIGKILL and waits for the exit.
func (n *node) kill() { _ = n.Kill() }

// wait waits up to d for the process to exit.
func (n *node) wait(d time.Duration) bool { return n.WaitExit(d) }

// members returns the node ids in n's registry view (nil on error).
func (n *node) members() []string {
	ids, _ := n.Members(n.t.Context())
	return ids
}

// owner asks n which node owns user's inbox.
func (n *node) owner(user string) string { return n.Owner(n.t.Context(), user) }

// metric reads one sample (`name` or `name{labels}`) from n's /metrics,
// -1 when it cannot be read.
func (n *node) metric(name string) float64 {
	m, err := n.Metrics(n.t.Context())
	if err != nil {
		return -1
	}
	return m[name]
}

// waitMembers waits until every given node sees exactly want members.
func (c *cluster) waitMembers(want int, nodes ...*node) {
	c.t.Helper()
	for _, n := range nodes {
		testutil.Until(c.t, 30*time.Second, fmt.Sprintf("%s sees %d members", n.id, want), func() bool { return len(n.members()) == want })
	}
}

func getJSON(url string, out any) error {
	return clusterkit.GetJSON(context.Background(), url, out)
}

// postJSON POSTs body to url and decodes a 200 answer's JSON into out.
func postJSON(url, body string, out any) error {
	return clusterkit.PostJSON(context.Background(), url, body, out)
}

// dialNode connects a client for user to the first of addrs, reconnecting
// to the next one in turn on failure.
func dialNode(t *testing.T, user, device string, addrs ...string) *client.Client {
	t.Helper()
	cfg := clusterkit.ClientConfig("", addrs[0], user, device)
	cfg.ReconnectMax = 500 * time.Millisecond
	var mu sync.Mutex
	next := 0
	cfg.Resolver = func(ctx context.Context, exclude []string) (string, string, error) {
		mu.Lock()
		defer mu.Unlock()
		a := addrs[next%len(addrs)]
		next++
		return a, "", nil
	}
	return dial(t, user, cfg)
}

// dialRouted connects user through the router.
func dialRouted(t *testing.T, routerURL, user string) *client.Client {
	t.Helper()
	cfg := clusterkit.ClientConfig(routerURL, "", user, "pc")
	cfg.RequestTimeout = 5 * time.Second
	return dial(t, user, cfg)
}

// dial connects with cfg; Cleanup closes the client.
func dial(t *testing.T, user string, cfg client.Config) *client.Client {
	t.Helper()
	cl, err := client.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", user, err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}
