// Command imd runs one IM node. With no cluster flags it is a complete
// single-node server on an embedded, crash-safe store (Pebble) under ./data.
//
// Settings come from flags, IM_<FLAG> environment variables (upper case,
// dashes as underscores, e.g. IM_LISTEN=0.0.0.0:9090) and a TOML file
// (--config FILE, keys are the flag names); for each setting a flag beats
// the environment, which beats the file, which beats the default.
// `imd --help` lists the flags, `imd config example` prints a complete
// commented config file, `imd config check` validates a configuration and
// prints the effective settings. See docs/operations.md.
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
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/dirlock"
	"github.com/imgn/imgn/internal/logging"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
	"github.com/imgn/imgn/persist/pebblestore"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run executes imd and returns its exit status: 0 after a clean shutdown,
// help, version or a config subcommand; 1 when serving failed; 2 for bad
// settings (the message names the flag, variable or config key).
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "config" {
		return runConfig(args[1:], getenv, stdout, stderr)
	}
	o, err := parseOptions(args, getenv, stdout)
	if code, stop := exitFor(err, stderr); stop {
		return code
	}
	log, err := logging.New(stderr, o.logFormat, o.logLevel)
	if err != nil { // parseOptions checked both; kept for safety
		fmt.Fprintln(stderr, "imd:", err)
		return 2
	}
	setGC(getenv)
	if n := procsFor(o, getenv, runtime.GOMAXPROCS(0), runtime.NumCPU()); n > 0 {
		runtime.GOMAXPROCS(n)
	}
	serveFn := serve
	if o.clustered() {
		serveFn = serveCluster
	}
	if err := serveFn(o, log); err != nil {
		log.Error("imd failed", logging.KeyNode, o.engine.NodeID, logging.KeyErr, err)
		return 1
	}
	return 0
}

// defaultGCPercent is imd's garbage-collector target unless GOGC is set.
// The message path allocates nothing, so collections are rare whatever
// the setting; what 50 (instead of Go's 100) changes is how much freed
// memory a burst of logins leaves mapped: idle connections cost about a
// quarter less resident memory (docs/BENCHMARKS.md, idle connections).
const defaultGCPercent = 50

// setGC applies defaultGCPercent when the environment does not choose.
func setGC(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
}

// embeddedProcsPerCPU is how many Go Ps imd runs per CPU with the embedded
// store. Its committer, WAL syncer and Pebble's flushes and compactions
// are goroutines beside the event loops; with one P per CPU, a loop woken
// by the network waits for a P while a flush encodes (Go preempts a
// goroutine only after 10 ms), and the latency tail at low load is those
// waits. With two, a woken goroutine gets a P at once and the kernel
// shares the CPUs, preferring the loops to the lowered flush
// (--background-nice). At 5k msgs/s p99 drops by a quarter
// to a half; the memory store shows no difference, so it keeps one
// (docs/BENCHMARKS.md, "Two Ps per CPU, and flushes that give way").
const embeddedProcsPerCPU = 2

// procsFor returns the GOMAXPROCS imd sets for o, given Go's default
// (cpus) and the CPUs the process may run on (online; 0: leave it):
// embeddedProcsPerCPU per CPU for the single-node embedded store, unless
// the environment sets GOMAXPROCS or Go's default is below the CPUs
// online. Go lowers it so to a cgroup CPU limit (a container's quota),
// and more running threads than the quota only reach it sooner in each
// period and then all wait out the rest of it. The settings derived from
// the CPU count keep it: parseOptions pinned the event loops and the
// password-hash workers.
func procsFor(o *options, getenv func(string) string, cpus, online int) int {
	if o.store.kind != storeEmbedded || o.clustered() || getenv("GOMAXPROCS") != "" || cpus < online {
		return 0
	}
	return embeddedProcsPerCPU * cpus
}

// nodeLog returns the logger for imd's own lines and the components it
// builds that do not name the node themselves (stores, registry): every
// line names the node, once. The engine and the mesh get the plain logger
// and add the same field themselves.
func nodeLog(o *options, log *slog.Logger) *slog.Logger {
	return log.With(logging.KeyNode, o.engine.NodeID)
}

