package mongostore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/mongostore"
	"github.com/imgn/imgn/persist/storetest"
)

// shared is the FerretDB server of the tests that do not stop it; each
// store gets its own database.
var shared *testsvc.Service

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "mongostore-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // may build bin/devmongo
	var opts []testsvc.Option
	if sync := os.Getenv("MONGOSTORE_TEST_SYNC"); sync != "" { // full (default), normal or off
		opts = append(opts, testsvc.WithDevmongoArgs("--sync", sync))
	}
	if level := os.Getenv("MONGOSTORE_TEST_LOG"); level != "" { // devmongo --log-level
		opts = append(opts, testsvc.WithDevmongoArgs("--log-level", level))
	}
	if keep := os.Getenv("MONGOSTORE_TEST_KEEP_LOG"); keep != "" {
		defer func() {
			if b, err := os.ReadFile(shared.LogPath); err == nil {
				_ = os.WriteFile(keep, b, 0o644)
			}
		}()
	}
	shared, err = testsvc.Launch(ctx, testsvc.KindMongo, dir, 0, opts...)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- last lines of the shared FerretDB log %s:\n%s\n", shared.LogPath, shared.LogTail(40))
	}
	if err := shared.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}

var dbSeq atomic.Int64

// newDB returns a database name no other test uses.
func newDB() string { return fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1)) }

// openPair opens two stores on one new database of the shared server (two
// nodes writing the same inboxes); the test's cleanup closes them.
func openPair(t *testing.T) (a, b *mongostore.Store) {
	t.Helper()
	db := newDB()
	a, b = open(t, shared.URI(), db), open(t, shared.URI(), db)
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func open(t testing.TB, uri, db string, mod ...func(*mongostore.Options)) *mongostore.Store {
	t.Helper()
	o := mongostore.Options{URI: uri, Database: db}
	for _, f := range mod {
		f(&o)
	}
	s, err := mongostore.Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open(%s): %v", db, err)
	}
	return s
}

// syncUpkeep waits for s's pending upkeep (conversations, heads hints) to
// be written, so that a test counts the commands of what it measures.
func syncUpkeep(t testing.TB, s *mongostore.Store) {
	t.Helper()
	if err := mongostore.SyncUpkeep(s); err != nil {
		t.Fatal(err)
	}
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) persist.Store { return open(t, shared.URI(), newDB()) })
}

func TestDurable(t *testing.T) {
	storetest.RunDurable(t, func(t *testing.T, dir string) persist.Store {
		h := sha256.Sum256([]byte(dir))
		return open(t, shared.URI(), "d_"+hex.EncodeToString(h[:8]))
	})
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	port, err := testsvc.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	closed := fmt.Sprintf("mongodb://127.0.0.1:%d/", port)
	cases := []struct {
		name string
		o    mongostore.Options
		is   error
	}{
		{"empty URI", mongostore.Options{}, persist.ErrInvalid},
		{"bad URI", mongostore.Options{URI: "postgres://x"}, persist.ErrInvalid},
		{"bad database", mongostore.Options{URI: shared.URI(), Database: "a.b"}, persist.ErrInvalid},
		{"write concern 0", mongostore.Options{URI: shared.URI(), WriteConcern: "0"}, persist.ErrInvalid},
		{"write concern junk", mongostore.Options{URI: shared.URI(), WriteConcern: "most"}, persist.ErrInvalid},
		{"write concern bad j", mongostore.Options{URI: shared.URI(), WriteConcern: "majority,j"}, persist.ErrInvalid},
		{"negative MaxBatch", mongostore.Options{URI: shared.URI(), MaxBatch: -1}, persist.ErrInvalid},
		{"negative OpTimeout", mongostore.Options{URI: shared.URI(), OpTimeout: -1}, persist.ErrInvalid},
		{"no server", mongostore.Options{URI: closed, ServerSelectionTimeout: 200 * time.Millisecond}, persist.ErrUnavailable},
	}
	for _, tc := range cases {
		s, err := mongostore.Open(t.Context(), tc.o)
		if err == nil {
			s.Close()
			t.Fatalf("%s: Open succeeded", tc.name)
		}
		if !errors.Is(err, tc.is) || !strings.HasPrefix(err.Error(), "mongostore: ") {
			t.Errorf("%s: err = %v, want a mongostore error wrapping %v", tc.name, err, tc.is)
		}
	}
	for _, wc := range []string{"majority", "journaled", "1", "majority,journaled", "1,journaled"} {
		s := open(t, shared.URI(), newDB(), func(o *mongostore.Options) { o.WriteConcern = wc })
		if _, err := s.Append(t.Context(), persist.Message{ID: 1, ClientMsgID: "c"}, []string{"u"}); err != nil {
			t.Errorf("write concern %q: %v", wc, err)
		}
		s.Close()
	}
}

