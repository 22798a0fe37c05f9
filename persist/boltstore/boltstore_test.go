package boltstore_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/boltstore"
	"github.com/imgn/imgn/persist/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func openAt(t testing.TB, path string, opts boltstore.Options) *boltstore.Store {
	t.Helper()
	opts.Path = path
	s, err := boltstore.Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// The conformance suite runs with real fsync: it is what production uses.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) persist.Store {
		return openAt(t, filepath.Join(t.TempDir(), "imgn.db"), boltstore.Options{})
	})
}

func TestDurable(t *testing.T) {
	storetest.RunDurable(t, func(t *testing.T, dir string) persist.Store {
		return openAt(t, filepath.Join(dir, "imgn.db"), boltstore.Options{})
	})
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a bolt file ", 1024)), 0o600); err != nil {
		t.Fatal(err)
	}
	ok := filepath.Join(dir, "ok.db")
	cases := []struct {
		name string
		opts boltstore.Options
		is   error // optional
	}{
		{"empty path", boltstore.Options{}, persist.ErrInvalid},
		{"missing directory", boltstore.Options{Path: filepath.Join(dir, "no", "such", "dir", "x.db")}, os.ErrNotExist},
		{"path is a directory", boltstore.Options{Path: dir}, nil},
		{"not a bolt file", boltstore.Options{Path: garbage}, nil},
		{"negative MaxBatch", boltstore.Options{Path: ok, MaxBatch: -1}, persist.ErrInvalid},
		{"negative QueueSize", boltstore.Options{Path: ok, QueueSize: -1}, persist.ErrInvalid},
		{"negative LockTimeout", boltstore.Options{Path: ok, LockTimeout: -time.Second}, persist.ErrInvalid},
		{"negative InitialMmapSize", boltstore.Options{Path: ok, InitialMmapSize: -1}, persist.ErrInvalid},
		{"negative MaxSize", boltstore.Options{Path: ok, MaxSize: -1}, persist.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := boltstore.Open(tc.opts)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if s != nil {
				t.Fatal("Open returned a store with an error")
			}
			if !strings.HasPrefix(err.Error(), "boltstore: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			if tc.opts.Path != "" && !strings.Contains(err.Error(), tc.opts.Path) && tc.is != persist.ErrInvalid {
				t.Errorf("error %q does not name the path", err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want one wrapping %v", err, tc.is)
			}
		})
	}
}

func TestFileLockedByAnotherStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "imgn.db")
	s := openAt(t, path, boltstore.Options{})
	defer s.Close()
	_, err := boltstore.Open(boltstore.Options{Path: path, LockTimeout: 50 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Open of a locked file: err = %v, want a timeout naming the path", err)
	}
}

