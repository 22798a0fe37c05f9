// Command devmongo is the MongoDB-compatible server used by imgn's tests and
// the local cluster demo: FerretDB v1.24 (the last v1 release) embedded
// in-process, on a throwaway PostgreSQL server it runs in --dir/pg (the
// default backend; see postgres.go, which also makes FerretDB's equality
// queries use indexes) or on SQLite files in --dir (--backend sqlite). It
// speaks the MongoDB wire protocol; it has no transactions, change streams
// or replica sets, and it accepts but ignores write concerns: a write is
// acknowledged once the backend committed it (--sync full, the default,
// fsyncs every commit).
//
// FerretDB v1 does not apply an update to a document atomically (it reads
// the document, updates it in Go and writes it back, and a concurrent
// writer's update in between is lost). devmongo makes it: clients connect
// to devmongo's own listener, which relays each connection to FerretDB
// over a Unix socket and runs write commands under per-document locks
// (atomic.go).
//
// It lives in its own Go module so that the main module does not depend on
// FerretDB. Build: cd tools/devmongo && go build -o ../../bin/devmongo .
//
// Usage:
//
//	devmongo --listen 127.0.0.1:27017 --dir ./data/mongo [--backend postgresql|sqlite]
//	    [--sync full|normal|off] [--pg-pool 150] [--pprof 127.0.0.1:6060] [--log-level info]
//
// --pprof serves Go's profiler on a loopback address: where FerretDB spends
// its CPU, or where its goroutines wait (/debug/pprof/goroutine?debug=1),
// when the dev store is slow. It logs to stderr and exits with status 0 on
// SIGTERM or SIGINT after closing its listener, its connections and its
// backend.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// defaultBackend is the storage of --backend: the faster of the two on the
// project's cluster benchmark (docs/BENCHMARKS.md).
const defaultBackend = "postgresql"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "devmongo:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return serve(ctx, args, nil)
}

