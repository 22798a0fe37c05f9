// Command imd runs one IM node. With no cluster flags it is a complete
// single-node server on an embedded, crash-safe store under ./data.
//
// Every flag can also be set by an environment variable IM_<FLAG> (upper
// case, dashes as underscores), e.g. IM_LISTEN=0.0.0.0:9090; a flag on the
// command line wins. `imd --help` lists them.
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
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/boltstore"
	"github.com/imgn/imgn/persist/memstore"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

// options is imd's configuration after flags and environment.
type options struct {
	listen, admin, dataDir, store, nodeID, jwtSecret, logLevel string
	nodeNum                                                    uint
	loops, maxConns, maxBody, maxGroup, workers                int
	sendRate                                                   float64
	sendBurst                                                  int
	heartbeat, idle, loginTimeout, shutdownTimeout, goAway     time.Duration
	maxOutbound                                                int
	noSync                                                     bool
}

// parseOptions reads args, falling back to IM_* variables from getenv.
func parseOptions(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("imd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:9090", "client protocol listener host:port")
	fs.StringVar(&o.admin, "admin", "127.0.0.1:9091", "admin HTTP listener host:port (metrics, pprof, admin API); empty disables")
	fs.StringVar(&o.dataDir, "data", "./data", "data directory of the embedded store")
	fs.StringVar(&o.store, "store", "embedded", "message store: embedded (durable, file-backed) or memory (not durable)")
	fs.BoolVar(&o.noSync, "unsafe-no-fsync", false, "embedded store: skip fsync (UNSAFE: acked messages can be lost on a crash; benchmarks only)")
	fs.StringVar(&o.nodeID, "node-id", "", "node id (default: derived from the listen port, e.g. n9090)")
	fs.UintVar(&o.nodeNum, "node-num", 0, "node number 1..1023 mixed into message ids (default: derived from node id)")
	fs.StringVar(&o.jwtSecret, "jwt-secret", "", "HS256 secret for token login (empty disables token login)")
	fs.IntVar(&o.loops, "event-loops", 0, "gnet event loops (default GOMAXPROCS)")
	fs.IntVar(&o.maxConns, "max-conns", 19000, "maximum client connections")
	fs.IntVar(&o.maxBody, "max-body", 65536, "maximum frame body bytes")
	fs.IntVar(&o.maxGroup, "max-group-size", 1000, "maximum group members")
	fs.IntVar(&o.maxOutbound, "max-outbound", 4<<20, "bytes queued to one connection before it is closed as a slow consumer")
	fs.IntVar(&o.workers, "workers", 256, "request worker goroutines (store and hashing)")
	fs.Float64Var(&o.sendRate, "send-rate", 200, "per-user messages per second")
	fs.IntVar(&o.sendBurst, "send-burst", 400, "per-user message burst")
	fs.DurationVar(&o.heartbeat, "heartbeat", 30*time.Second, "heartbeat interval announced to clients")
	fs.DurationVar(&o.idle, "idle-timeout", 90*time.Second, "close connections silent this long")
	fs.DurationVar(&o.loginTimeout, "login-timeout", 10*time.Second, "close connections not logged in after this long")
	fs.DurationVar(&o.goAway, "goaway-window", 2*time.Second, "spread of client reconnect delays on shutdown")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long a graceful shutdown may take")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: imd [flags]\n\nRuns one IM node. Every flag may also be given as IM_<NAME> in the environment\n(e.g. IM_LISTEN, IM_JWT_SECRET); flags win.\n\n")
		fs.PrintDefaults()
	}
	// Environment first, so explicit flags override it.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		key := "IM_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(key); v != "" {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %w", key, v, err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.store != "embedded" && o.store != "memory" {
		return nil, fmt.Errorf("--store must be embedded or memory, got %q", o.store)
	}
	if o.nodeNum > 1023 {
		return nil, fmt.Errorf("--node-num must be 1..1023, got %d", o.nodeNum)
	}
	if o.nodeID == "" {
		_, port, err := net.SplitHostPort(o.listen)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %w", o.listen, err)
		}
		o.nodeID = "n" + port
	}
	if o.nodeNum == 0 {
		h := uint(0)
		for _, c := range o.nodeID {
			h = h*31 + uint(c)
		}
		o.nodeNum = h%1023 + 1
	}
	return o, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

func run(args []string, getenv func(string) string, stderr io.Writer) int {
	o, err := parseOptions(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "imd:", err)
		return 2
	}
	level, err := parseLevel(o.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "imd: --log-level:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := serve(o, log); err != nil {
		log.Error("imd failed", "err", err)
		return 1
	}
	return 0
}

func openStore(o *options) (persist.Store, error) {
	if o.store == "memory" {
		return memstore.New(), nil
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	return boltstore.Open(boltstore.Options{Path: filepath.Join(o.dataDir, "imgn.db"), NoSync: o.noSync})
}

func serve(o *options, log *slog.Logger) error {
	store, err := openStore(o)
	if err != nil {
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Error("close store", "err", err)
		}
	}()
	srv, err := engine.New(engine.Config{
		Addr: o.listen, NodeID: o.nodeID, NodeNum: uint16(o.nodeNum), EventLoops: o.loops,
		MaxBody: o.maxBody, LoginTimeout: o.loginTimeout, HeartbeatInterval: o.heartbeat, IdleTimeout: o.idle,
		MaxOutbound: o.maxOutbound, MaxConns: o.maxConns, SendRate: o.sendRate, SendBurst: o.sendBurst,
		MaxGroupSize: o.maxGroup, Workers: o.workers, GoAwayWindow: o.goAway,
		JWTSecret: []byte(o.jwtSecret), Store: store, Logger: log,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := srv.Start(ctx); err != nil {
		return err
	}
	var admin *http.Server
	adminErr := make(chan error, 1)
	if o.admin != "" {
		ln, err := net.Listen("tcp", o.admin)
		if err != nil {
			_ = srv.Shutdown(context.Background())
			return fmt.Errorf("admin listener: %w", err)
		}
		admin = &http.Server{Handler: srv.AdminHandler(engine.AdminHooks{}), ReadHeaderTimeout: 10 * time.Second}
		go func() { adminErr <- admin.Serve(ln) }()
		log.Info("admin listening", "addr", ln.Addr().String())
	}
	log.Info("imd ready", "node", o.nodeID, "store", o.store, "data", o.dataDir)
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-adminErr:
		log.Error("admin server stopped", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	if admin != nil {
		_ = admin.Shutdown(sctx)
	}
	return err
}
