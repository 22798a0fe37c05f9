package bench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/imgn/imgn/internal/defaults"
	"github.com/imgn/imgn/internal/ports"
)

// Defaults of Config (cmd/imbench's flags start from them).
const (
	DefaultStore        = "memory"
	DefaultImd          = "bin/imd"
	DefaultNodeMaxConns = 19000
	DefaultConns        = 10000
	DefaultPairs        = 1000
	DefaultGroups       = 10
	DefaultGroupSize    = 100
	DefaultSlots        = 200
	DefaultRate         = 10000 // messages per second; group: DefaultGroupRate
	DefaultGroupRate    = 1000
	DefaultPayload      = 64
	DefaultWarmup       = 5 * time.Second
	DefaultDuration     = 20 * time.Second
	DefaultDrain        = 3 * time.Second
	DefaultHold         = 20 * time.Second
	DefaultConcurrency  = 1000
	DefaultRetries      = 3
	DefaultPushAck      = time.Second
	DefaultLoginTimeout = 15 * time.Second
	DefaultMaxP99       = 10 * time.Millisecond
	DefaultStep         = 1.5
	DefaultMaxSteps     = 12
	DefaultTimeout      = 10 * time.Minute
	DefaultMemReserve   = 2 << 30
	DefaultUserPrefix   = "b"
)

// Config is one imbench run. Zero fields take the defaults above
// (WithDefaults); cmd/imbench documents each as a flag.
type Config struct {
	Scenario string

	// An existing deployment: client addresses, admin base URLs (same
	// order; may be empty, then no server stats) and the JWT secret.
	// Empty Targets: spawn nodes.
	Targets []string
	Admins  []string
	Secret  string
	// Router, when set, is an imrouter base URL: the targets are its
	// available nodes and each user connects where the router sends it.
	Router string
	// WS makes every generator connection speak WebSocket: spawned nodes
	// also listen with --ws-listen and are reached there; given Targets
	// must be WebSocket listeners.
	WS bool

	// Spawned nodes (when Targets is empty).
	Nodes        int    // 0: enough for the connections at NodeMaxConns each
	Store        string // memory or embedded
	NoFsync      bool
	Imd          string
	ImdArgs      []string
	NodeMaxConns int

	// Load shape.
	Conns     int // conns, login
	Pairs     int // p2p
	Groups    int // group
	GroupSize int // group
	Slots     int // churn: concurrent cycles
	Rate      float64
	Payload   int

	Warmup, Duration, Drain, Hold time.Duration
	Concurrency                   int // connects+logins in flight per generator process
	Retries                       int // re-dials of a failed ramp connection (<0: none)
	Heartbeat, PushAck            time.Duration
	LoginTimeout                  time.Duration
	RampTimeout                   time.Duration

	// Generator processes.
	Procs int      // 0: as many as the fd limit requires
	Loops int      // event loops per process (0: GOMAXPROCS)
	Src   []string // source addresses (default 127.0.0.1..127.0.0.Procs when Procs > 1)

	FindMax  bool
	MaxP99   time.Duration
	Step     float64
	MaxSteps int

	// CPU affinity (CPU lists such as "1" or "0-1"): spawned nodes and
	// relays, and generator processes. Pinning the server to one core
	// measures the per-core rate directly.
	ServerCPUs string
	GenCPUs    string

	// AllowRemote permits targets and source addresses outside 127.0.0.0/8
	// (by default imbench loads loopback only).
	AllowRemote bool

	Baseline bool
	// BaselineDurable makes the Baseline relay durable (NewDurableRelay):
	// its write-ahead log lives in the system's temporary directory, where
	// spawned nodes keep their data.
	BaselineDurable bool
	ProfileDir      string
	// Trace, with ProfileDir, also saves a Go execution trace of that
	// length of the first node (<prefix>trace.out), taken with its CPU
	// profile (0: none). Read it with `go tool trace`, or list its long
	// event-loop spans with tools/tracespans.
	Trace time.Duration
	// FsyncProbe runs FsyncProbe in the system's temporary directory
	// (where spawned nodes keep their data) during each measured window
	// of imd nodes.
	FsyncProbe bool
	Timeout    time.Duration
	MemReserve uint64 // stop ramping when MemAvailable falls below this
	UserPrefix string
	Log        io.Writer

	// Worker processes: the executable re-executed as a worker (default
	// this one), its arguments (default WorkerArg) and extra environment.
	WorkerExe  string
	WorkerArgs []string
	WorkerEnv  []string
	// RelayArgs are the arguments that make WorkerExe the relay (default
	// RelayArg); RelayInProcess runs the relay in this process instead.
	RelayArgs      []string
	RelayInProcess bool
}

