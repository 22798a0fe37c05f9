package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/lb"
	"github.com/imgn/imgn/mesh/membership"
)

// TestMain checks for leaked goroutines (gnet's process-wide pool, linked
// through mesh, aside).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaktest.Gnet()...) }

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseOptions(t *testing.T) {
	o, err := parseOptions([]string{"--zk", "zk1:2181, zk2:2181"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "127.0.0.1:9080" || o.zkRoot != "/im/nodes" || o.strategy != lb.ConsistentHash ||
		o.vnodes != lb.DefaultVirtualNodes || !slices.Equal(o.zk, []string{"zk1:2181", "zk2:2181"}) || o.static != nil {
		t.Fatalf("defaults: %+v", o)
	}

	// Environment fallbacks; flags win.
	o, err = parseOptions([]string{"--lb", "round-robin"}, env(map[string]string{
		"IM_ZK": "zk:2181", "IM_ZK_ROOT": "/prod/im/nodes", "IM_LB": "least-active", "IM_LISTEN": "0.0.0.0:8080",
		"IM_ZK_SESSION_TIMEOUT": "3s",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.strategy != lb.RoundRobin || o.zkRoot != "/prod/im/nodes" || o.listen != "0.0.0.0:8080" ||
		!slices.Equal(o.zk, []string{"zk:2181"}) || o.zkSession != 3*time.Second {
		t.Fatalf("env: %+v", o)
	}

	o, err = parseOptions([]string{"--static", "n1=127.0.0.1:9090, n2=127.0.0.1:9190@50,n3=[::1]:9290@0"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []membership.NodeInfo{
		{ID: "n1", ClientAddr: "127.0.0.1:9090", Weight: 100, BootEpoch: 1},
		{ID: "n2", ClientAddr: "127.0.0.1:9190", Weight: 50, BootEpoch: 1},
		{ID: "n3", ClientAddr: "[::1]:9290", Weight: 0, BootEpoch: 1},
	}
	if !slices.Equal(o.static, want) || o.zk != nil {
		t.Fatalf("--static: %+v", o.static)
	}

	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "--zk is required"},
		{[]string{"--zk", "zk:2181", "--static", "n1=h:1"}, nil, "not both"},
		{[]string{"--zk", "zk"}, nil, "--zk"},
		{[]string{"--zk", "zk:2181", "--lb", "random"}, nil, "--lb"},
		{nil, map[string]string{"IM_ZK": "zk:2181", "IM_LB": "fastest"}, "--lb"},
		{[]string{"--zk", "zk:2181", "--zk-root", "im/nodes"}, nil, "--zk-root"},
		{[]string{"--zk", "zk:2181", "--zk-root", "/"}, nil, "--zk-root"},
		{[]string{"--zk", "zk:2181", "--listen", "nonsense"}, nil, "--listen"},
		{[]string{"--zk", "zk:2181", "--virtual-nodes", "0"}, nil, "--virtual-nodes"},
		{[]string{"--zk", "zk:2181", "--log-level", "loud"}, nil, "--log-level"},
		{[]string{"--static", "n1"}, nil, "--static"},
		{[]string{"--static", "n1=nohost"}, nil, "--static"},
		{[]string{"--static", "n1=h:1@heavy"}, nil, "weight"},
		{[]string{"--static", "n1=h:1@-1"}, nil, "weight"},
		{[]string{"--static", "n1=h:1,n1=h:2"}, nil, "duplicate"},
		{[]string{"--static", "bad id=h:1"}, nil, "--static"},
		{[]string{"--static", " , "}, nil, "no nodes"},
		{nil, map[string]string{"IM_ZK_SESSION_TIMEOUT": "long"}, "IM_ZK_SESSION_TIMEOUT"},
		{[]string{"--zk", "zk:2181", "extra"}, nil, "unexpected"},
		{[]string{"--bogus"}, nil, "unknown flag --bogus"},
		{[]string{"--zk", "zk:2181", "--log-format", "xml"}, nil, "want text or json"},
		{[]string{"--zk", "zk:2181", "--shutdown-timeout", "5"}, nil, `--shutdown-timeout: invalid value "5": want a duration`},
	} {
		_, err := parseOptions(tc.args, env(tc.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %v: err %v, want %q", tc.args, tc.env, err, tc.want)
		}
	}
}

func TestRunExitCodes(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, env(nil), &out, &errb, nil); code != 0 || errb.Len() > 0 {
		t.Fatalf("--help: exit %d, stderr %q", code, errb.String())
	}
	for _, want := range []string{"Usage: imrouter", "\n  --zk HOST:PORT,...\n", "\n  --static ", "\n  --lb string\n", "\n  --log-format string\n", "IM_"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, out.String())
		}
	}
	if regexp.MustCompile(`(?m)^\s+-[a-z]`).MatchString(out.String()) || strings.Contains(out.String(), "Other flags") {
		t.Errorf("help spells a flag -name or leaves one out of the groups:\n%s", out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"--version"}, env(nil), &out, io.Discard, nil); code != 0 || !strings.HasPrefix(out.String(), "imrouter ") {
		t.Fatalf("--version: exit %d %q", code, out.String())
	}
	// A usage error: one message and a pointer to --help, exit 2.
	errb.Reset()
	if code := run(context.Background(), []string{"--lb", "fastest"}, env(nil), io.Discard, &errb, nil); code != 2 ||
		errb.String() != "imrouter: --zk is required (or --static for a fixed membership)\nRun 'imrouter --help' for usage.\n" {
		t.Fatalf("no membership source: exit %d %q", code, errb.String())
	}
	// A port already taken: serving fails (1).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrc := make(chan string, 1)
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--static", "n1=127.0.0.1:9090", "--listen", "127.0.0.1:0"}, env(nil), io.Discard, io.Discard,
			func(a string) { addrc <- a })
	}()
	addr := <-addrc
	if code := run(context.Background(), []string{"--static", "n1=127.0.0.1:9090", "--listen", addr}, env(nil), io.Discard, io.Discard, nil); code != 1 {
		t.Fatalf("busy port: exit %d", code)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("shutdown: exit %d", code)
	}
}

// TestServeStatic runs imrouter in-process with a static membership, routes
// over HTTP, and shuts it down like SIGTERM would.
func TestServeStatic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrc := make(chan string, 1)
	var logs testutil.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--static", "n1=127.0.0.1:9090,n2=127.0.0.1:9190@0", "--listen", "127.0.0.1:0", "--lb", "round-robin",
			"--log-format", "json", "--log-level", "debug"}, env(nil), io.Discard, &logs, func(a string) { addrc <- a })
	}()
	var addr string
	select {
	case addr = <-addrc:
	case code := <-done:
		t.Fatalf("exited %d: %s", code, logs.String())
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func(path string, into any) int {
		t.Helper()
		resp, err := hc.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if into != nil {
			if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode
	}
	// The static view arrives at once.
	testutil.Until(t, 5*time.Second, "ready", func() bool { return get("/readyz", nil) == http.StatusOK })
	var route struct {
		NodeID   string `json:"node_id"`
		Addr     string `json:"addr"`
		Strategy string `json:"strategy"`
	}
	for range 3 { // n2 has weight 0: never picked
		if code := get("/v1/route?uid=alice", &route); code != 200 || route.NodeID != "n1" || route.Addr != "127.0.0.1:9090" || route.Strategy != "round-robin" {
			t.Fatalf("route: %d %+v", code, route)
		}
	}
	var e struct{ Error, Reason string }
	if code := get("/v1/route?uid=alice&exclude=n1", &e); code != 503 || e.Error != "no available node" || e.Reason == "" {
		t.Fatalf("503: %d %+v", code, e)
	}
	if code := get("/metrics", nil); code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, logs.String())
	}
	// JSON logs: one object per line.
	// Each answer is logged at debug level with the user and the node.
	var msgs []string
	routes := 0
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var line map[string]any
		if err := json.Unmarshal([]byte(l), &line); err != nil || line["time"] == nil || line["level"] == nil {
			t.Fatalf("not a JSON log line: %q (%v)", l, err)
		}
		msgs = append(msgs, line["msg"].(string))
		switch line["msg"] {
		case "route":
			routes++
			if line["user"] != "alice" || line["node"] != "n1" || line["addr"] != "127.0.0.1:9090" {
				t.Fatalf("route line %q", l)
			}
		case "no route":
			if line["user"] != "alice" || line["reason"] == "" {
				t.Fatalf("no-route line %q", l)
			}
		}
	}
	if routes != 3 || !slices.Contains(msgs, "no route") || !slices.Contains(msgs, "imrouter ready") || !slices.Contains(msgs, "shutting down") {
		t.Fatalf("log messages %v", msgs)
	}
}

