package e2e

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nodeNum asks n for the node number it claimed.
func (n *node) nodeNum(t *testing.T) uint64 {
	t.Helper()
	var out struct {
		NodeNum uint64 `json:"node_num"`
	}
	if err := getJSON("http://"+n.admin+"/admin/cluster", &out); err != nil {
		t.Fatal(err)
	}
	return out.NodeNum
}

// msgIDNode is the node number inside a message id (engine/msgid.go: 41
// bits of time, 10 of node number, 12 of sequence).
func msgIDNode(id uint64) uint64 { return id >> 12 & 0x3FF }

// TestNodeNumbersAreUnique: n9000 and n9120, whose ids hash to the same
// number (855), get different node numbers from ZooKeeper, and the message
// ids each node mints carry its own; a node asking for a number another
// node holds refuses to start.
func TestNodeNumbersAreUnique(t *testing.T) {
	c := newCluster(t, "direct")
	a, b := c.addNode("n9000"), c.addNode("n9120")
	numA, numB := a.nodeNum(t), b.nodeNum(t)
	if numA == 0 || numB == 0 || numA == numB {
		t.Fatalf("node numbers %d and %d", numA, numB)
	}
	alice := dialNode(t, "alice", "pc", a.listen)
	bob := dialNode(t, "bob", "pc", b.listen)
	ackA, err := alice.Send(t.Context(), "alice", []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	ackB, err := bob.Send(t.Context(), "bob", []byte("b"))
	if err != nil {
		t.Fatal(err)
	}
	if msgIDNode(ackA.MsgId) != numA || msgIDNode(ackB.MsgId) != numB {
		t.Fatalf("msg ids %x (node %d) and %x (node %d), want nodes %d and %d",
			ackA.MsgId, msgIDNode(ackA.MsgId), ackB.MsgId, msgIDNode(ackB.MsgId), numA, numB)
	}
	// A restart keeps the number.
	b.kill()
	b.start()
	if got := b.nodeNum(t); got != numB {
		t.Fatalf("n9120 restarted with node number %d, had %d", got, numB)
	}
	// A third node given n9000's number stops at once, saying why.
	n := c.prepare("n3", "--node-num", strconv.FormatUint(numA, 10))
	if err := n.Proc.Start(); err != nil {
		t.Fatal(err)
	}
	if !n.wait(30 * time.Second) {
		t.Fatal("a node with a taken node number started")
	}
	if code := n.ExitCode(); code != 1 {
		t.Fatalf("exit status %d, want 1", code)
	}
	log, _ := os.ReadFile(n.logPath)
	if !strings.Contains(string(log), "node number") || !strings.Contains(string(log), `held by \"n9000\"`) {
		t.Fatalf("log does not say why:\n%s", log)
	}
}
