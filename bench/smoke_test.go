//go:build linux

package bench

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/persist/memstore"
)

// The smoke tests run every scenario briefly against an in-process server
// on 127.0.0.1 and check that the report is complete and consistent. They
// never assert a rate or a latency: the machine may be loaded.

const smokeSecret = "bench-smoke-secret-0123456789"

func TestMain(m *testing.M) {
	// Worker processes of TestSmokeProcs are this test binary.
	if os.Getenv("BENCH_TEST_WORKER") == "1" {
		if v := os.Getenv("BENCH_TEST_NOFILE"); v != "" {
			n, _ := strconv.ParseUint(v, 10, 64)
			_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n})
		}
		os.Exit(RunChild(os.Stdin, os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m, leaktest.Gnet()...)
}

type testNode struct {
	addr, admin string
	ws          string // WebSocket listener (startTestNodeWS)
}

// startTestNode runs an engine with a memory store and its admin endpoint on
// free loopback ports until the test ends.
func startTestNode(t *testing.T) testNode {
	return startTestNodeEdge(t, engine.EdgeConfig{})
}

// startTestNodeWS is startTestNode with a WebSocket listener too.
func startTestNodeWS(t *testing.T) testNode {
	return startTestNodeEdge(t, engine.EdgeConfig{WSAddr: "127.0.0.1:0"})
}

func startTestNodeEdge(t *testing.T, edge engine.EdgeConfig) testNode {
	t.Helper()
	store := memstore.New()
	srv, err := engine.New(engine.Config{Addr: "127.0.0.1:0", Store: store, JWTSecret: []byte(smokeSecret), Edge: edge,
		SendRate: 1e9, SendBurst: 1 << 30, EventLoops: 2, Workers: 32, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.AdminHandler(engine.AdminHooks{}), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = hs.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		<-served
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		_ = store.Close()
	})
	n := testNode{addr: srv.Addr().String(), admin: "http://" + ln.Addr().String()}
	if a := srv.WSAddr(); a != nil {
		n.ws = a.String()
	}
	return n
}

// TestSmokeWebSocket: --ws runs the connection and 1:1 scenarios against
// the node's WebSocket listener (which answers the raw protocol with an
// HTTP error, so every login there went through the upgrade).
func TestSmokeWebSocket(t *testing.T) {
	for _, sc := range []string{ScenarioConns, ScenarioP2P} {
		t.Run(sc, func(t *testing.T) {
			node := startTestNodeWS(t)
			cfg := smokeConfig(t, node, sc)
			cfg.Targets, cfg.WS = []string{node.ws}, true
			r, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkReport(t, r, sc)
			want := int64(cfg.Conns)
			if sc == ScenarioP2P {
				want = int64(2 * cfg.Pairs)
				if r.Delivered == 0 || r.Details == nil || r.Details.Acks == 0 {
					t.Fatalf("p2p over WebSocket: delivered %d, details %+v", r.Delivered, r.Details)
				}
			}
			if r.Ramp.LoggedIn != want || r.Errors != 0 {
				t.Fatalf("logged in %d of %d over WebSocket; errors %v", r.Ramp.LoggedIn, want, r.ErrorsByReason)
			}
		})
	}
	cfg := smokeConfig(t, testNode{addr: "127.0.0.1:1"}, ScenarioP2P)
	cfg.WS, cfg.Baseline = true, true
	if _, err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "--ws") {
		t.Fatalf("--ws with the relay baseline: %v", err)
	}
}

func smokeConfig(t *testing.T, n testNode, scenario string) Config {
	var log bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("imbench log:\n%s", log.String())
		}
	})
	return Config{
		Scenario: scenario, Targets: []string{n.addr}, Admins: []string{n.admin}, Secret: smokeSecret,
		Conns: 300, Pairs: 20, Groups: 3, GroupSize: 8, Slots: 10, Rate: 400, Payload: 64,
		Warmup: 300 * time.Millisecond, Duration: 1500 * time.Millisecond, Drain: 5 * time.Second, Hold: time.Second,
		Concurrency: 100, Procs: 1, Loops: 2, Timeout: 2 * time.Minute, Log: &log,
		RelayInProcess: true,
	}
}

