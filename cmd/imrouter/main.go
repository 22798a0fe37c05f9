// Command imrouter tells clients which imd node to connect to: it follows
// the cluster's membership in ZooKeeper (or a fixed --static list) and
// answers GET /v1/route?uid=alice with a node chosen by a load-balancing
// strategy. Routers are stateless: run as many as you like. See
// docs/router.md.
//
// Settings come from flags, IM_<FLAG> environment variables (e.g.
// IM_ZK=zk1:2181,zk2:2181) and a TOML file (--config FILE, keys are the
// flag names); a flag beats the environment, which beats the file.
// `imrouter config example` prints a complete commented config file.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/imgn/imgn/internal/envflag"
	"github.com/imgn/imgn/internal/logging"
	"github.com/imgn/imgn/lb"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/zkregistry"
	"github.com/imgn/imgn/router"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}

// options is imrouter's configuration after flags, environment and file.
type options struct {
	listen, zkRoot, strategy, logLevel, logFormat string
	zk                                            []string
	static                                        []membership.NodeInfo
	vnodes                                        int
	zkSession, shutdownTimeout                    time.Duration
	flags                                         *envflag.Flags
}

const routerSynopsis = "imrouter (--zk HOST:PORT,... | --static ID=HOST:PORT,...) [flags]\nimrouter config example\nimrouter config check [flags]"

const routerDescription = `Answers GET /v1/route?uid=U[&exclude=N1,N2] with the node a client should
connect to. Every flag may also be set as IM_<NAME> in the environment (IM_ZK,
IM_LB, ...) or as a key of the --config file; a flag beats the environment,
which beats the file.`

// newFlagSet defines imrouter's flags; the string-typed lists are parsed
// by parseOptions.
func newFlagSet(o *options, zk, static *string, out io.Writer) *envflag.Flags {
	fs := envflag.New("imrouter", routerSynopsis, routerDescription, out)
	fs.WithConfig()
	fs.SetGroups(
		envflag.Group{Title: "Router", Names: []string{"listen", "lb", "virtual-nodes", "shutdown-timeout", "log-level", "log-format"}},
		envflag.Group{Title: "Membership (one of --zk and --static)", Names: []string{"zk", "zk-root", "zk-session-timeout", "static"}},
	)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:9080", "HTTP listener `HOST:PORT` (route API, /metrics, /healthz, /readyz)")
	fs.StringVar(zk, "zk", "", "ZooKeeper servers `HOST:PORT,...` (required unless --static)")
	fs.StringVar(&o.zkRoot, "zk-root", zkregistry.DefaultRoot, "znode under which the nodes register")
	fs.DurationVar(&o.zkSession, "zk-session-timeout", zkregistry.DefaultSessionTimeout, "ZooKeeper session timeout")
	fs.StringVar(static, "static", "", "fixed membership instead of ZooKeeper, for development and tests: `ID=HOST:PORT[@WEIGHT],...` (weight default 100)")
	fs.StringVar(&o.strategy, "lb", lb.ConsistentHash, "strategy: "+strings.Join(lb.Strategies(), ", "))
	fs.IntVar(&o.vnodes, "virtual-nodes", lb.DefaultVirtualNodes, "consistent-hash ring points per node of weight 100; must match the cluster's")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 5*time.Second, "how long a graceful shutdown may take")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", logging.FormatText, "text (key=value) or json (one object per line)")
	return fs
}

// parseOptions reads args, the IM_* variables of getenv and the config
// file. Help and version go to out.
func parseOptions(args []string, getenv func(string) string, out io.Writer) (*options, error) {
	o := &options{}
	var zk, static string
	fs := newFlagSet(o, &zk, &static, out)
	if err := fs.Parse(args, getenv); err != nil {
		return nil, err
	}
	o.flags = fs
	o.zk = splitList(zk)
	switch {
	case len(o.zk) == 0 && static == "":
		return nil, envflag.Usagef("--zk is required (or --static for a fixed membership)")
	case len(o.zk) > 0 && static != "":
		return nil, envflag.Usagef("give --zk or --static, not both")
	case static != "":
		nodes, err := parseStatic(static)
		if err != nil {
			return nil, envflag.Usagef("--static: %v", err)
		}
		o.static = nodes
	}
	for _, s := range o.zk {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, envflag.Usagef("--zk %q: %v", s, err)
		}
	}
	if !strings.HasPrefix(o.zkRoot, "/") || o.zkRoot == "/" || strings.HasSuffix(o.zkRoot, "/") {
		return nil, envflag.Usagef("--zk-root %q: want an absolute path other than /", o.zkRoot)
	}
	if !validStrategy(o.strategy) {
		return nil, envflag.Usagef("--lb %q: want one of %s", o.strategy, strings.Join(lb.Strategies(), ", "))
	}
	if o.vnodes < 1 || o.vnodes > lb.MaxVirtualNodes {
		return nil, envflag.Usagef("--virtual-nodes must be 1..%d, got %d", lb.MaxVirtualNodes, o.vnodes)
	}
	if _, err := net.ResolveTCPAddr("tcp", o.listen); err != nil {
		return nil, envflag.Usagef("--listen %q: %v", o.listen, err)
	}
	if _, err := logging.New(io.Discard, o.logFormat, o.logLevel); err != nil {
		return nil, envflag.Usagef("%v", err)
	}
	return o, nil
}

