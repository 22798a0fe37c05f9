package pebblestore_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
	"github.com/imgn/imgn/persist/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leaktest.Gnet()...) // the fsync test runs a Server
}

func openAt(t testing.TB, dir string, opts pebblestore.Options) *pebblestore.Store {
	t.Helper()
	opts.Dir = dir
	s, err := pebblestore.Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// The conformance suite runs with real fsync: it is what production uses.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) persist.Store {
		return openAt(t, t.TempDir(), pebblestore.Options{})
	})
}

// The suite again with a dedup filter of one 32-byte block: it fills after
// 21 keys, so the suite runs through many rebuilds, and most checks find
// the filter saying "maybe".
func TestConformanceTinyFilter(t *testing.T) {
	storetest.Run(t, func(t *testing.T) persist.Store {
		return openAt(t, t.TempDir(), pebblestore.Options{DedupFilterBytes: 32})
	})
}

// The chat suite (conversations, cursors, recall, delete, history).
func TestChat(t *testing.T) {
	storetest.RunChat(t, func(t *testing.T) persist.Store {
		return openAt(t, t.TempDir(), pebblestore.Options{})
	})
}

func TestDurable(t *testing.T) { storetest.RunDurable(t, openDurable) }

// BenchmarkStore runs the shared benchmarks with real fsync and with NoSync
// (the CPU cost of the store alone), and reports the average group-commit
// batch as writes/commit.
func BenchmarkStore(b *testing.B) {
	for _, c := range []struct {
		name string
		opts pebblestore.Options
	}{
		{"fsync", pebblestore.Options{}},
		{"nosync", pebblestore.Options{NoSync: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			storetest.Bench(b, func(b *testing.B) persist.Store {
				s := openAt(b, b.TempDir(), c.opts)
				b.Cleanup(func() { // after Bench closed s, before the result is read
					if st := s.StoreStats(); st.Commits > 0 {
						b.ReportMetric(st.AvgBatch, "writes/commit")
					}
				})
				return s
			})
		})
	}
}

func TestRetention(t *testing.T) {
	storetest.RunRetention(t, func(t *testing.T, r persist.Retention) persist.Store {
		return openAt(t, t.TempDir(), pebblestore.Options{Retention: r})
	})
}

func openDurable(t *testing.T, dir string) persist.Store {
	return openAt(t, dir, pebblestore.Options{})
}

// TestCrashChild is the child process of TestCrashSIGKILL; run on its own
// it does nothing.
func TestCrashChild(t *testing.T) { storetest.CrashChild(t, openDurable) }

// TestCrashSIGKILL kills a process appending to the store three times and
// checks every acknowledged append (and retry) after the last restart.
func TestCrashSIGKILL(t *testing.T) { storetest.RunCrash(t, "TestCrashChild", 3, openDurable) }

// TestSetCursorAsyncClosed (the rest of persist.AsyncCursorSetter is in
// storetest's suite): every write queued before Close completes exactly
// once by the time Close returns, and one after Close is answered with
// ErrClosed before SetCursorAsync returns.
func TestSetCursorAsyncClosed(t *testing.T) {
	s := openAt(t, t.TempDir(), pebblestore.Options{})
	var calls, dones atomic.Int64
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				calls.Add(1)
				s.SetCursorAsync("carol", "d1", uint64(g*50+i+1), func(error) { dones.Add(1) })
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil { // completes everything queued
		t.Fatal(err)
	}
	if c, d := calls.Load(), dones.Load(); c != d {
		t.Fatalf("%d asynchronous writes, %d done calls after Close", c, d)
	}
	returned, called := false, false
	s.SetCursorAsync("bob", "d1", 10, func(err error) {
		called = true
		if returned || !errors.Is(err, persist.ErrClosed) {
			t.Errorf("closed store: done(%v) after return %v; want ErrClosed before", err, returned)
		}
	})
	returned = true
	if !called {
		t.Error("closed store: done not called before SetCursorAsync returned")
	}
}
