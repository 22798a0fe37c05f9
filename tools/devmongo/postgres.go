package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// pgServer is a throwaway PostgreSQL cluster that devmongo runs for
// FerretDB's postgresql backend: Debian's postgresql binaries, a data
// directory inside --dir, a free loopback port, trust authentication, one
// database ("ferretdb"). It runs as an unprivileged user: the invoking user,
// or, when devmongo runs as root (PostgreSQL refuses root), the "postgres"
// user of the Debian package (else "nobody"). It shares devmongo's process
// group, so a signal to the group (a test's SIGKILL, SIGSTOP) reaches it
// too, and it is SIGKILLed if devmongo dies.
type pgServer struct {
	bin  string // directory of initdb, postgres, createdb
	dir  string // data directory
	port int
	cred *syscall.Credential // nil: run as the invoking user
	log  *slog.Logger
	cmd  *exec.Cmd
	done chan struct{}
}

// pgConfig is how startPostgres sets the server up.
type pgConfig struct {
	dir      string // data directory (created and initialised when empty)
	binDir   string // "" = find it (PATH, then /usr/lib/postgresql/*/bin)
	sync     string // full: fsync every commit; normal, off: no fsync (a process crash loses nothing; power loss may)
	maxConns int    // server connection limit (FerretDB's pool must stay below it)
	log      *slog.Logger
}

