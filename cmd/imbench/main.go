// Command imbench is the load generator of the IM server (package bench):
// connection capacity, 1:1 and group delivery rate and open-loop latency,
// login storms and connection churn, over the real protocol.
//
//	imbench conns  --conns 19000 --procs 2 --hold 20s
//	imbench p2p    --pairs 1000 --rate 20000 [--find-max] [--baseline-echo]
//	imbench group  --groups 10 --group-size 100 --rate 1000
//	imbench login  --conns 10000 --concurrency 2000
//	imbench churn  --slots 200 --duration 20s
//
// By default it spawns its own imd nodes (./bin/imd, built if missing) on
// free loopback ports; --target/--admin/--secret point it at existing
// nodes instead. See docs/BENCHMARKS.md.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/imgn/imgn/bench"
	"github.com/imgn/imgn/internal/envflag"
	"github.com/imgn/imgn/internal/version"
)

func main() {
	// IMBENCH_CPUPROFILE=file profiles the generator itself (the parent
	// process; worker processes add their pid to the name).
	if path := os.Getenv("IMBENCH_CPUPROFILE"); path != "" {
		if len(os.Args) > 1 && os.Args[1] == bench.WorkerArg {
			path += "." + strconv.Itoa(os.Getpid())
		}
		if f, err := os.Create(path); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				code := run(os.Args[1:], os.Stdout, os.Stderr)
				pprof.StopCPUProfile()
				_ = f.Close()
				os.Exit(code)
			}
		}
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case bench.WorkerArg:
			return bench.RunChild(os.Stdin, stdout, stderr)
		case bench.RelayArg:
			return relayMain(args[1:], stderr)
		case "fsync":
			return fsyncMain(args[1:], stdout, stderr)
		}
	}
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return 0
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, version.String("imbench"))
		return 0
	}
	if strings.HasPrefix(args[0], "-") || !isScenario(args[0]) {
		code, _ := envflag.Exit("imbench", envflag.Usagef("unknown scenario %q: want one of %s", args[0], strings.Join(scenarios, ", ")), stderr)
		return code
	}
	cfg, out, err := parse(args[0], args[1:], stdout, stderr)
	if code, stop := envflag.Exit("imbench "+args[0], err, stderr); stop {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if out.repeat > 1 {
		return runRepeated(ctx, cfg, out, stdout, stderr)
	}
	rep, err := bench.Run(ctx, cfg)
	if rep != nil {
		rep.Print(stdout)
		if out.hgrm != "" && rep.Percentiles != "" {
			if werr := os.WriteFile(out.hgrm, []byte(rep.Percentiles), 0o644); werr != nil {
				fmt.Fprintln(stderr, "imbench:", werr)
			}
		}
		if out.json != "" {
			if werr := rep.WriteJSON(out.json); werr != nil {
				fmt.Fprintln(stderr, "imbench:", werr)
				return 1
			}
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "imbench:", err)
		return 1
	}
	return 0
}

// runRepeated runs cfg out.repeat times, each run against fresh servers,
// prints each report and then their summary (bench.Repeat). A failed run
// ends the series; the summary covers the runs before it.
func runRepeated(ctx context.Context, cfg bench.Config, out outputs, stdout, stderr io.Writer) int {
	var reps []*bench.Report
	var runErr error
	for i := range out.repeat {
		fmt.Fprintf(stdout, "\n==== run %d of %d\n", i+1, out.repeat)
		rep, err := bench.Run(ctx, cfg)
		if rep != nil {
			rep.Print(stdout)
			reps = append(reps, rep)
		}
		if err != nil {
			runErr = fmt.Errorf("run %d of %d: %w", i+1, out.repeat, err)
			break
		}
	}
	code := 0
	if len(reps) > 0 {
		sum := bench.SumRepeat(reps)
		sum.Print(stdout)
		if out.json != "" {
			if err := bench.WriteRepeatJSON(out.json, sum, reps); err != nil {
				fmt.Fprintln(stderr, "imbench:", err)
				code = 1
			}
		}
	}
	if runErr != nil {
		fmt.Fprintln(stderr, "imbench:", runErr)
		code = 1
	}
	return code
}

