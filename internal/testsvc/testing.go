package testsvc

import (
	"context"
	"testing"
	"time"
)

// installTimeout bounds EnsureInstalled from a test: an apt install of the
// packages plus a cold devmongo build.
const installTimeout = 10 * time.Minute

// StartZooKeeper starts a standalone ZooKeeper 3.8 server for the test on a
// free loopback port, with its data in a temporary directory, and waits
// until it serves requests. Session timeouts: see the package doc and
// WithZKTiming. The server is stopped in t.Cleanup; a failure to start fails
// the test with the server's log.
func StartZooKeeper(t testing.TB, opts ...Option) *Service {
	t.Helper()
	return Start(t, KindZooKeeper, opts...)
}

// StartRedis starts a redis-server for the test (no persistence: data is
// lost on Kill or Stop unless WithRedisArgs("--appendonly", "yes")). It is
// stopped in t.Cleanup.
func StartRedis(t testing.TB, opts ...Option) *Service {
	t.Helper()
	return Start(t, KindRedis, opts...)
}

// StartMongo starts the FerretDB dev server (bin/devmongo, built on demand)
// for the test, with its SQLite files in a temporary directory that survive
// Stop/Kill and Start. Connect with s.URI(). It is stopped in t.Cleanup.
func StartMongo(t testing.TB, opts ...Option) *Service {
	t.Helper()
	return Start(t, KindMongo, opts...)
}

// Start starts a service of kind for the test (see Launch) in t.TempDir()
// and stops it in t.Cleanup, before the directory is removed. If the test
// failed, the cleanup logs the tail of the service's log.
func Start(t testing.TB, kind string, opts ...Option) *Service {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	if err := ensureKind(ctx, kind); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s, err := Launch(ctx, kind, dir, 0, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("testsvc: %v", err)
		}
		if t.Failed() {
			t.Logf("testsvc: last %d lines of %s:\n%s", logTailLines, s.LogPath, s.LogTail(logTailLines))
		}
	})
	return s
}