// WithDefaults returns c with its unset fields set to the defaults above.
// A negative count or duration counts as unset, except Retries (-1: none)
// and PushAck (negative: never, made 0); a Payload below the frame's
// minimum is raised to it. Log is wrapped so that progress lines and the
// workers' output do not interleave. It does not validate.
func (c Config) WithDefaults() Config {
	defaults.Positive(&c.Conns, DefaultConns)
	defaults.Positive(&c.Pairs, DefaultPairs)
	defaults.Positive(&c.Groups, DefaultGroups)
	defaults.Positive(&c.GroupSize, DefaultGroupSize)
	defaults.Positive(&c.Slots, DefaultSlots)
	defaults.Positive(&c.Payload, DefaultPayload)
	defaults.Positive(&c.NodeMaxConns, DefaultNodeMaxConns)
	defaults.Positive(&c.Concurrency, DefaultConcurrency)
	defaults.Positive(&c.MaxSteps, DefaultMaxSteps)
	defaults.Set(&c.Retries, DefaultRetries)
	if c.Scenario == ScenarioGroup {
		defaults.Positive(&c.Rate, DefaultGroupRate)
	}
	defaults.Positive(&c.Rate, DefaultRate)
	if c.Step <= 1 {
		c.Step = DefaultStep
	}
	defaults.Positive(&c.Warmup, DefaultWarmup)
	defaults.Positive(&c.Duration, DefaultDuration)
	defaults.Positive(&c.Drain, DefaultDrain)
	defaults.Positive(&c.Hold, DefaultHold)
	defaults.Positive(&c.LoginTimeout, DefaultLoginTimeout)
	defaults.Positive(&c.MaxP99, DefaultMaxP99)
	defaults.Positive(&c.Timeout, DefaultTimeout)
	defaults.Set(&c.PushAck, DefaultPushAck)
	c.PushAck = max(c.PushAck, 0)
	defaults.Set(&c.Store, DefaultStore)
	defaults.Set(&c.MemReserve, DefaultMemReserve)
	defaults.Set(&c.UserPrefix, DefaultUserPrefix)
	defaults.Set[io.Writer](&c.Log, os.Stderr)
	if _, ok := c.Log.(*syncWriter); !ok {
		// Progress lines and the workers' stderr share it.
		c.Log = &syncWriter{w: c.Log}
	}
	if c.WorkerExe == "" {
		c.WorkerExe, _ = os.Executable() // Validate reports a failure
	}
	if c.WorkerArgs == nil {
		c.WorkerArgs = []string{WorkerArg}
	}
	if c.RelayArgs == nil {
		c.RelayArgs = []string{RelayArg}
	}
	c.Payload = max(c.Payload, payloadMin)
	return c
}

// Validate reports every problem of c (after WithDefaults); it changes
// nothing.
func (c Config) Validate() error {
	var errs []error
	if !slices.Contains(Scenarios, c.Scenario) {
		errs = append(errs, fmt.Errorf("bench: unknown scenario %q (want one of %v)", c.Scenario, Scenarios))
	}
	if c.Store != "memory" && c.Store != "embedded" {
		errs = append(errs, fmt.Errorf("bench: --store must be memory or embedded, got %q", c.Store))
	}
	if c.WorkerExe == "" {
		errs = append(errs, errors.New("bench: no worker executable (this program's path is unknown)"))
	}
	if len(c.Targets) > 0 && len(c.Admins) > 0 && len(c.Admins) != len(c.Targets) {
		errs = append(errs, errors.New("bench: --admin must list one URL per --target"))
	}
	if c.Trace < 0 || (c.Trace > 0 && c.ProfileDir == "") {
		errs = append(errs, fmt.Errorf("bench: --trace %v: want a positive duration, with --profile DIR to save it in", c.Trace))
	}
	if c.BaselineDurable && !c.Baseline {
		errs = append(errs, errors.New("bench: --baseline-durable makes the relay of --baseline-echo durable: pass both"))
	}
	if c.WS && (c.Router != "" || c.Baseline) {
		errs = append(errs, errors.New("bench: --ws works with spawned nodes or --target only (the router and the relay speak TCP)"))
	}
	if !c.AllowRemote {
		for _, a := range append(slices.Clone(c.Targets), c.Src...) {
			host, _, err := net.SplitHostPort(a)
			if err != nil {
				host = a
			}
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				errs = append(errs, fmt.Errorf("bench: %q is not a loopback address (pass --allow-remote to load other hosts)", a))
			}
		}
	}
	return errors.Join(errs...)
}

// units is the number of work units (connections, pairs, groups, slots).
func (c *Config) units() int {
	switch c.Scenario {
	case ScenarioP2P:
		return c.Pairs
	case ScenarioGroup:
		return c.Groups
	case ScenarioChurn:
		return c.Slots
	}
	return c.Conns
}

func (c *Config) connsWanted() int { return c.units() * ConnsPerUnit(c.Scenario, c.GroupSize) }

func (c *Config) params() map[string]any {
	p := map[string]any{"procs": c.Procs, "loops": c.Loops, "payload": c.Payload, "concurrency": c.Concurrency}
	if c.ServerCPUs != "" || c.GenCPUs != "" {
		p["server_cpus"], p["gen_cpus"] = c.ServerCPUs, c.GenCPUs
	}
	switch c.Scenario {
	case ScenarioConns:
		p["conns"], p["hold_s"] = c.Conns, c.Hold.Seconds()
	case ScenarioLogin:
		p["conns"] = c.Conns
	case ScenarioP2P:
		p["pairs"], p["rate"] = c.Pairs, c.Rate
	case ScenarioGroup:
		p["groups"], p["group_size"], p["rate"] = c.Groups, c.GroupSize, c.Rate
	case ScenarioChurn:
		p["slots"] = c.Slots
	}
	if c.Scenario != ScenarioConns && c.Scenario != ScenarioLogin {
		p["warmup_s"], p["duration_s"] = c.Warmup.Seconds(), c.Duration.Seconds()
	}
	if c.FindMax {
		p["find_max"], p["max_p99_us"], p["step"] = true, c.MaxP99.Microseconds(), c.Step
	}
	if len(c.Targets) == 0 {
		p["store"], p["nodes"] = c.Store, c.Nodes
		if c.NoFsync {
			p["no_fsync"] = true
		}
	}
	return p
}

// Run executes cfg: it spawns nodes if asked, runs the scenario, runs it
// again against the relay with Baseline, and stops everything it started
// before returning. The run is bounded by cfg.Timeout.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	rep, err := runOn(ctx, &cfg, "imd")
	if err != nil || !cfg.Baseline {
		return rep, err
	}
	base, err := runOn(ctx, &cfg, "relay")
	if err != nil {
		return rep, fmt.Errorf("bench: baseline: %w", err)
	}
	b := &BaselineReport{MsgsPerSec: base.MsgsPerSec, LatencyUs: base.LatencyUs, Server: base.Server, Errors: base.Errors,
		Connections: base.Connections, MaxRate: base.MaxRate, Durable: cfg.BaselineDurable}
	switch {
	case cfg.FindMax && rep.MaxRate > 0 && base.MaxRate > 0:
		b.MsgsPerSec = base.MaxRate
		b.Ratio = rep.MaxRate / base.MaxRate
		b.Note = "ratio of the highest passing rates"
	case cfg.FindMax:
		b.Note = "no ratio: a find-max run failed at its starting rate"
	case base.MsgsPerSec > 0:
		b.Ratio = rep.MsgsPerSec / base.MsgsPerSec
		b.Note = "ratio of the rates at the same offered load; see cpu_ratio"
	}
	if rep.Server.MsgsPerCPUSecond > 0 && base.Server.MsgsPerCPUSecond > 0 {
		b.CPURatio = rep.Server.MsgsPerCPUSecond / base.Server.MsgsPerCPUSecond
	}
	rep.Baseline = b
	return rep, nil
}

