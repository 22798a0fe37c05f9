// Package clusterkit runs a local cluster of real processes on loopback:
// ZooKeeper, Redis and the dev MongoDB (through testsvc.Launch), imd nodes,
// and imrouter, and injects faults into them (SIGKILL, SIGSTOP/SIGCONT,
// SIGTERM, dependency restarts, TCP fault proxies). It is the one launcher
// of imd and imrouter processes: e2e, cmd/imcheck, bench/attack,
// cmd/imcluster and bench's spawned nodes use it. It takes a context and
// returns errors, never a *testing.T, so tools can use it too.
//
// Every child runs in its own process group with Pdeathsig SIGKILL, so it
// dies with the process that started it. Every listener is on 127.0.0.1.
//
// Network faults: with Config.ProxyDeps each node reaches ZooKeeper, Redis
// and MongoDB through its own testsvc.Proxy (Node.ZKProxy, RedisProxy,
// MongoProxy), and its peers reach its mesh listener through Node.MeshProxy
// (published with imd's --mesh-advertise); with Config.ProxyClients clients
// reach each node through a proxy published as the node's --advertise
// address (Node.ClientProxy).
//
// WebSocket: with Config.WS every node also listens with --ws-listen
// (Node.WSListen), behind its own proxy with ProxyClients (Node.WSProxy),
// and Cluster.ClientConfigWS makes clients connect there, routed by the
// router like TCP clients.
package clusterkit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/imgn/imgn/internal/childproc"
	"github.com/imgn/imgn/internal/testsvc"
)

// Build compiles the given commands (default imd and imrouter) of the
// repository into dir and returns dir. The go build cache makes repeated
// builds cheap.
func Build(ctx context.Context, dir string, cmds ...string) (string, error) {
	if len(cmds) == 0 {
		cmds = []string{"imd", "imrouter"}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for _, c := range cmds {
		if err := BuildTo(ctx, filepath.Join(dir, c), c); err != nil {
			return "", err
		}
	}
	return dir, nil
}

var shared struct {
	once sync.Once
	dir  string
	err  error
}

// Binaries builds imd and imrouter once per process into a directory of
// its own and returns it (later calls return the first call's outcome).
// A directory per process keeps concurrent test runs of different trees
// from overwriting each other's binaries. It is left behind for the
// process's lifetime and after (the OS's temporary directory).
func Binaries(ctx context.Context) (string, error) {
	shared.once.Do(func() {
		dir, err := os.MkdirTemp("", "imgn-bin-")
		if err != nil {
			shared.err = err
			return
		}
		shared.dir, shared.err = Build(ctx, dir)
	})
	return shared.dir, shared.err
}

// BuildTo compiles the repository's ./cmd/<cmd> into the file path. The
// repository is found from the working directory (testsvc.RepoRoot).
func BuildTo(ctx context.Context, path, cmd string) error {
	root, err := testsvc.RepoRoot()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	c := exec.CommandContext(ctx, "go", "build", "-o", abs, "./cmd/"+cmd)
	c.Dir = root
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("clusterkit: build %s: %v\n%s", cmd, err, out)
	}
	return nil
}

// Proc is one child process that can be started again with the same
// arguments after it exited. Its stdout and stderr are appended to
// LogPath. Methods are safe for concurrent use; the fields must not change
// while the process runs.
type Proc struct {
	Name    string
	Path    string
	Args    []string
	Env     []string // added to this process's environment
	LogPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	paused bool
}

// Start spawns the process (it must not be running) and returns without
// waiting for it to be ready (see WaitHTTP).
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited != nil {
		select {
		case <-p.exited:
		default:
			return fmt.Errorf("clusterkit: %s is running", p.Name)
		}
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("clusterkit: log of %s: %w", p.Name, err)
	}
	cmd := exec.Command(p.Path, p.Args...)
	if len(p.Env) > 0 {
		cmd.Env = append(os.Environ(), p.Env...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = childproc.Attr(true)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("clusterkit: start %s: %w", p.Name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	p.cmd, p.exited, p.paused = cmd, exited, false
	return nil
}

// Running reports whether the process is alive (a paused one counts).
func (p *Proc) Running() bool {
	p.mu.Lock()
	ch := p.exited
	p.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return false
	default:
		return true
	}
}

// Exited returns a channel closed when the current run of the process
// ends; nil before the first Start.
func (p *Proc) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

// ExitCode is the exit status of the last run that ended, -1 while it
// runs, before the first Start, or after death by a signal.
func (p *Proc) ExitCode() int {
	if p.Running() {
		return -1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// WaitHTTP polls url until it answers 200, the process exits (the error
// then carries the end of its log: a port it could not bind, a bad flag),
// ctx ends or d passes.
func (p *Proc) WaitHTTP(ctx context.Context, url string, d time.Duration) error {
	err := Poll(ctx, d, p.Name+" ready", func() bool { return !p.Running() || httpOK(ctx, url) })
	switch {
	case err != nil:
		return fmt.Errorf("%w (log %s)", err, p.LogPath)
	case !p.Running():
		return fmt.Errorf("clusterkit: %s exited during start (log %s):\n%s", p.Name, p.LogPath, p.LogTail(2000))
	}
	return nil
}

// PID is the process id of the current child, or 0.
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Signal sends sig to the process (not its group). It is a no-op for a
// process that is not running.
func (p *Proc) Signal(sig syscall.Signal) error {
	if !p.Running() {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch sig {
	case syscall.SIGSTOP:
		p.paused = true
	case syscall.SIGCONT:
		p.paused = false
	}
	return p.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL (after SIGCONT if paused) and waits up to 10s for the
// exit.
func (p *Proc) Kill() error {
	if !p.Running() {
		return nil
	}
	_ = p.Signal(syscall.SIGKILL)
	if !p.WaitExit(10 * time.Second) {
		return fmt.Errorf("clusterkit: %s did not exit after SIGKILL", p.Name)
	}
	return nil
}

// Term sends SIGTERM (a graceful shutdown) and waits up to d for the exit,
// then SIGKILLs. It reports whether the process left by itself.
func (p *Proc) Term(d time.Duration) bool {
	if !p.Running() {
		return true
	}
	_ = p.Signal(syscall.SIGCONT)
	_ = p.Signal(syscall.SIGTERM)
	if p.WaitExit(d) {
		return true
	}
	_ = p.Kill()
	return false
}

// Pause freezes the process with SIGSTOP.
// It returns once every thread of the process has stopped (SIGSTOP is
// delivered asynchronously), or after 2 s.
func (p *Proc) Pause() error {
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Second)
	for pid := p.PID(); pid != 0 && time.Now().Before(deadline); {
		if stopped, err := testsvc.ThreadsStopped(pid); err != nil || stopped {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// Resume continues a paused process with SIGCONT.
func (p *Proc) Resume() error { return p.Signal(syscall.SIGCONT) }

// Paused reports whether Pause was called without a Resume since.
func (p *Proc) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// WaitExit waits up to d for the process to exit.
func (p *Proc) WaitExit(d time.Duration) bool {
	p.mu.Lock()
	ch := p.exited
	p.mu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// LogTail returns up to the last n bytes of the process log.
func (p *Proc) LogTail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Poll calls cond every 20ms until it returns true, ctx ends or d passes.
func Poll(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("clusterkit: timed out after %v waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), fmt.Errorf("clusterkit: waiting for %s", what))
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
