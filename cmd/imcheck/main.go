// Command imcheck proves the delivery guarantees from the outside.
//
//	imcheck check  [--short] [--ws] [--nodes 3] [--clients 12] [--rate 60] [--duration 60s] [--faults kill,pause,...]
//	imcheck attack [--short] [--rate 100] [--clients 4]
//
// check starts a local cluster of real processes (ZooKeeper, Redis, the
// dev MongoDB, imd nodes, imrouter; internal/clusterkit), runs a workload
// of clients sending unique messages through the router while faults are
// injected back to back, then drains and prints the Jepsen-style verdict
// (lost, recovered, unexpected, shown twice, order violations, gaps) and
// per-fault latency and heal time. It exits 1 if a must-be-zero count is
// not zero.
//
// attack starts one node (memory store) and runs bench/attack's bad-input
// attacks against it under a legitimate load; it exits 1 if an attack
// (other than a known issue) does not get its documented outcome or the
// legitimate p99 leaves the stated bound.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/imgn/imgn/bench/attack"
	"github.com/imgn/imgn/internal/clusterkit"
	"github.com/imgn/imgn/internal/envflag"
	"github.com/imgn/imgn/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usageText = `Usage: imcheck check [flags]
       imcheck attack [flags]
       imcheck --version

check   start a local cluster, run a workload through the router while faults are
        injected, and print the verdict (lost, duplicated, reordered messages)
attack  start one node and run the bad-input attacks against it under load