// runOn runs the scenario against imd (the configured targets, or spawned
// nodes) or against spawned relays.
func runOn(ctx context.Context, cfg *Config, kind string) (*Report, error) {
	targets, admins, secret := cfg.Targets, cfg.Admins, cfg.Secret
	if cfg.Router != "" && kind != "relay" {
		var err error
		if targets, admins, err = routerNodes(cfg.Router); err != nil {
			return nil, err
		}
	}
	label := ""
	nodes := cfg.Nodes
	if nodes <= 0 {
		nodes = (cfg.connsWanted() + cfg.NodeMaxConns - 1) / cfg.NodeMaxConns
	}
	switch {
	case kind == "relay":
		rs, stop, err := startRelays(ctx, cfg, nodes)
		if err != nil {
			return nil, err
		}
		defer stop()
		targets, admins = rs.targets, rs.admins
		label = fmt.Sprintf("relay x%d (minimal gnet relay, no auth, no store) %s", nodes, targets[0])
		if cfg.BaselineDurable {
			label = fmt.Sprintf("durable relay x%d (minimal gnet relay, no auth, a write-ahead log synced before every answer) %s", nodes, targets[0])
		}
	case len(targets) == 0:
		imd, err := EnsureImd(cfg.Imd, cfg.Log)
		if err != nil {
			return nil, err
		}
		var sb [16]byte
		_, _ = rand.Read(sb[:])
		secret = hex.EncodeToString(sb[:])
		fmt.Fprintf(cfg.Log, "spawning %d imd node(s), %s store\n", nodes, cfg.Store)
		spawned, err := spawnMany(ctx, nodes, func(i int) (*Node, error) {
			return SpawnImd(ctx, "bn"+strconv.Itoa(i+1), SpawnOptions{Imd: imd, Store: cfg.Store, NoFsync: cfg.NoFsync, Secret: secret,
				MaxConns: cfg.NodeMaxConns, Args: cfg.ImdArgs, Log: cfg.Log, CPUs: cfg.ServerCPUs, WS: cfg.WS})
		})
		defer StopNodes(spawned, 15*time.Second)
		if err != nil {
			return nil, err
		}
		targets, admins = nil, nil
		for _, n := range spawned {
			if cfg.WS {
				targets = append(targets, n.WSAddr)
			} else {
				targets = append(targets, n.Addr)
			}
			admins = append(admins, n.Admin)
		}
		store := cfg.Store
		if cfg.Store == "embedded" && cfg.NoFsync {
			store += ", no fsync"
		}
		label = fmt.Sprintf("imd x%d (%s store, spawned) %s", nodes, store, targets[0])
	default:
		label = "imd " + targets[0]
		if len(targets) > 1 {
			label = fmt.Sprintf("imd x%d %s...", len(targets), targets[0])
		}
	}
	r := &runner{cfg: cfg, targets: targets, admins: admins, secret: secret, label: label, kind: kind}
	return r.run(ctx)
}

// spawnMany starts n nodes, 4 at a time. On error the nodes started so far
// are returned with it (the caller stops them).
func spawnMany(ctx context.Context, n int, start func(i int) (*Node, error)) ([]*Node, error) {
	nodes := make([]*Node, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if ctx.Err() != nil {
				errs[i] = ctx.Err()
				return
			}
			nodes[i], errs[i] = start(i)
		})
	}
	wg.Wait()
	out := nodes[:0]
	for _, nd := range nodes {
		if nd != nil {
			out = append(out, nd)
		}
	}
	return out, errors.Join(errs...)
}

type relaySet struct{ targets, admins []string }

// startRelays starts n relays (processes, or in this process).
func startRelays(ctx context.Context, cfg *Config, n int) (relaySet, func(), error) {
	var rs relaySet
	if cfg.RelayInProcess {
		var relays []*Relay
		var dirs []string
		stop := func() {
			for _, r := range relays {
				_ = r.Stop()
			}
			for _, d := range dirs {
				_ = os.RemoveAll(d)
			}
		}
		for range n {
			walPath := "" // the plain relay
			if cfg.BaselineDurable {
				dir, err := os.MkdirTemp("", "imbench-relay-")
				if err != nil {
					stop()
					return rs, nil, err
				}
				dirs = append(dirs, dir)
				walPath = filepath.Join(dir, "relay.wal")
			}
			r := NewDurableRelay("127.0.0.1:0", 0, walPath)
			if err := r.Start(ctx); err != nil {
				stop()
				return rs, nil, err
			}
			relays = append(relays, r)
			rs.targets = append(rs.targets, r.Addr().String())
		}
		return rs, stop, nil
	}
	fmt.Fprintf(cfg.Log, "spawning %d baseline relay(s)\n", n)
	spawned, err := spawnMany(ctx, n, func(i int) (*Node, error) {
		cport, err := ports.Free()
		if err != nil {
			return nil, err
		}
		aport, err := ports.Free()
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "imbench-relay-")
		if err != nil {
			return nil, err
		}
		addr, admin := "127.0.0.1:"+strconv.Itoa(cport), "127.0.0.1:"+strconv.Itoa(aport)
		args := append(slices.Clone(cfg.RelayArgs), "--listen", addr, "--admin", admin)
		if cfg.BaselineDurable {
			args = append(args, "--wal", filepath.Join(dir, "relay.wal"))
		}
		return startNode(ctx, "relay"+strconv.Itoa(i+1), cfg.WorkerExe, args, cfg.WorkerEnv, dir, addr, admin, cfg.ServerCPUs)
	})
	stop := func() { StopNodes(spawned, 5*time.Second) }
	if err != nil {
		stop()
		return rs, nil, err
	}
	for _, nd := range spawned {
		rs.targets = append(rs.targets, nd.Addr)
		rs.admins = append(rs.admins, nd.Admin)
	}
	return rs, stop, nil
}