// TestGroupCommitNaturalBatching: concurrent appends share commits without
// any test hook (no timing assertion: only commits < appends).
func TestGroupCommitNaturalBatching(t *testing.T) {
	s := openAt(t, filepath.Join(t.TempDir(), "imgn.db"), boltstore.Options{})
	defer s.Close()
	const n = 500
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			m := persist.Message{ID: uint64(i + 1), From: "a", ClientMsgID: strconv.Itoa(i), Body: []byte("x")}
			if _, err := s.Append(t.Context(), m, []string{fmt.Sprint("u", i%10), "all"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	t.Logf("%d appends in %d commits (%.1f per commit)", st.Writes, st.Commits, float64(st.Writes)/float64(st.Commits))
	if st.Writes != n || st.Commits >= n {
		t.Fatalf("stats %+v: want %d writes in fewer than %d commits", st, n, n)
	}
	if last, _ := s.LastSeq(t.Context(), "all"); last != n {
		t.Fatalf("LastSeq(all) = %d, want %d", last, n)
	}
}

// TestAppendAbandonedByContext: a caller that gives up still leaves a store
// in which the append happened at most once, and a retry is idempotent.
func TestAppendAbandonedByContext(t *testing.T) {
	s := openAt(t, filepath.Join(t.TempDir(), "imgn.db"), boltstore.Options{})
	defer s.Close()
	m := persist.Message{ID: 1, From: "a", ClientMsgID: "c", Body: []byte("x")}
	for i := range 50 {
		ctx, cancel := context.WithCancel(t.Context())
		go cancel() // races the append
		_, err := s.Append(ctx, m, []string{"u"})
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	res, err := s.Append(t.Context(), m, []string{"u"})
	if err != nil || res.Seqs[0] != 1 {
		t.Fatalf("final retry = %+v, %v; want seq 1", res, err)
	}
	if last, _ := s.LastSeq(t.Context(), "u"); last != 1 {
		t.Fatalf("LastSeq = %d after abandoned retries, want 1", last)
	}
}

// TestMaxSizeFailsCommitsNotTheStore: a commit that cannot grow the file
// fails its whole batch with ErrUnavailable; acknowledged data stays
// readable and nothing of the failed write is visible, also after reopen.
func TestMaxSizeFailsCommitsNotTheStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "imgn.db")
	s := openAt(t, path, boltstore.Options{MaxSize: 1 << 20})
	body := make([]byte, 16<<10)
	var acked uint64
	var failErr error
	for i := uint64(1); i <= 200; i++ {
		res, err := s.Append(t.Context(), persist.Message{ID: i, From: "a", ClientMsgID: fmt.Sprint(i), Body: body}, []string{"u"})
		if err != nil {
			failErr = err
			break
		}
		if res.Seqs[0] != i {
			t.Fatalf("seq %d, want %d", res.Seqs[0], i)
		}
		acked = i
	}
	if !errors.Is(failErr, persist.ErrUnavailable) {
		t.Fatalf("append past MaxSize: err = %v, want ErrUnavailable", failErr)
	}
	if st := s.Stats(); st.FailedCommits == 0 {
		t.Fatalf("stats %+v: no failed commit recorded", st)
	}
	if last, err := s.LastSeq(t.Context(), "u"); err != nil || last != acked {
		t.Fatalf("LastSeq = %d, %v; want %d", last, err, acked)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, boltstore.Options{})
	defer s.Close()
	if _, err := s.Lookup(t.Context(), "a", fmt.Sprint(acked+1)); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("failed append visible after reopen: %v", err)
	}
	res, err := s.Append(t.Context(), persist.Message{ID: acked + 1, From: "a", ClientMsgID: fmt.Sprint(acked + 1), Body: body}, []string{"u"})
	if err != nil || res.Seqs[0] != acked+1 {
		t.Fatalf("retry without the cap = %+v, %v; want seq %d", res, err, acked+1)
	}
}

const crashEnv = "BOLTSTORE_CRASH_DB"

// TestHelperProcess is the child of TestCrashSafety: it appends forever
// from several goroutines and prints one "ACK" line per acknowledged append.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		t.Skip("helper process for TestCrashSafety")
	}
	round, _ := strconv.Atoi(os.Getenv(crashEnv + "_ROUND"))
	s, err := boltstore.Open(boltstore.Options{Path: path})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	time.AfterFunc(time.Minute, func() { os.Exit(3) }) // never outlive a lost parent
	var mu sync.Mutex
	for w := range 8 {
		go func() {
			from := fmt.Sprintf("r%dw%d", round, w)
			for i := 1; ; i++ {
				id := uint64(round)<<40 | uint64(w)<<32 | uint64(i)
				inboxes := []string{"shared", "own-" + from}
				if i%4 == 0 {
					inboxes = append(inboxes, fmt.Sprint("grp", w%2), fmt.Sprint("peer", (w+1)%8))
				}
				cmid := strconv.Itoa(i)
				res, err := s.Append(context.Background(), persist.Message{ID: id, From: from, ClientMsgID: cmid, Body: []byte(cmid)}, inboxes)
				if err != nil {
					fmt.Println("ERR", err)
					os.Exit(4)
				}
				var b strings.Builder
				fmt.Fprintf(&b, "ACK %d %s %s", id, from, cmid)
				for j, in := range inboxes {
					fmt.Fprintf(&b, " %s=%d", in, res.Seqs[j])
				}
				b.WriteByte('\n')
				mu.Lock()
				os.Stdout.WriteString(b.String()) // one write(2) per line
				mu.Unlock()
			}
		}()
	}
	select {}
}

type crashAck struct {
	id        uint64
	from      string
	cmid      string
	inboxSeqs map[string]uint64
}

