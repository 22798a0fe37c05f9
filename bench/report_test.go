package bench

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReportJSON(t *testing.T) {
	r := &Report{Scenario: "p2p", Target: "imd x1", Connections: 200, DurationS: 10, Sent: 1000, Delivered: 990, Errors: 10,
		MsgsPerSec: 99, LatencyUs: Latency{P50: 100, P90: 200, P99: 300, P999: 400, Max: 500, Count: 990},
		Server: ServerReport{RSSBytes: 1 << 20, HeapBytes: 1 << 19, BytesPerConn: 5000, CPUSeconds: 1.5},
		Params: map[string]any{"pairs": 100}, Machine: ThisMachine(), StopReason: "completed"}
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "r.json")
	read := func() map[string]any {
		if err := r.WriteJSON(path); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("not one JSON object: %v", err)
		}
		return m
	}
	m := read()
	for _, k := range []string{"scenario", "target", "connections", "duration_s", "sent", "delivered", "errors", "msgs_per_sec", "latency_us", "server"} {
		if _, ok := m[k]; !ok {
			t.Errorf("missing %q", k)
		}
	}
	lat := m["latency_us"].(map[string]any)
	for _, k := range []string{"p50", "p90", "p99", "p999", "max"} {
		if _, ok := lat[k]; !ok {
			t.Errorf("latency_us missing %q", k)
		}
	}
	srv := m["server"].(map[string]any)
	for _, k := range []string{"rss_bytes", "heap_bytes", "bytes_per_conn", "cpu_seconds"} {
		if _, ok := srv[k]; !ok {
			t.Errorf("server missing %q", k)
		}
	}
	if _, ok := m["baseline"]; ok {
		t.Error("baseline present though not measured")
	}
	if m["scenario"] != "p2p" || m["delivered"].(float64) != 990 || lat["p999"].(float64) != 400 {
		t.Errorf("values: %v", m)
	}
	r.Baseline = &BaselineReport{MsgsPerSec: 200, Ratio: 0.495}
	m = read()
	b, ok := m["baseline"].(map[string]any)
	if !ok || b["msgs_per_sec"].(float64) != 200 || b["ratio"].(float64) != 0.495 {
		t.Errorf("baseline: %v", m["baseline"])
	}

	bad := *r
	bad.Delivered = bad.Sent + 1
	if bad.Check() == nil {
		t.Error("delivered > sent passed")
	}
	bad = *r
	bad.LatencyUs.P99 = 1000
	if bad.Check() == nil {
		t.Error("unordered percentiles passed")
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		targets, src []string
		remote, ok   bool
	}{
		{[]string{"127.0.0.1:9090", "127.0.0.5:1", "localhost:3"}, []string{"127.0.0.2"}, false, true},
		{[]string{"10.0.0.1:9090"}, nil, false, false},
		{[]string{"127.0.0.1:9090"}, []string{"192.168.1.2"}, false, false},
		{[]string{"10.0.0.1:9090"}, nil, true, true},
	} {
		c := Config{Scenario: ScenarioP2P, Targets: tc.targets, Src: tc.src, AllowRemote: tc.remote}
		if err := c.WithDefaults().Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: %v", tc, err)
		}
	}
}

// TestTraceNeedsProfileDir: --trace saves into the --profile directory,
// so it is refused without one, and a negative length is refused.
func TestTraceNeedsProfileDir(t *testing.T) {
	for _, tc := range []struct {
		trace time.Duration
		dir   string
		ok    bool
	}{
		{0, "", true},
		{5 * time.Second, "/tmp/p", true},
		{5 * time.Second, "", false},
		{-time.Second, "/tmp/p", false},
	} {
		c := Config{Scenario: ScenarioP2P, Trace: tc.trace, ProfileDir: tc.dir}
		if err := c.WithDefaults().Validate(); (err == nil) != tc.ok {
			t.Errorf("trace %v dir %q: %v", tc.trace, tc.dir, err)
		}
	}
}