// serve runs the server configured by args until ctx ends. serving, when
// not nil, is called with the client address once clients can connect.
func serve(ctx context.Context, args []string, serving func(addr string)) error {
	fs := flag.NewFlagSet("devmongo", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:27017", "TCP address to listen on")
	dir := fs.String("dir", "", "directory for the data (created if missing; required)")
	backend := fs.String("backend", defaultBackend, "storage: postgresql (a PostgreSQL server run by devmongo in --dir/pg) or sqlite (files in --dir)")
	sync := fs.String("sync", "full", "durability: full (fsync every commit), normal or off (no fsync: a crash of the process loses nothing, a power loss may)")
	pgBin := fs.String("pg-bin", "", "directory of PostgreSQL's initdb and postgres (default: PATH, then the newest /usr/lib/postgresql/*/bin)")
	pgPool := fs.Int("pg-pool", 150, "FerretDB's PostgreSQL connection pool size (postgresql backend)")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	pprofAddr := fs.String("pprof", "", "serve Go's profiler (net/http/pprof) on this loopback address, e.g. 127.0.0.1:6060: where the dev server spends its CPU")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *dir == "" {
		return errors.New("--dir is required")
	}
	switch *sync {
	case "full", "normal", "off":
	default:
		return fmt.Errorf("--sync %q: want full, normal or off", *sync)
	}
	switch *backend {
	case "postgresql", "sqlite":
	default:
		return fmt.Errorf("--backend %q: want postgresql or sqlite", *backend)
	}
	if _, err := net.ResolveTCPAddr("tcp", *listen); err != nil {
		return fmt.Errorf("--listen %q: %w", *listen, err)
	}
	if *pgPool < 1 || *pgPool > 1000 {
		return fmt.Errorf("--pg-pool %d: want 1..1000", *pgPool)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if *pprofAddr != "" {
		stopPprof, err := servePprof(*pprofAddr, logger)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	unlock, err := lockDir(abs)
	if err != nil {
		return err
	}
	defer unlock()

	// Clients reach FerretDB through the relay of atomic.go, which makes
	// its updates atomic per document; FerretDB itself listens on a Unix
	// socket only the relay uses.
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	defer ln.Close()
	sock, cleanSock, err := socketPath(abs)
	if err != nil {
		return err
	}
	defer cleanSock()
	cfg := &ferretdb.Config{
		Listener: ferretdb.ListenerConfig{Unix: sock},
		Logger:   logger,
	}
	switch *backend {
	case "sqlite":
		// FerretDB's SQLite URI is a directory ending in "/"; the pragmas
		// are passed to every connection of its pool.
		u := url.URL{Scheme: "file", Opaque: filepath.ToSlash(abs) + "/"}
		q := url.Values{}
		q.Add("_pragma", "synchronous("+*sync+")")
		u.RawQuery = q.Encode()
		cfg.Handler, cfg.SQLiteURL = "sqlite", u.String()
	case "postgresql":
		// FerretDB's update path holds a pool connection while it waits
		// for another one: the server must allow more connections than the
		// pool, and the pool must be larger than the concurrent updates
		// (the stores' bulk writes are few, but every node has a pool of
		// its own to FerretDB).
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		pg, err := startPostgres(sctx, pgConfig{dir: filepath.Join(abs, "pg"), binDir: *pgBin, sync: *sync, maxConns: *pgPool + 20, log: logger})
		cancel()
		if err != nil {
			return fmt.Errorf("postgresql backend: %w", err)
		}
		defer pg.stop()
		cfg.Handler, cfg.PostgreSQLURL = "postgresql", pg.url(*pgPool)
	}
	f, err := ferretdb.New(cfg)
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	logger.Info("devmongo: serving", "listen", addr, "dir", abs, "backend", *backend, "sync", *sync, "uri", "mongodb://"+addr+"/")
	if serving != nil {
		serving(addr)
	}
	rctx, stopRelay := context.WithCancel(ctx)
	relayed := make(chan struct{})
	go func() {
		defer close(relayed)
		relay(rctx, ln, dialBackend(sock), logger)
	}()
	err = f.Run(ctx)
	stopRelay()
	<-relayed
	if err != nil {
		return err
	}
	logger.Info("devmongo: stopped")
	return nil
}

// socketPath chooses the path of FerretDB's Unix socket: in dir, unless
// that path is too long for a socket address; then in a temporary
// directory that cleanup removes. A socket left by a killed devmongo is
// removed (the directory lock says none is running).
func socketPath(dir string) (path string, cleanup func(), err error) {
	path = filepath.Join(dir, "ferretdb.sock")
	if len(path) < 100 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", nil, fmt.Errorf("remove stale socket: %w", err)
		}
		return path, func() { _ = os.Remove(path) }, nil
	}
	tmp, err := os.MkdirTemp("", "devmongo-")
	if err != nil {
		return "", nil, err
	}
	return filepath.Join(tmp, "ferretdb.sock"), func() { _ = os.RemoveAll(tmp) }, nil
}

// dialBackend returns the relay's dialler of FerretDB's socket. FerretDB
// opens it once its backend is up, after the relay accepts clients, so a
// dial is retried until then (or until ctx ends).
func dialBackend(sock string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		for {
			c, err := d.DialContext(ctx, "unix", sock)
			if err == nil || ctx.Err() != nil {
				return c, err
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// servePprof serves net/http/pprof's handlers on addr, a loopback address,
// until the returned function is called.
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("--pprof %q: want a loopback address (the profiler has no authentication)", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	log.Info("devmongo: profiler", "addr", ln.Addr().String())
	return func() { _ = srv.Close(); <-done }, nil
}

// lockDir takes an exclusive flock on dir/devmongo.lock, so that a second
// devmongo on the same data fails at once instead of corrupting it. The
// kernel drops the lock when the process dies.
func lockDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, "devmongo.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid, _ := os.ReadFile(path)
			return nil, fmt.Errorf("data directory %s is in use by another devmongo (pid %s)", dir, strings.TrimSpace(string(pid)))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}
