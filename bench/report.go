package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// Report is the result of one run: one JSON object (WriteJSON). The first
// fields are the documented contract (docs/BENCHMARKS.md); the rest are
// details.
//
// msgs_per_sec is the scenario's headline rate: deliveries per second
// received inside the measurement window (p2p, group), logins per second
// during the ramp (conns, login) or connect-login-send-disconnect cycles per
// second (churn). latency_us is the delivery latency from the intended send
// time (p2p, group), the login latency from connect() to LOGIN_OK (conns,
// login) or the cycle latency from connect() to SEND_ACK (churn).
type Report struct {
	Scenario    string          `json:"scenario"`
	Target      string          `json:"target"`
	Connections int64           `json:"connections"`
	DurationS   float64         `json:"duration_s"`
	Sent        int64           `json:"sent"`
	Delivered   int64           `json:"delivered"`
	Errors      int64           `json:"errors"`
	MsgsPerSec  float64         `json:"msgs_per_sec"`
	LatencyUs   Latency         `json:"latency_us"`
	Server      ServerReport    `json:"server"`
	Baseline    *BaselineReport `json:"baseline,omitempty"`

	RateTarget     float64          `json:"rate_target,omitempty"`
	ErrorsByReason map[string]int64 `json:"errors_by_reason,omitempty"`
	Ramp           *RampReport      `json:"ramp,omitempty"`
	Generator      GeneratorReport  `json:"generator"`
	Host           *HostReport      `json:"host,omitempty"`
	Details        *Details         `json:"details,omitempty"`
	Phases         []PhaseSummary   `json:"phases,omitempty"`
	MaxRate        float64          `json:"max_rate,omitempty"`
	StopReason     string           `json:"stop_reason"`
	Params         map[string]any   `json:"params"`
	Machine        Machine          `json:"machine"`
	CPUPressureEnd string           `json:"cpu_pressure_end,omitempty"`
	// HostCPU is how the machine's CPUs spent the measured window.
	HostCPU      *HostCPU `json:"host_cpu,omitempty"`
	ProfileFiles []string `json:"profile_files,omitempty"`
	// FsyncProbe is the latency of the bare write+fdatasync loop run
	// beside the node in the window (--fsync-probe), in microseconds.
	FsyncProbe *Latency `json:"fsync_probe_us,omitempty"`
	// Percentiles is the latency spectrum (.hgrm text); not in the JSON.
	Percentiles string `json:"-"`
}

// ServerReport is what the nodes' /admin/stats said, summed over nodes.
type ServerReport struct {
	RSSBytes     uint64  `json:"rss_bytes"`
	HeapBytes    uint64  `json:"heap_bytes"`
	BytesPerConn float64 `json:"bytes_per_conn"`
	CPUSeconds   float64 `json:"cpu_seconds"`
	// CPUWaitSeconds is the time the servers' threads waited for a CPU in
	// the same span as CPUSeconds (0 where the kernel keeps no schedstat).
	CPUWaitSeconds float64 `json:"cpu_wait_seconds,omitempty"`
	// ReadSyscalls and WriteSyscalls are the servers' read and write
	// system calls in the window (/proc/self/io of each node; 0 where the
	// kernel keeps none). Set beside the deliveries they say how many
	// messages a call carried: about one read and one write per message
	// and side under light load, far fewer calls under heavy load.
	ReadSyscalls  uint64 `json:"read_syscalls,omitempty"`
	WriteSyscalls uint64 `json:"write_syscalls,omitempty"`

	Nodes       int `json:"nodes"`
	Connections int `json:"connections"`
	Sessions    int `json:"sessions"`
	Goroutines  int `json:"goroutines"`
	// The marginal cost of the connections: (after - before) / connections,
	// both sampled after a forced GC (conns, login).
	RSSPerConnMarginal  float64 `json:"rss_per_conn_marginal,omitempty"`
	HeapPerConnMarginal float64 `json:"heap_per_conn_marginal,omitempty"`
	RSSBefore           uint64  `json:"rss_before,omitempty"`
	HeapBefore          uint64  `json:"heap_before,omitempty"`
	// Messages (deliveries) per server CPU-second in the window: the
	// per-core rate, independent of how much CPU the generator took.
	MsgsPerCPUSecond float64 `json:"msgs_per_cpu_second,omitempty"`
	CPUCores         float64 `json:"cpu_cores,omitempty"` // cpu_seconds / duration
	// Cluster nodes only: round trips in the window to MongoDB (commands)
	// and Redis, by op and per message delivered in the window.
	StoreOps        map[string]float64 `json:"store_ops,omitempty"`
	RedisOps        map[string]float64 `json:"redis_ops,omitempty"`
	StoreCmdsPerMsg float64            `json:"store_cmds_per_msg,omitempty"`
	RedisCmdsPerMsg float64            `json:"redis_cmds_per_msg,omitempty"`
	// Embedded store only: its commit and WAL fsync latencies in the
	// window (imgn_store_commit_seconds, imgn_store_fsync_seconds).
	StoreLatency map[string]StoreLatency `json:"store_latency,omitempty"`
	// StoreStalls are the embedded store's waits inside Pebble's apply in
	// the window, by cause: "<cause>" seconds, "<cause> count" applies.
	StoreStalls map[string]float64 `json:"store_stalls,omitempty"`
	// StoreJobs are the embedded store's background jobs (Pebble's
	// flushes and compactions) that ended in the window, by job: "<job>"
	// seconds of wall time, "<job> count" jobs; "lowered" and
	// "restored_early" the jobs begun at a lower CPU priority and those
	// restored before their end (where the node lowers jobs).
	StoreJobs map[string]float64 `json:"store_jobs,omitempty"`
}

