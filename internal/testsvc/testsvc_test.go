package testsvc_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/internal/testsvc"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// redisCmd runs one command over RESP and returns the first reply line.
func redisCmd(t *testing.T, addr string, args ...string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("redis %v: %v", args, err)
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "$") && line != "$-1" {
		v, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimRight(v, "\r\n")
	}
	return line
}

// zk4lw sends a ZooKeeper four-letter word and returns the answer.
func zk4lw(addr, word string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(word)); err != nil {
		return "", err
	}
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String(), nil
		}
	}
}

func mustReady(t *testing.T, s *testsvc.Service) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("%s not ready: %v", s, err)
	}
}

func mustNotReady(t *testing.T, s *testsvc.Service) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if err := s.Ready(ctx); err == nil {
		t.Fatalf("%s answers, want no answer", s)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// TestLifecycle runs every lifecycle operation against each kind of
// service: start, ready, stop, restart on the same port, kill, restart,
// pause and resume, and the errors of misuse.
func TestLifecycle(t *testing.T) {
	cases := []struct {
		kind  string
		start func(testing.TB, ...testsvc.Option) *testsvc.Service
		check func(t *testing.T, s *testsvc.Service) // a real request
	}{
		{testsvc.KindZooKeeper, testsvc.StartZooKeeper, func(t *testing.T, s *testsvc.Service) {
			out, err := zk4lw(s.Addr, "ruok")
			if err != nil || out != "imok" {
				t.Fatalf("ruok = %q, %v", out, err)
			}
			out, err = zk4lw(s.Addr, "conf")
			if err != nil || !strings.Contains(out, "minSessionTimeout=200") || !strings.Contains(out, "tickTime=100") {
				t.Fatalf("conf does not show the configured timing: %q, %v", out, err)
			}
		}},
		{testsvc.KindRedis, testsvc.StartRedis, func(t *testing.T, s *testsvc.Service) {
			if got := redisCmd(t, s.Addr, "SET", "k", "v"); got != "+OK" {
				t.Fatalf("SET = %q", got)
			}
			if got := redisCmd(t, s.Addr, "GET", "k"); got != "v" {
				t.Fatalf("GET = %q", got)
			}
		}},
		{testsvc.KindMongo, testsvc.StartMongo, func(t *testing.T, s *testsvc.Service) {
			mustReady(t, s) // the probe is a real {ping: 1} command
		}},
	}
	for _, tc := range cases {
		t.Run(tc.kind, func(t *testing.T) {
			t.Parallel()
			s := tc.start(t)
			if s.Kind != tc.kind || s.Port == 0 || s.Addr != fmt.Sprintf("127.0.0.1:%d", s.Port) {
				t.Fatalf("service %+v", s)
			}
			if tc.kind == testsvc.KindMongo {
				if want := "mongodb://" + s.Addr + "/"; s.URI() != want {
					t.Fatalf("URI = %q, want %q", s.URI(), want)
				}
			} else if s.URI() != s.Addr {
				t.Fatalf("URI = %q, want %q", s.URI(), s.Addr)
			}
			mustReady(t, s)
			tc.check(t, s)
			if err := s.Start(); !errors.Is(err, testsvc.ErrRunning) {
				t.Fatalf("Start while running: %v, want ErrRunning", err)
			}
			pid := s.PID()

			must(t, "Stop", s.Stop())
			if s.Running() || s.PID() != 0 {
				t.Fatal("running after Stop")
			}
			mustNotReady(t, s)
			must(t, "Stop again", s.Stop())
			if err := s.Pause(); !errors.Is(err, testsvc.ErrNotRunning) {
				t.Fatalf("Pause while stopped: %v, want ErrNotRunning", err)
			}
			if err := syscallAlive(pid); err == nil {
				t.Fatalf("process %d still exists after Stop", pid)
			}

			addr := s.Addr
			must(t, "Start after Stop", s.Start())
			if s.Addr != addr {
				t.Fatalf("restarted on %s, want %s", s.Addr, addr)
			}
			mustReady(t, s)
			tc.check(t, s)

			must(t, "Kill", s.Kill())
			mustNotReady(t, s)
			must(t, "Start after Kill", s.Start())
			mustReady(t, s)

			must(t, "Pause", s.Pause())
			if !s.Paused() || !s.Running() {
				t.Fatal("Paused() false after Pause")
			}
			mustNotReady(t, s)
			must(t, "Resume", s.Resume())
			mustReady(t, s)
			tc.check(t, s)

			// Stop works on a paused service too.
			must(t, "Pause", s.Pause())
			must(t, "Stop while paused", s.Stop())
			if s.Running() {
				t.Fatal("running after Stop of a paused service")
			}
			must(t, "Start", s.Start())
			mustReady(t, s)
			if st, err := os.Stat(s.LogPath); err != nil || st.Size() == 0 {
				t.Fatalf("log %s: %v", s.LogPath, err)
			}
		})
	}
}

func syscallAlive(pid int) error { return syscall.Kill(pid, 0) }

// TestRedisAppendOnlySurvivesKill: with WithRedisArgs the data directory
// is reused across a restart on the same port.
func TestRedisAppendOnlySurvivesKill(t *testing.T) {
	t.Parallel()
	s := testsvc.StartRedis(t, testsvc.WithRedisArgs("--appendonly", "yes", "--appendfsync", "always"))
	redisCmd(t, s.Addr, "SET", "k", "kept")
	must(t, "Kill", s.Kill())
	must(t, "Start", s.Start())
	if got := redisCmd(t, s.Addr, "GET", "k"); got != "kept" {
		t.Fatalf("GET after kill and restart = %q", got)
	}
	// And the default (no persistence) forgets.
	r := testsvc.StartRedis(t)
	redisCmd(t, r.Addr, "SET", "k", "lost")
	must(t, "Kill", r.Kill())
	must(t, "Start", r.Start())
	if got := redisCmd(t, r.Addr, "GET", "k"); got != "$-1" {
		t.Fatalf("GET after restart without persistence = %q, want nil", got)
	}
}

// TestRestartWaitsForItsPort: a restart keeps its port, so one that finds
// the port held for a moment (CI saw a killed ZooKeeper's port in use when
// it came back) tries again instead of failing; one held for good fails
// with a clear error.
func TestRestartWaitsForItsPort(t *testing.T) {
	t.Parallel()
	s := testsvc.StartRedis(t)
	must(t, "Stop", s.Stop())
	l, err := net.Listen("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	go func() {
		defer close(released)
		time.Sleep(100 * time.Millisecond) // the tries are 0.2, 0.6 and 1.2 s in
		l.Close()
	}()
	must(t, "Start while the port is held for a moment", s.Start())
	<-released
	if got := redisCmd(t, s.Addr, "PING"); got != "+PONG" {
		t.Fatalf("PING after the retried start = %q", got)
	}

	must(t, "Stop", s.Stop())
	l, err = net.Listen("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = s.Start()
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("port %d is in use", s.Port)) {
		t.Fatalf("Start on a port held for good: err = %v", err)
	}
}

func TestLaunchErrors(t *testing.T) {
	t.Parallel()
	if _, err := testsvc.Launch(t.Context(), "postgres", t.TempDir(), 0); !errors.Is(err, testsvc.ErrUnknownKind) {
		t.Fatalf("unknown kind: %v", err)
	}
	if _, err := testsvc.Launch(t.Context(), testsvc.KindRedis, t.TempDir(), 70000); err == nil {
		t.Fatal("bad port accepted")
	}
	if _, err := testsvc.Launch(t.Context(), testsvc.KindRedis, t.TempDir(), 0, testsvc.WithReadyTimeout(0)); err == nil {
		t.Fatal("zero ready timeout accepted")
	}

	// A server that exits at once: the error carries its log.
	_, err := testsvc.Launch(t.Context(), testsvc.KindRedis, t.TempDir(), 0, testsvc.WithRedisArgs("--no-such-directive", "1"))
	if err == nil || !strings.Contains(err.Error(), "no-such-directive") || !strings.Contains(err.Error(), "last 30 lines") {
		t.Fatalf("bad redis args: err = %v, want one quoting the log", err)
	}

	// A taken fixed port: no retry on another port, no child started
	// (it would be the server already there that answers the probe), a
	// clear error.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	_, err = testsvc.Launch(t.Context(), testsvc.KindRedis, dir, port)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("port %d is in use", port)) {
		t.Fatalf("taken port: err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "redis.log")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("taken port: a server was started (log: %v)", err)
	}
}

// TestLaunchNonTest: the non-test API, with a caller-chosen port and dir.
func TestLaunchNonTest(t *testing.T) {
	t.Parallel()
	port, err := testsvc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s, err := testsvc.Launch(t.Context(), testsvc.KindRedis, dir, port)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Kill()
	if s.Port != port || s.Dir != dir {
		t.Fatalf("service %+v, want port %d dir %s", s, port, dir)
	}
	if got := redisCmd(t, s.Addr, "PING"); got != "+PONG" {
		t.Fatalf("PING = %q", got)
	}
}

func TestEnsureInstalledConcurrent(t *testing.T) {
	t.Parallel()
	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- testsvc.EnsureInstalled() }()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestProxyFaults drives each fault of the proxy against a real Redis.
func TestProxyFaults(t *testing.T) {
	t.Parallel()
	r := testsvc.StartRedis(t)
	p := testsvc.StartProxy(t, r.Addr)
	if got := redisCmd(t, p.Addr, "PING"); got != "+PONG" {
		t.Fatalf("PING through the proxy = %q", got)
	}

	// A connection opened before the partition stalls, then completes
	// after Heal with nothing lost.
	c, err := net.DialTimeout("tcp", p.Addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.Partition()
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 64)
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("read %q during a partition", buf[:n])
	}
	p.Heal()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "+PONG\r\n" {
		t.Fatalf("after Heal: %q, %v", buf[:n], err)
	}

	// Delay.
	p.SetDelay(100 * time.Millisecond)
	t0 := time.Now()
	redisCmd(t, p.Addr, "PING")
	if d := time.Since(t0); d < 200*time.Millisecond {
		t.Fatalf("PING with 100ms one-way delay took %v", d)
	}
	p.SetDelay(0)

	// Reset kills open connections; Refuse rejects new ones.
	p.Reset()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(buf); err == nil {
		t.Fatal("read succeeded on a reset connection")
	}
	p.Refuse(true)
	if rc, err := net.DialTimeout("tcp", p.Addr, time.Second); err == nil {
		rc.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := rc.Read(buf); err == nil {
			t.Fatal("a refused connection was served")
		}
		rc.Close()
	}
	p.Heal()
	if got := redisCmd(t, p.Addr, "PING"); got != "+PONG" {
		t.Fatalf("PING after Heal = %q", got)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if n := p.Conns(); n != 0 {
		t.Fatalf("%d connections after Close", n)
	}
}
