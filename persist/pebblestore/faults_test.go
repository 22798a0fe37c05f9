package pebblestore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
)

// gateFS makes syncs of write-ahead log files wait while it is armed.
type gateFS struct {
	vfs.FS
	mu      sync.Mutex
	gate    chan struct{} // non-nil: armed
	entered chan struct{} // gets a token when a sync starts waiting
}

func newGateFS() *gateFS { return &gateFS{FS: vfs.Default, entered: make(chan struct{}, 1)} }

func (g *gateFS) arm() {
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
}

// release lets blocked syncs go on and disarms the gate; it does nothing
// when the gate is not armed, so a test can also defer it, and a failure
// while armed ends the test instead of leaving Close waiting for the sync.
func (g *gateFS) release() {
	g.mu.Lock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
	g.mu.Unlock()
}

// waitEntered waits until a WAL sync is blocked at the gate.
func (g *gateFS) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-g.entered:
	case <-t.Context().Done():
		t.Fatal("no WAL sync reached the gate")
	}
}

func (g *gateFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return &gateFile{File: f, g: g}, nil
}

func (g *gateFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := g.FS.Create(name, c)
	return g.wrap(name, f, err)
}

func (g *gateFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := g.FS.ReuseForWrite(oldname, newname, c)
	return g.wrap(newname, f, err)
}

func (g *gateFS) Unwrap() vfs.FS { return g.FS }

type gateFile struct {
	vfs.File
	g *gateFS
}

func (f *gateFile) wait() {
	f.g.mu.Lock()
	gate := f.g.gate
	f.g.mu.Unlock()
	if gate != nil {
		select {
		case f.g.entered <- struct{}{}:
		default:
		}
		<-gate
	}
}

func (f *gateFile) Sync() error     { f.wait(); return f.File.Sync() }
func (f *gateFile) SyncData() error { f.wait(); return f.File.SyncData() }

// notifyOp is an AppendOp that closes done when complete.
type notifyOp struct {
	persist.AppendOp
	done chan struct{}
}

func newNotifyOp(m persist.Message, inboxes ...string) *notifyOp {
	o := &notifyOp{done: make(chan struct{})}
	o.AppendOp = persist.AppendOp{Msg: m, Inboxes: inboxes, Done: o}
	return o
}

func (o *notifyOp) AppendDone(*persist.AppendOp) { close(o.done) }