// runner runs one scenario against one set of targets.
type runner struct {
	cfg                  *Config
	targets, admins      []string
	secret, label, kind  string
	workers              []*worker
	events               chan Event
	exited               int
	workerErrs           []string
	stopReason           string
	readyAt              time.Time
	profiles             []string
	probe                *Hist    // the last window's FsyncProbe (nil: none)
	hostCPU              *HostCPU // the last window's host CPU shares (nil: not measured)
	procs, loops, active int
	activeBy             []int
	host                 *HostReport
}

func (r *runner) logf(format string, args ...any) { fmt.Fprintf(r.cfg.Log, format, args...) }

// run starts the workers, ramps, runs the phases and builds the report.
func (r *runner) run(ctx context.Context) (*Report, error) {
	cfg := r.cfg
	units := cfg.units()
	per := ConnsPerUnit(cfg.Scenario, cfg.GroupSize)
	procs := cfg.Procs
	maxPer := MaxConnsPerProc()
	if procs <= 0 {
		procs = (units*per + maxPer - 1) / maxPer
	}
	procs = max(1, min(procs, units))
	r.procs = procs
	r.loops = cfg.Loops
	if r.loops <= 0 {
		r.loops = runtime.GOMAXPROCS(0)
	}
	src := cfg.Src
	if len(src) == 0 && procs > 1 {
		for i := range procs {
			src = append(src, fmt.Sprintf("127.0.0.%d", i%254+1))
		}
	}
	var rb [4]byte
	_, _ = rand.Read(rb[:])
	run := binary.LittleEndian.Uint32(rb[:])
	device := "d" + strconv.FormatUint(uint64(run), 36)

	rep := &Report{Scenario: cfg.Scenario, Target: r.label, Params: cfg.params(), Machine: ThisMachine()}
	rep.Params["nodes"] = len(r.targets)
	rep.Params["procs"] = procs

	before, err := FetchAll(ctx, r.admins, true)
	if err != nil {
		r.logf("warning: server stats: %v\n", err)
	}
	r.host = &HostReport{MemAvailableBefore: MemAvailable(), SlabBefore: meminfo("Slab")}

	// Start the workers.
	r.events = make(chan Event, 1024)
	from := 0
	for w := range procs {
		n := units / procs
		if w < units%procs {
			n++
		}
		router := ""
		if r.kind != "relay" {
			router = cfg.Router
		}
		spec := WorkerSpec{Scenario: cfg.Scenario, Worker: w, Run: run, Targets: r.targets, Router: router, Secret: r.secret, WS: cfg.WS,
			Loops: cfg.Loops, Concurrency: cfg.Concurrency, Retries: max(cfg.Retries, 0), LoginTimeout: cfg.LoginTimeout, Heartbeat: cfg.Heartbeat,
			PushAck: cfg.PushAck, Payload: cfg.Payload, UnitFrom: from, Units: n, GroupSize: cfg.GroupSize,
			UserPrefix: cfg.UserPrefix, Device: device, MaxOutbound: 8 << 20, CPUs: cfg.GenCPUs}
		if len(src) > 0 {
			spec.Src = src[w%len(src)]
		}
		from += n
		var wk *worker
		if procs == 1 {
			wk = startInProcess(ctx, spec, r.events)
		} else {
			wk, err = startProcess(cfg.WorkerExe, cfg.WorkerArgs, cfg.WorkerEnv, spec, r.events, cfg.Log)
			if err != nil {
				r.shutdown()
				return nil, err
			}
		}
		r.workers = append(r.workers, wk)
	}
	defer r.shutdown()
	r.logf("%s: %d units (%d connections) over %d generator process(es), targets %d node(s)\n",
		cfg.Scenario, units, units*per, procs, len(r.targets))

	// A login storm is profiled while it happens.
	var profWG sync.WaitGroup
	if cfg.ProfileDir != "" && cfg.Scenario == ScenarioLogin && len(r.admins) > 0 && r.kind == "imd" {
		r.profile(ctx, &profWG, "login-", cfg.Duration)
	}

	ramps, err := r.ramp(ctx)
	if err != nil {
		return nil, err
	}
	ramp, loginHist, err := MergeRamps(ramps)
	if err != nil {
		return nil, err
	}
	r.active = ramp.Active
	rep.Connections = ramp.Held
	wanted := int64(units * per)
	if cfg.Scenario == ScenarioChurn {
		wanted = 0 // churn opens its connections in the phase
	}
	rp := &RampReport{Wanted: wanted, Dialed: ramp.Dialed, Connected: ramp.Connected, LoggedIn: ramp.LoggedIn,
		Held: ramp.Held, Retried: ramp.Retried, Seconds: ramp.Seconds, Failures: ramp.Failures, FDLimit: ramp.FDLimit, MaxPerProc: maxPer,
		LoginLatency: loginHist.Summary()}
	if ramp.Seconds > 0 {
		rp.ConnectRate = float64(ramp.Connected) / ramp.Seconds
		rp.LoginRate = float64(ramp.LoggedIn) / ramp.Seconds
	}
	rep.Ramp = rp
	rep.Generator = GeneratorReport{Procs: procs, Loops: r.loops, RSSBytes: ramp.Mem.RSS, HeapBytes: ramp.Mem.Heap}
	if ramp.Held > 0 {
		rep.Generator.BytesPerConn = (float64(ramp.Mem.RSS) - float64(ramp.Mem0.RSS)) / float64(ramp.Held)
		rep.Generator.HeapPerConn = (float64(ramp.Mem.Heap) - float64(ramp.Mem0.Heap)) / float64(ramp.Held)
	}
	rep.ErrorsByReason = mergeCounts(nil, ramp.Failures)
	switch {
	case r.stopReason != "":
	case ramp.StopReason != "":
		r.stopReason = ramp.StopReason
	case ramp.Held < int64(units*per) && cfg.Scenario != ScenarioChurn:
		r.stopReason = fmt.Sprintf("ramp finished with %d of %d connections held (see ramp failures)", ramp.Held, units*per)
	}

	switch cfg.Scenario {
	case ScenarioConns, ScenarioLogin:
		if err := r.holdPhase(ctx, rep, before); err != nil {
			return rep, err
		}
		rep.MsgsPerSec = rp.LoginRate
		rep.LatencyUs = rp.LoginLatency
		rep.Percentiles = loginHist.Percentiles()
	case ScenarioChurn:
		if err := r.measuredPhase(ctx, rep, 1, 0, ""); err != nil {
			return rep, err
		}
	case ScenarioP2P, ScenarioGroup:
		if cfg.FindMax {
			if err := r.findMax(ctx, rep); err != nil {
				return rep, err
			}
		} else if err := r.measuredPhase(ctx, rep, 1, cfg.Rate, ""); err != nil {
			return rep, err
		}
	}
	if r.stopReason == "" {
		r.stopReason = "completed"
	}
	rep.StopReason = r.stopReason
	rep.Errors = sumCounts(rep.ErrorsByReason)
	rep.CPUPressureEnd = cpuPressure()
	profWG.Wait()
	rep.ProfileFiles = r.profiles
	if err := r.finish(); err != nil {
		return rep, err
	}
	return rep, nil
}