// checkReport asserts what every report must satisfy.
func checkReport(t *testing.T, r *Report, scenario string) {
	t.Helper()
	if r == nil {
		t.Fatal("no report")
	}
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
	if r.Scenario != scenario || r.Target == "" || r.StopReason == "" {
		t.Fatalf("header: scenario %q target %q stop %q", r.Scenario, r.Target, r.StopReason)
	}
	if r.Server.Nodes != 1 || r.Server.RSSBytes == 0 || r.Server.HeapBytes == 0 {
		t.Fatalf("server stats missing: %+v", r.Server)
	}
	if r.Ramp == nil || r.Ramp.FDLimit == 0 || r.Generator.Procs == 0 {
		t.Fatalf("ramp/generator missing: %+v %+v", r.Ramp, r.Generator)
	}
	if r.LatencyUs.Count == 0 || r.MsgsPerSec <= 0 {
		t.Fatalf("no measurement: rate %v latency %+v", r.MsgsPerSec, r.LatencyUs)
	}
	if r.Errors != sumCounts(r.ErrorsByReason) {
		t.Fatalf("errors %d, by reason %v", r.Errors, r.ErrorsByReason)
	}
}

func TestSmokeScenarios(t *testing.T) {
	for _, sc := range Scenarios {
		t.Run(sc, func(t *testing.T) {
			node := startTestNode(t)
			cfg := smokeConfig(t, node, sc)
			r, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkReport(t, r, sc)
			switch sc {
			case ScenarioConns, ScenarioLogin:
				if r.Ramp.LoggedIn != int64(cfg.Conns) || r.Connections != int64(cfg.Conns) || r.Server.Connections < cfg.Conns {
					t.Fatalf("held %d of %d (server %d): %v", r.Connections, cfg.Conns, r.Server.Connections, r.ErrorsByReason)
				}
				if r.LatencyUs.Count != int64(cfg.Conns) {
					t.Fatalf("login latency samples %d", r.LatencyUs.Count)
				}
				if sc == ScenarioConns && (r.Sent == 0 || r.Server.HeapBefore == 0) {
					t.Fatalf("conns: heartbeats %d, heap before %d", r.Sent, r.Server.HeapBefore)
				}
			case ScenarioP2P, ScenarioGroup:
				if r.Sent == 0 || r.Delivered == 0 || r.Details == nil || r.Details.Acks == 0 {
					t.Fatalf("sent %d delivered %d details %+v", r.Sent, r.Delivered, r.Details)
				}
				want := int64(2 * cfg.Pairs)
				if sc == ScenarioGroup {
					want = int64(cfg.Groups * cfg.GroupSize)
				}
				if r.Ramp.Held != want {
					t.Fatalf("held %d of %d", r.Ramp.Held, want)
				}
			case ScenarioChurn:
				if r.Delivered == 0 || r.Sent == 0 {
					t.Fatalf("churn: sent %d delivered %d", r.Sent, r.Delivered)
				}
			}
		})
	}
}

