package bench

import (
	"fmt"
	"time"
)

// Scenarios.
const (
	ScenarioConns = "conns"
	ScenarioP2P   = "p2p"
	ScenarioGroup = "group"
	ScenarioLogin = "login"
	ScenarioChurn = "churn"
)

// Scenarios lists the scenario names.
var Scenarios = []string{ScenarioConns, ScenarioP2P, ScenarioGroup, ScenarioLogin, ScenarioChurn}

// WorkerSpec is one generator process's share of a run. The parent sends it
// to a worker process as the first line of the worker's stdin (JSON), or
// passes it to RunWorker directly when it runs the share in-process.
type WorkerSpec struct {
	Scenario string   `json:"scenario"`
	Worker   int      `json:"worker"`
	Run      uint32   `json:"run"`
	Targets  []string `json:"targets"`
	// Router (optional) decides each user's target (see routeCache).
	Router string `json:"router,omitempty"`
	Secret string `json:"secret"`
	// WS: connect over WebSocket (Targets are WebSocket listeners).
	WS bool `json:"ws,omitempty"`
	// Src is the source address connections are bound to ("" = the kernel
	// chooses).
	Src          string        `json:"src,omitempty"`
	Loops        int           `json:"loops"`
	Concurrency  int           `json:"concurrency"`
	Retries      int           `json:"retries"`
	LoginTimeout time.Duration `json:"login_timeout"`
	Heartbeat    time.Duration `json:"heartbeat"`
	PushAck      time.Duration `json:"push_ack"`
	Payload      int           `json:"payload"`
	// Units [UnitFrom, UnitFrom+Units) are this worker's: connections
	// (conns, login), pairs (p2p), groups (group) or slots (churn).
	UnitFrom    int    `json:"unit_from"`
	Units       int    `json:"units"`
	GroupSize   int    `json:"group_size,omitempty"`
	UserPrefix  string `json:"user_prefix"`
	Device      string `json:"device"`
	MaxOutbound int    `json:"max_outbound"`
	// CPUs pins the worker process (a CPU list, "" = no pinning).
	CPUs string `json:"cpus,omitempty"`
}

// ConnsPerUnit is how many connections one unit of the scenario opens.
func ConnsPerUnit(scenario string, groupSize int) int {
	switch scenario {
	case ScenarioP2P:
		return 2
	case ScenarioGroup:
		return max(groupSize, 1)
	}
	return 1
}

// PhaseSpec starts a measured phase in every worker.
type PhaseSpec struct {
	ID          int           `json:"id"`
	StartUnixNs int64         `json:"start_unix_ns"` // wall clock: workers align on it
	Rate        float64       `json:"rate"`          // this worker's share, events/s
	Warmup      time.Duration `json:"warmup"`
	Duration    time.Duration `json:"duration"`
	Drain       time.Duration `json:"drain"`
}

// Command is a parent-to-worker message.
type Command struct {
	Kind  string     `json:"kind"` // "go", "stop-ramp", "finish"
	Phase *PhaseSpec `json:"phase,omitempty"`
}

// Event is a worker-to-parent message.
type Event struct {
	Kind   string       `json:"kind"` // "progress", "ready", "phase", "done", "error"
	Worker int          `json:"worker"`
	Held   int64        `json:"held,omitempty"`
	Dialed int64        `json:"dialed,omitempty"`
	Ramp   *RampResult  `json:"ramp,omitempty"`
	Phase  *PhaseResult `json:"phase,omitempty"`
	Err    string       `json:"err,omitempty"`
}

// MemSample is a process's memory and CPU at one moment (after a GC).
type MemSample struct {
	RSS  uint64  `json:"rss"`
	Heap uint64  `json:"heap"`
	CPU  float64 `json:"cpu_s"`
}

// RampResult is a worker's account of opening and logging in its
// connections.
type RampResult struct {
	Units      int              `json:"units"`
	Active     int              `json:"active"`
	Dialed     int64            `json:"dialed"`
	Connected  int64            `json:"connected"`
	LoggedIn   int64            `json:"logged_in"`
	Held       int64            `json:"held"`
	Retried    int64            `json:"retried"`
	Failures   map[string]int64 `json:"failures,omitempty"`
	StopReason string           `json:"stop_reason,omitempty"`
	FDLimit    uint64           `json:"fd_limit"`
	Seconds    float64          `json:"seconds"`
	LoginHist  string           `json:"login_hist,omitempty"`
	Mem0       MemSample        `json:"mem0"`
	Mem        MemSample        `json:"mem"`
}

