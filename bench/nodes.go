package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imgn/imgn/internal/clusterkit"
)

// Node is a spawned server process (imd, or the baseline relay).
type Node struct {
	Name   string
	Addr   string // client listener host:port
	WSAddr string // WebSocket listener host:port ("" unless SpawnOptions.WS)
	Admin  string // admin base URL, http://host:port
	proc   *clusterkit.Proc
	dir    string // removed by Stop
}

// Exited reports whether the node's process has ended.
func (n *Node) Exited() bool { return !n.proc.Running() }

// SpawnOptions configures imd nodes started by the bench.
type SpawnOptions struct {
	Imd      string   // path of the imd binary (built from ./cmd/imd if missing)
	Store    string   // memory or embedded
	NoFsync  bool     // embedded store without fsync
	Secret   string   // --jwt-secret
	MaxConns int      // --max-conns
	Args     []string // extra arguments
	Log      io.Writer
	CPUs     string // CPU affinity list ("" = none)
	WS       bool   // also listen for WebSocket (Node.WSAddr)
}

// EnsureImd returns path, building ./cmd/imd there when it does not exist.
func EnsureImd(path string, log io.Writer) (string, error) {
	if path == "" {
		path = "bin/imd"
	}
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	fmt.Fprintf(log, "building %s from ./cmd/imd\n", path)
	if err := clusterkit.BuildTo(context.Background(), path, "imd"); err != nil {
		return "", fmt.Errorf("bench: run from the module, or pass --imd: %w", err)
	}
	return path, nil
}

// SpawnImd starts one imd on free loopback ports in a fresh data
// directory and waits until /readyz answers. A port taken between its
// pick and imd's bind makes the start fail; it is tried three times.
func SpawnImd(ctx context.Context, name string, o SpawnOptions) (*Node, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		dir, err := os.MkdirTemp("", "imbench-"+name+"-")
		if err != nil {
			return nil, err
		}
		args := []string{"--store", o.Store, "--data", dir,
			"--jwt-secret", o.Secret, "--send-rate", "1e9", "--send-burst", "1000000000",
			"--max-conns", strconv.Itoa(o.MaxConns), "--log-level", "warn"}
		if o.NoFsync {
			args = append(args, "--unsafe-no-fsync")
		}
		if o.Store == "memory" {
			// Bounded memory over long runs (the relay keeps nothing):
			// the newest 1,000 messages per inbox, trimmed ones
			// remembered for resends for 2 s. --imd-arg overrides.
			args = append(args, "--inbox-max", "1000", "--dedup-window", "2s")
		}
		kn, err := clusterkit.NewNode(clusterkit.NodeSpec{Path: o.Imd, Dir: dir, ID: name, WS: o.WS,
			Args: append(args, o.Args...)})
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		n := &Node{Name: name, Addr: kn.Listen, WSAddr: kn.WSListen, Admin: "http://" + kn.Admin, proc: kn.Proc, dir: dir}
		if err := n.start(ctx, o.CPUs); err != nil {
			lastErr = err
			continue
		}
		return n, nil
	}
	return nil, lastErr
}

// startNode starts a server process that serves /readyz on admin and
// waits until it answers.
func startNode(ctx context.Context, name, exe string, args, env []string, dir, addr, admin, cpus string) (*Node, error) {
	p := &clusterkit.Proc{Name: name, Path: exe, Args: args, Env: env, LogPath: filepath.Join(dir, name+".log")}
	n := &Node{Name: name, Addr: addr, Admin: "http://" + admin, proc: p, dir: dir}
	if err := n.start(ctx, cpus); err != nil {
		return nil, err
	}
	return n, nil
}

// start runs the process, waits until it is ready and pins it to cpus. On
// error everything is stopped and removed.
func (n *Node) start(ctx context.Context, cpus string) error {
	// clusterkit.Proc runs it in its own process group (a terminal's
	// Ctrl-C reaches only imbench, which stops nodes in order), killed if
	// imbench dies.
	if err := n.proc.Start(); err != nil {
		_ = os.RemoveAll(n.dir)
		return fmt.Errorf("bench: %w", err)
	}
	if err := n.proc.WaitHTTP(ctx, n.Admin+"/readyz", 30*time.Second); err != nil {
		n.Stop(2 * time.Second)
		return fmt.Errorf("bench: %w", err)
	}
	// Pinned once ready: by then the runtime has started its threads;
	// later ones inherit the affinity.
	if err := pinProcess(n.proc.PID(), cpus); err != nil {
		n.Stop(2 * time.Second)
		return err
	}
	return nil
}