// outputs are the flags about what imbench writes, not about the load.
type outputs struct {
	json, hgrm string
	repeat     int // runs of the command (1: one, with no summary)
}

// scenarios are the first arguments imbench accepts.
var scenarios = []string{"conns", "p2p", "group", "login", "churn"}

func isScenario(s string) bool {
	for _, n := range scenarios {
		if n == s {
			return true
		}
	}
	return false
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `Usage: imbench <scenario> [flags]
       imbench --version

scenarios:
  conns   open and log in --conns connections, hold them with heartbeats for --hold;
          report connect/login rate, failures, server and generator memory per connection
  p2p     --pairs sender/receiver pairs, open loop at --rate msgs/s total; latency from
          the intended send time (HdrHistogram); --find-max steps the rate
  group   --groups groups of --group-size members, --rate group sends/s; deliveries/s
  login   a login storm: --conns connections logging in with --concurrency in flight
  churn   --slots concurrent connect, login, send, disconnect cycles for --duration
  fsync   no server: time --record-byte appends, each followed by fdatasync, in --dir
          for --duration (the disk's floor under the embedded store's commits)

'imbench <scenario> --help' lists the flags.
`)
}

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

type bytesFlag uint64

func (b *bytesFlag) String() string { return strconv.FormatUint(uint64(*b), 10) }
func (b *bytesFlag) Set(v string) error {
	mult := uint64(1)
	up := strings.ToUpper(strings.TrimSpace(v))
	for _, u := range []struct {
		suffix string
		m      uint64
	}{{"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if strings.HasSuffix(up, u.suffix) {
			mult, up = u.m, strings.TrimSuffix(up, u.suffix)
			break
		}
	}
	n, err := strconv.ParseUint(strings.TrimSpace(up), 10, 64)
	if err != nil {
		return err
	}
	*b = bytesFlag(n * mult)
	return nil
}

