package testsvc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// LockPath is the file EnsureInstalled (and scripts/deps.sh) lock with
// flock(2) while installing, so that concurrent test processes install once.
const LockPath = "/tmp/imgn-testsvc.lock"

// rootModule is the module line of the repository's go.mod.
const rootModule = "module github.com/imgn/imgn"

// Debian packages per kind (zookeeper depends on a Java runtime; the dev
// MongoDB keeps its data in a PostgreSQL server it runs itself).
var debPackages = map[string][]string{
	KindZooKeeper: {"zookeeper"},
	KindRedis:     {"redis-server"},
	KindMongo:     {"postgresql"},
}

var (
	ensureMu sync.Mutex
	ensured  = map[string]bool{} // kinds found installed by this process
)

// EnsureInstalled makes every service kind runnable: it installs the Debian
// packages zookeeper, redis-server and postgresql when missing (apt-get update; apt-get
// install -y; as root, or via passwordless sudo) and builds bin/devmongo
// when it is missing or older than its sources in tools/devmongo. It is safe
// to call concurrently from several processes (flock on LockPath) and
// cheap once everything is installed. The error says what failed and what
// to install by hand.
func EnsureInstalled() error {
	return ensure(context.Background(), KindZooKeeper, KindRedis, KindMongo)
}

func ensureKind(ctx context.Context, kind string) error { return ensure(ctx, kind) }