func completed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// openGatedWarm opens a store on a gateFS (released and closed at the end
// of the test) holding one message, ID 1 at seq 1 of inbox "u".
func openGatedWarm(t *testing.T) (*pebblestore.Store, *gateFS) {
	t.Helper()
	g := newGateFS()
	s := openAt(t, t.TempDir(), pebblestore.Options{FS: g})
	t.Cleanup(func() {
		g.release()
		s.Close()
	})
	if _, err := s.Append(t.Context(), persist.Message{ID: 1, From: "a", ClientMsgID: "warm"}, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	return s, g
}

// TestBlockedFsyncCompletesNothing: while the WAL sync of a batch blocks, no
// op of it (or queued behind it) completes, no other write returns, and
// readers do not see the batch; once the sync returns, all of it does.
func TestBlockedFsyncCompletesNothing(t *testing.T) {
	s, g := openGatedWarm(t)
	ctx := t.Context()
	g.arm()
	first := newNotifyOp(persist.Message{ID: 2, From: "a", ClientMsgID: "blocked", Body: []byte("x")}, "u", "v")
	s.AppendAsync(&first.AppendOp)
	g.waitEntered(t)
	var queued []*notifyOp
	for i := range 50 {
		o := newNotifyOp(persist.Message{ID: uint64(10 + i), From: "b", ClientMsgID: fmt.Sprint(i)}, "u")
		s.AppendAsync(&o.AppendOp)
		queued = append(queued, o)
	}
	userErr := make(chan error, 1)
	go func() { userErr <- s.CreateUser(ctx, persist.User{ID: "carol"}) }()

	time.Sleep(100 * time.Millisecond) // a window for a premature completion to show
	if completed(first.done) {
		t.Fatal("an append completed while its fsync was blocked")
	}
	for i, o := range queued {
		if completed(o.done) {
			t.Fatalf("queued append %d completed while an fsync was blocked", i)
		}
	}
	select {
	case err := <-userErr:
		t.Fatalf("CreateUser returned (%v) while an fsync was blocked", err)
	default:
	}
	if last, err := s.LastSeq(ctx, "u"); err != nil || last != 1 {
		t.Fatalf("LastSeq while the batch syncs = %d, %v; want 1 (unsynced data is invisible)", last, err)
	}
	if _, err := s.Lookup(ctx, "a", "blocked"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Lookup of an unsynced message: %v, want ErrNotFound", err)
	}
	if es, err := s.ReadInbox(ctx, "v", 0, 10); err != nil || len(es) != 0 {
		t.Fatalf("ReadInbox of an unsynced entry = %v, %v; want nothing", es, err)
	}

	g.release()
	<-first.done
	if first.Err != nil || !slices.Equal(first.Result.Seqs, []uint64{2, 1}) {
		t.Fatalf("blocked append: %+v, %v", first.Result, first.Err)
	}
	for i, o := range queued {
		<-o.done
		if o.Err != nil || o.Result.Seqs[0] != uint64(3+i) {
			t.Fatalf("queued append %d: seqs %v, %v; want %d", i, o.Result.Seqs, o.Err, 3+i)
		}
	}
	if err := <-userErr; err != nil {
		t.Fatal(err)
	}
	if last, _ := s.LastSeq(ctx, "u"); last != 52 {
		t.Fatalf("LastSeq = %d after the release, want 52", last)
	}
}

// TestBlockedFsyncSendsNoAck runs the engine on the store: while the WAL
// sync of a SEND blocks, the sender gets no SEND_ACK and the recipient sees
// nothing of the message, although the node keeps serving (the recipient's
// SYNC is answered); after the sync both see it.
func TestBlockedFsyncSendsNoAck(t *testing.T) {
	g := newGateFS()
	store := openAt(t, t.TempDir(), pebblestore.Options{FS: g})
	secret := []byte("fsync-test-secret")
	srv, err := engine.New(engine.Config{Addr: "127.0.0.1:0", Store: store, JWTSecret: secret,
		EventLoops: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer func() {
		g.release()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := store.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	ctx := t.Context()
	dial := func(user string) *client.Client {
		tok, err := auth.MintToken(secret, user, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.Dial(ctx, client.Config{Addr: srv.Addr().String(), Token: tok, Device: "d"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	alice, bob := dial("alice"), dial("bob")
	if _, err := alice.Send(ctx, "bob", []byte("before")); err != nil {
		t.Fatal(err)
	}
	if m := <-bob.Messages(); string(m.Body) != "before" {
		t.Fatalf("bob got %q", m.Body)
	}
	// Bob acknowledges "before" within the client's AckInterval, and the
	// server stores that cursor through the committer: let it land first,
	// or it would wait behind the blocked sync, and bob's SYNC behind it.
	testutil.Until(t, 10*time.Second, "bob's cursor stored", func() bool {
		cur, err := store.Cursor(ctx, "bob", "d")
		return err == nil && cur >= 1
	})

	g.arm()
	type sent struct {
		seq uint64
		err error
	}
	acked := make(chan sent, 1)
	go func() {
		ack, err := alice.Send(ctx, "bob", []byte("during"))
		if err != nil {
			acked <- sent{err: err}
			return
		}
		acked <- sent{seq: ack.Seq}
	}()
	g.waitEntered(t)
	if err := bob.SyncNow(ctx); err != nil { // the node serves reads meanwhile
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // a window for a premature ack to show
	select {
	case a := <-acked:
		t.Fatalf("SEND returned (seq %d, %v) while its fsync was blocked", a.seq, a.err)
	case m := <-bob.Messages():
		t.Fatalf("bob received %q while its fsync was blocked", m.Body)
	default:
	}

	g.release()
	a := <-acked
	if a.err != nil || a.seq != 2 {
		t.Fatalf("SEND after the release: seq %d, %v; want seq 2", a.seq, a.err)
	}
	if m := <-bob.Messages(); string(m.Body) != "during" || m.Seq != 2 {
		t.Fatalf("bob got %q at seq %d, want \"during\" at 2", m.Body, m.Seq)
	}
}

// walFile returns the newest write-ahead log in dir.
func walFile(t *testing.T, dir string) string {
	t.Helper()
	logs, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil || len(logs) == 0 {
		t.Fatalf("no WAL in %s: %v", dir, err)
	}
	slices.Sort(logs)
	return logs[len(logs)-1]
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		dst, err := os.Create(filepath.Join(to, d.Name()))
		if err != nil {
			return err
		}
		if _, err := io.Copy(dst, src); err != nil {
			dst.Close()
			return err
		}
		return dst.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTornWALTail cuts the write-ahead log inside its last records, and
// garbles bits of the record being written, as a crash in the middle of a
// write leaves it: the store opens, its inbox is a gap-free prefix, and
// every append whose record was complete before the cut (acknowledged,
// since an ack follows the sync) is there. Damage to a record that later
// synced records follow is not a torn write: Open refuses the store rather
// than drop acknowledged messages.
func TestTornWALTail(t *testing.T) {
	const n = 150 // about 45 KiB of WAL: more than one 32 KiB block
	image := t.TempDir()
	ends := make([]int64, n+1) // ends[i]: WAL size once append i was acked
	{
		s := openAt(t, t.TempDir(), pebblestore.Options{})
		dir := s.Dir()
		wal := walFile(t, dir)
		for i := 1; i <= n; i++ {
			m := persist.Message{ID: uint64(i), From: "a", ClientMsgID: fmt.Sprint(i), Body: []byte(strings.Repeat("b", 200+i%50))}
			if _, err := s.Append(t.Context(), m, []string{"u"}); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(wal)
			if err != nil {
				t.Fatal(err)
			}
			ends[i] = st.Size()
		}
		if now := walFile(t, dir); now != wal {
			t.Fatalf("the WAL rotated (%s to %s): the offsets do not describe one file", wal, now)
		}
		if ends[n] <= 32<<10 {
			t.Fatalf("WAL of %d bytes: want more than one 32 KiB block", ends[n])
		}
		copyDir(t, dir, image) // the store is idle: this is what a crash leaves
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	wal := filepath.Base(walFile(t, image))
	mutated := func(t *testing.T, mutate func(path string)) string {
		dir := t.TempDir()
		copyDir(t, image, dir)
		mutate(filepath.Join(dir, wal))
		return dir
	}
	flip := func(t *testing.T, path string, at int64) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, at); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x5a
		if _, err := f.WriteAt(b, at); err != nil {
			t.Fatal(err)
		}
	}
	check := func(t *testing.T, mutate func(path string)) int {
		dir := mutated(t, mutate)
		s, err := pebblestore.Open(pebblestore.Options{Dir: dir})
		if err != nil {
			t.Fatalf("Open after a torn tail: %v", err)
		}
		defer s.Close()
		es, err := s.ReadInbox(t.Context(), "u", 0, n+1)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range es {
			if e.Seq != uint64(i+1) || e.Msg.ID != e.Seq || len(e.Msg.Body) != 200+int(e.Seq)%50 {
				t.Fatalf("entry %d: seq %d message %d body %d bytes: not the gap-free prefix", i, e.Seq, e.Msg.ID, len(e.Msg.Body))
			}
		}
		if last, _ := s.LastSeq(t.Context(), "u"); last != uint64(len(es)) {
			t.Fatalf("LastSeq %d with %d entries", last, len(es))
		}
		// The store takes new writes after the recovery, without a gap.
		if r, err := s.Append(t.Context(), persist.Message{ID: 1000, From: "a", ClientMsgID: "after"}, []string{"u"}); err != nil || r.Seqs[0] != uint64(len(es)+1) {
			t.Fatalf("append after recovery: %+v, %v; want seq %d", r, err, len(es)+1)
		}
		return len(es)
	}
	synced := func(cut int64) int { // appends whose record ends at or before cut
		k := 0
		for i := 1; i <= n; i++ {
			if ends[i] <= cut {
				k = i
			}
		}
		return k
	}
	step := max(1, (ends[n]-ends[n-5])/24) // about 25 cuts over the last 5 records
	for cut := ends[n-5]; cut <= ends[n]; cut += step {
		t.Run(fmt.Sprintf("truncate@%d", cut), func(t *testing.T) {
			kept := check(t, func(p string) {
				if err := os.Truncate(p, cut); err != nil {
					t.Fatal(err)
				}
			})
			if want := synced(cut); kept < want {
				t.Fatalf("cut at %d: %d appends kept, %d were complete before the cut", cut, kept, want)
			}
		})
	}
	// The record being written is garbled: its bits flipped, at the tail.
	for i := n - 1; i <= n; i++ {
		for _, at := range []int64{ends[i-1], ends[i-1] + 3, (ends[i-1] + ends[i]) / 2, ends[i] - 1} {
			t.Run(fmt.Sprintf("flip%d@%d", i, at), func(t *testing.T) {
				kept := check(t, func(p string) {
					if err := os.Truncate(p, ends[i]); err != nil {
						t.Fatal(err)
					}
					flip(t, p, at)
				})
				if kept != i-1 {
					t.Fatalf("garbled record %d: %d appends kept, want the %d before it", i, kept, i-1)
				}
			})
		}
	}
	for _, i := range []int{10, n / 2} {
		t.Run(fmt.Sprintf("damaged-synced-record-%d", i), func(t *testing.T) {
			dir := mutated(t, func(p string) { flip(t, p, (ends[i-1]+ends[i])/2) })
			s, err := pebblestore.Open(pebblestore.Options{Dir: dir})
			if err == nil {
				last, _ := s.LastSeq(t.Context(), "u")
				s.Close()
				t.Fatalf("Open of a WAL damaged in record %d of %d succeeded with LastSeq %d", i, n, last)
			}
			if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "acknowledged messages would be lost") {
				t.Fatalf("Open error %q does not name the directory and what is at stake", err)
			}
		})
	}
}

// orderOp is an AppendOp that records its completion in a shared log.
type orderOp struct {
	persist.AppendOp
	log  *orderLog
	done chan struct{}
}

type orderLog struct {
	mu  sync.Mutex
	ids []uint64
}

func (l *orderLog) list() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ids)
}

func (o *orderOp) AppendDone(*persist.AppendOp) {
	o.log.mu.Lock()
	o.log.ids = append(o.log.ids, o.Msg.ID)
	o.log.mu.Unlock()
	close(o.done)
}

func (l *orderLog) async(s *pebblestore.Store, m persist.Message, inboxes ...string) *orderOp {
	o := &orderOp{log: l, done: make(chan struct{})}
	o.AppendOp = persist.AppendOp{Msg: m, Inboxes: inboxes, Done: o}
	s.AppendAsync(&o.AppendOp)
	return o
}

// TestPipelineBuildsWhileSyncing: while the WAL sync of one batch blocks,
// the committer builds and applies the next batch, but nothing of that
// batch completes and no reader sees it until the first sync returns; then
// everything completes in queue order.
func TestPipelineBuildsWhileSyncing(t *testing.T) {
	s, g := openGatedWarm(t)
	ctx := t.Context()
	var log orderLog
	g.arm()
	first := log.async(s, persist.Message{ID: 2, From: "a", ClientMsgID: "first"}, "u", "v")
	g.waitEntered(t)
	var next []*orderOp
	for i := range 20 {
		next = append(next, log.async(s, persist.Message{ID: uint64(10 + i), From: "b", ClientMsgID: fmt.Sprint(i)}, "u", "w"))
	}
	// A batch behind the first is applied (the database holds it) while
	// the first one's sync is still blocked. How many of the 20 are
	// depends on how the committer happened to batch them: at most
	// pipelineDepth batches are under way, the rest wait queued.
	testutil.Until(t, 10*time.Second, "a batch behind the blocked sync applied", func() bool {
		last, err := pebblestore.AppliedLastSeq(s, "u")
		return err == nil && last >= 3
	})
	time.Sleep(50 * time.Millisecond) // a window for a premature completion to show
	if n := len(log.list()); n != 0 {
		t.Fatalf("%d appends completed while the first batch's sync was blocked", n)
	}
	if last, err := s.LastSeq(ctx, "u"); err != nil || last != 1 {
		t.Fatalf("LastSeq while the batches sync = %d, %v; want 1 (unsynced data is invisible)", last, err)
	}
	if es, err := s.ReadInbox(ctx, "w", 0, 100); err != nil || len(es) != 0 {
		t.Fatalf("ReadInbox of the second batch's inbox = %d entries, %v; want none", len(es), err)
	}
	if _, err := s.Lookup(ctx, "b", "0"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Lookup of an unsynced message: %v, want ErrNotFound", err)
	}

	g.release()
	<-first.done
	want := []uint64{2}
	for i, o := range next {
		<-o.done
		if o.Err != nil || !slices.Equal(o.Result.Seqs, []uint64{uint64(3 + i), uint64(1 + i)}) {
			t.Fatalf("append %d of the second batch: seqs %v, %v; want [%d %d]", i, o.Result.Seqs, o.Err, 3+i, 1+i)
		}
		want = append(want, o.Msg.ID)
	}
	if first.Err != nil || !slices.Equal(first.Result.Seqs, []uint64{2, 1}) {
		t.Fatalf("first append: seqs %v, %v", first.Result.Seqs, first.Err)
	}
	if got := log.list(); !slices.Equal(got, want) {
		t.Fatalf("completion order %v, want the queue order %v", got, want)
	}
	if last, _ := s.LastSeq(ctx, "w"); last != 20 {
		t.Fatalf("LastSeq(w) = %d after the release, want 20", last)
	}
}

// TestPipelineCloseCompletesInFlight: Close while one batch's WAL sync
// blocks and batches applied behind it wait: Close returns only after the
// sync, every append completes successfully in queue order, none is
// dropped, and all of them are there after a reopen.
func TestPipelineCloseCompletesInFlight(t *testing.T) {
	s, g := openGatedWarm(t)
	ctx := t.Context()
	var log orderLog
	g.arm()
	ops := []*orderOp{log.async(s, persist.Message{ID: 2, From: "a", ClientMsgID: "first"}, "u")}
	g.waitEntered(t)
	for i := range 20 {
		ops = append(ops, log.async(s, persist.Message{ID: uint64(10 + i), From: "b", ClientMsgID: fmt.Sprint(i)}, "u"))
	}
	// At least one batch behind the blocked sync is applied (how many of
	// the 20 are depends on how the committer happened to batch them: at
	// most pipelineDepth batches are under way, the rest wait queued, and
	// Close must complete both kinds).
	testutil.Until(t, 10*time.Second, "a batch behind the blocked sync applied", func() bool {
		last, err := pebblestore.AppliedLastSeq(s, "u")
		return err == nil && last >= 3
	})
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	testutil.Until(t, 10*time.Second, "Close refusing new work", func() bool {
		_, err := s.LastSeq(ctx, "u")
		return errors.Is(err, persist.ErrClosed)
	})
	// The sync is still blocked: nothing can have completed.
	if n := len(log.list()); n != 0 {
		t.Fatalf("%d appends completed during Close while their sync was blocked", n)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a sync was blocked", err)
	default:
	}
	g.release()
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	var want []uint64
	for i, o := range ops {
		select {
		case <-o.done:
		default:
			t.Fatalf("append %d not completed when Close returned", o.Msg.ID)
		}
		if o.Err != nil || !slices.Equal(o.Result.Seqs, []uint64{uint64(2 + i)}) {
			t.Fatalf("append %d: seqs %v, %v; want [%d]", o.Msg.ID, o.Result.Seqs, o.Err, 2+i)
		}
		want = append(want, o.Msg.ID)
	}
	if got := log.list(); !slices.Equal(got, want) {
		t.Fatalf("completion order %v, want the queue order %v", got, want)
	}
	s = openAt(t, s.Dir(), pebblestore.Options{})
	defer s.Close()
	es, err := s.ReadInbox(ctx, "u", 0, 100)
	if err != nil || len(es) != 22 {
		t.Fatalf("after reopen: %d entries, %v; want 22", len(es), err)
	}
}