// Stop ends the node: SIGTERM (graceful shutdown), SIGKILL after grace,
// then removes its data directory (and with it the log).
func (n *Node) Stop(grace time.Duration) {
	n.proc.Term(grace)
	_ = os.RemoveAll(n.dir)
}

// StopNodes stops nodes concurrently.
func StopNodes(nodes []*Node, grace time.Duration) {
	var wg sync.WaitGroup
	for _, n := range nodes {
		if n != nil {
			wg.Go(func() { n.Stop(grace) })
		}
	}
	wg.Wait()
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// NodeStats is the JSON of GET /admin/stats.
type NodeStats = clusterkit.Stats

// FetchStats reads /admin/stats of one admin base URL. With gc it first
// asks the node to collect garbage (GET /debug/pprof/heap?gc=1, discarded),
// so heap and RSS describe live memory.
func FetchStats(ctx context.Context, admin string, gc bool) (NodeStats, error) {
	var st NodeStats
	if gc {
		if err := fetch(ctx, admin+"/debug/pprof/heap?gc=1", io.Discard); err != nil {
			return st, err
		}
	}
	var buf bytes.Buffer
	if err := fetch(ctx, admin+"/admin/stats", &buf); err != nil {
		return st, err
	}
	if err := json.Unmarshal(buf.Bytes(), &st); err != nil {
		return st, fmt.Errorf("bench: %s/admin/stats: %w", admin, err)
	}
	return st, nil
}

func fetch(ctx context.Context, url string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("bench: GET %s: %s", url, resp.Status)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// StatsSum is the sum of several nodes' stats.
type StatsSum struct {
	Nodes       int
	Connections int
	Sessions    int
	RSS, Heap   uint64
	CPUSeconds  float64
	CPUWait     float64 // seconds runnable but waiting for a CPU (NodeStats.CPUWaitSeconds)
	// Syscalls made (NodeStats.ReadSyscalls, WriteSyscalls).
	ReadSyscalls, WriteSyscalls uint64
	Goroutines                  int
	// Round trips to the cluster's services so far, from each node's
	// /metrics: imgn_store_ops_total (MongoDB commands) and
	// imgn_redis_ops_total, by op. Empty for nodes without them.
	StoreOps, RedisOps map[string]float64
	// StoreHists are the embedded store's latency histograms (storeHists),
	// by report name, summed over nodes; empty for other stores.
	StoreHists map[string]*PromHist
	// StoreStalls are the embedded store's waits inside Pebble's apply
	// (imgn_store_commit_stall_seconds_total and _stalls_total), by
	// cause: "<cause>" the seconds, "<cause> count" the number; summed
	// over nodes, empty for other stores.
	StoreStalls map[string]float64
	// StoreJobs are the embedded store's background jobs that ended
	// (imgn_store_background_seconds_total and _jobs_total), by job:
	// "<job>" the seconds, "<job> count" the number; summed over nodes.
	// Also "lowered" and "restored_early": the jobs begun at a lower CPU
	// priority and those restored before their end
	// (imgn_store_background_priority_total).
	StoreJobs map[string]float64
}

// nodeCounters is what roundTrips reads from one node's /metrics.
type nodeCounters struct {
	store, redis map[string]float64 // round trips by op
	hists        map[string]*PromHist
	// The embedded store's waits inside Pebble's apply, by cause, and
	// its background jobs, by job: "<name>" the seconds, "<name> count"
	// the number.
	stalls, jobs map[string]float64
}

// roundTrips reads the store and Redis round-trip counters of one node's
// /metrics (Prometheus text format), by op, and the embedded store's
// latency histograms, stalls (StatsSum.StoreStalls) and background jobs
// (StatsSum.StoreJobs).
func roundTrips(ctx context.Context, admin string) (nodeCounters, error) {
	var buf bytes.Buffer
	if err := fetch(ctx, admin+"/metrics", &buf); err != nil {
		return nodeCounters{}, err
	}
	n := nodeCounters{store: map[string]float64{}, redis: map[string]float64{}, hists: map[string]*PromHist{},
		stalls: map[string]float64{}, jobs: map[string]float64{}}
lines:
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, "imgn_store_") {
			for name, as := range storeHists {
				h := n.hists[as]
				if h == nil {
					h = &PromHist{}
				}
				if h.addLine(name, line) {
					n.hists[as] = h
					continue lines
				}
			}
		}
		var into map[string]float64
		label, suffix := `op="`, ""
		switch {
		case strings.HasPrefix(line, "imgn_store_ops_total{"):
			into = n.store
		case strings.HasPrefix(line, "imgn_redis_ops_total{"):
			into = n.redis
		case strings.HasPrefix(line, "imgn_store_commit_stall_seconds_total{"):
			into, label = n.stalls, `cause="`
		case strings.HasPrefix(line, "imgn_store_commit_stalls_total{"):
			into, label, suffix = n.stalls, `cause="`, " count"
		case strings.HasPrefix(line, "imgn_store_background_seconds_total{"):
			into, label = n.jobs, `job="`
		case strings.HasPrefix(line, "imgn_store_background_jobs_total{"):
			into, label, suffix = n.jobs, `job="`, " count"
		case strings.HasPrefix(line, "imgn_store_background_priority_total{"):
			into, label = n.jobs, `event="`
		default:
			continue
		}
		_, rest, _ := strings.Cut(line, label)
		op, rest, ok := strings.Cut(rest, `"`)
		_, val, ok2 := strings.Cut(rest, "} ")
		if !ok || !ok2 {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			into[op+suffix] += v
		}
	}
	return n, nil
}