'imcheck check --help' and 'imcheck attack --help' list the flags.
Exit status: 0 every check passed, 1 a check failed, 2 bad usage.
`

// run executes one invocation and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	switch args[0] {
	case "check":
		return runCheck(ctx, args[1:], stdout, stderr)
	case "attack":
		return runAttack(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usageText)
		return 0
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, version.String("imcheck"))
		return 0
	}
	code, _ := envflag.Exit("imcheck", envflag.Usagef("unknown command %q: want check or attack", args[0]), stderr)
	return code
}

// newFlags returns the flag set of a subcommand (no environment: the IM_*
// variables belong to the daemons).
func newFlags(name, description string, stdout io.Writer) *envflag.Flags {
	fs := envflag.New("imcheck "+name, "imcheck "+name+" [flags]", description, stdout)
	fs.DisableEnv()
	return fs
}

func binDir(ctx context.Context, given string) (string, error) {
	if given != "" {
		return given, nil
	}
	return clusterkit.Build(ctx, filepath.Join(os.TempDir(), "imgn-imcheck-bin"))
}

func runCheck(ctx context.Context, args []string, out, stderr io.Writer) int {
	fs := newFlags("check", "Runs the fault checker on a local cluster of real processes.", out)
	short := fs.Bool("short", false, "the make-test version: 3 nodes, 8 clients, 25s of faults, the short fault set")
	nodes := fs.Int("nodes", 5, "imd nodes")
	clients := fs.Int("clients", 16, "clients (one user each)")
	rate := fs.Float64("rate", 80, "messages per second over all clients")
	dur := fs.Duration("duration", 90*time.Second, "length of the fault phase (faults run back to back)")
	quiet := fs.Duration("quiet", 5*time.Second, "fault-free phase before the first fault")
	faults := fs.String("faults", strings.Join(AllFaults, ","), "faults, applied in turn: "+strings.Join(AllFaults, ","))
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "random seed (targets, peers)")
	ws := fs.Bool("ws", false, "clients connect to the nodes' WebSocket listeners (routed by the router) instead of TCP; with --short, the WebSocket fault set")
	bin := fs.String("bin", "", "directory with imd and imrouter (default: build them)")
	if code, stop := envflag.Exit("imcheck check", fs.Parse(args, nil), stderr); stop {
		return code
	}
	cfg := CheckConfig{Nodes: *nodes, Clients: *clients, Rate: *rate, Duration: *dur, Quiet: *quiet,
		Faults: strings.Split(*faults, ","), Seed: *seed, WS: *ws, Logf: log.Printf}
	if *short {
		cfg.Nodes, cfg.Clients, cfg.Rate, cfg.Duration, cfg.Quiet, cfg.Faults = 3, 8, 40, 25*time.Second, 3*time.Second, ShortFaults
		if *ws {
			cfg.Duration, cfg.Quiet, cfg.Faults = 12*time.Second, 2*time.Second, WSShortFaults
		}
	}
	b, err := binDir(ctx, *bin)
	if err != nil {
		log.Print(err)
		return 1
	}
	cfg.Bin = b
	log.Printf("imcheck check: %d nodes, %d clients over %s, %.0f msg/s, %v of faults %v, seed %d",
		cfg.Nodes, cfg.Clients, transport(cfg.WS), cfg.Rate, cfg.Duration, cfg.Faults, cfg.Seed)
	rep, err := Check(ctx, cfg)
	if err != nil {
		log.Print(err)
		return 1
	}
	rep.Print(out)
	if !rep.OK() {
		return 1
	}
	return 0
}

func runAttack(ctx context.Context, args []string, out, stderr io.Writer) int {
	fs := newFlags("attack", "Runs the bad-input attacks against one node under a legitimate load.", out)
	short := fs.Bool("short", false, "smaller floods and baseline")
	rate := fs.Float64("rate", 100, "legitimate messages per second")
	clients := fs.Int("clients", 4, "legitimate clients")
	baseline := fs.Duration("baseline", 10*time.Second, "no-attack phase")
	only := fs.String("only", "", "comma-separated attacks (default all): "+strings.Join(attack.Names(), ","))
	bin := fs.String("bin", "", "directory with imd (default: build it)")
	if code, stop := envflag.Exit("imcheck attack", fs.Parse(args, nil), stderr); stop {
		return code
	}
	b, err := binDir(ctx, *bin)
	if err != nil {
		log.Print(err)
		return 1
	}
	dir, err := os.MkdirTemp("", "imgn-attack-")
	if err != nil {
		log.Print(err)
		return 1
	}
	defer os.RemoveAll(dir)
	n, err := clusterkit.Single(ctx, b, dir, attack.NodeArgs...)
	if err != nil {
		log.Print(err)
		return 1
	}
	defer n.Close()
	cfg := attack.Config{Node: n, LoadClients: *clients, Rate: *rate, Baseline: *baseline, Logf: log.Printf}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	if *short {
		cfg.Scale, cfg.Baseline = 0.3, 3*time.Second
	}
	rep, err := attack.Run(ctx, cfg)
	if err != nil {
		log.Print(err)
		return 1
	}
	fmt.Fprintf(out, "\n| attack | documented answer | node's answer | closed | counted | node alive | time to answer/close | result |\n|---|---|---|---|---|---|---|---|\n")
	code := 0
	for _, r := range rep.Results {
		res := "PASS"
		if !r.OK {
			res = "FAIL"
			if why, ok := attack.KnownIssues[r.Name]; ok {
				res = "KNOWN ISSUE: " + why
			} else {
				code = 1
			}
		}
		got := r.Got
		if r.Detail != "" {
			got += " (" + r.Detail + ")"
		}
		fmt.Fprintf(out, "| %s | %s | %s | %v | %.0f %s | %v | %s | %s |\n", r.Name, r.Want, got, r.Closed, r.Counted, r.Metric, r.Alive,
			r.Took.Round(time.Millisecond), res)
	}
	lat := "PASS"
	if !rep.LatencyOK {
		lat, code = "FAIL", 1
	}
	fmt.Fprintf(out, "\nlegitimate load (%d clients, %.0f msg/s): no attack p50 %s p99 %s (n=%d); during attacks p50 %s p99 %s (n=%d); bound p99 <= %s: %s; send errors %d\n",
		*clients, *rate, ms(rep.BaseP50), ms(rep.BaseP99), rep.BaseN, ms(rep.AttackP50), ms(rep.AttackP99), rep.AttackN, ms(rep.Bound), lat, rep.LoadErrors)
	fmt.Fprintf(out, "node: RSS %d -> %d KiB, goroutines %d -> %d, still running: %v\n", rep.RSSBefore>>10, rep.RSSAfter>>10,
		rep.GoroutinesB, rep.GoroutinesA, n.Running())
	return code
}