// parse reads the flags of one scenario; help goes to stdout, the run's
// log to stderr. The environment is not read: the IM_* variables belong to
// the daemons (IM_ADMIN is imctl's admin URL, not a list of targets).
func parse(scenario string, args []string, stdout, stderr io.Writer) (bench.Config, outputs, error) {
	cfg := bench.Config{Scenario: scenario, Log: stderr}
	fs := envflag.New("imbench "+scenario, "imbench "+scenario+" [flags]", "", stdout)
	fs.DisableEnv()
	var targets, admins, src, imdArgs listFlag
	var memReserve bytesFlag
	out := outputs{repeat: 1}
	fs.Var(&targets, "target", "existing node client addresses host:port (comma list); empty: spawn nodes")
	fs.Var(&admins, "admin", "admin base URLs of the targets, e.g. http://127.0.0.1:9091 (comma list, same order)")
	fs.StringVar(&cfg.Secret, "secret", "", "JWT secret of the targets (--jwt-secret of imd)")
	fs.StringVar(&cfg.Router, "router", "", "imrouter URL: the targets are its nodes and each user connects where it says (needs --secret)")
	fs.BoolVar(&cfg.WS, "ws", false, "connect over WebSocket: spawned nodes also get --ws-listen and are loaded there (with --target, give WebSocket listeners)")
	fs.BoolVar(&cfg.AllowRemote, "allow-remote", false, "allow targets and source addresses outside 127.0.0.0/8")
	fs.IntVar(&cfg.Nodes, "nodes", 0, "imd nodes to spawn (0: enough for the connections at --node-max-conns each)")
	fs.StringVar(&cfg.Store, "store", bench.DefaultStore, "store of spawned nodes: memory or embedded")
	fs.BoolVar(&cfg.NoFsync, "no-fsync", false, "spawned embedded nodes run with --unsafe-no-fsync")
	fs.StringVar(&cfg.Imd, "imd", bench.DefaultImd, "imd binary for spawned nodes (built from ./cmd/imd if missing)")
	fs.Var(&imdArgs, "imd-arg", "extra argument for spawned imd nodes (repeatable, comma list)")
	fs.IntVar(&cfg.NodeMaxConns, "node-max-conns", bench.DefaultNodeMaxConns, "--max-conns of spawned nodes")
	fs.IntVar(&cfg.Conns, "conns", bench.DefaultConns, "connections (conns, login)")
	fs.IntVar(&cfg.Pairs, "pairs", bench.DefaultPairs, "sender/receiver pairs (p2p)")
	fs.IntVar(&cfg.Groups, "groups", bench.DefaultGroups, "groups (group)")
	fs.IntVar(&cfg.GroupSize, "group-size", bench.DefaultGroupSize, "members per group, sender included (group)")
	fs.IntVar(&cfg.Slots, "slots", bench.DefaultSlots, "concurrent connect-send-disconnect cycles (churn)")
	fs.Float64Var(&cfg.Rate, "rate", 0, fmt.Sprintf("target send rate per second over all senders, open loop (p2p default %d, group %d); the start rate of --find-max", bench.DefaultRate, bench.DefaultGroupRate))
	fs.IntVar(&cfg.Payload, "payload", bench.DefaultPayload, "message body bytes (min 24)")
	fs.DurationVar(&cfg.Warmup, "warmup", bench.DefaultWarmup, "time at the target rate before measuring")
	fs.DurationVar(&cfg.Duration, "duration", bench.DefaultDuration, "measurement window (per --find-max step)")
	fs.DurationVar(&cfg.Drain, "drain", bench.DefaultDrain, "wait for in-flight messages after the window")
	fs.DurationVar(&cfg.Hold, "hold", bench.DefaultHold, "conns: how long to hold the connections")
	fs.IntVar(&cfg.Concurrency, "concurrency", bench.DefaultConcurrency, "connects+logins in flight per generator process")
	fs.IntVar(&cfg.Retries, "retries", bench.DefaultRetries, "re-dials of a ramp connection whose connect or login failed (-1: none)")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", 0, "heartbeat interval per connection (0: the interval the server announces)")
	fs.DurationVar(&cfg.PushAck, "push-ack", bench.DefaultPushAck, "a receiving connection sends one coalesced PUSH_ACK this long after its first unacknowledged push (negative: never)")
	fs.DurationVar(&cfg.LoginTimeout, "login-timeout", bench.DefaultLoginTimeout, "generator-side connect+login timeout")
	fs.DurationVar(&cfg.RampTimeout, "ramp-timeout", 0, "stop opening connections after this long (0: no limit but --timeout)")
	fs.IntVar(&cfg.Procs, "procs", 0, "generator processes (0: as many as the fd limit requires)")
	fs.IntVar(&cfg.Loops, "loops", 0, "event loops per generator process (0: GOMAXPROCS)")
	fs.Var(&src, "src", "source addresses to bind, one per process round-robin (default 127.0.0.1..127.0.0.K with --procs K > 1)")
	fs.BoolVar(&cfg.FindMax, "find-max", false, "p2p/group: step the rate up by --step until p99 > --max-p99 or deliveries fall short; then measure at half the max")
	fs.DurationVar(&cfg.MaxP99, "max-p99", bench.DefaultMaxP99, "p99 bound of --find-max")
	fs.Float64Var(&cfg.Step, "step", bench.DefaultStep, "rate multiplier per --find-max step")
	fs.IntVar(&cfg.MaxSteps, "max-steps", bench.DefaultMaxSteps, "most --find-max steps")
	fs.StringVar(&cfg.ServerCPUs, "server-cpus", "", "pin spawned nodes and relays to these CPUs (e.g. 1)")
	fs.StringVar(&cfg.GenCPUs, "gen-cpus", "", "pin generator processes to these CPUs (e.g. 0)")
	fs.BoolVar(&cfg.Baseline, "baseline-echo", false, "run the same load against the minimal gnet relay too and report the ratio")
	fs.BoolVar(&cfg.BaselineDurable, "baseline-durable", false, "with --baseline-echo: make the relay durable (it logs every message to a file in the temp directory and fdatasyncs it, one group commit at a time, before it answers or forwards): the yardstick for --store embedded")
	fs.StringVar(&cfg.ProfileDir, "profile", "", "directory for CPU, heap and goroutine profiles of the (first) node during the measurement")
	fs.DurationVar(&cfg.Trace, "trace", 0, "with --profile: also a Go execution trace of the (first) node, this long, from the start of the measurement (e.g. 5s; 0: none)")
	fs.BoolVar(&cfg.FsyncProbe, "fsync-probe", false, "during the window, time a bare 600 B write+fdatasync loop in the temp directory (where spawned nodes keep their data) and report it beside the embedded store's commit and fsync latencies")
	fs.StringVar(&out.json, "json", "", "write the report as one JSON object to this file (with --repeat: the summary and every run's report)")
	fs.StringVar(&out.hgrm, "hgrm", "", "write the latency percentile spectrum (.hgrm) to this file")
	fs.IntVar(&out.repeat, "repeat", 1, "run the command this many times, each against fresh servers (with --baseline-echo: imd then the relay each time), and print the medians and the run-to-run spread")
	fs.DurationVar(&cfg.Timeout, "timeout", bench.DefaultTimeout, "hard bound on the whole run (with --repeat: on each run)")
	fs.Var(&memReserve, "mem-reserve", "stop opening connections when MemAvailable falls below this (default 2GiB)")
	fs.StringVar(&cfg.UserPrefix, "user-prefix", bench.DefaultUserPrefix, "prefix of the bench user ids")
	if err := fs.Parse(args, nil); err != nil {
		return cfg, out, err
	}
	switch {
	case out.repeat < 1:
		return cfg, out, envflag.Usagef("--repeat %d: want at least 1", out.repeat)
	case out.repeat > 1 && out.hgrm != "":
		return cfg, out, envflag.Usagef("--hgrm writes one run's spectrum: not with --repeat %d", out.repeat)
	case out.repeat > 1 && cfg.ProfileDir != "":
		return cfg, out, envflag.Usagef("--profile saves one run's profiles: not with --repeat %d", out.repeat)
	}
	cfg.Targets, cfg.Admins, cfg.Src, cfg.ImdArgs = targets, admins, src, imdArgs
	cfg.MemReserve = uint64(memReserve)
	return cfg, out, nil
}

