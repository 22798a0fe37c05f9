// Package testsvc starts real ZooKeeper, Redis and MongoDB-compatible
// (FerretDB, via bin/devmongo) servers as child processes on free loopback
// ports in their own directories, for integration tests and for local
// clusters, and injects faults into them. Nothing here is a mock: the
// processes are the Debian packages' servers (zookeeper 3.8, redis-server
// 7) and FerretDB v1.24 (bin/devmongo) on its PostgreSQL backend: devmongo
// runs a throwaway PostgreSQL server (Debian's postgresql, as an
// unprivileged user, on a free loopback port) with its data in the
// service's directory and in its process group, so the faults below hit
// both. WithDevmongoArgs("--backend", "sqlite") selects FerretDB's SQLite
// backend instead.
//
// Installation: Start* and Launch call EnsureInstalled for the kind they
// need (apt-get for the packages, `go build` for bin/devmongo), serialised
// across processes by a file lock; scripts/deps.sh does the same ahead of
// time.
//
// Lifetime: every child runs in its own process group with Pdeathsig
// SIGKILL, so it dies with the process that started it (even on a crash of
// a test binary; Linux ties Pdeathsig to the forking thread, which the Go
// runtime does not end while the process lives). The Start* helpers for
// tests also stop the child in t.Cleanup. A Service's methods are safe for
// concurrent use; lifecycle operations (Start, Stop, Kill, Pause, Resume)
// are serialised.
//
// Faults: Stop (SIGTERM, graceful), Kill (SIGKILL, a crash), Pause and
// Resume (SIGSTOP/SIGCONT, a hung host: Pause returns once every thread has
// stopped), Start again on the same port and data; Proxy for network
// faults (partition, delay, reset, refuse). A graceful Stop of FerretDB
// takes up to 3s while clients hold connections (it lets in-flight requests
// finish); Redis and ZooKeeper stop at once.
//
// Logs: each child's stdout and stderr are appended to <Dir>/<kind>.log. A
// readiness failure returns an error holding the last 30 lines of that log,
// and a failed test prints them too.
//
// ZooKeeper session timeouts: the server is configured with tickTime 100ms,
// minSessionTimeout 200ms and maxSessionTimeout 30s by default (see
// WithZKTiming), so the server grants any requested session timeout between
// 200ms and 30s, and expires a session about one tick after its deadline.
// It runs standalone (ZooKeeperServerMain) with 4-letter words enabled,
// the admin server off, no per-IP connection limit, and forceSync=no (a
// process kill keeps the page cache; power loss is not simulated).
package testsvc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/imgn/imgn/internal/childproc"
	"github.com/imgn/imgn/internal/ports"
)

// Service kinds accepted by Launch.
const (
	KindZooKeeper = "zookeeper"
	KindRedis     = "redis"
	KindMongo     = "mongo"
)

// Errors returned by the lifecycle methods.
var (
	// ErrRunning: Start on a service whose process is running.
	ErrRunning = errors.New("testsvc: service is running")
	// ErrNotRunning: Pause or Resume on a service whose process is not
	// running.
	ErrNotRunning = errors.New("testsvc: service is not running")
	// ErrUnknownKind: Launch with a kind other than the Kind* constants.
	ErrUnknownKind = errors.New("testsvc: unknown service kind")
)

// errPortInUse: something listens on the service's port already. Launch
// picks another port when it chose this one (another process took it
// between FreePort and the start: tests run in parallel).
var errPortInUse = errors.New("is in use")

// defaults
const (
	defaultReadyTimeout = 60 * time.Second
	defaultStopGrace    = 10 * time.Second
	logTailLines        = 30
	startAttempts       = 4
)

// Service is one server process: running, stopped or paused. The exported
// fields are set once by Launch and never change: restarts reuse the same
// port and directory.
type Service struct {
	// Kind is one of KindZooKeeper, KindRedis, KindMongo.
	Kind string
	// Addr is the listen address, always "127.0.0.1:<Port>".
	Addr string
	// Port is the TCP port of Addr.
	Port int
	// Dir holds the service's data (Dir/data), its generated configuration
	// and its log file.
	Dir string
	// LogPath is the file the child's stdout and stderr are appended to.
	LogPath string

	cfg config

	mu     sync.Mutex // serialises lifecycle operations; guards the fields below
	proc   *proc      // the current (or last) child; nil before the first Start
	paused bool
}

// proc is one child process. err is written by the waiter goroutine before
// it closes done, and read only after done is closed.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Option adjusts how a service is started.
type Option func(*config)

type config struct {
	readyTimeout time.Duration
	stopGrace    time.Duration
	// ZooKeeper
	tick, minSession, maxSession time.Duration
	zkHeapMB                     int
	// Redis
	redisArgs []string
	// devmongo
	devmongoArgs []string
}