// BaselineReport is the same load against the echo relay.
type BaselineReport struct {
	MsgsPerSec float64 `json:"msgs_per_sec"`
	Ratio      float64 `json:"ratio"` // ours / relay
	// CPU efficiency: relay's server CPU per message / ours (1 = as cheap
	// as the relay). The informative ratio when both keep up with a fixed
	// target rate.
	CPURatio    float64      `json:"cpu_ratio,omitempty"`
	MaxRate     float64      `json:"max_rate,omitempty"`
	LatencyUs   Latency      `json:"latency_us"`
	Server      ServerReport `json:"server"`
	Errors      int64        `json:"errors"`
	Connections int64        `json:"connections"`
	Note        string       `json:"note,omitempty"`
	// Durable: the relay synced every message to its log before it
	// answered or forwarded it (--baseline-durable).
	Durable bool `json:"durable,omitempty"`
}

// RampReport describes opening the connections.
type RampReport struct {
	Wanted       int64            `json:"wanted"`
	Dialed       int64            `json:"dialed"`
	Connected    int64            `json:"connected"`
	LoggedIn     int64            `json:"logged_in"`
	Held         int64            `json:"held"`
	Retried      int64            `json:"retried"` // failed attempts dialled again
	Seconds      float64          `json:"seconds"`
	ConnectRate  float64          `json:"connect_rate"`
	LoginRate    float64          `json:"login_rate"`
	Failures     map[string]int64 `json:"failures,omitempty"`
	FDLimit      uint64           `json:"fd_limit"`
	MaxPerProc   int              `json:"max_conns_per_proc"`
	LoginLatency Latency          `json:"login_latency_us"`
}

// HostReport is the whole machine's memory around the held connections
// (conns, login): kernel socket memory shows in Slab; MemAvailable's drop
// is everything (server, generator and kernel) the connections cost.
type HostReport struct {
	MemAvailableBefore uint64  `json:"mem_available_before"`
	MemAvailableAfter  uint64  `json:"mem_available_after"`
	SlabBefore         uint64  `json:"slab_before"`
	SlabAfter          uint64  `json:"slab_after"`
	KernelBytesPerConn float64 `json:"kernel_bytes_per_conn"` // slab delta / connections (both socket ends)
	TotalBytesPerConn  float64 `json:"total_bytes_per_conn"`  // MemAvailable drop / connections
}

