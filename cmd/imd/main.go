// Command imd runs one IM node. With no cluster flags it is a complete
// single-node server on an embedded, crash-safe store (Pebble) under ./data.
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
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/envflag"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
	"github.com/imgn/imgn/persist/pebblestore"
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
	retention                                                  time.Duration
	inboxMax                                                   int
	loginRate                                                  float64
	loginBurst                                                 int

	// cluster mode
	zk, zkRoot, redis, mongoURI, mongoDB, writeConcern, meshMode, meshListen, meshAdvertise, advertise string
	zkSessionTimeout, sessionTTL                                                                       time.Duration
	weight                                                                                             int
}

// clustered reports whether any cluster flag is set.
func (o *options) clustered() bool { return o.zk != "" || o.redis != "" || o.mongoURI != "" }

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
	fs.DurationVar(&o.retention, "retention", 0, "embedded store: remove messages older than this, e.g. 720h (0 keeps them for ever)")
	fs.IntVar(&o.inboxMax, "inbox-max", 0, "embedded store: keep at most this many newest messages per inbox (0: no cap)")
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
	fs.Float64Var(&o.loginRate, "login-rate-per-ip", 10, "password attempts (login, register) per second per source address; negative disables")
	fs.IntVar(&o.loginBurst, "login-burst-per-ip", 30, "password-attempt burst per source address")
	fs.DurationVar(&o.heartbeat, "heartbeat", 30*time.Second, "heartbeat interval announced to clients")
	fs.DurationVar(&o.idle, "idle-timeout", 90*time.Second, "close connections silent this long")
	fs.DurationVar(&o.loginTimeout, "login-timeout", 10*time.Second, "close connections not logged in after this long")
	fs.DurationVar(&o.goAway, "goaway-window", 2*time.Second, "spread of client reconnect delays on shutdown")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long a graceful shutdown may take")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.zk, "zk", "", "cluster mode: ZooKeeper servers host:port,... (registry)")
	fs.StringVar(&o.zkRoot, "zk-root", "/im/nodes", "cluster mode: znode under which nodes register")
	fs.DurationVar(&o.zkSessionTimeout, "zk-session-timeout", 10*time.Second, "cluster mode: ZooKeeper session timeout (a dead node leaves the view after about this long)")
	fs.StringVar(&o.redis, "redis", "", "cluster mode: Redis servers host:port,... (who is online where; the redis mesh)")
	fs.StringVar(&o.mongoURI, "mongo-uri", "", "cluster mode: MongoDB connection string (messages, users, groups)")
	fs.StringVar(&o.mongoDB, "mongo-db", "imgn", "cluster mode: MongoDB database")
	fs.StringVar(&o.writeConcern, "write-concern", "majority", "cluster mode: MongoDB write concern: majority, majority,journaled, journaled, or a number")
	fs.StringVar(&o.meshMode, "mesh", "direct", "cluster mode: node-to-node transport: direct (TCP links) or redis (pub/sub)")
	fs.StringVar(&o.meshListen, "mesh-listen", "127.0.0.1:9092", "cluster mode: listener for direct mesh links host:port")
	fs.StringVar(&o.meshAdvertise, "mesh-advertise", "", "cluster mode: mesh address published for peers (default: --mesh-listen; set it when a proxy or NAT sits in front)")
	fs.StringVar(&o.advertise, "advertise", "", "cluster mode: client address published for routers (default: --listen)")
	fs.IntVar(&o.weight, "weight", 100, "cluster mode: balancing weight (0 = no new connections)")
	fs.DurationVar(&o.sessionTTL, "session-ttl", 5*time.Minute, "cluster mode: lease of a session route in Redis (renewed every third of it)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: imd [flags]\n\nRuns one IM node. Every flag may also be given as IM_<NAME> in the environment\n(e.g. IM_LISTEN, IM_JWT_SECRET); flags win.\n\n")
		fs.PrintDefaults()
	}
	if err := envflag.Parse(fs, args, getenv); err != nil {
		return nil, err
	}
	if o.store != "embedded" && o.store != "memory" {
		return nil, fmt.Errorf("--store must be embedded or memory, got %q", o.store)
	}
	switch {
	case o.retention < 0:
		return nil, fmt.Errorf("--retention must be >= 0, got %s", o.retention)
	case o.inboxMax < 0:
		return nil, fmt.Errorf("--inbox-max must be >= 0, got %d", o.inboxMax)
	case (o.retention > 0 || o.inboxMax > 0) && o.store != "embedded":
		return nil, fmt.Errorf("--retention and --inbox-max need --store embedded (the %s store does not enforce them)", o.store)
	}
	if o.clustered() {
		switch {
		case o.zk == "" || o.redis == "" || o.mongoURI == "":
			return nil, fmt.Errorf("cluster mode needs --zk, --redis and --mongo-uri together (have zk=%q redis=%q mongo-uri=%q)", o.zk, o.redis, o.mongoURI)
		case o.meshMode != "direct" && o.meshMode != "redis":
			return nil, fmt.Errorf("--mesh must be direct or redis, got %q", o.meshMode)
		case o.weight < 0:
			return nil, fmt.Errorf("--weight must be >= 0, got %d", o.weight)
		}
		if o.advertise == "" {
			o.advertise = o.listen
		}
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
	serveFn := serve
	if o.clustered() {
		serveFn = serveCluster
	}
	if err := serveFn(o, log); err != nil {
		log.Error("imd failed", "err", err)
		return 1
	}
	return 0
}

// openStore opens the single node's store; the embedded store registers
// its metrics on reg.
func openStore(o *options, reg prometheus.Registerer, log *slog.Logger) (persist.Store, error) {
	if o.store == "memory" {
		return memstore.New(), nil
	}
	return pebblestore.Open(pebblestore.Options{
		Dir: o.dataDir, NoSync: o.noSync,
		Retention: persist.Retention{MaxAge: o.retention, InboxMax: o.inboxMax},
		Registry:  reg, Logger: log.With("component", "store"),
	})
}

func serve(o *options, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	store, err := openStore(o, reg, log)
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
		LoginRatePerIP: o.loginRate, LoginBurstPerIP: o.loginBurst,
		JWTSecret: []byte(o.jwtSecret), Store: store, Logger: log, Registry: reg,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := srv.Start(ctx); err != nil {
		return err
	}
	admin, adminErr, err := serveAdmin(o, srv.AdminHandler(engine.AdminHooks{}), log)
	if err != nil {
		_ = srv.Shutdown(context.Background())
		return err
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

// serveAdmin starts the admin HTTP server when --admin is set. The
// returned channel reports the server's exit.
func serveAdmin(o *options, h http.Handler, log *slog.Logger) (*http.Server, chan error, error) {
	adminErr := make(chan error, 1)
	if o.admin == "" {
		return nil, adminErr, nil
	}
	ln, err := net.Listen("tcp", o.admin)
	if err != nil {
		return nil, nil, fmt.Errorf("admin listener: %w", err)
	}
	admin := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { adminErr <- admin.Serve(ln) }()
	log.Info("admin listening", "addr", ln.Addr().String())
	return admin, adminErr, nil
}