// TestGroupCommit: concurrent appends share batches.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	s := open(t, shared.URI(), newDB())
	defer s.Close()
	const n = 400
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			m := persist.Message{ID: uint64(i + 1), From: "a", ClientMsgID: fmt.Sprint(i), Body: []byte("x")}
			if _, err := s.Append(t.Context(), m, []string{fmt.Sprint("u", i%10), "all"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	t.Logf("stats %+v (%.1f appends per batch)", st, float64(st.Appends)/float64(st.Batches))
	if st.Appends != n || st.Batches >= n || st.FailedBatches != 0 {
		t.Fatalf("stats %+v: want %d appends in fewer batches", st, n)
	}
	if es := storetest.ReadGapFree(t, s, "all"); len(es) != n {
		t.Fatalf("inbox all: %d entries", len(es))
	}
}

// TestTwoWritersFenced: two stores (two nodes, each with its own seq cache)
// append to the same inboxes. Stale caches collide on the unique (user, seq)
// index and are corrected; no seq is lost or given twice.
func TestTwoWritersFenced(t *testing.T) {
	t.Parallel()
	a, b := openPair(t)
	ctx := t.Context()
	// Alternate: each store's cache is stale at every other append.
	for i := 1; i <= 6; i++ {
		s := a
		if i%2 == 0 {
			s = b
		}
		res, err := s.Append(ctx, persist.Message{ID: uint64(i), From: "x", ClientMsgID: fmt.Sprint(i)}, []string{"u"})
		if err != nil {
			t.Fatal(err)
		}
		if res.Seqs[0] != uint64(i) {
			t.Fatalf("append %d got seq %d", i, res.Seqs[0])
		}
	}
	if a.Stats().Conflicts == 0 {
		t.Fatalf("stale cache never conflicted: %+v", a.Stats())
	}
	// Concurrent: both stores, many goroutines, one hot inbox. This breaks
	// the single-writer rule on purpose: appends may fail with
	// ErrUnavailable under contention (and are retried, as clients do), but
	// no seq is ever skipped or given twice.
	var wg sync.WaitGroup
	var retries atomic.Int64
	acked := make([]map[uint64]uint64, 2) // store -> seq -> id
	var mu sync.Mutex
	for si, s := range []*mongostore.Store{a, b} {
		acked[si] = map[uint64]uint64{}
		for w := range 8 {
			wg.Go(func() {
				for i := range 15 {
					id := uint64(1000*(si*10+w+1) + i)
					m := persist.Message{ID: id, From: fmt.Sprint(si, w), ClientMsgID: fmt.Sprint(i)}
					res, tries, err := retryAppend(ctx, s, m, []string{"hot", "u"}, 30*time.Second)
					retries.Add(int64(tries - 1))
					if err != nil {
						t.Errorf("store %d: %v", si, err)
						return
					}
					mu.Lock()
					acked[si][res.Seqs[0]] = id
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	es := storetest.ReadGapFree(t, a, "hot")
	if len(es) != 2*8*15 {
		t.Fatalf("hot: %d entries", len(es))
	}
	for si := range acked {
		for seq, id := range acked[si] {
			if es[seq-1].Msg.ID != id {
				t.Fatalf("store %d acked %d at seq %d, inbox holds %d", si, id, seq, es[seq-1].Msg.ID)
			}
		}
	}
	storetest.ReadGapFree(t, b, "u")
	t.Logf("a %+v, b %+v, %d retried appends", a.Stats(), b.Stats(), retries.Load())
}

// retryAppend retries an append with the same message while it fails with
// ErrUnavailable, as a client does, for up to deadline. Safe to call from
// any goroutine.
func retryAppend(ctx context.Context, s persist.Store, m persist.Message, inboxes []string, deadline time.Duration) (persist.AppendResult, int, error) {
	end := time.Now().Add(deadline)
	for tries := 1; ; tries++ {
		res, err := s.Append(ctx, m, inboxes)
		if err == nil {
			return res, tries, nil
		}
		if !errors.Is(err, persist.ErrUnavailable) {
			return res, tries, fmt.Errorf("append %d: %w, want nil or ErrUnavailable", m.ID, err)
		}
		if time.Now().After(end) {
			return res, tries, fmt.Errorf("append %d still failing after %v: %w", m.ID, deadline, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustRetryAppend(t *testing.T, s persist.Store, m persist.Message, inboxes []string) (persist.AppendResult, int) {
	t.Helper()
	res, tries, err := retryAppend(t.Context(), s, m, inboxes, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return res, tries
}

// TestServerDown: with the server stopped, calls fail with ErrUnavailable
// (never a false success); after a restart on the same port and data, the
// retried append succeeds once and nothing is duplicated.
func TestServerDown(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartMongo(t)
	uri := svc.URI() + "?heartbeatFrequencyMS=500"
	s := open(t, uri, "down", func(o *mongostore.Options) {
		o.ServerSelectionTimeout = 300 * time.Millisecond
		o.OpTimeout = 2 * time.Second
	})
	defer s.Close()
	ctx := t.Context()
	first := persist.Message{ID: 1, From: "alice", ClientMsgID: "c1", Body: []byte("one")}
	if _, err := s.Append(ctx, first, []string{"bob", "alice"}); err != nil {
		t.Fatal(err)
	}

	idle := open(t, uri, "down")
	if err := svc.Stop(); err != nil {
		t.Fatal(err)
	}
	// Closing a store while the server is down neither hangs nor fails.
	t0 := time.Now()
	if err := idle.Close(); err != nil || time.Since(t0) > 2*time.Second {
		t.Fatalf("Close with the server down: %v after %v", err, time.Since(t0))
	}
	second := persist.Message{ID: 2, From: "alice", ClientMsgID: "c2", Body: []byte("two")}
	for range 2 { // the first call may hit a dead pooled connection, the second server selection
		_, err := s.Append(ctx, second, []string{"bob", "alice"})
		if !errors.Is(err, persist.ErrUnavailable) {
			t.Fatalf("Append with the server down: %v, want ErrUnavailable", err)
		}
	}
	if _, err := s.ReadInbox(ctx, "bob", 0, 10); !errors.Is(err, persist.ErrUnavailable) {
		t.Fatalf("ReadInbox with the server down: %v, want ErrUnavailable", err)
	}
	if _, err := s.LastSeq(ctx, "bob"); !errors.Is(err, persist.ErrUnavailable) {
		t.Fatalf("LastSeq with the server down: %v, want ErrUnavailable", err)
	}
	// Cursor writes are batched: recorded now, written by a later flush
	// once the server is back.
	if err := s.SetCursor(ctx, "bob", "phone", 1); err != nil {
		t.Fatalf("SetCursor with the server down: %v, want it recorded", err)
	}

	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	other := open(t, uri, "down")
	defer other.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := other.Cursor(ctx, "bob", "phone")
		if err == nil && c == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cursor recorded while the server was down not written after its restart: %d, %v (stats %+v)", c, err, s.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	res, tries := mustRetryAppend(t, s, second, []string{"bob", "alice"})
	t.Logf("append succeeded after restart at try %d: %+v", tries, res)
	if !slices.Equal(res.Seqs, []uint64{2, 2}) {
		t.Fatalf("seqs after restart %v, want [2 2]", res.Seqs)
	}
	// The same append again: a duplicate, nothing new stored.
	again, err := s.Append(ctx, second, []string{"bob", "alice"})
	if err != nil || !again.Duplicate || !slices.Equal(again.Seqs, res.Seqs) {
		t.Fatalf("second retry = %+v, %v; want Duplicate at %v", again, err, res.Seqs)
	}
	for _, in := range []string{"bob", "alice"} {
		es := storetest.ReadGapFree(t, s, in)
		if len(es) != 2 || es[0].Msg.ID != 1 || es[1].Msg.ID != 2 {
			t.Fatalf("inbox %s: %+v", in, es)
		}
	}
}

// TestPausedServer: a frozen server (SIGSTOP) makes appends fail by
// timeout, never succeed falsely; after SIGCONT the retries converge.
func TestPausedServer(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartMongo(t)
	s := open(t, svc.URI(), "paused", func(o *mongostore.Options) {
		o.ServerSelectionTimeout = 300 * time.Millisecond
		o.OpTimeout = 500 * time.Millisecond
	})
	defer s.Close()
	ctx := t.Context()
	if _, err := s.Append(ctx, persist.Message{ID: 1, From: "a", ClientMsgID: "1"}, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Pause(); err != nil {
		t.Fatal(err)
	}
	m := persist.Message{ID: 2, From: "a", ClientMsgID: "2"}
	_, err := s.Append(ctx, m, []string{"u", "v"})
	if !errors.Is(err, persist.ErrUnavailable) {
		t.Fatalf("Append to a paused server: %v, want ErrUnavailable", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = s.Append(cctx, persist.Message{ID: 3, From: "a", ClientMsgID: "3"}, []string{"u"})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, persist.ErrUnavailable) {
		t.Fatalf("Append with a short deadline to a paused server: %v", err)
	}
	if err := svc.Resume(); err != nil {
		t.Fatal(err)
	}
	res, _ := mustRetryAppend(t, s, m, []string{"u", "v"})
	// Message 3's caller gave up; it may or may not have been stored. Its
	// retry converges either way.
	res3, _ := mustRetryAppend(t, s, persist.Message{ID: 3, From: "a", ClientMsgID: "3"}, []string{"u"})
	es := storetest.ReadGapFree(t, s, "u")
	if len(es) != 3 || es[res.Seqs[0]-1].Msg.ID != 2 || es[res3.Seqs[0]-1].Msg.ID != 3 {
		t.Fatalf("inbox u after resume: %+v (appends %+v, %+v)", es, res, res3)
	}
	storetest.ReadGapFree(t, s, "v")
}

// TestCrashDuringAppends SIGKILLs the server while writers append, restarts
// it on the same data, and lets every writer retry its failed append with
// the same message until it succeeds. Afterwards every inbox holds each
// message exactly once, gap-free, at the acknowledged seqs.
func TestCrashDuringAppends(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartMongo(t)
	uri := svc.URI() + "?heartbeatFrequencyMS=500"
	s := open(t, uri, "crash", func(o *mongostore.Options) {
		o.ServerSelectionTimeout = 500 * time.Millisecond
		o.OpTimeout = 2 * time.Second
	})
	defer s.Close()
	const workers, perWorker = 8, 40
	type ack struct {
		id   uint64
		seqs map[string]uint64
	}
	acks := make([][]ack, workers)
	var acked, failures atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				id := uint64(w*1000 + i + 1)
				inboxes := []string{"shared", fmt.Sprint("own", w)}
				if i%3 == 0 {
					inboxes = append(inboxes, fmt.Sprint("pair", w%2))
				}
				m := persist.Message{ID: id, From: fmt.Sprint("w", w), ClientMsgID: fmt.Sprint(i), Body: []byte("x")}
				res, tries, err := retryAppend(t.Context(), s, m, inboxes, 60*time.Second)
				failures.Add(int64(tries - 1))
				if err != nil {
					t.Error(err)
					return
				}
				a := ack{id: id, seqs: map[string]uint64{}}
				for j, in := range inboxes {
					a.seqs[in] = res.Seqs[j]
				}
				acks[w] = append(acks[w], a)
				acked.Add(1)
			}
		})
	}
	// Crash twice while the writers run.
	for round := range 2 {
		for acked.Load() < int64(60*(round+1)) && !t.Failed() {
			time.Sleep(5 * time.Millisecond)
		}
		if err := svc.Kill(); err != nil {
			t.Error(err)
			break
		}
		time.Sleep(300 * time.Millisecond)
		if err := svc.Start(); err != nil {
			t.Error(err)
			break
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d appends acked, %d failed attempts retried; stats %+v", acked.Load(), failures.Load(), s.Stats())
	if failures.Load() == 0 {
		// Eight writers append back to back, so a kill always catches some in
		// flight; none failing means the crashes tested nothing.
		t.Fatal("no append failed across two server crashes: the crashes exercised nothing")
	}
	want := map[string]map[uint64]uint64{} // inbox -> seq -> id
	for _, as := range acks {
		for _, a := range as {
			for in, seq := range a.seqs {
				if want[in] == nil {
					want[in] = map[uint64]uint64{}
				}
				if prev, ok := want[in][seq]; ok {
					t.Fatalf("inbox %s: seq %d acked for %d and %d", in, seq, prev, a.id)
				}
				want[in][seq] = a.id
			}
		}
	}
	for in, m := range want {
		es := storetest.ReadGapFree(t, s, in)
		if len(es) != len(m) {
			t.Fatalf("inbox %s: %d entries, %d acked", in, len(es), len(m))
		}
		for seq, id := range m {
			if es[seq-1].Msg.ID != id {
				t.Fatalf("inbox %s: seq %d holds %d, acked %d", in, seq, es[seq-1].Msg.ID, id)
			}
		}
	}
}

// TestReopenAfterServerRestart: acknowledged data survives a SIGKILL of the
// server (SQLite WAL, synchronous=full) and a new store continues the seqs.
func TestReopenAfterServerRestart(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartMongo(t)
	s := open(t, svc.URI(), "reopen")
	for i := 1; i <= 20; i++ {
		if _, err := s.Append(t.Context(), persist.Message{ID: uint64(i), From: "a", ClientMsgID: fmt.Sprint(i)}, []string{"u"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := svc.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	s = open(t, svc.URI(), "reopen")
	defer s.Close()
	if last, err := s.LastSeq(t.Context(), "u"); err != nil || last != 20 {
		t.Fatalf("LastSeq after server crash = %d, %v", last, err)
	}
	res, err := s.Append(t.Context(), persist.Message{ID: 21, From: "a", ClientMsgID: "21"}, []string{"u"})
	if err != nil || res.Seqs[0] != 21 {
		t.Fatalf("append after restart = %+v, %v", res, err)
	}
	storetest.ReadGapFree(t, s, "u")
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) persist.Store { return open(b, shared.URI(), newDB()) })
}

// TestAppendEntries: the owner of other inboxes writes only their entries
// for a message another store stored (one insert command per batch, no
// message insert, no lookup); a retry keeps the seqs; the inboxes read
// back the message.
func TestAppendEntries(t *testing.T) {
	t.Parallel()
	a, b := openPair(t)
	ctx := t.Context()
	m := persist.Message{ID: 77, From: "alice", To: "bob", ClientMsgID: "c1", Timestamp: 5, Body: []byte("hi")}
	first, err := a.Append(ctx, m, []string{"alice"})
	if err != nil {
		t.Fatal(err)
	}
	// Warm b's seq cache for bob and carol, so that the measured append
	// plans without reading.
	if _, err := b.Append(ctx, persist.Message{ID: 1, From: "x", ClientMsgID: "w"}, []string{"bob", "carol"}); err != nil {
		t.Fatal(err)
	}
	syncUpkeep(t, b)
	before := b.Stats().Commands
	res, err := b.AppendEntries(ctx, first.Msg, []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	syncUpkeep(t, b)
	after := b.Stats().Commands
	if !slices.Equal(res.Seqs, []uint64{2, 2}) || res.Duplicate || res.Msg.ID != 77 {
		t.Fatalf("AppendEntries = %+v", res)
	}
	// One insert of the entries and (after it, off the append's path) one
	// bulk upsert of the conversations.
	if d := diffOps(before, after); len(d) != 2 || d["insert"] != 1 || d["update"] != 1 {
		t.Fatalf("AppendEntries sent %v, want one insert and one update", d)
	}
	again, err := b.AppendEntries(ctx, first.Msg, []string{"carol", "bob", "dave"})
	if err != nil || !slices.Equal(again.Seqs, []uint64{2, 2, 1}) {
		t.Fatalf("AppendEntries retried with one more inbox = %+v, %v; want seqs [2 2 1]", again, err)
	}
	for _, u := range []string{"bob", "carol", "dave"} {
		es := storetest.ReadGapFree(t, a, u)
		if got := es[len(es)-1].Msg; got.ID != 77 || string(got.Body) != "hi" || got.From != "alice" {
			t.Fatalf("inbox %s ends with %+v", u, got)
		}
	}
	if _, err := b.AppendEntries(ctx, persist.Message{ID: 5}, nil); !errors.Is(err, persist.ErrInvalid) {
		t.Fatalf("AppendEntries without inboxes: %v, want ErrInvalid", err)
	}
}

// diffOps returns after - before, without zero entries.
var diffOps = mongostore.OpsSince

// TestDuplicatesLookedUpPerBatch: retries of stored messages cost one
// query for their originals, one for their entries and one for their
// conversations per group commit, not one per message (the query shape
// sent to MongoDB), whether the messages are documents (their senders have
// no inbox among theirs) or origin entries (the senders' inboxes are among
// theirs: the retries' origins fail as duplicates, which one query
// resolves for the whole batch). On FerretDB the store asks one equality
// query per key instead (see findAny): the same answers, and a few queries
// per retry.
func TestDuplicatesLookedUpPerBatch(t *testing.T) {
	for _, origin := range []bool{false, true} {
		for _, eq := range []bool{false, true} {
			t.Run(fmt.Sprint("origin=", origin, ",eqQueries=", eq), func(t *testing.T) {
				t.Parallel()
				s := open(t, shared.URI(), newDB())
				defer s.Close()
				mongostore.UseEqQueries(s, eq)
				const n = 60
				msgs := make([]persist.Message, n)
				inboxes := make([][]string, n)
				seqs := make([][]uint64, n)
				for i := range msgs {
					msgs[i] = persist.Message{ID: uint64(i + 1), From: fmt.Sprint("s", i%4), ClientMsgID: fmt.Sprint(i), Body: []byte("x")}
					inboxes[i] = []string{"r", fmt.Sprint("u", i%5)}
					if origin {
						inboxes[i] = []string{msgs[i].From, fmt.Sprint("u", i%5)}
					}
					res, err := s.Append(t.Context(), msgs[i], inboxes[i])
					if err != nil {
						t.Fatal(err)
					}
					seqs[i] = res.Seqs
				}
				syncUpkeep(t, s)
				before := s.Stats()
				var wg sync.WaitGroup
				for i, m := range msgs {
					wg.Go(func() {
						m.ID += 1000 // a retry arrives with a new id
						res, err := s.Append(t.Context(), m, inboxes[i])
						if err != nil || !res.Duplicate || res.Msg.ID != uint64(i+1) || !slices.Equal(res.Seqs, seqs[i]) {
							t.Errorf("retry %d = %+v, %v; want seqs %v", i, res, err, seqs[i])
						}
					})
				}
				wg.Wait()
				syncUpkeep(t, s)
				after := s.Stats()
				batches := after.Batches - before.Batches
				ops := diffOps(before.Commands, after.Commands)
				finds := ops["find"]
				t.Logf("%d retries in %d batches (%d rounds, %d conflicts): %v", n, batches, after.Rounds-before.Rounds, after.Conflicts-before.Conflicts, ops)
				if want := 3 * batches; !eq && finds > want {
					t.Fatalf("%d finds for %d batches of retries, want at most %d", finds, batches, want)
				}
				if want := uint64(4 * n); eq && finds > want { // originals, entries and conversations of both inboxes
					t.Fatalf("%d finds for %d retries, want at most %d", finds, n, want)
				}
				if origin && ops["insert"] > batches {
					t.Fatalf("%d inserts for %d batches of retries, want at most one each (the one that meets the first duplicate)", ops["insert"], batches)
				}
				if updates := ops["update"]; updates != 0 {
					t.Fatalf("retries of complete appends wrote %d updates, want none (their conversations are current)", updates)
				}
			})
		}
	}
}

// TestCursorWritesBatched: cursor positions are recorded at once and
// written together, one command for everything recorded in an interval
// (on FerretDB one per mongostore.FerretUpdateBatch cursors);
// the store reads its own recorded positions before they are written, and
// Close writes what is recorded.
func TestCursorWritesBatched(t *testing.T) {
	t.Parallel()
	db := newDB()
	s := open(t, shared.URI(), db, func(o *mongostore.Options) { o.CursorInterval = time.Hour })
	ctx := t.Context()
	for i := range 200 {
		if err := s.SetCursor(ctx, fmt.Sprint("u", i%50), "d", uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	if c, err := s.Cursor(ctx, "u7", "d"); err != nil || c != 157 {
		t.Fatalf("Cursor before the flush = %d, %v; want 157", c, err)
	}
	before := s.Stats().Commands
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	want := uint64(1)
	if s.FerretDB() {
		want = (50 + mongostore.FerretUpdateBatch - 1) / mongostore.FerretUpdateBatch
	}
	if d := diffOps(before, s.Stats().Commands); d["update"] != want {
		t.Fatalf("200 updates of 50 cursors written with %v, want %d update commands", d, want)
	}
	r := open(t, shared.URI(), db)
	defer r.Close()
	for i := 150; i < 200; i++ {
		if c, err := r.Cursor(ctx, fmt.Sprint("u", i%50), "d"); err != nil || c != uint64(i) {
			t.Fatalf("Cursor(u%d) after reopen = %d, %v; want %d", i%50, c, err, i)
		}
	}
	if err := s.SetCursor(ctx, "u1", "d", 1); !errors.Is(err, persist.ErrClosed) {
		t.Fatalf("SetCursor after Close: %v, want ErrClosed", err)
	}
}

// TestCursorFlushOfManyExistingCursors: one flush that moves more existing
// cursors than the dev server's PostgreSQL pool has connections (devmongo's
// --pg-pool, 150) is written. FerretDB v1's update command keeps each
// matched document's query (and its pool connection) open until the whole
// command ends and needs one more connection per update: a single command
// of that many updates waited for a connection it held itself, and every
// other client of the server with it (the drain test's hang).
func TestCursorFlushOfManyExistingCursors(t *testing.T) {
	t.Parallel()
	const cursors = 200
	db := newDB()
	s := open(t, shared.URI(), db, func(o *mongostore.Options) {
		o.CursorInterval = time.Hour // written by Close only: one flush each
		o.OpTimeout = 5 * time.Second
	})
	ctx := t.Context()
	for round := uint64(1); round <= 2; round++ { // create, then move every cursor
		for i := range cursors {
			if err := s.SetCursor(ctx, fmt.Sprint("u", i), "d", round); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if f := s.Stats().CursorFailures; f != 0 {
			t.Fatalf("round %d: %d cursor flushes failed", round, f)
		}
		s = open(t, shared.URI(), db)
		for i := range cursors {
			if c, err := s.Cursor(ctx, fmt.Sprint("u", i), "d"); err != nil || c != round {
				t.Fatalf("round %d: Cursor(u%d) = %d, %v; want %d", round, i, c, err, round)
			}
		}
	}
	s.Close()
}