// ramp waits until every worker is ready, printing progress and applying
// the memory guard and the ramp deadline.
func (r *runner) ramp(ctx context.Context) ([]*RampResult, error) {
	cfg := r.cfg
	ramps := make([]*RampResult, len(r.workers))
	held := make([]int64, len(r.workers))
	ready := 0
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start := time.Now()
	stopped := false
	stopAll := func(reason string) {
		if stopped {
			return
		}
		stopped = true
		r.stopReason = reason
		r.logf("stopping the ramp: %s\n", reason)
		for _, w := range r.workers {
			_ = w.send(Command{Kind: "stop-ramp"})
		}
	}
	lastPrint := int64(-1)
	for ready < len(r.workers) {
		select {
		case ev := <-r.events:
			switch ev.Kind {
			case "progress":
				held[ev.Worker] = ev.Held
			case "ready":
				ramps[ev.Worker] = ev.Ramp
				held[ev.Worker] = ev.Ramp.Held
				ready++
			case "error":
				r.workerErrs = append(r.workerErrs, fmt.Sprintf("worker %d: %s", ev.Worker, ev.Err))
			case "exit":
				r.exited++
				msg := fmt.Sprintf("worker %d exited during the ramp", ev.Worker)
				if ev.Err != "" {
					msg += ": " + ev.Err
				}
				r.workerErrs = append(r.workerErrs, msg)
				return nil, errors.New("bench: " + joinErrs(r.workerErrs))
			}
		case <-tick.C:
			var total int64
			for _, h := range held {
				total += h
			}
			if total != lastPrint {
				r.logf("ramp: %d/%d connections logged in (%.0fs)\n", total, cfg.connsWanted(), time.Since(start).Seconds())
				lastPrint = total
			}
			if avail := MemAvailable(); avail > 0 && avail < cfg.MemReserve {
				stopAll(fmt.Sprintf("memory guard: MemAvailable %s fell below the reserve %s", human(float64(avail)), human(float64(cfg.MemReserve))))
			}
			if cfg.RampTimeout > 0 && time.Since(start) > cfg.RampTimeout {
				stopAll(fmt.Sprintf("ramp deadline (%s) reached", cfg.RampTimeout))
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("bench: ramp: %w (%s)", ctx.Err(), joinErrs(r.workerErrs))
		}
	}
	r.readyAt = time.Now()
	r.activeBy = make([]int, len(ramps))
	for i, rr := range ramps {
		r.activeBy[i] = rr.Active
	}
	return ramps, nil
}

func joinErrs(errs []string) string {
	if len(errs) == 0 {
		return "no worker error reported"
	}
	out := errs[0]
	for _, e := range errs[1:] {
		out += "; " + e
	}
	return out
}

// runPhase runs one phase on every worker and returns the merged result
// with the server stats at the window's start and end.
func (r *runner) runPhase(ctx context.Context, id int, rate float64, warmup, duration, drain time.Duration, profPrefix string) (*PhaseResult, *Hist, StatsSum, StatsSum, error) {
	start := time.Now().Add(300 * time.Millisecond)
	total := 0
	for _, a := range r.activeBy {
		total += a
	}
	for i, w := range r.workers {
		share := 0.0
		if total > 0 {
			share = rate * float64(r.activeBy[i]) / float64(total)
		}
		ph := &PhaseSpec{ID: id, StartUnixNs: start.UnixNano(), Rate: share, Warmup: warmup, Duration: duration, Drain: drain}
		if err := w.send(Command{Kind: "go", Phase: ph}); err != nil {
			return nil, nil, StatsSum{}, StatsSum{}, fmt.Errorf("bench: worker %d: %w", i, err)
		}
	}
	// Server counters at the window's edges, and profiles inside it.
	type sample struct {
		s0, s1 StatsSum
		host   *HostCPU
		probe  *Hist
	}
	sampled := make(chan sample, 1)
	var profWG sync.WaitGroup
	go func() {
		var s sample
		sleepUntil(ctx, start.Add(warmup))
		s.s0, _ = FetchAll(ctx, r.admins, false)
		h0, hostOK := readHostTicks()
		if profPrefix != "" {
			r.profile(ctx, &profWG, profPrefix, duration)
		}
		probeDone := r.startProbe(ctx, duration)
		sleepUntil(ctx, start.Add(warmup+duration))
		s.s1, _ = FetchAll(ctx, r.admins, false)
		if h1, ok := readHostTicks(); ok && hostOK {
			s.host = hostCPUBetween(h0, h1)
		}
		s.probe = <-probeDone
		sampled <- s
	}()
	results := make([]*PhaseResult, len(r.workers))
	for got := 0; got < len(r.workers); {
		select {
		case ev := <-r.events:
			switch ev.Kind {
			case "phase":
				results[ev.Worker] = ev.Phase
				got++
			case "error":
				r.workerErrs = append(r.workerErrs, fmt.Sprintf("worker %d: %s", ev.Worker, ev.Err))
			case "exit":
				r.exited++
				return nil, nil, StatsSum{}, StatsSum{}, fmt.Errorf("bench: worker %d exited during a phase: %s %s", ev.Worker, ev.Err, joinErrs(r.workerErrs))
			}
		case <-ctx.Done():
			return nil, nil, StatsSum{}, StatsSum{}, fmt.Errorf("bench: phase %d: %w", id, ctx.Err())
		}
	}
	s := <-sampled
	r.probe, r.hostCPU = s.probe, s.host
	profWG.Wait()
	res, h, err := MergePhases(results)
	return res, h, s.s0, s.s1, err
}

// profile captures CPU (for d), heap and goroutine profiles of the first
// imd node in the background.
func (r *runner) profile(ctx context.Context, wg *sync.WaitGroup, prefix string, d time.Duration) {
	if r.cfg.ProfileDir == "" || len(r.admins) == 0 || r.kind != "imd" {
		return
	}
	dir := r.cfg.ProfileDir
	for _, n := range []string{"cpu.pprof", "heap.pprof", "goroutine.pprof"} {
		r.profiles = append(r.profiles, dir+"/"+prefix+n)
	}
	if r.cfg.Trace > 0 {
		r.profiles = append(r.profiles, dir+"/"+prefix+"trace.out")
	}
	wg.Go(func() {
		if err := captureProfiles(ctx, r.admins[0], dir, prefix, d, r.cfg.Trace); err != nil {
			r.logf("warning: profiles: %v\n", err)
		}
	})
}

// startProbe runs FsyncProbe for d when the configuration asks for it
// (imd nodes only) and returns the channel its latencies arrive on (nil
// latencies without a probe).
func (r *runner) startProbe(ctx context.Context, d time.Duration) <-chan *Hist {
	done := make(chan *Hist, 1)
	if !r.cfg.FsyncProbe || r.kind != "imd" || d <= 0 {
		done <- nil
		return done
	}
	go func() {
		pctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		h, err := FsyncProbe(pctx, os.TempDir(), DefaultProbeRecord)
		if err != nil {
			r.logf("warning: %v\n", err)
		}
		done <- h
	}()
	return done
}

func sleepUntil(ctx context.Context, t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-ctx.Done():
	}
}

