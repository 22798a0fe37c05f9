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
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/imgn/imgn/internal/ports"
)

// Node is a spawned server process (imd, or the baseline relay).
type Node struct {
	Name   string
	Addr   string // client listener host:port
	WSAddr string // WebSocket listener host:port ("" unless SpawnOptions.WS)
	Admin  string // admin base URL, http://host:port
	cmd    *exec.Cmd
	dir    string
	log    *os.File
	done   chan struct{}
	err    error
}

// Exited reports whether the node's process has ended.
func (n *Node) Exited() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

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
	out, err := exec.Command("go", "build", "-o", path, "./cmd/imd").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("bench: build imd (run from the module root, or pass --imd): %v\n%s", err, out)
	}
	return path, nil
}

// SpawnImd starts one imd on free loopback ports in a fresh data
// directory and waits until /readyz answers.
func SpawnImd(ctx context.Context, name string, o SpawnOptions) (*Node, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		cport, err := ports.Free()
		if err != nil {
			return nil, err
		}
		aport, err := ports.Free()
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "imbench-"+name+"-")
		if err != nil {
			return nil, err
		}
		addr := "127.0.0.1:" + strconv.Itoa(cport)
		admin := "127.0.0.1:" + strconv.Itoa(aport)
		args := []string{"--listen", addr, "--admin", admin, "--store", o.Store, "--data", dir,
			"--jwt-secret", o.Secret, "--send-rate", "1e9", "--send-burst", "1000000000",
			"--max-conns", strconv.Itoa(o.MaxConns), "--log-level", "warn", "--node-id", name}
		if o.NoFsync {
			args = append(args, "--unsafe-no-fsync")
		}
		if o.Store == "memory" {
			// Bounded memory over long runs (the relay keeps nothing):
			// the newest 1,000 messages per inbox, trimmed ones
			// remembered for resends for 2 s. --imd-arg overrides.
			args = append(args, "--inbox-max", "1000", "--dedup-window", "2s")
		}
		wsAddr := ""
		if o.WS {
			wport, err := ports.Free()
			if err != nil {
				return nil, err
			}
			wsAddr = "127.0.0.1:" + strconv.Itoa(wport)
			args = append(args, "--ws-listen", wsAddr)
		}
		args = append(args, o.Args...)
		n, err := startNode(ctx, name, o.Imd, args, nil, dir, addr, admin, o.CPUs)
		if err == nil {
			n.WSAddr = wsAddr
			return n, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// startNode starts a server process and waits for its admin /readyz.
func startNode(ctx context.Context, name, exe string, args, env []string, dir, addr, admin, cpus string) (*Node, error) {
	logf, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Own process group (a terminal's Ctrl-C reaches only imbench, which
	// stops nodes in order); killed if imbench dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	n := &Node{Name: name, Addr: addr, Admin: "http://" + admin, cmd: cmd, dir: dir, log: logf, done: make(chan struct{})}
	go func() {
		n.err = cmd.Wait()
		close(n.done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n.Exited() {
			tail := n.logTail()
			n.cleanup()
			return nil, fmt.Errorf("bench: %s exited during start: %v\n%s", name, n.err, tail)
		}
		if ok, _ := ready(ctx, n.Admin); ok {
			// Pinned once ready: by then the runtime has started its
			// threads; later ones inherit the affinity.
			if err := pinProcess(cmd.Process.Pid, cpus); err != nil {
				n.Stop(2 * time.Second)
				return nil, err
			}
			return n, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			n.Stop(2 * time.Second)
			return nil, fmt.Errorf("bench: %s not ready after 30s\n%s", name, n.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *Node) logTail() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "stderr.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func (n *Node) cleanup() {
	_ = n.log.Close()
	_ = os.RemoveAll(n.dir)
}

// Stop ends the node: SIGTERM (graceful shutdown), SIGKILL after grace,
// then removes its data directory.
func (n *Node) Stop(grace time.Duration) {
	if !n.Exited() {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(grace)
		select {
		case <-n.done:
		case <-t.C:
			_ = n.cmd.Process.Signal(syscall.SIGKILL)
			<-n.done
		}
		t.Stop()
	}
	n.cleanup()
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

func ready(ctx context.Context, admin string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/readyz", nil)
	if err != nil {
		return false, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return false, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}

// NodeStats is the JSON of GET /admin/stats (engine.Stats).
type NodeStats struct {
	NodeID       string  `json:"node_id"`
	Connections  int     `json:"connections"`
	Sessions     int     `json:"sessions"`
	Users        int     `json:"users"`
	RSSBytes     uint64  `json:"rss_bytes"`
	HeapBytes    uint64  `json:"heap_bytes"`
	GoSysBytes   uint64  `json:"go_sys_bytes"`
	Goroutines   int     `json:"goroutines"`
	CPUSeconds   float64 `json:"cpu_seconds"`
	BytesPerConn float64 `json:"bytes_per_conn"`
}

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
	Goroutines  int
	// Round trips to the cluster's services so far, from each node's
	// /metrics: imgn_store_ops_total (MongoDB commands) and
	// imgn_redis_ops_total, by op. Empty for nodes without them.
	StoreOps, RedisOps map[string]float64
	// StoreHists are the embedded store's latency histograms (storeHists),
	// by report name, summed over nodes; empty for other stores.
	StoreHists map[string]*PromHist
}

// roundTrips reads the store and Redis round-trip counters of one node's
// /metrics (Prometheus text format), by op, and the embedded store's
// latency histograms.
func roundTrips(ctx context.Context, admin string) (store, redis map[string]float64, hists map[string]*PromHist, err error) {
	var buf bytes.Buffer
	if err := fetch(ctx, admin+"/metrics", &buf); err != nil {
		return nil, nil, nil, err
	}
	store, redis, hists = map[string]float64{}, map[string]float64{}, map[string]*PromHist{}
lines:
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, "imgn_store_") {
			for name, as := range storeHists {
				h := hists[as]
				if h == nil {
					h = &PromHist{}
				}
				if h.addLine(name, line) {
					hists[as] = h
					continue lines
				}
			}
		}
		var into map[string]float64
		switch {
		case strings.HasPrefix(line, "imgn_store_ops_total{"):
			into = store
		case strings.HasPrefix(line, "imgn_redis_ops_total{"):
			into = redis
		default:
			continue
		}
		_, rest, _ := strings.Cut(line, `op="`)
		op, rest, ok := strings.Cut(rest, `"`)
		_, val, ok2 := strings.Cut(rest, "} ")
		if !ok || !ok2 {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			into[op] += v
		}
	}
	return store, redis, hists, nil
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
			store, redis, hists, rerr := roundTrips(ctx, a)
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
				for op, v := range store {
					sum.StoreOps[op] += v
				}
				for op, v := range redis {
					sum.RedisOps[op] += v
				}
				for name, h := range hists {
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
			sum.Goroutines += st.Goroutines
		})
	}
	wg.Wait()
	return sum, errors.Join(errs...)
}

// captureProfiles saves a CPU profile of d (taken now) and then heap and
// goroutine profiles from admin into dir, named with prefix.
func captureProfiles(ctx context.Context, admin, dir, prefix string, d time.Duration) error {
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
	var errs []error
	errs = append(errs, save("cpu.pprof", admin+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), d+30*time.Second))
	errs = append(errs, save("heap.pprof", admin+"/debug/pprof/heap?gc=1", 30*time.Second))
	errs = append(errs, save("goroutine.pprof", admin+"/debug/pprof/goroutine", 30*time.Second))
	return errors.Join(errs...)
}