func defaultConfig() config {
	return config{
		readyTimeout: defaultReadyTimeout,
		stopGrace:    defaultStopGrace,
		tick:         100 * time.Millisecond,
		minSession:   200 * time.Millisecond,
		maxSession:   30 * time.Second,
		zkHeapMB:     256,
	}
}

// WithReadyTimeout bounds how long Start (and Launch) wait for the service
// to answer its readiness probe (default 60s; JVM start-up on a loaded
// 2-core machine can take several seconds).
func WithReadyTimeout(d time.Duration) Option { return func(c *config) { c.readyTimeout = d } }

// WithStopGrace bounds how long Stop waits after SIGTERM before it sends
// SIGKILL (default 10s).
func WithStopGrace(d time.Duration) Option { return func(c *config) { c.stopGrace = d } }

// WithZKTiming sets ZooKeeper's tickTime and the bounds the server clamps a
// client's requested session timeout to (ZooKeeper's own defaults would be
// 2 and 20 ticks; these are written explicitly into zoo.cfg). Session expiry
// is checked once per tick. Defaults: tick 100ms, min 200ms, max 30s; zero
// values keep the default.
func WithZKTiming(tick, minSession, maxSession time.Duration) Option {
	return func(c *config) {
		if tick > 0 {
			c.tick = tick
		}
		if minSession > 0 {
			c.minSession = minSession
		}
		if maxSession > 0 {
			c.maxSession = maxSession
		}
	}
}

// WithZKHeapMB sets the JVM's maximum heap for ZooKeeper (default 256).
func WithZKHeapMB(mb int) Option { return func(c *config) { c.zkHeapMB = mb } }

// WithRedisArgs appends command-line arguments to redis-server (after the
// defaults, so they win), e.g. WithRedisArgs("--appendonly", "yes") to keep
// data across Kill and Start.
func WithRedisArgs(args ...string) Option {
	return func(c *config) { c.redisArgs = append(c.redisArgs, args...) }
}

// WithDevmongoArgs appends command-line arguments to bin/devmongo.
func WithDevmongoArgs(args ...string) Option {
	return func(c *config) { c.devmongoArgs = append(c.devmongoArgs, args...) }
}

func (c *config) validate() error {
	switch {
	case c.readyTimeout <= 0:
		return errors.New("testsvc: ready timeout must be positive")
	case c.stopGrace < 0:
		return errors.New("testsvc: stop grace must not be negative")
	case c.tick < time.Millisecond:
		return errors.New("testsvc: ZooKeeper tick must be at least 1ms")
	case c.minSession > c.maxSession:
		return errors.New("testsvc: ZooKeeper min session timeout exceeds max")
	case c.zkHeapMB < 16:
		return errors.New("testsvc: ZooKeeper heap must be at least 16 MB")
	}
	return nil
}