// openStore opens the message store chosen by --store. The embedded store
// (Pebble) first locks the data directory (dirlock), so a second imd on the
// same directory stops at once with the holder's pid and the lock file in
// the message; it registers its metrics on reg. close closes the store and
// then releases the directory.
func openStore(o *options, reg prometheus.Registerer, log *slog.Logger) (store persist.Store, close func() error, err error) {
	retention := persist.Retention{MaxAge: o.store.retention, InboxMax: o.store.inboxMax, DedupWindow: o.store.dedupWindow}
	if o.store.kind == storeMemory {
		st, err := memstore.NewWith(retention)
		if err != nil {
			return nil, nil, err
		}
		return st, func() error { return nil }, nil
	}
	lock, err := dirlock.Acquire(o.store.dataDir)
	if err != nil {
		return nil, nil, err
	}
	nice := o.store.backgroundNice
	if nice == 0 {
		nice = -1 // the store's "never lowered"
	}
	st, err := pebblestore.Open(pebblestore.Options{
		Dir: o.store.dataDir, NoSync: o.store.noSync,
		Retention: retention, BackgroundNice: nice,
		Registry: reg, Logger: log,
	})
	if err != nil {
		_ = lock.Release()
		return nil, nil, fmt.Errorf("open embedded store in %s: %w", o.store.dataDir, err)
	}
	return st, func() error {
		return errors.Join(st.Close(), lock.Release())
	}, nil
}

// engineConfig returns the engine configuration for a run: the bound
// settings plus what only exists at run time.
func engineConfig(o *options, store persist.Store, reg *prometheus.Registry, log *slog.Logger) engine.Config {
	cfg := o.engine
	cfg.Store, cfg.Registry, cfg.Logger = store, reg, log
	return cfg
}

func serve(o *options, log *slog.Logger) error {
	nlog := nodeLog(o, log)
	reg := prometheus.NewRegistry() // the engine's and the store's metrics
	store, closeStore, err := openStore(o, reg, nlog)
	if err != nil {
		return err
	}
	defer func() {
		if err := closeStore(); err != nil {
			nlog.Error("close store", logging.KeyErr, err)
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	integ, err := startIntegrations(ctx, o, store, reg, nlog)
	if err != nil {
		return err
	}
	cfg := engineConfig(o, store, reg, log)
	cfg.Observer = integ.observer()
	srv, err := engine.New(cfg)
	if err != nil {
		_ = integ.close(context.Background())
		return err
	}
	if err := srv.Start(ctx); err != nil {
		_ = integ.close(context.Background())
		return err
	}
	admin, adminErr, err := serveAdmin(o, srv, adminMux(srv, store, engine.AdminHooks{}), nlog)
	if err == nil {
		err = integ.attach(srv, reg)
	}
	if err != nil {
		_ = srv.Shutdown(context.Background())
		_ = integ.close(context.Background())
		return err
	}
	nlog.Info("imd ready", "listen", srv.Addr().String(), "store", o.store.kind, "data", o.store.dataDir, "config", o.configFile)
	select {
	case <-ctx.Done():
		nlog.Info("shutting down")
	case err := <-adminErr:
		nlog.Error("admin server stopped", logging.KeyErr, err)
	case err := <-integ.apiErr:
		nlog.Error("server API stopped", logging.KeyErr, err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	integ.stopAPI(sctx)
	err = srv.Shutdown(sctx)
	_ = integ.close(sctx) // logs what it could not finish
	if admin != nil {
		_ = admin.Shutdown(sctx)
	}
	return err
}

// adminMux is the admin API: the engine's endpoints, with GET /admin/online
// answering 404 for a user that does not exist (the engine alone reports
// such a user as offline).
func adminMux(srv *engine.Server, users persist.UserStore, hooks engine.AdminHooks) *http.ServeMux {
	eng := srv.AdminHandler(hooks)
	mux := http.NewServeMux()
	mux.Handle("/", eng)
	mux.HandleFunc("GET /admin/online", func(w http.ResponseWriter, r *http.Request) {
		if user := r.URL.Query().Get("user"); user != "" {
			_, err := users.GetUser(r.Context(), user)
			if errors.Is(err, persist.ErrNotFound) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				_, _ = fmt.Fprintf(w, "{\"error\":\"no such user\",\"user\":%q}\n", user)
				return
			}
		}
		eng.ServeHTTP(w, r) // validates the id, reports store errors its own way
	})
	return mux
}

// serveAdmin starts the admin HTTP server when --admin is set, behind the
// bearer token of --admin-token when one is set. The returned channel
// reports the server's exit.
func serveAdmin(o *options, srv *engine.Server, h http.Handler, log *slog.Logger) (*http.Server, chan error, error) {
	adminErr := make(chan error, 1)
	if o.admin == "" {
		return nil, adminErr, nil
	}
	h = adminAuth(o.adminToken, h, adminAuthFailures(srv.Registry()))
	ln, err := net.Listen("tcp", o.admin)
	if err != nil {
		return nil, nil, fmt.Errorf("admin listener (--admin %s): %w", o.admin, err)
	}
	admin := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() { adminErr <- admin.Serve(ln) }()
	log.Info("admin listening", logging.KeyAddr, ln.Addr().String())
	return admin, adminErr, nil
}
