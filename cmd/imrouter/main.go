// Command imrouter tells clients which imd node to connect to: it follows
// the cluster's membership in ZooKeeper (or a fixed --static list) and
// answers GET /v1/route?uid=alice with a node chosen by a load-balancing
// strategy. Routers are stateless: run as many as you like. See
// docs/router.md.
//
// Every flag can also be set by an environment variable IM_<FLAG> (upper
// case, dashes as underscores), e.g. IM_ZK=zk1:2181,zk2:2181; a flag on
// the command line wins. `imrouter --help` lists them.
package main

import (
	"context"
	"errors"
	"flag"
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
	"github.com/imgn/imgn/lb"
	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/zkregistry"
	"github.com/imgn/imgn/router"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stderr, nil)
	stop()
	os.Exit(code)
}

// options is imrouter's configuration after flags and environment.
type options struct {
	listen, zkRoot, strategy, logLevel string
	zk                                 []string
	static                             []mesh.NodeInfo
	vnodes                             int
	zkSession, shutdownTimeout         time.Duration
}

// parseOptions reads args, falling back to IM_* variables from getenv.
func parseOptions(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	var zk, static string
	fs := flag.NewFlagSet("imrouter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:9080", "HTTP listener host:port (route API, /metrics, /healthz, /readyz)")
	fs.StringVar(&zk, "zk", "", "ZooKeeper servers host:port,... (required unless --static)")
	fs.StringVar(&o.zkRoot, "zk-root", zkregistry.DefaultRoot, "znode under which the nodes register")
	fs.DurationVar(&o.zkSession, "zk-session-timeout", zkregistry.DefaultSessionTimeout, "ZooKeeper session timeout")
	fs.StringVar(&static, "static", "", "fixed membership instead of ZooKeeper, for development and tests: id=host:port[@weight],... (weight default 100)")
	fs.StringVar(&o.strategy, "lb", lb.ConsistentHash, "strategy: "+strings.Join(lb.Strategies(), ", "))
	fs.IntVar(&o.vnodes, "virtual-nodes", lb.DefaultVirtualNodes, "consistent-hash ring points per node of weight 100; must match the cluster's")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 5*time.Second, "how long a graceful shutdown may take")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: imrouter (--zk HOST:PORT,... | --static ID=HOST:PORT,...) [flags]\n\n"+
			"Answers GET /v1/route?uid=U[&exclude=N1,N2] with the node a client should connect to.\n"+
			"Every flag may also be given as IM_<NAME> in the environment (e.g. IM_ZK, IM_LB); flags win.\n\n")
		fs.PrintDefaults()
	}
	if err := envflag.Parse(fs, args, getenv); err != nil {
		return nil, err
	}
	o.zk = splitList(zk)
	switch {
	case len(o.zk) == 0 && static == "":
		return nil, errors.New("--zk is required (or --static for a fixed membership)")
	case len(o.zk) > 0 && static != "":
		return nil, errors.New("give --zk or --static, not both")
	case static != "":
		nodes, err := parseStatic(static)
		if err != nil {
			return nil, fmt.Errorf("--static: %w", err)
		}
		o.static = nodes
	}
	for _, s := range o.zk {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("--zk %q: %w", s, err)
		}
	}
	if !strings.HasPrefix(o.zkRoot, "/") || o.zkRoot == "/" || strings.HasSuffix(o.zkRoot, "/") {
		return nil, fmt.Errorf("--zk-root %q: want an absolute path other than /", o.zkRoot)
	}
	if !validStrategy(o.strategy) {
		return nil, fmt.Errorf("--lb %q: want one of %s", o.strategy, strings.Join(lb.Strategies(), ", "))
	}
	if o.vnodes < 1 || o.vnodes > lb.MaxVirtualNodes {
		return nil, fmt.Errorf("--virtual-nodes must be 1..%d, got %d", lb.MaxVirtualNodes, o.vnodes)
	}
	if _, err := net.ResolveTCPAddr("tcp", o.listen); err != nil {
		return nil, fmt.Errorf("--listen %q: %w", o.listen, err)
	}
	if _, err := parseLevel(o.logLevel); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
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
func parseStatic(s string) ([]mesh.NodeInfo, error) {
	var nodes []mesh.NodeInfo
	for _, item := range splitList(s) {
		id, addr, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want id=host:port[@weight]", item)
		}
		n := mesh.NodeInfo{ID: strings.TrimSpace(id), Weight: lb.DefaultWeight, BootEpoch: 1}
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

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// run executes imrouter until ctx ends and returns the exit status: 0 after
// a clean shutdown or --help, 1 when serving failed, 2 for bad flags. If
// ready is not nil it receives the listening address once the router
// serves (tests).
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, ready func(addr string)) int {
	o, err := parseOptions(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "imrouter:", err)
		return 2
	}
	level, _ := parseLevel(o.logLevel)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := serve(ctx, o, log, ready); err != nil {
		log.Error("imrouter failed", "err", err)
		return 1
	}
	return 0
}

// serve runs the router until ctx ends, then shuts down gracefully: the
// listener stops accepting, requests in flight finish (bounded by
// --shutdown-timeout), and the membership watcher is closed.
func serve(ctx context.Context, o *options, log *slog.Logger, ready func(addr string)) error {
	var w mesh.Watcher
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
			log.Error("close membership watcher", "err", err)
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