func ensure(ctx context.Context, want ...string) error {
	ensureMu.Lock()
	defer ensureMu.Unlock()
	var todo []string
	for _, k := range want {
		if !ensured[k] {
			todo = append(todo, k)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if missingPackages(todo) == nil && !devmongoStale(todo) {
		for _, k := range todo {
			ensured[k] = true
		}
		return nil
	}
	unlock, err := lockFile(ctx, LockPath)
	if err != nil {
		return err
	}
	defer unlock()
	// Another process may have installed while we waited for the lock.
	if pkgs := missingPackages(todo); pkgs != nil {
		if err := aptInstall(ctx, pkgs); err != nil {
			return err
		}
		if still := missingPackages(todo); still != nil {
			return fmt.Errorf("testsvc: apt-get install succeeded but %s still missing", strings.Join(still, ", "))
		}
	}
	if devmongoStale(todo) {
		if err := buildDevmongo(ctx); err != nil {
			return err
		}
	}
	for _, k := range todo {
		ensured[k] = true
	}
	return nil
}

// missingPackages lists the Debian packages needed by kinds that are not
// installed (judged by the files the services run), or nil.
func missingPackages(kinds []string) []string {
	var out []string
	for _, k := range kinds {
		switch k {
		case KindZooKeeper:
			_, jarErr := os.Stat(zkJar)
			_, javaErr := exec.LookPath("java")
			if jarErr != nil || javaErr != nil {
				out = append(out, debPackages[k]...)
			}
		case KindRedis:
			if _, err := exec.LookPath("redis-server"); err != nil {
				if _, err := os.Stat("/usr/bin/redis-server"); err != nil {
					out = append(out, debPackages[k]...)
				}
			}
		case KindMongo:
			if !havePostgres() {
				out = append(out, debPackages[k]...)
			}
		}
	}
	return out
}

// havePostgres reports whether PostgreSQL's server binaries are where
// devmongo looks for them (PATH, or Debian's /usr/lib/postgresql/*/bin).
func havePostgres() bool {
	if _, err := exec.LookPath("postgres"); err == nil {
		return true
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	return len(found) > 0
}

func aptInstall(ctx context.Context, pkgs []string) error {
	var prefix []string
	if os.Geteuid() != 0 {
		sudo, err := exec.LookPath("sudo")
		if err != nil || exec.CommandContext(ctx, sudo, "-n", "true").Run() != nil {
			return fmt.Errorf("testsvc: missing Debian packages %s and not root (no passwordless sudo): run `sudo scripts/deps.sh` or `sudo apt-get install -y %s`",
				strings.Join(pkgs, " "), strings.Join(pkgs, " "))
		}
		prefix = []string{sudo, "-n"}
	}
	run := func(args ...string) error {
		argv := append(append(append([]string{}, prefix...), "env", "DEBIAN_FRONTEND=noninteractive"), args...)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("testsvc: %s: %w\n%s", strings.Join(args, " "), err, tail(out.String(), logTailLines))
		}
		return nil
	}
	if err := run("apt-get", "update", "-qq"); err != nil {
		return err
	}
	return run(append([]string{"apt-get", "install", "-y", "-qq", "--no-install-recommends",
		"-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"}, pkgs...)...)
}

// lockFile takes an exclusive flock on path, polling so that ctx can end
// the wait.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err == nil {
		_ = f.Chmod(0o666) // let other users take the lock too (umask)
	} else {
		// Created by another user: flock works on a read-only descriptor.
		f, err = os.Open(path)
	}
	if err != nil {
		return nil, fmt.Errorf("testsvc: lock %s: %w", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("testsvc: lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("testsvc: waiting for lock %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RepoRoot returns the repository root (the directory of the go.mod of
// github.com/imgn/imgn): $IMGN_ROOT if set, else the first such directory
// above the working directory, else the one this package was compiled from.
func RepoRoot() (string, error) {
	if r := os.Getenv("IMGN_ROOT"); r != "" {
		return r, nil
	}
	isRoot := func(dir string) bool {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err != nil {
			return false
		}
		for line := range strings.Lines(string(b)) {
			if strings.HasPrefix(line, "module") {
				return strings.TrimSpace(line) == rootModule
			}
		}
		return false
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			if isRoot(dir) {
				return dir, nil
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		dir := filepath.Dir(filepath.Dir(filepath.Dir(file))) // internal/testsvc/install.go
		if isRoot(dir) {
			return dir, nil
		}
	}
	return "", errors.New("testsvc: cannot find the repository root (set IMGN_ROOT)")
}

// DevmongoPath is the dev MongoDB server binary: $IMGN_DEVMONGO if set
// (never rebuilt), else <repo root>/bin/devmongo.
func DevmongoPath() (string, error) {
	if p := os.Getenv("IMGN_DEVMONGO"); p != "" {
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin", "devmongo"), nil
}

// devmongoStale reports whether kinds includes KindMongo and bin/devmongo
// is missing or older than a source file of tools/devmongo.
func devmongoStale(kinds []string) bool {
	need := false
	for _, k := range kinds {
		need = need || k == KindMongo
	}
	if !need {
		return false
	}
	if os.Getenv("IMGN_DEVMONGO") != "" {
		return false
	}
	bin, err := DevmongoPath()
	if err != nil {
		return true
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return true
	}
	root, _ := RepoRoot()
	src := filepath.Join(root, "tools", "devmongo")
	newer := false
	_ = filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || newer {
			return fs.SkipAll
		}
		name := d.Name()
		src := strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")
		if d.IsDir() || !(src || name == "go.mod" || name == "go.sum") {
			return nil
		}
		if info, err := d.Info(); err == nil && info.ModTime().After(fi.ModTime()) {
			newer = true
		}
		return nil
	})
	return newer
}

// buildDevmongo builds tools/devmongo (its own module) into bin/devmongo.
func buildDevmongo(ctx context.Context) error {
	bin, err := DevmongoPath()
	if err != nil {
		return err
	}
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = "/usr/local/go/bin/go"
		if g := os.Getenv("GOROOT"); g != "" {
			goCmd = filepath.Join(g, "bin", "go")
		}
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return fmt.Errorf("testsvc: build devmongo: %w", err)
	}
	tmp := fmt.Sprintf("%s.tmp%d", bin, os.Getpid())
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-o", tmp, ".")
	cmd.Dir = filepath.Join(root, "tools", "devmongo")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("testsvc: build devmongo (cd %s && go build): %w\n%s", cmd.Dir, err, tail(out.String(), logTailLines))
	}
	if err := os.Rename(tmp, bin); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("testsvc: build devmongo: %w", err)
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