func validStrategy(s string) bool {
	for _, n := range lb.Strategies() {
		if s == n {
			return true
		}
	}
	return false
}

// parseStatic parses "id=host:port[@weight],...". Each node gets boot
// epoch 1 and, unless given, weight lb.DefaultWeight.
func parseStatic(s string) ([]membership.NodeInfo, error) {
	var nodes []membership.NodeInfo
	for _, item := range splitList(s) {
		id, addr, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want id=host:port[@weight]", item)
		}
		n := membership.NodeInfo{ID: strings.TrimSpace(id), Weight: lb.DefaultWeight, BootEpoch: 1}
		if a, w, ok := strings.Cut(addr, "@"); ok {
			weight, err := strconv.Atoi(w)
			if err != nil || weight < 0 || weight > lb.MaxWeight {
				return nil, fmt.Errorf("%q: weight %q: want 0..%d", item, w, lb.MaxWeight)
			}
			addr, n.Weight = a, weight
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		n.ClientAddr = addr
		nodes = append(nodes, n)
	}
	if len(nodes) == 0 {
		return nil, errors.New("no nodes")
	}
	if _, err := router.NewStatic(nodes); err != nil { // IDs and duplicates
		return nil, err
	}
	return nodes, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// run executes imrouter until ctx ends and returns the exit status: 0 after
// a clean shutdown, help, version or a config subcommand; 1 when serving
// failed; 2 for bad settings. If ready is not nil it receives the listening
// address once the router serves (tests).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, ready func(addr string)) int {
	if len(args) > 0 && args[0] == "config" {
		return runConfig(args[1:], getenv, stdout, stderr)
	}
	o, err := parseOptions(args, getenv, stdout)
	if code, stop := envflag.Exit("imrouter", err, stderr); stop {
		return code
	}
	log, err := logging.New(stderr, o.logFormat, o.logLevel)
	if err != nil { // checked by parseOptions
		fmt.Fprintln(stderr, "imrouter:", err)
		return 2
	}
	if err := serve(ctx, o, log, ready); err != nil {
		log.Error("imrouter failed", logging.KeyErr, err)
		return 1
	}
	return 0
}

// runConfig runs `imrouter config example` and `imrouter config check`.
func runConfig(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fresh := func() *envflag.Flags {
		var zk, static string
		return newFlagSet(&options{}, &zk, &static, io.Discard)
	}
	check := func(args []string) (*envflag.Flags, string, error) {
		o, err := parseOptions(args, getenv, stdout)
		if err != nil {
			return nil, "", err
		}
		source := "membership from ZooKeeper"
		if o.static != nil {
			source = fmt.Sprintf("static membership of %d nodes", len(o.static))
		}
		return o.flags, o.strategy + ", " + source, nil
	}
	return envflag.ConfigCommand("imrouter", args, stdout, stderr, fresh, check, nil)
}

// serve runs the router until ctx ends, then shuts down gracefully: the
// listener stops accepting, requests in flight finish (bounded by
// --shutdown-timeout), and the membership watcher is closed.
func serve(ctx context.Context, o *options, log *slog.Logger, ready func(addr string)) error {
	var w membership.Watcher
	var err error
	if o.static != nil {
		w, err = router.NewStatic(o.static)
	} else {
		w, err = zkregistry.NewWatcher(zkregistry.Config{Servers: o.zk, Root: o.zkRoot, SessionTimeout: o.zkSession, Logger: log})
	}
	if err != nil {
		return err
	}
	defer func() {
		if err := w.Close(); err != nil {
			log.Error("close membership watcher", logging.KeyErr, err)
		}
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r, err := router.New(router.Config{Watcher: w, Strategy: o.strategy, VirtualNodes: o.vnodes, Logger: log, Registry: reg})
	if err != nil {
		return err
	}
	defer r.Close()

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           r.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	source := "zookeeper " + strings.Join(o.zk, ",") + o.zkRoot
	if o.static != nil {
		source = fmt.Sprintf("static (%d nodes)", len(o.static))
	}
	log.Info("imrouter ready", "addr", ln.Addr().String(), "strategy", o.strategy, "membership", source)
	if ready != nil {
		ready(ln.Addr().String())
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-serveErr:
		return fmt.Errorf("http server: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	<-serveErr // http.ErrServerClosed
	return nil
}