// addInto adds every value of from to *into, making the map when needed.
func addInto(into *map[string]float64, from map[string]float64) {
	for k, v := range from {
		if *into == nil {
			*into = map[string]float64{}
		}
		(*into)[k] += v
	}
}

// Total sums the counts of m.
func Total(m map[string]float64) float64 {
	t := 0.0
	for _, v := range m {
		t += v
	}
	return t
}

// OpsDelta returns after - before for every op of after.
func OpsDelta(before, after map[string]float64) map[string]float64 {
	if len(after) == 0 {
		return nil
	}
	d := make(map[string]float64, len(after))
	for op, v := range after {
		d[op] = v - before[op]
	}
	return d
}

// FetchAll reads and sums the stats of every admin URL (concurrently).
func FetchAll(ctx context.Context, admins []string, gc bool) (StatsSum, error) {
	var (
		mu   sync.Mutex
		sum  StatsSum
		errs []error
		wg   sync.WaitGroup
	)
	sem := make(chan struct{}, 8)
	for _, a := range admins {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			st, err := FetchStats(ctx, a, gc)
			nc, rerr := roundTrips(ctx, a)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			if rerr == nil {
				if sum.StoreOps == nil {
					sum.StoreOps, sum.RedisOps = map[string]float64{}, map[string]float64{}
				}
				addInto(&sum.StoreOps, nc.store)
				addInto(&sum.RedisOps, nc.redis)
				addInto(&sum.StoreStalls, nc.stalls)
				addInto(&sum.StoreJobs, nc.jobs)
				for name, h := range nc.hists {
					if sum.StoreHists == nil {
						sum.StoreHists = map[string]*PromHist{}
					}
					if sum.StoreHists[name] == nil {
						sum.StoreHists[name] = &PromHist{}
					}
					sum.StoreHists[name].add(h)
				}
			}
			sum.Nodes++
			sum.Connections += st.Connections
			sum.Sessions += st.Sessions
			sum.RSS += st.RSSBytes
			sum.Heap += st.HeapBytes
			sum.CPUSeconds += st.CPUSeconds
			sum.CPUWait += st.CPUWaitSeconds
			sum.ReadSyscalls += st.ReadSyscalls
			sum.WriteSyscalls += st.WriteSyscalls
			sum.Goroutines += st.Goroutines
		})
	}
	wg.Wait()
	return sum, errors.Join(errs...)
}

// captureProfiles saves a CPU profile of d (taken now) and then heap and
// goroutine profiles from admin into dir, named with prefix; with trace >
// 0 also an execution trace of that length, taken at the same time as the
// CPU profile (Go records both at once).
func captureProfiles(ctx context.Context, admin, dir, prefix string, d, trace time.Duration) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	secs := max(1, int(d.Seconds()))
	save := func(name, url string, timeout time.Duration) error {
		f, err := os.Create(filepath.Join(dir, prefix+name))
		if err != nil {
			return err
		}
		defer f.Close()
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		req, err := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := (&http.Client{}).Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("bench: GET %s: %s", url, resp.Status)
		}
		_, err = io.Copy(f, resp.Body)
		return err
	}
	var traceErr error
	var tracing sync.WaitGroup
	if trace > 0 {
		tracing.Go(func() {
			tsecs := max(1, int(trace.Seconds()))
			traceErr = save("trace.out", admin+"/debug/pprof/trace?seconds="+strconv.Itoa(tsecs), trace+30*time.Second)
		})
	}
	var errs []error
	errs = append(errs, save("cpu.pprof", admin+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), d+30*time.Second))
	tracing.Wait()
	errs = append(errs, traceErr)
	errs = append(errs, save("heap.pprof", admin+"/debug/pprof/heap?gc=1", 30*time.Second))
	errs = append(errs, save("goroutine.pprof", admin+"/debug/pprof/goroutine", 30*time.Second))
	return errors.Join(errs...)
}
