package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/childproc"
	"github.com/imgn/imgn/internal/dirlock"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

type result struct {
	code           int
	stdout, stderr string
}

func invoke(environ map[string]string, args ...string) result {
	var out, errb bytes.Buffer
	code := run(args, envOf(environ), &out, &errb)
	return result{code, out.String(), errb.String()}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "imd.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseOptions(t *testing.T) {
	env := map[string]string{"IM_LISTEN": "127.0.0.1:7000", "IM_JWT_SECRET": "s3", "IM_HEARTBEAT": "10s", "IM_IDLE_TIMEOUT": "40s"}
	o, err := parseOptions([]string{"--store", "memory", "--heartbeat", "5s"}, envOf(env), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.engine.Addr != "127.0.0.1:7000" || string(o.engine.JWTSecret) != "s3" || o.store.kind != storeMemory ||
		o.engine.NodeID != "n7000" || o.engine.NodeNum == 0 {
		t.Fatalf("%+v", o)
	}
	if o.engine.HeartbeatInterval != 5*time.Second || o.engine.IdleTimeout != 40*time.Second {
		t.Fatalf("flag must beat env: heartbeat %s idle %s", o.engine.HeartbeatInterval, o.engine.IdleTimeout)
	}
	// The engine's defaults, not copies of them: with no flags, the bound
	// engine.Config is what WithDefaults makes of the zero Config.
	def := engine.Config{}.WithDefaults()
	o, err = parseOptions(nil, envOf(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.engine.MaxConns != def.MaxConns || o.engine.SendRate != def.SendRate || o.engine.MaxBody != def.MaxBody ||
		o.engine.SessionTTL != def.SessionTTL || o.engine.IdleTimeout != 3*def.HeartbeatInterval || o.engine.EventLoops != def.EventLoops {
		t.Fatalf("defaults differ from the engine's: %+v", o.engine)
	}
}

// TestConfigFilePrecedence: flag > env > file > default, per setting.
func TestConfigFilePrecedence(t *testing.T) {
	path := writeConfig(t, `
listen = "127.0.0.1:7100"
heartbeat = "20s"
max-conns = 500
send-rate = 50.5
store = "memory"
log-format = "json"
zk = ["zk1:2181", "zk2:2181"]
redis = "r:6379"
mongo-uri = "mongodb://u:pw@m:27017"
`)
	o, err := parseOptions([]string{"--config", path, "--max-conns", "700"}, envOf(map[string]string{"IM_HEARTBEAT": "15s"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.engine.Addr != "127.0.0.1:7100" || o.engine.HeartbeatInterval != 15*time.Second || o.engine.MaxConns != 700 ||
		o.engine.SendRate != 50.5 || o.store.kind != storeMemory || o.logFormat != "json" || o.cluster.zk != "zk1:2181,zk2:2181" ||
		!o.clustered() || o.cluster.advertise != "127.0.0.1:7100" || o.engine.IdleTimeout != 45*time.Second {
		t.Fatalf("%+v %+v", o.engine, o.cluster)
	}
	// A misspelt key is an error naming the file, the key and the fix.
	bad := writeConfig(t, "listen = \"127.0.0.1:7100\"\nheartbaet = \"20s\"\n")
	r := invoke(nil, "--config", bad)
	if r.code != 2 || !strings.Contains(r.stderr, bad+`: unknown key "heartbaet" (did you mean "heartbeat"?)`) {
		t.Fatalf("unknown key: %+v", r)
	}
}

// TestHeartbeatCombinations: the idle timeout follows the heartbeat unless
// set, wherever each comes from; a contradiction is a usage error naming
// both flags.
func TestHeartbeatCombinations(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		env       map[string]string
		file      string
		heartbeat time.Duration
		idle      time.Duration
		err       string
	}{
		{nil, nil, "", 30 * time.Second, 90 * time.Second, ""},
		{[]string{"--heartbeat", "2m"}, nil, "", 2 * time.Minute, 6 * time.Minute, ""},
		{[]string{"--heartbeat", "5s"}, nil, "", 5 * time.Second, 15 * time.Second, ""},
		{nil, map[string]string{"IM_HEARTBEAT": "2m"}, "", 2 * time.Minute, 6 * time.Minute, ""},
		{nil, nil, "heartbeat = \"2m\"\n", 2 * time.Minute, 6 * time.Minute, ""},
		{[]string{"--heartbeat", "10s", "--idle-timeout", "40s"}, nil, "", 10 * time.Second, 40 * time.Second, ""},
		{[]string{"--idle-timeout", "60s"}, nil, "", 30 * time.Second, 60 * time.Second, ""},
		{[]string{"--heartbeat", "1m"}, nil, "idle-timeout = \"5m\"\n", time.Minute, 5 * time.Minute, ""},
		{[]string{"--heartbeat", "2m", "--idle-timeout", "90s"}, nil, "", 0, 0, "--idle-timeout (1m30s) must be at least --heartbeat (2m0s)"},
		{[]string{"--heartbeat", "2m"}, nil, "idle-timeout = \"1m\"\n", 0, 0, "--idle-timeout (1m0s) must be at least --heartbeat (2m0s)"},
		{[]string{"--heartbeat", "-1s"}, nil, "", 0, 0, "--heartbeat must be positive, got -1s"},
	} {
		args := tc.args
		if tc.file != "" {
			args = append(args, "--config", writeConfig(t, tc.file))
		}
		o, err := parseOptions(args, envOf(tc.env), io.Discard)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v %v %q: err %v, want %q", tc.args, tc.env, tc.file, err, tc.err)
			}
			if r := invoke(tc.env, args...); r.code != 2 {
				t.Errorf("%v: exit %d, want 2", tc.args, r.code)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v %v %q: %v", tc.args, tc.env, tc.file, err)
			continue
		}
		if o.engine.HeartbeatInterval != tc.heartbeat || o.engine.IdleTimeout != tc.idle {
			t.Errorf("%v %v %q: heartbeat %s idle %s, want %s %s", tc.args, tc.env, tc.file,
				o.engine.HeartbeatInterval, o.engine.IdleTimeout, tc.heartbeat, tc.idle)
		}
	}
}

// TestUsageErrors: a bad setting prints one message and a pointer to
// --help, never the flag list, and exits 2.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--heartbeat", "5"}, nil, `imd: --heartbeat: invalid value "5": want a duration with a unit, e.g. 5s, 2m or 1h`},
		{[]string{"--store", "rocks"}, nil, `imd: --store must be embedded or memory, got "rocks"`},
		{[]string{"--retention", "-1h"}, nil, "imd: --retention must be >= 0, got -1h0m0s"},
		{[]string{"--inbox-max", "-5"}, nil, "imd: --inbox-max must be >= 0, got -5"},
		{[]string{"--background-nice", "20"}, nil, "imd: --background-nice must be 0..19, got 20"},
		{[]string{"--background-nice", "-1"}, nil, "imd: --background-nice must be 0..19, got -1"},
		{[]string{"--store", "memory", "--inbox-max", "-5"}, nil, "imd: --inbox-max must be >= 0"},
		{[]string{"--node-num", "5000"}, nil, "imd: --node-num must be in 1..1023, got 5000"},
		{[]string{"--listen", "nonsense"}, nil, `imd: --listen "nonsense"`},
		{[]string{"--bogus"}, nil, "imd: unknown flag --bogus"},
		{[]string{"extra"}, nil, "imd: unexpected arguments: extra"},
		{[]string{"--log-format", "xml"}, nil, `imd: --log-format "xml": want text or json`},
		{[]string{"--log-level", "loud"}, nil, `imd: --log-level "loud": want debug, info, warn or error`},
		{[]string{"--zk", "z:2181"}, nil, "imd: cluster mode needs --zk, --redis and --mongo-uri together"},
		{[]string{"--zk", "z:1", "--redis", "r:1", "--mongo-uri", "mongodb://u:secretpw@m", "--mesh", "carrier-pigeon"}, nil, `imd: --mesh must be direct or redis`},
		{[]string{"--max-conns", "-5"}, nil, "imd: --max-conns must be at least 1, got -5"},
		{nil, map[string]string{"IM_MAX_CONNS": "lots"}, `imd: IM_MAX_CONNS="lots": want an integer`},
		{[]string{"config"}, nil, "imd: config needs a subcommand: example or check"},
		{[]string{"config", "frobnicate"}, nil, `imd: unknown config subcommand "frobnicate"`},
	} {
		r := invoke(tc.env, tc.args...)
		if r.code != 2 || !strings.HasPrefix(r.stderr, tc.want) || !strings.HasSuffix(r.stderr, "\nRun 'imd --help' for usage.\n") ||
			strings.Count(r.stderr, "\n") != 2 || r.stdout != "" {
			t.Errorf("%v %v: exit %d\nstderr: %s\nwant prefix %q", tc.args, tc.env, r.code, r.stderr, tc.want)
		}
		if strings.Contains(r.stderr, "secretpw") {
			t.Errorf("a usage error shows a password: %s", r.stderr)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	r := invoke(nil, "--help")
	if r.code != 0 || r.stderr != "" || !strings.HasPrefix(r.stdout, "Usage: imd [flags]\n       imd config example\n") {
		t.Fatalf("help: %+v", r)
	}
	if regexp.MustCompile(`(?m)^\s+-[a-z]`).MatchString(r.stdout) || strings.Contains(r.stdout, "Other flags") {
		t.Fatalf("help spells a flag -name or leaves one out of the groups:\n%s", r.stdout)
	}
	for _, want := range []string{"\nCluster mode (--zk, --redis and --mongo-uri together):\n", "  --heartbeat duration\n", "  --config FILE\n", "  --log-format string\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	r = invoke(nil, "--version")
	if r.code != 0 || !regexp.MustCompile(`^imd \S+ \(commit `).MatchString(r.stdout) {
		t.Fatalf("version: %+v", r)
	}
}

// TestEngineFieldNames: the engine fields imd binds exist, so the
// engine's messages are translated to flag names.
func TestEngineFieldNames(t *testing.T) {
	_, fields := newFlagSet(&options{}, io.Discard)
	typ, edge := reflect.TypeOf(engine.Config{}), reflect.TypeOf(engine.EdgeConfig{})
	for field, name := range fields {
		_, ok := typ.FieldByName(field)
		if _, inEdge := edge.FieldByName(field); !ok && !inEdge {
			t.Errorf("flag --%s is bound to engine.Config.%s (or Config.Edge.%[2]s), which does not exist", name, field)
		}
	}
	if len(fields) < 15 {
		t.Fatalf("only %d engine fields bound", len(fields))
	}
}

// TestConfigExample: the example is complete (every setting once, in a
// group) and, with every line enabled, is a valid configuration equal to
// the defaults.
func TestConfigExample(t *testing.T) {
	r := invoke(nil, "config", "example")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%+v", r)
	}
	fs, _ := newFlagSet(&options{}, io.Discard)
	enabled := regexp.MustCompile(`(?m)^#([a-z][a-z0-9-]* = )`).ReplaceAllString(r.stdout, "$1")
	keys := regexp.MustCompile(`(?m)^([a-z][a-z0-9-]*) = `).FindAllStringSubmatch(enabled, -1)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if len(keys) != n-2 { // all but --config and --version
		t.Fatalf("%d settings in the example, imd has %d flags:\n%s", len(keys), n, r.stdout)
	}
	if !strings.Contains(r.stdout, "# Default: 3 x heartbeat.\n#idle-timeout = \"0s\"\n") {
		t.Fatalf("derived default not explained:\n%s", r.stdout)
	}
	path := writeConfig(t, enabled)
	check := invoke(nil, "config", "check", "--config", path)
	if check.code != 0 {
		t.Fatalf("the enabled example does not check: %+v", check)
	}
	def, err := parseOptions(nil, envOf(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := parseOptions([]string{"--config", path}, envOf(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	def.flags, fromFile.flags, def.configFile, fromFile.configFile = nil, nil, "", ""
	if !reflect.DeepEqual(def, fromFile) {
		t.Fatalf("the example's values differ from the defaults:\n%+v\n%+v", def, fromFile)
	}
}

func TestConfigCheck(t *testing.T) {
	path := writeConfig(t, "send-rate = 50.0\nmongo-uri = \"mongodb://admin:pw123@db:27017\"\nzk = \"z:2181\"\nredis = \"r:6379\"\n")
	r := invoke(map[string]string{"IM_JWT_SECRET": "topsecret", "IM_CONFIG": path}, "config", "check", "--heartbeat", "1m")
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	for _, want := range []string{
		"# imd configuration is valid: node n9090 (cluster node, mesh direct)\n",
		"# config file: " + path + "\n",
		"heartbeat = \"1m0s\"  # flag\n",
		"idle-timeout = \"3m0s\"  # derived: 3 x heartbeat\n",
		"send-rate = 50  # file\n",
		"jwt-secret = \"REDACTED\"  # env IM_JWT_SECRET\n",
		"mongo-uri = \"mongodb://admin:REDACTED@db:27017\"  # file\n",
		"max-conns = 19000  # default\n",
		"node-id = \"n9090\"  # derived: n + the port of listen, e.g. n9090\n",
		"event-loops = ",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("check output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "topsecret") || strings.Contains(r.stdout, "pw123") {
		t.Fatalf("check prints a secret:\n%s", r.stdout)
	}
}

// TestDataDirectoryLocked: a second imd on a data directory in use stops
// at once, naming the holder's pid and the lock file.
func TestDataDirectoryLocked(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	l, err := dirlock.Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	r := invoke(nil, "--data", dir, "--listen", "127.0.0.1:0", "--admin", "")
	if r.code != 1 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"data directory " + dir + " is in use", "pid " + strconv.Itoa(os.Getpid()), filepath.Join(dir, dirlock.FileName)} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
}

// TestAdminOnlineUnknownUser: the admin API tells an unknown user from an
// offline one.
func TestAdminOnlineUnknownUser(t *testing.T) {
	store := memstore.New()
	if err := store.CreateUser(context.Background(), persist.User{ID: "alice", PasswordHash: "x"}); err != nil {
		t.Fatal(err)
	}
	srv, err := engine.New(engine.Config{Store: store, Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	h := httptest.NewServer(adminMux(srv, store, engine.AdminHooks{}))
	defer h.Close()
	for _, tc := range []struct {
		user   string
		status int
		body   string
	}{
		{"nobody", http.StatusNotFound, `{"error":"no such user","user":"nobody"}`},
		{"alice", http.StatusOK, `{"devices":[],"online":false,"user":"alice"}`},
	} {
		resp, err := http.Get(h.URL + "/admin/online?user=" + tc.user)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		got, _ := json.Marshal(body)
		if resp.StatusCode != tc.status || string(got) != tc.body {
			t.Errorf("%s: %d %s, want %d %s", tc.user, resp.StatusCode, got, tc.status, tc.body)
		}
	}
	// Other endpoints still reach the engine.
	resp, err := http.Get(h.URL + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestBinary runs the built imd: the stamped version, and JSON logs in
// which every line names the node.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs imd")
	}
	bin := buildImd(t)
	out, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "imd "+testVersion+" (commit 0123456789ab from 2026-01-02T03:04:05Z, go1.") {
		t.Fatalf("--version: %q %v", out, err)
	}

	cmd := exec.Command(bin, "--store", "memory", "--listen", freePort(t), "--admin", "", "--log-format", "json", "--node-id", "jsonnode")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = childproc.Attr(false)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(stderr)
	var msgs []string
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("not a JSON line: %q", sc.Text())
		}
		if line["node"] != "jsonnode" || strings.Count(sc.Text(), `"node":`) != 1 || line["time"] == nil || line["level"] == nil {
			t.Fatalf("line without node (once), time or level: %q", sc.Text())
		}
		msgs = append(msgs, line["msg"].(string))
		if line["msg"] == "imd ready" {
			_ = cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v (lines %v)", err, msgs)
	}
	if strings.Join(msgs, ",") != "listening,imd ready,shutting down,stopped" {
		t.Fatalf("log lines %v", msgs)
	}
}

func TestProcsFor(t *testing.T) {
	parse := func(args ...string) *options {
		t.Helper()
		o, err := parseOptions(args, envOf(nil), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	// The CPU-derived settings are pinned to the CPUs before GOMAXPROCS
	// is raised, and procsFor leaves them.
	o := parse("--data", t.TempDir())
	cpus := runtime.GOMAXPROCS(0)
	if o.engine.EventLoops != cpus || o.engine.HashConcurrency != cpus {
		t.Fatalf("parsed: loops %d, hash concurrency %d, want both %d", o.engine.EventLoops, o.engine.HashConcurrency, cpus)
	}
	if got := procsFor(o, envOf(nil), 3, 3); got != 3*embeddedProcsPerCPU {
		t.Fatalf("embedded store on 3 CPUs: GOMAXPROCS %d, want %d", got, 3*embeddedProcsPerCPU)
	}
	if o.engine.EventLoops != cpus || o.engine.HashConcurrency != cpus {
		t.Fatalf("procsFor changed the CPU-derived settings: loops %d, hash concurrency %d", o.engine.EventLoops, o.engine.HashConcurrency)
	}
	o = parse("--data", t.TempDir(), "--event-loops", "5")
	o.engine.HashConcurrency = 7
	procsFor(o, envOf(nil), 3, 3)
	if o.engine.EventLoops != 5 || o.engine.HashConcurrency != 7 {
		t.Fatalf("set values must stay: loops %d, hash concurrency %d", o.engine.EventLoops, o.engine.HashConcurrency)
	}
	for _, c := range []struct {
		name string
		o    *options
		env  map[string]string
	}{
		{"memory store", parse("--store", "memory"), nil},
		{"GOMAXPROCS set", parse("--data", t.TempDir()), map[string]string{"GOMAXPROCS": "2"}},
	} {
		if got := procsFor(c.o, envOf(c.env), 3, 3); got != 0 {
			t.Errorf("%s: GOMAXPROCS %d, want it left alone", c.name, got)
		}
	}
	o = parse("--data", t.TempDir())
	if got := procsFor(o, envOf(nil), 2, 16); got != 0 {
		t.Errorf("Go's default (2) below the CPUs online (16), as under a container's CPU quota: GOMAXPROCS %d, want it left alone", got)
	}
	o = parse("--data", t.TempDir())
	o.cluster.zk = "127.0.0.1:2181"
	if got := procsFor(o, envOf(nil), 3, 3); got != 0 {
		t.Errorf("cluster mode: GOMAXPROCS %d, want it left alone", got)
	}
}
