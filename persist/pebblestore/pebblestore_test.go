package pebblestore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// BenchmarkReadInboxLoaded reads 50-entry pages of random inboxes of a
// store just loaded with 1.2 million 1:1 messages among 1,000 users (so
// flushed tables are still waiting in L0 for their compaction), for each L0
// compaction threshold: what a larger threshold costs reads. Loading takes
// 15-20 s per threshold, and is repeated whenever the benchmark is called
// with a new b.N, so run it with a fixed count:
//
//	go test ./persist/pebblestore -run '^$' -bench ReadInboxLoaded -benchtime 20000x
func BenchmarkReadInboxLoaded(b *testing.B) {
	for _, l0 := range []int{4, pebblestore.DefaultL0CompactionThreshold, 16} {
		b.Run(fmt.Sprintf("L0=%d", l0), func(b *testing.B) {
			s := openAt(b, b.TempDir(), pebblestore.Options{NoSync: true, L0CompactionThreshold: l0})
			defer func() {
				if err := s.Close(); err != nil {
					b.Error(err)
				}
			}()
			ctx := context.Background()
			const users, total, writers = 1000, 1_200_000, 64
			user := func(i int) string { return "user" + strconv.Itoa(i) }
			body := make([]byte, storetest.BenchBodySize)
			var id atomic.Uint64
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(w), 1))
					for range total / writers {
						n := id.Add(1)
						from, to := r.IntN(users), r.IntN(users-1)
						if to >= from {
							to++
						}
						m := persist.Message{ID: n, From: user(from), To: user(to), ClientMsgID: strconv.FormatUint(n, 10),
							Timestamp: time.Now().UnixMilli(), Body: body}
						if _, err := s.Append(ctx, m, []string{m.From, m.To}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			r := rand.New(rand.NewPCG(7, 7))
			b.ResetTimer()
			for range b.N {
				if _, err := s.ReadInbox(ctx, user(r.IntN(users)), uint64(r.IntN(2000)), 50); err != nil {
					b.Fatal(err)
				}
			}
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