// Launch installs what kind needs if missing (EnsureInstalled), starts it
// listening on 127.0.0.1:port with its data in dir (created if needed; "" =
// a new temporary directory, which the caller removes) and waits until it
// is ready. port 0 picks a free port (retrying with another one if the
// service loses the race for it). ctx bounds installation and start-up
// only: the service runs until Stop or Kill, or until the calling process
// dies. It is the non-test API (`make cluster`, tools).
func Launch(ctx context.Context, kind, dir string, port int, opts ...Option) (*Service, error) {
	if _, ok := kinds[kind]; !ok {
		return nil, fmt.Errorf("%w %q (want %s, %s or %s)", ErrUnknownKind, kind, KindZooKeeper, KindRedis, KindMongo)
	}
	if port < 0 || port > 65535 {
		return nil, fmt.Errorf("testsvc: launch %s: bad port %d", kind, port)
	}
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := ensureKind(ctx, kind); err != nil {
		return nil, err
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "imgn-"+kind+"-")
		if err != nil {
			return nil, fmt.Errorf("testsvc: launch %s: %w", kind, err)
		}
		dir = d
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("testsvc: launch %s: %w", kind, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, fmt.Errorf("testsvc: launch %s: %w", kind, err)
	}
	s := &Service{Kind: kind, Dir: dir, LogPath: filepath.Join(dir, kind+".log"), cfg: cfg}
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		p := port
		if p == 0 {
			if p, err = FreePort(); err != nil {
				return nil, err
			}
		}
		s.Port, s.Addr = p, net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		attempts := 1 // another port is tried instead
		if port != 0 {
			attempts = sameportAttempts
		}
		lastErr = s.start(attempts)
		if lastErr == nil || port != 0 || ctx.Err() != nil {
			break
		}
		var exited *exitedError
		if !errors.As(lastErr, &exited) && !errors.Is(lastErr, errPortInUse) {
			break // a timeout or a spawn failure: another port will not help
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return s, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago (the
// kernel's pick for a bind to port 0). Another process may take it before
// the caller binds it; Launch retries in that case.
func FreePort() (int, error) {
	p, err := ports.Free()
	if err != nil {
		return 0, fmt.Errorf("testsvc: free port: %w", err)
	}
	return p, nil
}

// URI is the address clients connect to: "mongodb://127.0.0.1:<port>/" for
// KindMongo and Addr otherwise.
func (s *Service) URI() string {
	if s.Kind == KindMongo {
		return "mongodb://" + s.Addr + "/"
	}
	return s.Addr
}

// String describes the service for logs.
func (s *Service) String() string { return s.Kind + "@" + s.Addr }

// Running reports whether the process is alive (paused counts as running).
func (s *Service) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runningLocked()
}

func (s *Service) runningLocked() bool {
	if s.proc == nil {
		return false
	}
	select {
	case <-s.proc.done:
		return false
	default:
		return true
	}
}

// PID returns the process id of the running child, or 0.
func (s *Service) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.runningLocked() {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Start (re)starts the service on its port and directory after Stop or Kill
// (or an unexpected exit) and waits until it is ready. It returns ErrRunning
// if the process is still running. If the process cannot become ready it is
// killed and the error includes the tail of its log.
//
// A restart must keep its port (clients hold the address), so when the new
// process exits because its bind found the port in use, Start tries again
// on the same port, up to sameportAttempts times: the port was free when
// probed, and what holds it in between (another test process's probe of a
// port, a socket of the killed process still being torn down) lets go
// within moments.
func (s *Service) Start() error {
	return s.start(sameportAttempts)
}

// sameportAttempts bounds Start's tries on a port found in use.
const sameportAttempts = 4

// start is Start with at most attempts tries on the port. Launch makes one:
// it picks another port instead.
func (s *Service) start(attempts int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	for attempt := range attempts {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
		}
		if err = s.startLocked(); !portInUse(err) {
			break
		}
	}
	return err
}

// portInUse reports whether err is a start that failed because the port
// was taken: before the launch (errPortInUse) or by the child's bind.
func portInUse(err error) bool {
	var exited *exitedError
	return errors.Is(err, errPortInUse) || errors.As(err, &exited) && exited.addrInUse
}

func (s *Service) startLocked() error {
	if s.runningLocked() {
		return fmt.Errorf("%w: %s (pid %d)", ErrRunning, s, s.proc.cmd.Process.Pid)
	}
	// A server already on the port would answer the readiness probe in
	// our child's place (another cluster on the same ports).
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("testsvc: start %s: port %d %w: %w", s, s.Port, errPortInUse, err)
	}
	ln.Close()
	k := kinds[s.Kind]
	args, err := k.command(s)
	if err != nil {
		return fmt.Errorf("testsvc: start %s: %w", s, err)
	}
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testsvc: start %s: %w", s, err)
	}
	fmt.Fprintf(logf, startMarker+"%s start %s: %s\n", time.Now().Format(time.RFC3339Nano), s, strings.Join(args, " "))
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = s.Dir
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = childproc.Attr(true)
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("testsvc: start %s: %w", s, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	s.proc, s.paused = p, false
	go func() { // owned by the Service: ends when the child exits
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.readyTimeout)
	defer cancel()
	if err := s.waitReady(ctx, k, p); err != nil {
		_ = s.signalLocked(syscall.SIGKILL)
		<-p.done
		var exited *exitedError
		if errors.As(err, &exited) {
			exited.addrInUse = s.lastStartSaysAddrInUse()
		}
		return fmt.Errorf("testsvc: start %s: %w\n--- last %d lines of %s:\n%s", s, err, logTailLines, s.LogPath, s.LogTail(logTailLines))
	}
	return nil
}

// exitedError: the process exited before it became ready (typically: the
// port was taken).
type exitedError struct {
	err       error
	addrInUse bool // its log says its bind found the port in use
}

// startMarker begins each start's part of the log.
const startMarker = "=== testsvc: "

// lastStartSaysAddrInUse reports whether the log written since the latest
// start has the bind failure every kind prints ("Address already in use":
// ZooKeeper's BindException, redis-server, Go's EADDRINUSE text).
func (s *Service) lastStartSaysAddrInUse() bool {
	b, err := readTail(s.LogPath, 256<<10)
	if err != nil {
		return false
	}
	if i := bytes.LastIndex(b, []byte(startMarker)); i >= 0 {
		b = b[i:]
	}
	return bytes.Contains(bytes.ToLower(b), []byte("address already in use"))
}

func (e *exitedError) Error() string {
	return fmt.Sprintf("process exited before it was ready: %v", e.err)
}

func (s *Service) waitReady(ctx context.Context, k kind, p *proc) error {
	delay := 10 * time.Millisecond
	var lastErr error
	for {
		select {
		case <-p.done:
			return &exitedError{err: p.err}
		default:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		lastErr = k.probe(pctx, s.Addr)
		cancel()
		if lastErr == nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("not ready after %v: %w", s.cfg.readyTimeout, lastErr)
		case <-p.done:
			t.Stop()
		case <-t.C:
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}

// Ready probes the service once (for a paused service it fails with a
// timeout).
func (s *Service) Ready(ctx context.Context) error {
	return kinds[s.Kind].probe(ctx, s.Addr)
}

// signalLocked sends sig to the child's process group.
func (s *Service) signalLocked(sig syscall.Signal) error {
	if !s.runningLocked() {
		return nil
	}
	pid := s.proc.cmd.Process.Pid
	if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("testsvc: %s: kill -%d %d: %w", s, sig, -pid, err)
	}
	return nil
}

// Stop stops the service gracefully (SIGTERM to its process group, resuming
// it first if paused), waits for the process to exit, and SIGKILLs it after
// the stop grace period. Stopping a stopped service is a no-op.
func (s *Service) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.runningLocked() {
		return nil
	}
	if err := s.signalLocked(syscall.SIGTERM); err != nil {
		return err
	}
	if err := s.signalLocked(syscall.SIGCONT); err != nil {
		return err
	}
	s.paused = false
	t := time.NewTimer(s.cfg.stopGrace)
	defer t.Stop()
	select {
	case <-s.proc.done:
		return nil
	case <-t.C:
	}
	if err := s.signalLocked(syscall.SIGKILL); err != nil {
		return err
	}
	<-s.proc.done
	return fmt.Errorf("testsvc: stop %s: no exit %v after SIGTERM; killed", s, s.cfg.stopGrace)
}

// Kill SIGKILLs the service's process group and waits for the process to
// exit (a crash: nothing is flushed). Killing a stopped service is a no-op.
func (s *Service) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.signalLocked(syscall.SIGKILL); err != nil {
		return err
	}
	if s.proc != nil {
		<-s.proc.done
	}
	s.paused = false
	return nil
}