func TestSmokeBaselineAndFindMax(t *testing.T) {
	node := startTestNode(t)
	cfg := smokeConfig(t, node, ScenarioP2P)
	cfg.Baseline = true
	cfg.FindMax = true
	cfg.MaxSteps = 2
	cfg.Rate = 200
	cfg.Duration = time.Second
	cfg.MaxP99 = time.Minute // never the bound: a loaded machine must not fail the test
	cfg.ProfileDir = t.TempDir()
	cfg.Trace = time.Second
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, r, ScenarioP2P)
	if len(r.Phases) == 0 || len(r.Phases) > 2 {
		t.Fatalf("phases: %+v", r.Phases)
	}
	for _, p := range r.Phases {
		if !p.LatencyUs.Ordered() || p.Delivered > p.Sent {
			t.Fatalf("phase %+v", p)
		}
	}
	if r.MaxRate > 0 && r.RateTarget != r.MaxRate/2 {
		t.Fatalf("final phase at %v, max %v", r.RateTarget, r.MaxRate)
	}
	b := r.Baseline
	if b == nil || b.Connections != int64(2*cfg.Pairs) || !b.LatencyUs.Ordered() || b.Note == "" {
		t.Fatalf("baseline %+v", b)
	}
	// A ratio exists when both find-max runs passed a step; on a stalled
	// machine one may fail at its first step, and the note says so.
	if (r.MaxRate > 0 && b.MaxRate > 0) != (b.Ratio > 0) {
		t.Fatalf("ratio %v with max rates %v and %v", b.Ratio, r.MaxRate, b.MaxRate)
	}
	if len(r.ProfileFiles) == 0 || !slices.ContainsFunc(r.ProfileFiles, func(f string) bool { return strings.HasSuffix(f, "trace.out") }) {
		t.Fatalf("profiles listed: %v (want the trace too)", r.ProfileFiles)
	}
	for _, f := range r.ProfileFiles {
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			t.Fatalf("profile %s: %v", f, err)
		}
	}
}

// TestSmokeProcs runs the generator as two worker processes (this test
// binary re-executed) on two source addresses and checks the merge.
func TestSmokeProcs(t *testing.T) {
	node := startTestNode(t)
	cfg := smokeConfig(t, node, ScenarioP2P)
	cfg.Procs = 2
	cfg.WorkerExe = os.Args[0]
	cfg.WorkerArgs = []string{"-test.run=^$"}
	cfg.WorkerEnv = []string{"BENCH_TEST_WORKER=1"}
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, r, ScenarioP2P)
	if r.Generator.Procs != 2 || r.Ramp.Held != int64(2*cfg.Pairs) {
		t.Fatalf("procs %d held %d", r.Generator.Procs, r.Ramp.Held)
	}
	if r.Delivered == 0 || r.Details.Active != cfg.Pairs {
		t.Fatalf("delivered %d active %d", r.Delivered, r.Details.Active)
	}
}

// TestFDLimitReported runs two worker processes whose fd limit is 100 and
// checks that their shares are capped and the limit reported, instead of
// failing obscurely.
func TestFDLimitReported(t *testing.T) {
	node := startTestNode(t)
	cfg := smokeConfig(t, node, ScenarioLogin)
	cfg.Conns = 200
	cfg.Procs = 2
	cfg.WorkerExe = os.Args[0]
	cfg.WorkerArgs = []string{"-test.run=^$"}
	cfg.WorkerEnv = []string{"BENCH_TEST_WORKER=1", "BENCH_TEST_NOFILE=100"}
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, r, ScenarioLogin)
	perProc := 100 - fdReserve
	if r.Ramp.FDLimit != 100 || r.Connections != int64(2*perProc) {
		t.Fatalf("fd limit %d, held %d", r.Ramp.FDLimit, r.Connections)
	}
	if !strings.Contains(r.StopReason, "RLIMIT_NOFILE=100") {
		t.Fatalf("stop reason %q", r.StopReason)
	}
	if n, why := capUnits(10, 2, 15, 20000); n != 7 || !strings.Contains(why, "14 connections") {
		t.Fatalf("capUnits: %d %q", n, why)
	}
	if n, why := capUnits(7, 2, 15, 20000); n != 7 || why != "" {
		t.Fatalf("capUnits under the limit: %d %q", n, why)
	}
}

func TestSmokeDurableBaseline(t *testing.T) {
	node := startTestNode(t)
	cfg := smokeConfig(t, node, ScenarioP2P)
	cfg.BaselineDurable = true
	if _, err := Run(context.Background(), cfg); err == nil {
		t.Fatal("--baseline-durable without --baseline-echo was accepted")
	}
	cfg.Baseline = true
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, r, ScenarioP2P)
	b := r.Baseline
	if b == nil || !b.Durable || b.Connections != int64(2*cfg.Pairs) || b.MsgsPerSec <= 0 || b.Errors != 0 {
		t.Fatalf("baseline %+v", b)
	}
}