// holdPhase holds the connections for cfg.Hold (conns) and reads the
// servers' memory after a GC while they are still held.
func (r *runner) holdPhase(ctx context.Context, rep *Report, before StatsSum) error {
	cfg := r.cfg
	hold := cfg.Hold
	if cfg.Scenario == ScenarioLogin {
		hold = 0
	}
	var res *PhaseResult
	if hold > 0 {
		prof := ""
		if cfg.ProfileDir != "" {
			prof = "conns-"
		}
		var err error
		var s0, s1 StatsSum
		res, _, s0, s1, err = r.runPhase(ctx, 1, 0, 0, hold, 0, prof)
		if err != nil {
			return err
		}
		rep.Server.CPUSeconds = s1.CPUSeconds - s0.CPUSeconds
		rep.Server.CPUWaitSeconds = s1.CPUWait - s0.CPUWait
		rep.Server.CPUCores = rep.Server.CPUSeconds / hold.Seconds()
		rep.Sent, rep.Delivered = res.Heartbeats, res.HeartbeatOK
		rep.Delivered = min(rep.Delivered, rep.Sent)
		rep.Generator.CPUSeconds, rep.Generator.CPUWaitSeconds, rep.Generator.CPUSpanS = res.CPU, res.CPUWait, res.CPUSpan
		rep.ErrorsByReason = mergeCounts(rep.ErrorsByReason, res.Errors)
		rep.Connections = res.Held
		rep.Generator.RSSBytes, rep.Generator.HeapBytes = res.Mem.RSS, res.Mem.Heap
	}
	rep.DurationS = hold.Seconds()
	after, err := FetchAll(ctx, r.admins, true)
	if err != nil && len(r.admins) > 0 {
		r.logf("warning: server stats: %v\n", err)
	}
	if h := r.host; h != nil && rep.Connections > 0 {
		h.MemAvailableAfter, h.SlabAfter = MemAvailable(), meminfo("Slab")
		h.KernelBytesPerConn = (float64(h.SlabAfter) - float64(h.SlabBefore)) / float64(rep.Connections)
		h.TotalBytesPerConn = (float64(h.MemAvailableBefore) - float64(h.MemAvailableAfter)) / float64(rep.Connections)
		rep.Host = h
	}
	fillServer(&rep.Server, after)
	rep.Server.RSSBefore, rep.Server.HeapBefore = before.RSS, before.Heap
	if hold == 0 && after.Nodes == before.Nodes && after.Nodes > 0 {
		// A login storm: the servers' CPU over the whole storm.
		rep.Server.CPUSeconds = after.CPUSeconds - before.CPUSeconds
		rep.Server.CPUWaitSeconds = after.CPUWait - before.CPUWait
		if rep.Server.CPUSeconds > 0 && rep.Ramp != nil {
			rep.Server.MsgsPerCPUSecond = float64(rep.Ramp.LoggedIn) / rep.Server.CPUSeconds
			if rep.Ramp.Seconds > 0 {
				rep.Server.CPUCores = rep.Server.CPUSeconds / rep.Ramp.Seconds
			}
		}
	}
	if conns := after.Connections - before.Connections; conns > 0 && before.Nodes == after.Nodes {
		rep.Server.RSSPerConnMarginal = (float64(after.RSS) - float64(before.RSS)) / float64(conns)
		rep.Server.HeapPerConnMarginal = (float64(after.Heap) - float64(before.Heap)) / float64(conns)
	}
	return nil
}