// GeneratorReport is the load generator's own cost.
type GeneratorReport struct {
	Procs        int     `json:"procs"`
	Loops        int     `json:"loops_per_proc"`
	RSSBytes     uint64  `json:"rss_bytes"`
	HeapBytes    uint64  `json:"heap_bytes"`
	BytesPerConn float64 `json:"bytes_per_conn"` // (rss after ramp - rss before) / held
	HeapPerConn  float64 `json:"heap_per_conn"`
	// CPUSeconds is the generator's CPU over the measured phase: warmup,
	// window and drain, CPUSpanS seconds of wall time (longer than the
	// window the server's CPU covers).
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
	CPUSpanS   float64 `json:"cpu_span_s,omitempty"`
	// CPUWaitSeconds: the generator's threads waiting for a CPU, same span.
	CPUWaitSeconds float64 `json:"cpu_wait_seconds,omitempty"`
}

// Details are scenario counters beyond the contract.
type Details struct {
	SentTotal      int64   `json:"sent_total"`
	Expected       int64   `json:"expected_deliveries"`
	DeliveredInWin int64   `json:"delivered_in_window"`
	SelfPushes     int64   `json:"self_pushes"`
	Acks           int64   `json:"acks"`
	Late           int64   `json:"late"`
	Heartbeats     int64   `json:"heartbeats"`
	HeartbeatOK    int64   `json:"heartbeat_ok"`
	SendsPerSec    float64 `json:"sends_per_sec,omitempty"`
	Active         int     `json:"active_units"`
	// SendLagUs is how late the generator sent (actual - intended send
	// time): large values mean the generator or the machine, not the
	// server, was behind. It is part of latency_us by construction.
	SendLagUs *Latency `json:"send_lag_us,omitempty"`
}