// findPGBin returns the directory holding postgres and initdb.
func findPGBin(want string) (string, error) {
	if want != "" {
		if _, err := os.Stat(filepath.Join(want, "postgres")); err != nil {
			return "", fmt.Errorf("--pg-bin %s: %w", want, err)
		}
		return want, nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL not found (install Debian's postgresql package: scripts/deps.sh, or pass --pg-bin)")
}

// pgVersion is the major version in /usr/lib/postgresql/<v>/bin.
func pgVersion(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// pgCredential is the user PostgreSQL runs as: nil (this process's user)
// unless this process is root.
func pgCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")
}

// prepareDir creates dir owned by cred's user and lets that user reach it:
// every ancestor gets search permission for others where it lacks it
// (temporary directories are created 0700).
func prepareDir(dir string, cred *syscall.Credential) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if cred == nil {
		return nil
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		return err
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("let PostgreSQL's user through %s: %w", d, err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// run runs one PostgreSQL tool as the server's user, logging its output.
func (pg *pgServer) run(ctx context.Context, tool string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(pg.bin, tool), args...)
	cmd.Dir = pg.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred, Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	return out.String(), err
}

// startPostgres initialises cfg.dir if it holds no cluster yet, starts the
// server and creates the database "ferretdb" when missing. ctx bounds the
// start-up.
func startPostgres(ctx context.Context, cfg pgConfig) (*pgServer, error) {
	bin, err := findPGBin(cfg.binDir)
	if err != nil {
		return nil, err
	}
	cred, err := pgCredential()
	if err != nil {
		return nil, err
	}
	if err := prepareDir(cfg.dir, cred); err != nil {
		return nil, fmt.Errorf("postgres data directory: %w", err)
	}
	pg := &pgServer{bin: bin, dir: cfg.dir, cred: cred, log: cfg.log}
	if _, err := os.Stat(filepath.Join(cfg.dir, "PG_VERSION")); err != nil {
		t0 := time.Now()
		out, err := pg.run(ctx, "initdb", "-D", cfg.dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale", "C", "--no-sync")
		if err != nil {
			return nil, fmt.Errorf("initdb %s: %w\n%s", cfg.dir, err, out)
		}
		cfg.log.Info("devmongo: postgres data directory initialised", "dir", cfg.dir, "took", time.Since(t0).Round(time.Millisecond))
	}
	// A server killed with the process group may leave backends that
	// still hold its shared memory for a moment: retry the start.
	var lastErr error
	for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
		removeStalePID(cfg.dir, cfg.log)
		if lastErr = pg.start(ctx, cfg); lastErr == nil {
			break
		}
		cfg.log.Warn("devmongo: postgres did not start; retrying", "err", lastErr)
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	out, err := pg.run(ctx, "createdb", "-h", "127.0.0.1", "-p", strconv.Itoa(pg.port), "-U", "postgres", "ferretdb")
	if err != nil && !strings.Contains(out, "already exists") {
		pg.stop()
		return nil, fmt.Errorf("createdb ferretdb: %w\n%s", err, out)
	}
	out, err = pg.run(ctx, "psql", "-h", "127.0.0.1", "-p", strconv.Itoa(pg.port), "-U", "postgres", "-d", "ferretdb",
		"-v", "ON_ERROR_STOP=1", "-q", "-c", ginMirrorSQL)
	if err != nil {
		pg.stop()
		return nil, fmt.Errorf("install the index mirror: %w\n%s", err, out)
	}
	return pg, nil
}

// ginMirrorSQL makes FerretDB's equality queries use indexes. FerretDB v1
// stores a document as one jsonb column, creates each MongoDB index as a
// btree over expressions (_jsonb->'field'), and filters an equality as
// _jsonb->'field' @> value, a containment no btree can answer: every
// query, even by _id, scanned its table (7 ms at 20,000 documents, 500 ms
// on a busy machine, and growing with the data). This event trigger gives
// every such index's fields a twin: a GIN index (jsonb_path_ops, which
// answers @>) on each field, created with it, in the same transaction. Our
// own GIN indexes fire the trigger too and are skipped.
// plan_cache_mode=force_custom_plan (see start) keeps the planner from a
// generic plan of FerretDB's prepared "_jsonb->$1 @> $2", which could not
// match the index.
const ginMirrorSQL = `
CREATE OR REPLACE FUNCTION imgn_gin_mirror() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
DECLARE
	cmd record;
	tbl regclass;
	field text;
BEGIN
	FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE INDEX' LOOP
		IF (SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam WHERE c.oid = cmd.objid) <> 'btree' THEN
			CONTINUE;
		END IF;
		SELECT indrelid::regclass INTO tbl FROM pg_index WHERE indexrelid = cmd.objid;
		FOR field IN SELECT m[1] FROM regexp_matches(pg_get_indexdef(cmd.objid), $re$_jsonb -> '((?:[^']|'')+)'::text$re$, 'g') AS m LOOP
			field := replace(field, '''''', ''''); -- a quote inside the name is doubled in the definition
			IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
					WHERE i.indrelid = tbl AND am.amname = 'gin'
					AND pg_get_indexdef(i.indexrelid) LIKE '%(_jsonb -> ' || quote_literal(field) || '::text)%') THEN
				EXECUTE format('CREATE INDEX ON %s USING gin ((_jsonb -> %L) jsonb_path_ops)', tbl, field);
			END IF;
		END LOOP;
	END LOOP;
END
$fn$;
DROP EVENT TRIGGER IF EXISTS imgn_gin_mirror;
CREATE EVENT TRIGGER imgn_gin_mirror ON ddl_command_end WHEN TAG IN ('CREATE INDEX') EXECUTE FUNCTION imgn_gin_mirror();
`

// start starts the server on a free port and waits until it accepts
// connections (or exits).
func (pg *pgServer) start(ctx context.Context, cfg pgConfig) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	fsync := "on"
	if cfg.sync != "full" {
		fsync = "off"
	}
	args := []string{
		"-D", cfg.dir, "-p", strconv.Itoa(port), "-k", cfg.dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=" + strconv.Itoa(cfg.maxConns),
		"-c", "fsync=" + fsync,
		"-c", "synchronous_commit=on", // a commit is in the WAL before FerretDB acknowledges it
		"-c", "shared_buffers=64MB",
		"-c", "plan_cache_mode=force_custom_plan", // see ginMirrorSQL
		"-c", "wal_level=minimal", "-c", "max_wal_senders=0",
		"-c", "logging_collector=off", "-c", "log_min_messages=warning",
	}
	cmd := exec.Command(filepath.Join(pg.bin, "postgres"), args...)
	cmd.Dir = cfg.dir
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }() // ends when the server exits
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for {
		select {
		case <-done:
			return fmt.Errorf("postgres exited during start-up (see the log above): %v", cmd.ProcessState)
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if _, err := pg.run(ctx, "pg_isready", "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(port)); err == nil {
			pg.cmd, pg.done, pg.port = cmd, done, port
			pg.log.Info("devmongo: postgres ready", "addr", addr, "dir", cfg.dir, "fsync", fsync)
			return nil
		}
	}
}

// url is FerretDB's connection string with a pool of poolSize.
func (pg *pgServer) url(poolSize int) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/ferretdb?pool_max_conns=%d", pg.port, poolSize)
}

// stop shuts the server down (fast shutdown: open sessions are ended) and
// waits; after 10 s it is killed.
func (pg *pgServer) stop() {
	if pg.cmd == nil {
		return
	}
	_ = pg.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-pg.done:
	case <-time.After(10 * time.Second):
		_ = pg.cmd.Process.Kill()
		<-pg.done
	}
	pg.log.Info("devmongo: postgres stopped")
}

// removeStalePID removes dir's postmaster.pid when the process it names is
// gone, a zombie, or not PostgreSQL (its pid reused): left by a server
// killed with devmongo. devmongo holds the data directory's lock, so no
// live server of this directory can be running.
func removeStalePID(dir string, log *slog.Logger) {
	path := filepath.Join(dir, "postmaster.pid")
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	live := false
	if err == nil {
		// "pid (comm) state ...": comm may hold spaces and parentheses.
		s := string(stat)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open >= 0 && end > open && end+2 < len(s) {
			live = s[open+1:end] == "postgres" && s[end+2] != 'Z'
		}
	}
	if !live {
		log.Info("devmongo: removing a stale postmaster.pid", "pid", pid)
		_ = os.Remove(path)
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
