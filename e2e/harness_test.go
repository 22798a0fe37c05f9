package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/internal/testutil"
)

const secret = "e2e-secret"

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// binaries builds imd (and imrouter when present) once per test binary.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := testsvc.RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		builtDir, err = os.MkdirTemp("", "imgn-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		for _, cmd := range []string{"imd", "imrouter"} {
			if _, err := os.Stat(filepath.Join(root, "cmd", cmd)); err != nil {
				continue
			}
			c := exec.Command("go", "build", "-o", filepath.Join(builtDir, cmd), "./cmd/"+cmd)
			c.Dir = root
			if out, err := c.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", cmd, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtDir
}

// freeAddr returns a free loopback address.
func freeAddr(t *testing.T) string {
	t.Helper()
	p, err := testsvc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}

// cluster is a set of imd processes sharing one ZooKeeper, Redis and
// MongoDB.
type cluster struct {
	t                *testing.T
	bin              string
	zk, redis, mongo *testsvc.Service
	mesh             string // direct or redis
	zkTimeout        time.Duration
	mu               sync.Mutex
	nodes            map[string]*node
	db               string
}

type node struct {
	c                   *cluster
	id                  string
	listen, admin, mesh string
	weight              int
	mu                  sync.Mutex
	cmd                 *exec.Cmd
	exited              chan struct{}
	logPath             string
}

func newCluster(t *testing.T, meshMode string) *cluster {
	t.Helper()
	c := &cluster{t: t, bin: binaries(t), mesh: meshMode, nodes: map[string]*node{}, zkTimeout: 2 * time.Second,
		db: fmt.Sprintf("e2e%d", time.Now().UnixNano())}
	var wg sync.WaitGroup
	wg.Go(func() { c.zk = testsvc.StartZooKeeper(t) })
	wg.Go(func() { c.redis = testsvc.StartRedis(t) })
	wg.Go(func() { c.mongo = testsvc.StartMongo(t) })
	wg.Wait()
	if c.zk == nil || c.redis == nil || c.mongo == nil {
		t.Fatal("services did not start")
	}
	return c
}

// addNode starts a new imd process named id.
func (c *cluster) addNode(id string, extra ...string) *node {
	c.t.Helper()
	n := &node{c: c, id: id, listen: freeAddr(c.t), admin: freeAddr(c.t), mesh: freeAddr(c.t), weight: 100,
		logPath: filepath.Join(logDir(c.t), id+".log")}
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	n.start(extra...)
	c.t.Cleanup(func() { n.kill() })
	return n
}

func (n *node) start(extra ...string) {
	n.c.t.Helper()
	n.spawn(extra...)
	n.waitReady()
}

// spawn starts the process without waiting for it to be ready.
func (n *node) spawn(extra ...string) {
	n.c.t.Helper()
	c := n.c
	args := []string{"--node-id", n.id, "--listen", n.listen, "--admin", n.admin, "--mesh-listen", n.mesh,
		"--zk", c.zk.Addr, "--zk-session-timeout", c.zkTimeout.String(), "--redis", c.redis.Addr,
		"--mongo-uri", c.mongo.URI(), "--mongo-db", c.db, "--mesh", c.mesh, "--jwt-secret", secret,
		"--send-rate", "100000", "--send-burst", "100000", "--goaway-window", "500ms", "--log-level", "info"}
	args = append(args, extra...)
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(c.bin, "imd"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	c.t.Cleanup(func() {
		if c.t.Failed() {
			b, _ := os.ReadFile(n.logPath)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			c.t.Logf("--- log of %s ---\n%s", n.id, b)
		}
	})
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

// waitReady polls the admin /readyz.
func (n *node) waitReady() {
	n.c.t.Helper()
	poll(n.c.t, 30*time.Second, n.id+" ready", func() bool {
		resp, err := http.Get("http://" + n.admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func (n *node) signal(sig syscall.Signal) {
	n.mu.Lock()
	cmd := n.cmd
	n.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// kill sends SIGKILL and waits for the exit.
func (n *node) kill() {
	n.signal(syscall.SIGKILL)
	n.wait(10 * time.Second)
}

// wait waits for the process to exit.
func (n *node) wait(d time.Duration) bool {
	n.mu.Lock()
	ch := n.exited
	n.mu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// members returns the node ids in n's registry view.
func (n *node) members() []string {
	var out struct {
		Members []struct {
			ID string `json:"id"`
		} `json:"members"`
	}
	if err := getJSON("http://"+n.admin+"/admin/cluster", &out); err != nil {
		return nil
	}
	ids := make([]string, len(out.Members))
	for i, m := range out.Members {
		ids[i] = m.ID
	}
	return ids
}

// owner asks n which node owns user's inbox.
func (n *node) owner(user string) string {
	var out struct {
		Owner string `json:"owner"`
	}
	_ = getJSON("http://"+n.admin+"/admin/cluster?user="+user, &out)
	return out.Owner
}

// waitMembers waits until every given node sees exactly want members.
func (c *cluster) waitMembers(want int, nodes ...*node) {
	c.t.Helper()
	for _, n := range nodes {
		poll(c.t, 30*time.Second, fmt.Sprintf("%s sees %d members", n.id, want), func() bool { return len(n.members()) == want })
	}
}

func getJSON(url string, out any) error {
	return doJSON(http.MethodGet, url, "", 2*time.Second, out)
}

// postJSON POSTs body to url and decodes the JSON answer into out.
func postJSON(url, body string, out any) error {
	return doJSON(http.MethodPost, url, body, 10*time.Second, out)
}

// doJSON makes one request and decodes a 200 answer's JSON into out.
func doJSON(method, url, body string, timeout time.Duration, out any) error {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := http.Client{Timeout: timeout}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func poll(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.Until(t, d, what, cond)
}

// dialNode connects a client for user to node n (by address, reconnecting
// to any address in addrs on failure).
func dialNode(t *testing.T, user, device string, addrs ...string) *client.Client {
	t.Helper()
	tok, err := auth.MintToken([]byte(secret), user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	zero := uint64(0)
	var mu sync.Mutex
	next := 0
	cfg := client.Config{Addr: addrs[0], Token: tok, Device: device, Serializer: codec.Protobuf, AfterSeq: &zero,
		ReconnectBase: 50 * time.Millisecond, ReconnectMax: 500 * time.Millisecond, RequestTimeout: 3 * time.Second,
		Resolver: func(ctx context.Context, exclude []string) (string, string, error) {
			mu.Lock()
			defer mu.Unlock()
			a := addrs[next%len(addrs)]
			next++
			return a, "", nil
		}}
	cl, err := client.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", user, err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// flushAll sends FLUSHALL to the Redis at addr.
func flushAll(addr string) error {
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