// PhaseSummary is one step of --find-max (or the single phase).
type PhaseSummary struct {
	Rate       float64 `json:"rate"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	Sent       int64   `json:"sent"`
	Delivered  int64   `json:"delivered"`
	Errors     int64   `json:"errors"`
	LatencyUs  Latency `json:"latency_us"`
	ServerCPU  float64 `json:"server_cpu_seconds"`
	// ServerCPUWait: the servers' threads waiting for a CPU, same span
	// (ServerReport.CPUWaitSeconds).
	ServerCPUWait float64 `json:"server_cpu_wait_seconds,omitempty"`
	// ServerReadSyscalls: the servers' read syscalls, same span
	// (ServerReport.ReadSyscalls); with the deliveries, how many messages
	// a read carried at this rate.
	ServerReadSyscalls uint64 `json:"server_read_syscalls,omitempty"`
	// Cluster nodes only: MongoDB commands and Redis round trips per
	// message delivered in the window.
	StoreCmdsPerMsg float64 `json:"store_cmds_per_msg,omitempty"`
	RedisCmdsPerMsg float64 `json:"redis_cmds_per_msg,omitempty"`
	OK              bool    `json:"ok"`
	Why             string  `json:"why,omitempty"`
}

// WriteJSON writes r to path as one indented JSON object.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Check verifies the report's internal consistency (what the smoke tests
// assert): delivered <= sent, percentiles ordered, counts non-negative.
func (r *Report) Check() error {
	var errs []string
	if r.Delivered > r.Sent {
		errs = append(errs, fmt.Sprintf("delivered %d > sent %d", r.Delivered, r.Sent))
	}
	if r.Sent < 0 || r.Delivered < 0 || r.Errors < 0 || r.MsgsPerSec < 0 {
		errs = append(errs, "negative count")
	}
	if !r.LatencyUs.Ordered() {
		errs = append(errs, fmt.Sprintf("percentiles not ordered: %+v", r.LatencyUs))
	}
	if r.Scenario == "" || r.Target == "" {
		errs = append(errs, "scenario or target missing")
	}
	if r.Baseline != nil && !r.Baseline.LatencyUs.Ordered() {
		errs = append(errs, "baseline percentiles not ordered")
	}
	if len(errs) > 0 {
		return fmt.Errorf("bench: inconsistent report: %s", strings.Join(errs, "; "))
	}
	return nil
}

func human(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

// Print writes a human-readable summary.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "\n== %s against %s\n", r.Scenario, r.Target)
	fmt.Fprintf(w, "connections held   %d (generator: %d procs x %d loops, fd limit %d per proc)\n",
		r.Connections, r.Generator.Procs, r.Generator.Loops, r.Machine.FDLimit)
	if rp := r.Ramp; rp != nil && rp.Wanted > 0 {
		fmt.Fprintf(w, "ramp               %d/%d logged in in %.1fs: connect %.0f/s, login %.0f/s; login p50 %dus p99 %dus\n",
			rp.LoggedIn, rp.Wanted, rp.Seconds, rp.ConnectRate, rp.LoginRate, rp.LoginLatency.P50, rp.LoginLatency.P99)
		if len(rp.Failures) > 0 {
			fmt.Fprintf(w, "ramp failures      %s (%d attempts retried)\n", fmtCounts(rp.Failures), rp.Retried)
		}
	}
	if r.RateTarget > 0 {
		fmt.Fprintf(w, "target rate        %.0f/s\n", r.RateTarget)
	}
	fmt.Fprintf(w, "window             %.1fs  sent %d  delivered %d  errors %d\n", r.DurationS, r.Sent, r.Delivered, r.Errors)
	fmt.Fprintf(w, "rate               %.0f/s\n", r.MsgsPerSec)
	l := r.LatencyUs
	fmt.Fprintf(w, "latency (us)       p50 %d  p90 %d  p99 %d  p99.9 %d  max %d  (n=%d)\n", l.P50, l.P90, l.P99, l.P999, l.Max, l.Count)
	s := r.Server
	fmt.Fprintf(w, "server             %d node(s), %d conns, %d sessions; rss %s heap %s; %.0f B/conn (rss/conns)",
		s.Nodes, s.Connections, s.Sessions, human(float64(s.RSSBytes)), human(float64(s.HeapBytes)), s.BytesPerConn)
	if s.RSSPerConnMarginal != 0 {
		fmt.Fprintf(w, "; marginal %.0f B/conn rss, %.0f B/conn heap", s.RSSPerConnMarginal, s.HeapPerConnMarginal)
	}
	fmt.Fprintln(w)
	if s.CPUSeconds > 0 {
		span := "in the window"
		if r.Scenario == ScenarioLogin {
			span = "over the storm"
		}
		fmt.Fprintf(w, "server cpu         %.2f s %s (%.2f cores)", s.CPUSeconds, span, s.CPUCores)
		if s.MsgsPerCPUSecond > 0 {
			fmt.Fprintf(w, "; %.0f msgs per server cpu-second", s.MsgsPerCPUSecond)
		}
		fmt.Fprintf(w, "%s\n", fmtCPUWait(s.CPUWaitSeconds, s.CPUSeconds))
	}
	if s.ReadSyscalls > 0 && r.DurationS > 0 {
		fmt.Fprintf(w, "server syscalls    %s\n", fmtSyscalls(s, r.MsgsPerSec, r.DurationS))
	}
	for _, name := range storeHistOrder {
		if l, ok := s.StoreLatency[name]; ok && l.Count > 0 {
			fmt.Fprintf(w, "store %-12s %d in the window, mean %.0fus, p50 <= %s, p99 <= %s, p99.9 <= %s, max <= %s; %.2f%% over 51 ms\n",
				name, l.Count, l.MeanUs, fmtBound(l.P50Us), fmtBound(l.P99Us), fmtBound(l.P999Us), fmtBound(l.MaxUs), 100*l.Over50ms)
		}
	}
	printCounted(w, "store stalls", s.StoreStalls, []string{"wal_rotation", "memtable", "l0"}, "waits inside Pebble's apply in the window")
	printCounted(w, "store jobs", s.StoreJobs, []string{"flush", "compaction"}, "Pebble's background jobs that ended in the window, wall time")
	if lowered, ok := s.StoreJobs["lowered"]; ok {
		fmt.Fprintf(w, "store priority     lowered %.0f, restored early %.0f (Pebble's jobs begun in the window at a lower CPU priority, and those restored before their end)\n",
			lowered, s.StoreJobs["restored_early"])
	}
	if p := r.FsyncProbe; p != nil {
		fmt.Fprintf(w, "disk fsync probe   %d writes of %d B + fdatasync beside the node: mean %.0fus p50 %d p99 %d p99.9 %d max %d us\n",
			p.Count, DefaultProbeRecord, p.Mean, p.P50, p.P99, p.P999, p.Max)
	}
	if s.StoreOps != nil {
		fmt.Fprintf(w, "round trips        %.2f MongoDB commands and %.2f Redis round trips per message (%s; %s)\n",
			s.StoreCmdsPerMsg, s.RedisCmdsPerMsg, fmtOps(s.StoreOps), fmtOps(s.RedisOps))
	}
	if h := r.Host; h != nil {
		fmt.Fprintf(w, "host memory        kernel slab +%s (%.0f B per connection, both ends); MemAvailable -%s (%.0f B per connection, all included)\n",
			human(float64(h.SlabAfter)-float64(h.SlabBefore)), h.KernelBytesPerConn,
			human(float64(h.MemAvailableBefore)-float64(h.MemAvailableAfter)), h.TotalBytesPerConn)
	}
	g := r.Generator
	span := "in the phase"
	if g.CPUSpanS > 0 {
		span = fmt.Sprintf("over the phase's %.1f s (%.2f cores)", g.CPUSpanS, g.CPUSeconds/g.CPUSpanS)
	}
	fmt.Fprintf(w, "generator          rss %s heap %s; %.0f B/conn rss, %.0f B/conn heap; cpu %.2f s %s%s\n",
		human(float64(g.RSSBytes)), human(float64(g.HeapBytes)), g.BytesPerConn, g.HeapPerConn, g.CPUSeconds, span,
		fmtCPUWait(g.CPUWaitSeconds, g.CPUSeconds))
	if d := r.Details; d != nil && (d.SelfPushes > 0 || d.Late > 0) {
		fmt.Fprintf(w, "details            acks %d, pushes of own messages to the sender %d, late %d\n", d.Acks, d.SelfPushes, d.Late)
	}
	if d := r.Details; d != nil && d.SendLagUs != nil {
		fmt.Fprintf(w, "send lag (us)      p50 %d  p99 %d  p99.9 %d  max %d (generator behind its schedule)\n",
			d.SendLagUs.P50, d.SendLagUs.P99, d.SendLagUs.P999, d.SendLagUs.Max)
	}
	if len(r.ErrorsByReason) > 0 {
		fmt.Fprintf(w, "errors             %s\n", fmtCounts(r.ErrorsByReason))
	}
	for i, p := range r.Phases {
		cmds := ""
		if p.StoreCmdsPerMsg > 0 {
			cmds = fmt.Sprintf("  %.2f mongo cmds/msg", p.StoreCmdsPerMsg)
		}
		if p.ServerReadSyscalls > 0 && r.DurationS > 0 {
			cmds += fmt.Sprintf("  %.2f deliveries per server read", p.MsgsPerSec*r.DurationS/float64(p.ServerReadSyscalls))
		}
		fmt.Fprintf(w, "step %-2d            rate %.0f -> %.0f/s  p50 %d p99 %d max %d us  errors %d%s  %v %s\n",
			i+1, p.Rate, p.MsgsPerSec, p.LatencyUs.P50, p.LatencyUs.P99, p.LatencyUs.Max, p.Errors, cmds, okStr(p.OK), p.Why)
	}
	if r.MaxRate > 0 {
		fmt.Fprintf(w, "max rate           %.0f/s (latency above measured at half of it)\n", r.MaxRate)
	}
	if b := r.Baseline; b != nil {
		name := "baseline (relay)  "
		if b.Durable {
			name = "baseline (durable)"
		}
		fmt.Fprintf(w, "%s %.0f/s, p50 %d p99 %d us; ratio %.3f", name, b.MsgsPerSec, b.LatencyUs.P50, b.LatencyUs.P99, b.Ratio)
		if b.CPURatio > 0 {
			fmt.Fprintf(w, "; cpu efficiency vs relay %.3f", b.CPURatio)
		}
		if b.MaxRate > 0 {
			fmt.Fprintf(w, "; relay max %.0f/s", b.MaxRate)
		}
		if b.Note != "" {
			fmt.Fprintf(w, " (%s)", b.Note)
		}
		if s := b.Server; s.CPUWaitSeconds > 0 && s.CPUSeconds > 0 {
			fmt.Fprintf(w, "; relay waited %.2f s for a cpu per cpu-second", s.CPUWaitSeconds/s.CPUSeconds)
		}
		fmt.Fprintln(w)
		if s := b.Server; s.ReadSyscalls > 0 && r.DurationS > 0 {
			fmt.Fprintf(w, "relay syscalls     %s\n", fmtSyscalls(s, b.MsgsPerSec, r.DurationS))
		}
	}
	fmt.Fprintf(w, "stopped            %s\n", r.StopReason)
	fmt.Fprintf(w, "machine            %d cpus, load %s; cpu pressure at start: %s; at end: %s",
		r.Machine.CPUs, r.Machine.LoadAvg, r.Machine.CPUPressure, r.CPUPressureEnd)
	if r.Machine.CPUIdle != "" {
		fmt.Fprintf(w, "; cpu idle: %s", r.Machine.CPUIdle)
	}
	fmt.Fprintln(w)
	if h := r.HostCPU; h != nil {
		fmt.Fprintf(w, "host cpu           in the window: user %.0f%% system %.0f%% softirq %.0f%% idle %.0f%% iowait %.0f%% steal %.0f%%\n",
			h.User, h.System, h.Softirq, h.Idle, h.IOWait, h.Steal)
	}
}

// fmtOps formats round-trip counts by op, largest first ("insert 1200,
// find 40"), or "none".
func fmtOps(m map[string]float64) string {
	if out := fmtLargestFirst(m, "%s %.0f", 0); out != "" {
		return out
	}
	return "none"
}

func okStr(ok bool) string {
	if ok {
		return "ok"
	}
	return "FAIL"
}

func fmtCounts(m map[string]int64) string {
	return fmtLargestFirst(m, "%s: %d", 8)
}

// fmtLargestFirst formats the positive entries of m with format (name,
// value), largest value first, comma-separated; after most entries (0: no
// limit) it says how many more there are.
func fmtLargestFirst[V int64 | float64](m map[string]V, format string, most int) string {
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if v > 0 {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		if most > 0 && i == most {
			fmt.Fprintf(&b, "... (%d more)", len(keys)-i)
			break
		}
		fmt.Fprintf(&b, format, k, m[k])
	}
	return b.String()
}

// fmtBound prints a histogram bucket bound in microseconds (-1: above the
// last finite bound).
func fmtBound(us float64) string {
	if us < 0 {
		return "inf"
	}
	return fmt.Sprintf("%.0fus", us)
}

// fmtCPUWait describes wait seconds spent waiting for a CPU beside cpu
// seconds of work ("" when not measured): the second figure is how long
// these threads waited to run per second they ran, whether the CPUs were
// busy or (on a VM) slow to wake.
func fmtCPUWait(wait, cpu float64) string {
	if wait <= 0 || cpu <= 0 {
		return ""
	}
	return fmt.Sprintf("; waited %.2f s for a cpu (%.2f s per cpu-second)", wait, wait/cpu)
}

// fmtSyscalls says how many read and write calls the servers made a second
// in a window of windowS seconds, and how many deliveries (msgsPerSec)
// there were per call.
func fmtSyscalls(s ServerReport, msgsPerSec, windowS float64) string {
	r, w := float64(s.ReadSyscalls)/windowS, float64(s.WriteSyscalls)/windowS
	return fmt.Sprintf("%.1fk reads/s, %.1fk writes/s in the window: %.2f deliveries per read, %.2f per write",
		r/1e3, w/1e3, msgsPerSec/r, msgsPerSec/w)
}

// printCounted prints one line of counted waits or jobs (keys "<name>":
// seconds, "<name> count": number), every name in order, zeros too (zero
// is information); nothing when m is empty.
func printCounted(w io.Writer, title string, m map[string]float64, names []string, note string) {
	if len(m) == 0 {
		return
	}
	fmt.Fprintf(w, "%-18s", title)
	for i, name := range names {
		sep := ","
		if i == 0 {
			sep = ""
		}
		fmt.Fprintf(w, "%s %s %.0f, %.1f ms in all", sep, name, m[name+" count"], 1000*m[name])
	}
	fmt.Fprintf(w, " (%s)\n", note)
}
