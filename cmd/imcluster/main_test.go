package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/imgn/imgn/internal/dirlock"
	"github.com/imgn/imgn/lb"
)

func TestParse(t *testing.T) {
	env := map[string]string{"IM_NODES": "5", "IM_MESH": "redis", "IM_BASE_PORT": "9200"}
	o, err := parse([]string{"--base-port", "9300"}, func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.nodes != 5 || o.mesh != "redis" || o.basePort != 9300 || !o.withRouter || o.lbStrategy != lb.ConsistentHash {
		t.Fatalf("%+v", o)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nodes", "0"}, "imcluster: --nodes must be 1..20, got 0\n"},
		{[]string{"--nodes", "three"}, "imcluster: --nodes: invalid value \"three\": want an integer\n"},
		{[]string{"--base-port", "80"}, "imcluster: --base-port 80 out of range"},
		{[]string{"--mesh", "udp"}, "imcluster: --mesh must be direct or redis"},
		{[]string{"--lb", "fastest"}, "imcluster: --lb \"fastest\""},
		{[]string{"extra"}, "imcluster: unexpected arguments: extra\n"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, func(string) string { return "" }, &out, &errb)
		if code != 2 || !strings.HasPrefix(errb.String(), tc.want) || !strings.HasSuffix(errb.String(), "Run 'imcluster --help' for usage.\n") {
			t.Errorf("%v: exit %d %q", tc.args, code, errb.String())
		}
	}
	var out bytes.Buffer
	if code := run([]string{"--help"}, func(string) string { return "" }, &out, nil); code != 0 ||
		!strings.HasPrefix(out.String(), "Usage: imcluster [flags]\n") || !strings.Contains(out.String(), "IM_NODES") ||
		!strings.Contains(out.String(), "\n  --base-port int\n") {
		t.Fatalf("help: exit %d\n%s", code, out.String())
	}
}

// TestReadmeChatCrossesNodes: the README's cluster chat through the router
// puts its two users on different nodes of the default `make cluster`, so
// the message it shows really goes from one node to another.
func TestReadmeChatCrossesNodes(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "## A local cluster")
	if start < 0 {
		t.Fatal("README has no cluster section")
	}
	section := text[start:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	var users []string
	for _, m := range regexp.MustCompile(`imctl chat --router \S+ --token \$\(\./bin/imctl token --secret dev-secret --user (\w+)\)`).FindAllStringSubmatch(section, -1) {
		users = append(users, m[1])
	}
	if len(users) != 2 || users[0] == users[1] {
		t.Fatalf("want two chat users through the router in the README's cluster section, found %v", users)
	}
	o, err := parse(nil, func(string) string { return "" }, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := lb.New(o.lbStrategy)
	if err != nil {
		t.Fatal(err)
	}
	var nodes []lb.Node
	for i := range o.nodes {
		nodes = append(nodes, lb.Node{ID: nodeID(i), Addr: "127.0.0.1:1", Weight: lb.DefaultWeight})
	}
	if err := b.Update(nodes); err != nil {
		t.Fatal(err)
	}
	var placed []string
	for _, u := range users {
		n, err := b.Pick(u)
		if err != nil {
			t.Fatal(err)
		}
		placed = append(placed, n.ID)
	}
	if placed[0] == placed[1] {
		t.Fatalf("README users %v both go to node %s: the chat does not cross nodes", users, placed[0])
	}
	// The README names the node each lands on.
	for i, u := range users {
		if !strings.Contains(section, u+" lands on "+placed[i]) {
			t.Errorf("README does not say %q", u+" lands on "+placed[i])
		}
	}
}

// TestFailsFastOnATakenDirOrPort: a second cluster on the same --dir, or
// on ports another process holds, stops at once with an error naming the
// problem; it starts nothing, writes no log, and never prints "cluster up".
func TestFailsFastOnATakenDirOrPort(t *testing.T) {
	dir := t.TempDir()
	held, err := dirlock.Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run([]string{"--dir", dir, "--base-port", "31000", "--bin", t.TempDir()}, func(string) string { return "" }, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "in use by another process") || strings.Contains(out.String(), "cluster up") {
		t.Fatalf("taken dir: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 { // only the lock file
		t.Fatalf("taken dir: the second cluster wrote %v", entries)
	}
	held.Release()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port // node n2's admin port below
	base := port - 11
	out.Reset()
	errb.Reset()
	dir2 := t.TempDir()
	code = run([]string{"--dir", dir2, "--base-port", fmt.Sprint(base), "--bin", t.TempDir()}, func(string) string { return "" }, &out, &errb)
	// Other processes may hold more of these ports (they are ephemeral
	// ones): the error must name ours among them.
	want := fmt.Sprintf("%d (n2 admin)", port)
	if code != 1 || !strings.Contains(errb.String(), "ports in use: ") || !strings.Contains(errb.String(), want) || strings.Contains(out.String(), "cluster up") {
		t.Fatalf("taken port: exit %d, stdout %q, stderr %q; want %q", code, out.String(), errb.String(), want)
	}
	if entries, _ := os.ReadDir(dir2); len(entries) != 1 {
		t.Fatalf("taken port: the cluster wrote %v", entries)
	}
}