// TestRoundTripsFromMetrics: the store and Redis counters of a node's
// /metrics are read by op, and commands per message follow from two
// samples.
func TestRoundTripsFromMetrics(t *testing.T) {
	body := "# HELP imgn_store_ops_total x\n# TYPE imgn_store_ops_total counter\n" +
		"imgn_store_ops_total{op=\"insert\"} 120\nimgn_store_ops_total{op=\"find\"} 7\n" +
		"imgn_redis_ops_total{op=\"lookup\"} 3\nimgn_other_total{op=\"insert\"} 99\n" +
		"imgn_store_fsync_seconds_bucket{le=\"0.001\"} 90\nimgn_store_fsync_seconds_bucket{le=\"0.1\"} 100\n" +
		"imgn_store_fsync_seconds_bucket{le=\"+Inf\"} 100\nimgn_store_fsync_seconds_sum 1.5\nimgn_store_fsync_seconds_count 100\n" +
		"imgn_store_commit_stall_seconds_total{cause=\"wal_rotation\"} 0.25\nimgn_store_commit_stalls_total{cause=\"wal_rotation\"} 3\n" +
		"imgn_store_commit_stall_seconds_total{cause=\"l0\"} 0\nimgn_store_commit_stalls_total{cause=\"l0\"} 0\n" +
		"imgn_store_background_jobs_total{job=\"flush\"} 2\nimgn_store_background_seconds_total{job=\"flush\"} 0.5\n" +
		"imgn_store_background_jobs_total{job=\"compaction\"} 0\nimgn_store_background_seconds_total{job=\"compaction\"} 0\n" +
		"imgn_store_background_priority_total{event=\"lowered\"} 2\nimgn_store_background_priority_total{event=\"restored_early\"} 1\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, body)
	}))
	defer srv.Close()
	nc, err := roundTrips(t.Context(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	store, redis, hists, stalls, jobs := nc.store, nc.redis, nc.hists, nc.stalls, nc.jobs
	fs := hists["fsync"]
	if len(hists) != 1 || fs == nil || len(fs.Bounds) != 3 || fs.Count != 100 || fs.Sum != 1.5 {
		t.Fatalf("store histograms %v (fsync %+v)", hists, fs)
	}
	// The window: 10 syncs before it, 9 of them fast; in it 81 of 90 take
	// at most 1 ms, the rest at most 100 ms.
	before := &PromHist{Bounds: fs.Bounds, Counts: []float64{9, 10, 10}, Sum: 0.005, Count: 10}
	got := fs.Sub(before).Summary()
	want := StoreLatency{Count: 90, MeanUs: 16611, P50Us: 1000, P99Us: 100000, P999Us: 100000, MaxUs: 100000, Over50ms: 0.1}
	if got.MeanUs = math.Round(got.MeanUs); got != want {
		t.Fatalf("fsync in the window: %+v, want %+v", got, want)
	}
	if store["insert"] != 120 || store["find"] != 7 || len(store) != 2 || redis["lookup"] != 3 || len(redis) != 1 {
		t.Fatalf("store %v redis %v", store, redis)
	}
	if stalls["wal_rotation"] != 0.25 || stalls["wal_rotation count"] != 3 || stalls["l0 count"] != 0 || len(stalls) != 4 {
		t.Fatalf("stalls %v", stalls)
	}
	if jobs["flush"] != 0.5 || jobs["flush count"] != 2 || jobs["compaction count"] != 0 ||
		jobs["lowered"] != 2 || jobs["restored_early"] != 1 || len(jobs) != 6 {
		t.Fatalf("background jobs %v", jobs)
	}
	s0 := StatsSum{StoreOps: map[string]float64{"insert": 20, "find": 7}, RedisOps: map[string]float64{"lookup": 1}}
	s1 := StatsSum{StoreOps: store, RedisOps: redis}
	st, rd := perMessage(&PhaseResult{InWindowRx: 50}, s0, s1)
	if st != 2 || rd != 0.04 {
		t.Fatalf("per message: store %v redis %v, want 2 and 0.04", st, rd)
	}
}

// TestReportCPUWait: the time the servers, the generator and the relay
// waited for a CPU is reported beside their CPU time, and per CPU-second.
func TestReportCPUWait(t *testing.T) {
	r := &Report{Scenario: "p2p", Target: "imd x1", DurationS: 10, Sent: 10, Delivered: 10, MsgsPerSec: 1,
		Server:    ServerReport{CPUSeconds: 10, CPUWaitSeconds: 14, CPUCores: 1},
		Generator: GeneratorReport{CPUSeconds: 13, CPUSpanS: 14, CPUWaitSeconds: 19.5},
		Baseline:  &BaselineReport{MsgsPerSec: 1, Ratio: 1, Server: ServerReport{CPUSeconds: 10, CPUWaitSeconds: 13.7}}}
	server, generator := printedAndJSON(t, r,
		"server cpu         10.00 s in the window (1.00 cores); waited 14.00 s for a cpu (1.40 s per cpu-second)\n",
		"cpu 13.00 s over the phase's 14.0 s (0.93 cores); waited 19.50 s for a cpu (1.50 s per cpu-second)\n",
		"; relay waited 1.37 s for a cpu per cpu-second")
	if server["cpu_wait_seconds"] != 14 || generator["cpu_wait_seconds"] != 19.5 {
		t.Errorf("JSON: server %v generator %v", server, generator)
	}
	// Not measured: nothing printed.
	r.Server.CPUWaitSeconds, r.Generator.CPUWaitSeconds, r.Baseline.Server.CPUWaitSeconds = 0, 0, 0
	var b strings.Builder
	r.Print(&b)
	if strings.Contains(b.String(), "waited") {
		t.Errorf("wait printed though not measured:\n%s", b.String())
	}
}

// TestPhaseSummaryCPUWait: a find-max step records the servers' CPU wait
// and read syscalls over the same span as its server CPU, as the measured
// phase does, and its line says how many deliveries a read carried.
func TestPhaseSummaryCPUWait(t *testing.T) {
	s0 := StatsSum{Nodes: 1, CPUSeconds: 100, CPUWait: 40, ReadSyscalls: 1000}
	s1 := StatsSum{Nodes: 1, CPUSeconds: 110, CPUWait: 54, ReadSyscalls: 201000}
	p := summarize(&PhaseResult{WindowS: 10, InWindowRx: 500000}, NewHist(), s0, s1)
	if p.ServerCPU != 10 || p.ServerCPUWait != 14 || p.ServerReadSyscalls != 200000 {
		t.Fatalf("server cpu %v wait %v reads %d, want 10, 14 and 200000", p.ServerCPU, p.ServerCPUWait, p.ServerReadSyscalls)
	}
	var out strings.Builder
	(&Report{Scenario: "p2p", DurationS: 10, Phases: []PhaseSummary{p}}).Print(&out)
	if !strings.Contains(out.String(), "  2.50 deliveries per server read") {
		t.Errorf("the step line lacks the deliveries per read:\n%s", out.String())
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"server_cpu_wait_seconds":14`) {
		t.Fatalf("JSON lacks the wait: %s", b)
	}
}

// TestHostCPU: /proc/stat's first line is parsed and turned into shares of
// the window, and the report prints them.
func TestHostCPU(t *testing.T) {
	a, ok := parseHostTicks("cpu  1000 10 500 3000 40 5 100 2 0 0")
	if !ok {
		t.Fatal("a /proc/stat cpu line did not parse")
	}
	b, _ := parseHostTicks("cpu  1190 10 815 3350 40 10 240 2 0 0")
	h := hostCPUBetween(a, b)
	// 1000 ticks passed: user 190, system 315 + irq 5, idle 350, softirq 140, steal 0.
	if h == nil || h.User != 19 || h.System != 32 || h.Idle != 35 || h.Softirq != 14 || h.IOWait != 0 || h.Steal != 0 {
		t.Fatalf("shares %+v; want user 19 system 32 idle 35 softirq 14", h)
	}
	if hostCPUBetween(b, a) != nil || hostCPUBetween(a, a) != nil {
		t.Error("shares from counters that went backwards or did not move")
	}
	for _, bad := range []string{"", "intr 1 2 3", "cpu 1 2", "cpu 1 x 3 4 5"} {
		if _, ok := parseHostTicks(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
	if short, ok := parseHostTicks("cpu 1 2 3 4"); !ok || short[3] != 4 || short[7] != 0 {
		t.Errorf("a line without the later fields: %v %v", short, ok)
	}
	r := &Report{Scenario: "p2p", HostCPU: h}
	var sb strings.Builder
	r.Print(&sb)
	if want := "host cpu           in the window: user 19% system 32% softirq 14% idle 35% iowait 0% steal 0%\n"; !strings.Contains(sb.String(), want) {
		t.Errorf("report lacks %q:\n%s", want, sb.String())
	}
}

// TestCPUIdle: the cpuidle driver is named, the haltpoll guest's polling
// time with it, and the report prints it on the machine line.
func TestCPUIdle(t *testing.T) {
	root := t.TempDir()
	if got := cpuIdle(root); got != "" {
		t.Errorf("no sysfs: %q", got)
	}
	write := func(rel, v string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("devices/system/cpu/cpuidle/current_driver", "intel_idle")
	if got := cpuIdle(root); got != "intel_idle" {
		t.Errorf("intel_idle: %q", got)
	}
	write("devices/system/cpu/cpuidle/current_driver", "haltpoll")
	if got := cpuIdle(root); got != "haltpoll" {
		t.Errorf("haltpoll without the module's parameter: %q", got)
	}
	write("module/haltpoll/parameters/guest_halt_poll_ns", "0")
	got := cpuIdle(root)
	if got != "haltpoll, polls 0 ns before halting" {
		t.Errorf("haltpoll: %q", got)
	}
	r := &Report{Scenario: "p2p", Machine: Machine{CPUs: 2, CPUIdle: got}}
	var sb strings.Builder
	r.Print(&sb)
	if want := "; cpu idle: haltpoll, polls 0 ns before halting\n"; !strings.Contains(sb.String(), want) {
		t.Errorf("report lacks %q:\n%s", want, sb.String())
	}
}

// TestReportSyscalls: the servers' and the relay's syscalls in the window
// are printed per second and per delivery, and kept in the JSON; without
// counts nothing is printed.
func TestReportSyscalls(t *testing.T) {
	r := &Report{Scenario: "p2p", Target: "imd x1", DurationS: 10, Sent: 500000, Delivered: 500000, MsgsPerSec: 50000,
		Server:   ServerReport{CPUSeconds: 9, CPUCores: 0.9, ReadSyscalls: 407000, WriteSyscalls: 819000},
		Baseline: &BaselineReport{MsgsPerSec: 50000, Ratio: 1, Server: ServerReport{CPUSeconds: 8, ReadSyscalls: 250000, WriteSyscalls: 500000}}}
	server, _ := printedAndJSON(t, r,
		"server syscalls    40.7k reads/s, 81.9k writes/s in the window: 1.23 deliveries per read, 0.61 per write\n",
		"relay syscalls     25.0k reads/s, 50.0k writes/s in the window: 2.00 deliveries per read, 1.00 per write\n")
	if server["read_syscalls"] != 407000 || server["write_syscalls"] != 819000 {
		t.Errorf("JSON server: %v", server)
	}
	var b strings.Builder
	r.Server.ReadSyscalls, r.Baseline.Server.ReadSyscalls = 0, 0
	r.Print(&b)
	if strings.Contains(b.String(), "syscalls") {
		t.Errorf("syscalls printed though not measured:\n%s", b.String())
	}
}

// printedAndJSON prints r, checks that the text holds every line of want,
// and returns the report's JSON server and generator sections as maps.
func printedAndJSON(t *testing.T, r *Report, want ...string) (server, generator map[string]float64) {
	t.Helper()
	var b strings.Builder
	r.Print(&b)
	for _, w := range want {
		if !strings.Contains(b.String(), w) {
			t.Errorf("report lacks %q:\n%s", w, b.String())
		}
	}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Server    map[string]float64 `json:"server"`
		Generator map[string]float64 `json:"generator"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m.Server, m.Generator
}

// TestReportStoreStalls: the embedded store's waits inside Pebble's apply
// are printed by cause, and its background jobs by job, zeros too.
func TestReportStoreStalls(t *testing.T) {
	r := &Report{Scenario: "p2p", Target: "imd x1", DurationS: 10, Sent: 10, Delivered: 10, MsgsPerSec: 1,
		Server: ServerReport{StoreStalls: map[string]float64{"wal_rotation": 0.0123, "wal_rotation count": 2, "memtable": 0, "memtable count": 0}}}
	var b strings.Builder
	r.Print(&b)
	want := "store stalls       wal_rotation 2, 12.3 ms in all, memtable 0, 0.0 ms in all, l0 0, 0.0 ms in all (waits inside Pebble's apply in the window)\n"
	if !strings.Contains(b.String(), want) {
		t.Fatalf("report lacks %q:\n%s", want, b.String())
	}
	if strings.Contains(b.String(), "store jobs") {
		t.Fatalf("a job line without job counts:\n%s", b.String())
	}
	r.Server.StoreJobs = map[string]float64{"flush": 0.2505, "flush count": 1, "compaction": 0, "compaction count": 0}
	b.Reset()
	r.Print(&b)
	want = "store jobs         flush 1, 250.5 ms in all, compaction 0, 0.0 ms in all (Pebble's background jobs that ended in the window, wall time)\n"
	if !strings.Contains(b.String(), want) {
		t.Fatalf("report lacks %q:\n%s", want, b.String())
	}
	if strings.Contains(b.String(), "store priority") {
		t.Fatalf("a priority line from a node that does not lower jobs:\n%s", b.String())
	}
	r.Server.StoreJobs["lowered"], r.Server.StoreJobs["restored_early"] = 3, 0
	b.Reset()
	r.Print(&b)
	want = "store priority     lowered 3, restored early 0 ("
	if !strings.Contains(b.String(), want) {
		t.Fatalf("report lacks %q:\n%s", want, b.String())
	}
}