// Pause freezes the service's process group with SIGSTOP: connections stay
// open but nothing is answered (a GC pause or a hung host). It returns
// ErrNotRunning if the process is not running.
func (s *Service) Pause() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.runningLocked() {
		return fmt.Errorf("%w: %s", ErrNotRunning, s)
	}
	if err := s.signalLocked(syscall.SIGSTOP); err != nil {
		return err
	}
	s.paused = true
	// kill(2) returns before every thread has stopped: wait until they
	// have, so that nothing is answered once Pause returns.
	return s.waitStoppedLocked(true)
}

// waitStoppedLocked polls /proc until every thread of the child is stopped
// (or, with stopped false, none is), for up to 2s.
func (s *Service) waitStoppedLocked(stopped bool) error {
	pid := s.proc.cmd.Process.Pid
	deadline := time.Now().Add(2 * time.Second)
	for {
		all, err := ThreadsStopped(pid)
		if err != nil || all == stopped {
			return nil // gone, or done: nothing to wait for
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testsvc: %s: threads of pid %d did not reach stopped=%v", s, pid, stopped)
		}
		time.Sleep(time.Millisecond)
	}
}

// ThreadsStopped reports whether every thread of pid is in state T
// (stopped) or t (tracing stop). It returns false as soon as one thread is
// in another state, and an error once the process is gone.
func ThreadsStopped(pid int) (bool, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "stat"))
		if err != nil {
			continue // the thread exited
		}
		// The state follows the parenthesised command name.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || i+2 >= len(b) {
			continue
		}
		if st := b[i+2]; st != 'T' && st != 't' {
			return false, nil
		}
	}
	return true, nil
}

// Resume continues a paused service with SIGCONT (a no-op if it is not
// paused). It returns ErrNotRunning if the process is not running.
func (s *Service) Resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.runningLocked() {
		return fmt.Errorf("%w: %s", ErrNotRunning, s)
	}
	if err := s.signalLocked(syscall.SIGCONT); err != nil {
		return err
	}
	s.paused = false
	return s.waitStoppedLocked(false)
}

// Paused reports whether the service was paused and not resumed since.
func (s *Service) Paused() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused && s.runningLocked()
}

// LogTail returns the last n lines of the service's log file ("" if it
// cannot be read).
func (s *Service) LogTail(n int) string {
	b, err := readTail(s.LogPath, 256<<10)
	if err != nil {
		return ""
	}
	return tail(string(b), n)
}

// readTail reads at most limit bytes from the end of path.
func readTail(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(0, fi.Size()-limit)
	b := make([]byte, fi.Size()-off)
	n, err := f.ReadAt(b, off)
	if err != nil && n != len(b) {
		return nil, err
	}
	return b[:n], nil
}