// PhaseResult is a worker's account of one phase.
type PhaseResult struct {
	ID          int              `json:"id"`
	Rate        float64          `json:"rate"`
	WindowS     float64          `json:"window_s"`
	Sent        int64            `json:"sent"`
	SentTotal   int64            `json:"sent_total"`
	Expected    int64            `json:"expected"`
	Delivered   int64            `json:"delivered"`
	InWindowRx  int64            `json:"in_window_rx"`
	SelfPushes  int64            `json:"self_pushes"`
	Acks        int64            `json:"acks"`
	Cycles      int64            `json:"cycles"`
	Late        int64            `json:"late"`
	Heartbeats  int64            `json:"heartbeats"`
	HeartbeatOK int64            `json:"heartbeat_ok"`
	Errors      map[string]int64 `json:"errors,omitempty"`
	Hist        string           `json:"hist,omitempty"`
	LagHist     string           `json:"lag_hist,omitempty"`
	Held        int64            `json:"held"`
	Mem         MemSample        `json:"mem"`
	CPU         float64          `json:"cpu_s"`      // generator CPU seconds spent in the phase
	CPUWait     float64          `json:"cpu_wait_s"` // and waiting for a CPU (procstat.CPUWaitSeconds)
	// CPUSpan is the wall time CPU and CPUWait were measured over: the
	// whole phase (warmup, window and drain), longer than the window.
	CPUSpan float64 `json:"cpu_span_s"`
}

// mergeCounts adds b into a (allocating a when nil) and returns it.
func mergeCounts(a, b map[string]int64) map[string]int64 {
	if len(b) == 0 {
		return a
	}
	if a == nil {
		a = map[string]int64{}
	}
	for k, v := range b {
		a[k] += v
	}
	return a
}

func sumCounts(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// MergeRamps merges workers' ramp results; the login histograms are merged
// into one. Seconds is the slowest worker's.
func MergeRamps(rs []*RampResult) (*RampResult, *Hist, error) {
	out := &RampResult{}
	h := NewHist()
	for _, r := range rs {
		if r == nil {
			continue
		}
		out.Units += r.Units
		out.Active += r.Active
		out.Dialed += r.Dialed
		out.Connected += r.Connected
		out.LoggedIn += r.LoggedIn
		out.Held += r.Held
		out.Retried += r.Retried
		out.Failures = mergeCounts(out.Failures, r.Failures)
		if out.StopReason == "" {
			out.StopReason = r.StopReason
		}
		if out.FDLimit == 0 || (r.FDLimit > 0 && r.FDLimit < out.FDLimit) {
			out.FDLimit = r.FDLimit
		}
		out.Seconds = max(out.Seconds, r.Seconds)
		out.Mem0.RSS += r.Mem0.RSS
		out.Mem0.Heap += r.Mem0.Heap
		out.Mem.RSS += r.Mem.RSS
		out.Mem.Heap += r.Mem.Heap
		wh, err := DecodeHist(r.LoginHist)
		if err != nil {
			return nil, nil, err
		}
		h.Merge(wh)
	}
	return out, h, nil
}

// MergePhases merges workers' results of one phase and their latency
// histograms; out.LagHist holds the merged send-lag histogram, encoded.
func MergePhases(ps []*PhaseResult) (*PhaseResult, *Hist, error) {
	out := &PhaseResult{}
	h, lag := NewHist(), NewHist()
	for i, p := range ps {
		if p == nil {
			continue
		}
		if i > 0 && p.ID != out.ID {
			return nil, nil, fmt.Errorf("bench: merging results of phases %d and %d", out.ID, p.ID)
		}
		out.ID = p.ID
		out.Rate += p.Rate
		out.WindowS = max(out.WindowS, p.WindowS)
		out.Sent += p.Sent
		out.SentTotal += p.SentTotal
		out.Expected += p.Expected
		out.Delivered += p.Delivered
		out.InWindowRx += p.InWindowRx
		out.SelfPushes += p.SelfPushes
		out.Acks += p.Acks
		out.Cycles += p.Cycles
		out.Late += p.Late
		out.Heartbeats += p.Heartbeats
		out.HeartbeatOK += p.HeartbeatOK
		out.Errors = mergeCounts(out.Errors, p.Errors)
		out.Held += p.Held
		out.Mem.RSS += p.Mem.RSS
		out.Mem.Heap += p.Mem.Heap
		out.CPU += p.CPU
		out.CPUWait += p.CPUWait
		out.CPUSpan = max(out.CPUSpan, p.CPUSpan)
		wh, err := DecodeHist(p.Hist)
		if err != nil {
			return nil, nil, err
		}
		h.Merge(wh)
		lh, err := DecodeHist(p.LagHist)
		if err != nil {
			return nil, nil, err
		}
		lag.Merge(lh)
	}
	var err error
	out.LagHist, err = lag.Encode()
	return out, h, err
}