func fillServer(s *ServerReport, st StatsSum) {
	s.RSSBytes, s.HeapBytes = st.RSS, st.Heap
	s.Nodes, s.Connections, s.Sessions, s.Goroutines = st.Nodes, st.Connections, st.Sessions, st.Goroutines
	if st.Connections > 0 {
		s.BytesPerConn = float64(st.RSS) / float64(st.Connections)
	}
}

// measuredPhase runs one phase at rate and fills the report from it.
func (r *runner) measuredPhase(ctx context.Context, rep *Report, id int, rate float64, prefix string) error {
	cfg := r.cfg
	if cfg.ProfileDir != "" && prefix == "" {
		prefix = cfg.Scenario + "-"
	}
	res, h, s0, s1, err := r.runPhase(ctx, id, rate, cfg.Warmup, cfg.Duration, cfg.Drain, prefix)
	if err != nil {
		return err
	}
	r.fillFromPhase(rep, res, h, s0, s1, rate)
	return nil
}

// perMessage divides the window's MongoDB commands and Redis round trips
// by the messages delivered in it (0 without counters or messages).
func perMessage(res *PhaseResult, s0, s1 StatsSum) (store, redis float64) {
	if res.InWindowRx <= 0 || s1.StoreOps == nil {
		return 0, 0
	}
	n := float64(res.InWindowRx)
	return Total(OpsDelta(s0.StoreOps, s1.StoreOps)) / n, Total(OpsDelta(s0.RedisOps, s1.RedisOps)) / n
}

// syscallsBetween returns the servers' read and write syscalls from s0 to
// s1: both 0 when they were not counted (no read in between) or the set of
// nodes changed.
func syscallsBetween(s0, s1 StatsSum) (reads, writes uint64) {
	if s1.ReadSyscalls <= s0.ReadSyscalls || s1.WriteSyscalls < s0.WriteSyscalls || s0.Nodes != s1.Nodes {
		return 0, 0
	}
	return s1.ReadSyscalls - s0.ReadSyscalls, s1.WriteSyscalls - s0.WriteSyscalls
}

func summarize(res *PhaseResult, h *Hist, s0, s1 StatsSum) PhaseSummary {
	p := PhaseSummary{Rate: res.Rate, Sent: res.Sent, Delivered: res.Delivered, Errors: sumCounts(res.Errors), LatencyUs: h.Summary(),
		ServerCPU: s1.CPUSeconds - s0.CPUSeconds, ServerCPUWait: s1.CPUWait - s0.CPUWait}
	p.ServerReadSyscalls, _ = syscallsBetween(s0, s1)
	if res.WindowS > 0 {
		p.MsgsPerSec = float64(res.InWindowRx) / res.WindowS
		if res.Cycles > 0 {
			p.MsgsPerSec = float64(res.Cycles) / res.WindowS
		}
	}
	return p
}

// fillFromPhase makes res the report's measurement.
func (r *runner) fillFromPhase(rep *Report, res *PhaseResult, h *Hist, s0, s1 StatsSum, rate float64) {
	rep.DurationS = res.WindowS
	rep.Sent, rep.Delivered = res.Expected, res.Delivered
	if r.cfg.Scenario == ScenarioChurn {
		rep.Sent = res.Sent
	}
	rep.RateTarget = rate
	rep.LatencyUs = h.Summary()
	rep.Percentiles = h.Percentiles()
	rep.ErrorsByReason = mergeCounts(rep.ErrorsByReason, res.Errors)
	if res.WindowS > 0 {
		rep.MsgsPerSec = float64(res.InWindowRx) / res.WindowS
		if r.cfg.Scenario == ScenarioChurn {
			rep.MsgsPerSec = float64(res.Cycles) / res.WindowS
		}
	}
	fillServer(&rep.Server, s1)
	rep.Server.CPUSeconds = s1.CPUSeconds - s0.CPUSeconds
	rep.Server.CPUWaitSeconds = s1.CPUWait - s0.CPUWait
	if res.WindowS > 0 {
		rep.Server.CPUCores = rep.Server.CPUSeconds / res.WindowS
	}
	if rep.Server.CPUSeconds > 0 {
		rep.Server.MsgsPerCPUSecond = rep.MsgsPerSec * res.WindowS / rep.Server.CPUSeconds
	}
	rep.Server.ReadSyscalls, rep.Server.WriteSyscalls = syscallsBetween(s0, s1)
	rep.Server.StoreOps, rep.Server.RedisOps = OpsDelta(s0.StoreOps, s1.StoreOps), OpsDelta(s0.RedisOps, s1.RedisOps)
	rep.Server.StoreCmdsPerMsg, rep.Server.RedisCmdsPerMsg = perMessage(res, s0, s1)
	rep.Server.StoreStalls = OpsDelta(s0.StoreStalls, s1.StoreStalls)
	rep.Server.StoreJobs = OpsDelta(s0.StoreJobs, s1.StoreJobs)
	rep.Server.StoreLatency = nil
	for name, h := range s1.StoreHists {
		if rep.Server.StoreLatency == nil {
			rep.Server.StoreLatency = map[string]StoreLatency{}
		}
		rep.Server.StoreLatency[name] = h.Sub(s0.StoreHists[name]).Summary()
	}
	rep.FsyncProbe = nil
	rep.HostCPU = r.hostCPU
	if r.probe != nil && r.probe.Count() > 0 {
		l := r.probe.Summary()
		rep.FsyncProbe = &l
	}
	rep.Generator.CPUSeconds, rep.Generator.CPUWaitSeconds, rep.Generator.CPUSpanS = res.CPU, res.CPUWait, res.CPUSpan
	rep.Generator.RSSBytes, rep.Generator.HeapBytes = res.Mem.RSS, res.Mem.Heap
	rep.Connections = res.Held
	if r.cfg.Scenario == ScenarioChurn {
		// Connections come and go: report the concurrency.
		rep.Connections = int64(r.cfg.Slots)
	}
	d := &Details{SentTotal: res.SentTotal, Expected: res.Expected, DeliveredInWin: res.InWindowRx, SelfPushes: res.SelfPushes,
		Acks: res.Acks, Late: res.Late, Heartbeats: res.Heartbeats, HeartbeatOK: res.HeartbeatOK, Active: r.active}
	if res.WindowS > 0 {
		d.SendsPerSec = float64(res.Sent) / res.WindowS
	}
	if lag, err := DecodeHist(res.LagHist); err == nil && lag.Count() > 0 {
		s := lag.Summary()
		d.SendLagUs = &s
	}
	rep.Details = d
}