func parseAck(line string) (crashAck, error) {
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "ACK" {
		return crashAck{}, fmt.Errorf("bad line %q", line)
	}
	id, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return crashAck{}, err
	}
	a := crashAck{id: id, from: f[2], cmid: f[3], inboxSeqs: map[string]uint64{}}
	for _, kv := range f[4:] {
		in, seq, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(seq, 10, 64)
		if !ok || err != nil {
			return crashAck{}, fmt.Errorf("bad inbox %q in %q", kv, line)
		}
		a.inboxSeqs[in] = n
	}
	return a, nil
}

// TestCrashSafety SIGKILLs a process that is appending (three times, on the
// same file) and checks that every acknowledged append survived with its
// seq, and that inboxes have no gaps or duplicates. This exercises bbolt's
// atomic commit and the ack-after-commit rule; a process kill keeps the page
// cache, so it cannot exercise fsync itself (that needs power-loss
// simulation, e.g. dm-log-writes or LazyFS).
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	path := filepath.Join(t.TempDir(), "imgn.db")
	var acks []crashAck
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+path, fmt.Sprintf("%s_ROUND=%d", crashEnv, round))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAt := 300 + 150*round // acks seen before the kill
		seen := 0
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "ACK ") {
				if strings.HasPrefix(line, "ERR") {
					t.Errorf("child: %s", line)
				}
				continue
			}
			a, err := parseAck(line)
			if err != nil {
				t.Fatal(err)
			}
			acks = append(acks, a)
			if seen++; seen == killAt {
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
			}
		}
		err = cmd.Wait()
		if seen < killAt {
			t.Fatalf("round %d: child exited after %d acks (%v): %s", round, seen, err, stderr.String())
		}
		t.Logf("round %d: killed after %d acks (%d more already written to the pipe): %v", round, killAt, seen-killAt, err)
	}

	s := openAt(t, path, boltstore.Options{})
	defer s.Close()
	ctx := t.Context()
	inboxes := map[string]map[uint64]uint64{} // inbox -> seq -> id, from acks
	for _, a := range acks {
		m, err := s.Lookup(ctx, a.from, a.cmid)
		if err != nil || m.ID != a.id {
			t.Fatalf("acked message %d (%s/%s) lost: %+v, %v", a.id, a.from, a.cmid, m, err)
		}
		for in, seq := range a.inboxSeqs {
			if inboxes[in] == nil {
				inboxes[in] = map[uint64]uint64{}
			}
			if prev, dup := inboxes[in][seq]; dup {
				t.Fatalf("inbox %s: seq %d acked for %d and %d", in, seq, prev, a.id)
			}
			inboxes[in][seq] = a.id
		}
	}
	for in, want := range inboxes {
		last, err := s.LastSeq(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		es, err := s.ReadInbox(ctx, in, 0, int(last)+1)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(es)) != last {
			t.Fatalf("inbox %s: %d entries, LastSeq %d", in, len(es), last)
		}
		ids := map[uint64]bool{}
		for i, e := range es {
			if e.Seq != uint64(i+1) {
				t.Fatalf("inbox %s: entry %d has seq %d (gap)", in, i, e.Seq)
			}
			if ids[e.Msg.ID] {
				t.Fatalf("inbox %s: message %d twice", in, e.Msg.ID)
			}
			ids[e.Msg.ID] = true
		}
		for seq, id := range want {
			if seq > last || es[seq-1].Msg.ID != id {
				t.Fatalf("inbox %s: acked message %d at seq %d is missing", in, id, seq)
			}
		}
	}
	last, _ := s.LastSeq(ctx, "shared")
	t.Logf("%d acked appends verified across %d inboxes; shared inbox: %d acked, %d stored", len(acks), len(inboxes), len(inboxes["shared"]), last)
}

// BenchmarkStore runs the shared benchmarks with real fsync and with NoSync
// (the CPU cost of the store alone), and reports the average group-commit
// batch size as writes/commit.
func BenchmarkStore(b *testing.B) {
	for _, c := range []struct {
		name string
		opts boltstore.Options
	}{
		{"fsync", boltstore.Options{}},
		{"nosync", boltstore.Options{NoSync: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			storetest.Bench(b, func(b *testing.B) persist.Store {
				s := openAt(b, filepath.Join(b.TempDir(), "imgn.db"), c.opts)
				b.Cleanup(func() { // after Bench closed s, before the result is read
					if st := s.Stats(); st.Commits > 0 {
						b.ReportMetric(float64(st.Writes)/float64(st.Commits), "writes/commit")
					}
				})
				return s
			})
		})
	}
}
