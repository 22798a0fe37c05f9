package conformance

import (
	"bytes"
	"fmt"
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

	"github.com/imgn/imgn/internal/testsvc"
)

// jwtSecret is the token secret of every node the suite starts.
const jwtSecret = "conformance-secret"

// imdPath is the imd built from this repository for the whole test binary
// (TestMain).
var imdPath string

// buildImd builds imd into dir.
func buildImd(dir string) (string, error) {
	root, err := testsvc.RepoRoot()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "imd")
	cmd := exec.Command("go", "build", "-o", path, "./cmd/imd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build imd: %v\n%s", err, out)
	}
	return path, nil
}

// node is one imd process on loopback, memory store.
type node struct {
	addr   string // client listener
	ws     string // WebSocket listener
	admin  string // admin HTTP listener
	cmd    *exec.Cmd
	log    *bytes.Buffer
	exited chan struct{}
	mu     sync.Mutex
}

// launch runs imd with the suite's base flags plus args and waits until
// /readyz answers.
func launch(args ...string) (*node, error) {
	var addrs [3]string
	for i := range addrs {
		p, err := testsvc.FreePort()
		if err != nil {
			return nil, err
		}
		addrs[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	n := &node{addr: addrs[0], admin: addrs[1], ws: addrs[2], log: &bytes.Buffer{}, exited: make(chan struct{})}
	base := []string{"--store", "memory", "--listen", n.addr, "--admin", n.admin, "--ws-listen", n.ws, "--node-id", "conf",
		"--jwt-secret", jwtSecret, "--log-level", "warn", "--shutdown-timeout", "5s"}
	n.cmd = exec.Command(imdPath, append(base, args...)...)
	n.cmd.Stdout, n.cmd.Stderr = &lockedWriter{mu: &n.mu, w: n.log}, &lockedWriter{mu: &n.mu, w: n.log}
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = n.cmd.Wait(); close(n.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for !n.ready() {
		select {
		case <-n.exited:
			return nil, fmt.Errorf("imd exited during start:\n%s", n.logText())
		default:
		}
		if time.Now().After(deadline) {
			n.stop()
			return nil, fmt.Errorf("imd not ready:\n%s", n.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return n, nil
}

// startNode launches a node of the test's own, stopped when it ends.
func startNode(t *testing.T, args ...string) *node {
	t.Helper()
	n, err := launch(args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			t.Logf("imd log:\n%s", n.logText())
		}
	})
	return n
}

func (n *node) ready() bool {
	resp, err := http.Get("http://" + n.admin + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// terminate sends SIGTERM (a graceful shutdown) without waiting.
func (n *node) terminate() { _ = n.cmd.Process.Signal(syscall.SIGTERM) }

// stop shuts the node down gracefully, killing it if it takes too long.
func (n *node) stop() {
	n.terminate()
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
}

func (n *node) logText() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}

// post calls the admin API (a POST with a JSON body, or none) and fails
// the test on anything but 200.
func (n *node) post(t *testing.T, path, body string) {
	t.Helper()
	resp, err := http.Post("http://"+n.admin+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s", path, resp.Status)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// sharedArgs are the flags of the node most tests share (TestMain starts
// it): a small group size and outbound bound for GROUP_FULL and
// SLOW_CONSUMER, a small max body for FRAME_TOO_LARGE, and no
// password-attempt limit (tests log in a lot from one address; the limits
// have a node of their own).
var sharedArgs = []string{"--max-group-size", "4", "--max-outbound", "65536", "--max-body", "8192",
	"--login-rate-per-ip", "-1", "--send-rate", "100000", "--send-burst", "100000"}

// sharedNode is the node started by TestMain with sharedArgs.
var sharedNode *node

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "imgn-conformance-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if imdPath, err = buildImd(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if sharedNode, err = launch(sharedArgs...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	sharedNode.stop()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "shared imd log:\n%s", sharedNode.logText())
	}
	return code
}