// findMax steps the rate up by cfg.Step until p99 exceeds cfg.MaxP99 or
// the deliveries fall short, then measures latency at half the highest
// rate that passed.
func (r *runner) findMax(ctx context.Context, rep *Report) error {
	cfg := r.cfg
	rate := cfg.Rate
	best := 0.0
	id := 1
	for step := 0; step < cfg.MaxSteps; step++ {
		prefix := ""
		if cfg.ProfileDir != "" {
			prefix = fmt.Sprintf("%s-step%02d-", cfg.Scenario, step+1)
		}
		res, h, s0, s1, err := r.runPhase(ctx, id, rate, cfg.Warmup, cfg.Duration, cfg.Drain, prefix)
		id++
		if err != nil {
			return err
		}
		ps := summarize(res, h, s0, s1)
		ps.StoreCmdsPerMsg, ps.RedisCmdsPerMsg = perMessage(res, s0, s1)
		ps.Rate = rate
		ps.OK, ps.Why = passes(res, ps, cfg.MaxP99)
		rep.Phases = append(rep.Phases, ps)
		r.logf("find-max step %d: target %.0f/s -> %.0f deliveries/s, p99 %d us: %s %s\n", step+1, rate, ps.MsgsPerSec, ps.LatencyUs.P99, okStr(ps.OK), ps.Why)
		if !ps.OK {
			break
		}
		best = rate
		rate *= cfg.Step
		if ctx.Err() != nil {
			break
		}
	}
	if best == 0 {
		r.stopReason = "find-max: the starting rate already failed; lower --rate"
		return r.measuredPhase(ctx, rep, id, cfg.Rate/2, "")
	}
	rep.MaxRate = best
	r.stopReason = fmt.Sprintf("find-max: highest passing rate %.0f/s (next step failed: %s); latency measured at half of it", best, rep.Phases[len(rep.Phases)-1].Why)
	if len(rep.Phases) == cfg.MaxSteps && rep.Phases[len(rep.Phases)-1].OK {
		r.stopReason = fmt.Sprintf("find-max: %d steps all passed up to %.0f/s (raise --max-steps)", cfg.MaxSteps, best)
	}
	return r.measuredPhase(ctx, rep, id, best/2, "")
}

// passes applies the find-max criteria to one step.
func passes(res *PhaseResult, ps PhaseSummary, maxP99 time.Duration) (bool, string) {
	switch {
	case res.Expected == 0:
		return false, "nothing sent"
	case ps.LatencyUs.P99 > maxP99.Microseconds():
		return false, fmt.Sprintf("p99 %dus > %dus", ps.LatencyUs.P99, maxP99.Microseconds())
	case float64(res.Delivered) < 0.99*float64(res.Expected):
		return false, fmt.Sprintf("delivered %d of %d", res.Delivered, res.Expected)
	case float64(res.InWindowRx) < 0.95*float64(res.Expected):
		return false, fmt.Sprintf("received %d in the window, %d expected", res.InWindowRx, res.Expected)
	}
	return true, ""
}

// finish ends every worker and waits for all of them to exit.
func (r *runner) finish() error {
	for _, w := range r.workers {
		_ = w.send(Command{Kind: "finish"})
	}
	r.shutdown()
	if len(r.workerErrs) > 0 {
		return errors.New("bench: " + joinErrs(r.workerErrs))
	}
	return nil
}

// shutdown stops every worker and drains events until all have exited
// (bounded: process workers are killed after a grace period).
func (r *runner) shutdown() {
	if r.workers == nil {
		return
	}
	// Closing many loopback connections is slow (the kernel tears down
	// both ends in the closing process): give workers time before killing.
	grace := 30*time.Second + time.Duration(r.cfg.connsWanted()/max(r.procs, 1))*time.Millisecond
	for _, w := range r.workers {
		w.stop(grace)
	}
	deadline := time.NewTimer(grace + time.Minute)
	defer deadline.Stop()
	for r.exited < len(r.workers) {
		select {
		case ev := <-r.events:
			switch ev.Kind {
			case "exit":
				r.exited++
				if ev.Err != "" {
					r.workerErrs = append(r.workerErrs, fmt.Sprintf("worker %d: %s", ev.Worker, ev.Err))
				}
			case "error":
				r.workerErrs = append(r.workerErrs, fmt.Sprintf("worker %d: %s", ev.Worker, ev.Err))
			}
		case <-deadline.C:
			r.workerErrs = append(r.workerErrs, "workers did not exit in time")
			r.workers = nil
			return
		}
	}
	r.workers = nil
}

// syncWriter serialises writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
