package conformance

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgn/imgn/internal/clusterkit"
)

// jwtSecret is the token secret of every node the suite starts.
const jwtSecret = "conformance-secret"

// imdPath is the imd built from this repository for the whole test binary
// (TestMain).
var imdPath string

// node is one imd process on loopback, memory store, started through
// clusterkit; its log is a file in dir.
type node struct {
	*clusterkit.Node
	addr  string // client listener
	ws    string // WebSocket listener
	admin string // admin HTTP listener
	dir   string
}

// launch runs imd with the suite's base flags plus args and waits until
// /readyz answers.
func launch(args ...string) (*node, error) {
	dir, err := os.MkdirTemp("", "imgn-conformance-")
	if err != nil {
		return nil, err
	}
	base := []string{"--store", "memory", "--jwt-secret", jwtSecret, "--log-level", "warn", "--shutdown-timeout", "5s"}
	kn, err := clusterkit.NewNode(clusterkit.NodeSpec{Path: imdPath, Dir: dir, ID: "conf", WS: true, Args: append(base, args...)})
	if err == nil {
		if err = kn.Start(context.Background()); err != nil {
			kn.Close()
		}
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return &node{Node: kn, addr: kn.Listen, ws: kn.WSListen, admin: kn.Admin, dir: dir}, nil
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
		n.remove()
	})
	return n
}

// terminate sends SIGTERM (a graceful shutdown) without waiting.
func (n *node) terminate() { _ = n.Signal(syscall.SIGTERM) }

// stop shuts the node down gracefully, killing it if it takes too long.
func (n *node) stop() { n.Term(10 * time.Second) }

func (n *node) logText() string { return n.LogTail(1 << 20) }

// remove deletes the node's directory (its log).
func (n *node) remove() { _ = os.RemoveAll(n.dir) }

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
	if _, err = clusterkit.Build(context.Background(), dir, "imd"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	imdPath = filepath.Join(dir, "imd")
	if sharedNode, err = launch(sharedArgs...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	sharedNode.stop()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "shared imd log:\n%s", sharedNode.logText())
	}
	sharedNode.remove()
	return code
}