// TestConfigFile: flag > env > file > default, unknown keys refused, and
// the example enabled line by line is a valid configuration.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "imrouter.toml")
	if err := os.WriteFile(path, []byte("zk = [\"zk1:2181\", \"zk2:2181\"]\nlb = \"least-active\"\nvirtual-nodes = 40\nlisten = \"127.0.0.1:8081\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseOptions([]string{"--config", path, "--listen", "127.0.0.1:8082"}, env(map[string]string{"IM_LB": "round-robin"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.zk, []string{"zk1:2181", "zk2:2181"}) || o.strategy != lb.RoundRobin || o.vnodes != 40 || o.listen != "127.0.0.1:8082" {
		t.Fatalf("%+v", o)
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("zk = \"zk:2181\"\nstrategy = \"round-robin\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	if code := run(context.Background(), []string{"--config", bad}, env(nil), io.Discard, &errb, nil); code != 2 ||
		!strings.Contains(errb.String(), `unknown key "strategy"`) {
		t.Fatalf("unknown key: exit %d %q", code, errb.String())
	}

	var ex bytes.Buffer
	if code := run(context.Background(), []string{"config", "example"}, env(nil), &ex, io.Discard, nil); code != 0 {
		t.Fatalf("config example: exit %d", code)
	}
	enabled := regexp.MustCompile(`(?m)^#([a-z][a-z0-9-]* = )`).ReplaceAllString(ex.String(), "$1")
	enabled = strings.Replace(enabled, `static = ""`, `static = "n1=127.0.0.1:9090"`, 1) // membership is required
	if n := len(regexp.MustCompile(`(?m)^[a-z][a-z0-9-]* = `).FindAllString(enabled, -1)); n != 10 {
		t.Fatalf("%d settings in the example, want 10:\n%s", n, ex.String())
	}
	full := filepath.Join(dir, "full.toml")
	if err := os.WriteFile(full, []byte(enabled), 0o600); err != nil {
		t.Fatal(err)
	}
	var check bytes.Buffer
	if code := run(context.Background(), []string{"config", "check", "--config", full}, env(nil), &check, io.Discard, nil); code != 0 ||
		!strings.Contains(check.String(), "# imrouter configuration is valid: consistent-hash, static membership of 1 nodes\n") ||
		!strings.Contains(check.String(), `virtual-nodes = 1000  # file`) {
		t.Fatalf("config check: exit %d\n%s", code, check.String())
	}
}