// relayMain runs the baseline relay as a process (started by imbench).
func relayMain(args []string, stderr io.Writer) int {
	fs := envflag.New("imbench "+bench.RelayArg, "imbench "+bench.RelayArg+" [flags]", "", stderr)
	fs.DisableEnv()
	listen := fs.String("listen", "127.0.0.1:0", "client listener")
	admin := fs.String("admin", "127.0.0.1:0", "admin listener (/admin/stats, /readyz)")
	loops := fs.Int("loops", 0, "event loops (0: GOMAXPROCS)")
	wal := fs.String("wal", "", "make the relay durable: log every SEND and GROUP_SEND to this file and fdatasync it before answering or forwarding")
	if code, stop := envflag.Exit("imbench "+bench.RelayArg, fs.Parse(args, nil), stderr); stop {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := bench.RunRelayMain(ctx, *listen, *admin, *loops, *wal); err != nil {
		fmt.Fprintln(stderr, "imbench relay:", err)
		return 1
	}
	return 0
}

// fsyncMain runs bench.FsyncProbe on its own and prints its latencies.
func fsyncMain(args []string, stdout, stderr io.Writer) int {
	fs := envflag.New("imbench fsync", "imbench fsync [flags]", "", stdout)
	fs.DisableEnv()
	dir := fs.String("dir", os.TempDir(), "directory on the file system to probe (a temporary file is created and removed there)")
	d := fs.Duration("duration", 10*time.Second, "how long to probe")
	record := fs.Int("record", bench.DefaultProbeRecord, "bytes written before each fdatasync")
	if code, stop := envflag.Exit("imbench fsync", fs.Parse(args, nil), stderr); stop {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *d)
	defer cancel()
	h, err := bench.FsyncProbe(ctx, *dir, *record)
	if h != nil && h.Count() > 0 {
		l := h.Summary()
		fmt.Fprintf(stdout, "fsync probe        %s: %d writes of %d B + fdatasync: mean %.0fus p50 %d p90 %d p99 %d p99.9 %d max %d us\n",
			*dir, l.Count, *record, l.Mean, l.P50, l.P90, l.P99, l.P999, l.Max)
	}
	if err != nil {
		fmt.Fprintln(stderr, "imbench fsync:", err)
		return 1
	}
	return 0
}
