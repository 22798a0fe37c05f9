// Command devmongo is the MongoDB-compatible server used by imgn's tests and
// the local cluster demo: FerretDB v1.24 (the last v1 release) embedded
// in-process, with its SQLite backend storing one file per database in
// --dir. It speaks the MongoDB wire protocol; it has no transactions, change
// streams or replica sets, and it accepts but ignores
// write concerns: a write is acknowledged after SQLite committed it (WAL
// mode; --sync full, the default, fsyncs the WAL on every commit).
//
// It lives in its own Go module so that the main module does not depend on
// FerretDB. Build: cd tools/devmongo && go build -o ../../bin/devmongo .
//
// Usage:
//
//	devmongo --listen 127.0.0.1:27017 --dir ./data/mongo [--sync full|normal|off] [--log-level info]
//
// It logs to stderr and exits with status 0 on SIGTERM or SIGINT after
// closing its listener, its connections and the SQLite databases.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "devmongo:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("devmongo", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:27017", "TCP address to listen on")
	dir := fs.String("dir", "", "directory for the SQLite database files (created if missing; required)")
	sync := fs.String("sync", "full", "SQLite synchronous mode: full (fsync every commit), normal or off")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
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

	// FerretDB's SQLite URI is a directory ending in "/"; the pragmas are
	// passed to every connection of its pool.
	u := url.URL{Scheme: "file", Opaque: filepath.ToSlash(abs) + "/"}
	q := url.Values{}
	q.Add("_pragma", "synchronous("+*sync+")")
	u.RawQuery = q.Encode()

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: u.String(),
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger.Info("devmongo: serving", "listen", *listen, "dir", abs, "sync", *sync, "uri", "mongodb://"+*listen+"/")
	if err := f.Run(ctx); err != nil {
		return err
	}
	logger.Info("devmongo: stopped")
	return nil
}
