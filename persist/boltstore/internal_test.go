package boltstore

import (
	"bytes"
	"context"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/imgn/imgn/persist"
)

// gatedStore opens a store whose first commit blocks until release is
// called, so a test can line up requests in the queue and have them
// committed as one batch. batches records every batch size.
type gatedStore struct {
	*Store
	gate    chan struct{}
	mu      sync.Mutex
	batches []int
}

func openGated(t *testing.T) *gatedStore {
	t.Helper()
	g := &gatedStore{gate: make(chan struct{})}
	first := true
	s, err := Open(Options{Path: filepath.Join(t.TempDir(), "imgn.db"), beforeCommit: func(n int) {
		g.mu.Lock()
		g.batches = append(g.batches, n)
		g.mu.Unlock()
		if first { // only the committer goroutine touches first
			first = false
			<-g.gate
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	g.Store = s
	t.Cleanup(func() { s.Close() })
	// A first write occupies the committer at the gate; Cleanup's Close
	// waits for it.
	go s.SetCursor(context.Background(), "gate", "d", 1)
	g.waitQueued(t, 0)
	return g
}

func (g *gatedStore) release() { close(g.gate) }

// async runs fn on a new goroutine and waits until its request is queued
// behind the gate, so the queue order is the call order. The returned
// channel yields fn's error.
func (g *gatedStore) async(t *testing.T, fn func() error) <-chan error {
	t.Helper()
	before := len(g.queue)
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	g.waitQueued(t, before+1)
	return ch
}

// waitQueued polls until the queue holds n requests; for n == 0 it waits
// for the committer to reach the gate.
func (g *gatedStore) waitQueued(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.mu.Lock()
		atGate := len(g.batches) > 0
		g.mu.Unlock()
		if (n == 0 && atGate) || (n > 0 && len(g.queue) >= n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue length %d, want %d", len(g.queue), n)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestGroupCommitBatches(t *testing.T) {
	g := openGated(t)
	const n = 500
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			m := persist.Message{ID: uint64(i + 1), From: "a", ClientMsgID: strconv.Itoa(i), Body: []byte("x")}
			if _, err := g.Append(t.Context(), m, []string{"all"}); err != nil {
				t.Error(err)
			}
		})
	}
	g.waitQueued(t, n)
	g.release()
	wg.Wait()
	st := g.Stats()
	if st.Writes != n+1 || st.Commits != 2 {
		t.Fatalf("stats %+v: want %d writes in 2 commits (the gate, then one batch)", st, n+1)
	}
	if !slices.Equal(g.batches, []int{1, n}) {
		t.Fatalf("batches %v, want [1 %d]", g.batches, n)
	}
	if last, _ := g.LastSeq(t.Context(), "all"); last != n {
		t.Fatalf("LastSeq = %d, want %d", last, n)
	}
}

func TestMaxBatchSplits(t *testing.T) {
	// MaxBatch is honoured: 10 queued writes with MaxBatch 4 take 3 commits.
	gate := make(chan struct{})
	var mu sync.Mutex
	var batches []int
	first := true
	s, err := Open(Options{Path: filepath.Join(t.TempDir(), "imgn.db"), MaxBatch: 4, beforeCommit: func(n int) {
		mu.Lock()
		batches = append(batches, n)
		mu.Unlock()
		if first {
			first = false
			<-gate
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	wg.Go(func() { s.SetCursor(t.Context(), "u", "d", 1) })
	for {
		mu.Lock()
		started := len(batches) > 0
		mu.Unlock()
		if started {
			break
		}
		time.Sleep(100 * time.Microsecond)
	}
	for i := range 10 {
		wg.Go(func() { s.SetCursor(t.Context(), "u", "d", uint64(i+2)) })
	}
	for len(s.queue) < 10 {
		time.Sleep(100 * time.Microsecond)
	}
	close(gate)
	wg.Wait()
	if !slices.Equal(batches, []int{1, 4, 4, 2}) {
		t.Fatalf("batches %v, want [1 4 4 2]", batches)
	}
	if c, _ := s.Cursor(t.Context(), "u", "d"); c != 11 {
		t.Fatalf("cursor %d, want 11", c)
	}
}

// TestBatchIsolation: requests committed in one transaction see each other
// as if serialised, and a failing request fails alone.
func TestBatchIsolation(t *testing.T) {
	g := openGated(t)
	ctx := context.Background()
	m1 := persist.Message{ID: 1, From: "a", ClientMsgID: "c1", Body: []byte("one")}
	m1retry := m1
	m1retry.ID, m1retry.Body = 2, []byte("retry")
	clash := persist.Message{ID: 1, From: "b", ClientMsgID: "c3"}
	m4 := persist.Message{ID: 4, From: "a", ClientMsgID: "c4"}

	type appendOut struct {
		res persist.AppendResult
		err error
	}
	appendAsync := func(m persist.Message, inboxes ...string) <-chan appendOut {
		out := make(chan appendOut, 1)
		g.async(t, func() error {
			res, err := g.Append(ctx, m, inboxes)
			out <- appendOut{res, err}
			return err
		})
		return out
	}
	r1 := appendAsync(m1, "x")
	r2 := appendAsync(m1retry, "x", "y")
	r3 := appendAsync(clash, "x")
	u1 := g.async(t, func() error { return g.CreateUser(ctx, persist.User{ID: "u"}) })
	u2 := g.async(t, func() error { return g.CreateUser(ctx, persist.User{ID: "u", PasswordHash: "second"}) })
	r4 := appendAsync(m4, "x")
	gm := g.async(t, func() error { return g.AddMember(ctx, "nogroup", "u", 0) })
	g.release()

	if o := <-r1; o.err != nil || o.res.Duplicate || !slices.Equal(o.res.Seqs, []uint64{1}) {
		t.Errorf("first append: %+v", o)
	}
	if o := <-r2; o.err != nil || !o.res.Duplicate || o.res.Msg.ID != 1 || string(o.res.Msg.Body) != "one" ||
		!slices.Equal(o.res.Seqs, []uint64{1, 1}) {
		t.Errorf("retry in the same batch: %+v, want Duplicate of message 1 with seqs [1 1]", o)
	}
	if o := <-r3; !errors.Is(o.err, persist.ErrInvalid) {
		t.Errorf("id clash in the same batch: err %v, want ErrInvalid", o.err)
	}
	if err := <-u1; err != nil {
		t.Errorf("CreateUser: %v", err)
	}
	if err := <-u2; !errors.Is(err, persist.ErrUserExists) {
		t.Errorf("second CreateUser in the same batch: %v, want ErrUserExists", err)
	}
	if o := <-r4; o.err != nil || !slices.Equal(o.res.Seqs, []uint64{2}) {
		t.Errorf("append after failures in the batch: %+v, want seq 2", o)
	}
	if err := <-gm; !errors.Is(err, persist.ErrNotFound) {
		t.Errorf("AddMember to a missing group: %v", err)
	}
	if !slices.Equal(g.batches, []int{1, 7}) {
		t.Fatalf("batches %v, want [1 7]: the requests were not committed together", g.batches)
	}
	if u, err := g.GetUser(ctx, "u"); err != nil || u.PasswordHash != "" {
		t.Fatalf("GetUser = %+v, %v; the first CreateUser must win", u, err)
	}
}

// TestPoisonedRequestIsolated: a request that fails after writing rolls the
// transaction back; it alone fails, the rest of its batch is committed.
func TestPoisonedRequestIsolated(t *testing.T) {
	g := openGated(t)
	ctx := context.Background()
	a := g.async(t, func() error {
		_, err := g.Append(ctx, persist.Message{ID: 1, From: "a", ClientMsgID: "1"}, []string{"x"})
		return err
	})
	boom := errors.New("boom")
	p := g.async(t, func() error {
		return g.write(ctx, &request{apply: func(b *buckets) error {
			if err := b.users.Put([]byte("half-written"), []byte{recordV1, 0, 0}); err != nil {
				return err
			}
			return abortError{boom}
		}})
	})
	c := g.async(t, func() error {
		_, err := g.Append(ctx, persist.Message{ID: 2, From: "a", ClientMsgID: "2"}, []string{"x"})
		return err
	})
	g.release()
	if err := <-a; err != nil {
		t.Fatal(err)
	}
	if err := <-p; !errors.Is(err, persist.ErrUnavailable) || !errors.Is(err, boom) {
		t.Fatalf("poisoned request: %v, want ErrUnavailable wrapping boom", err)
	}
	if err := <-c; err != nil {
		t.Fatal(err)
	}
	if _, err := g.GetUser(ctx, "half-written"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("the poisoned request's write survived: %v", err)
	}
	es, err := g.ReadInbox(ctx, "x", 0, 10)
	if err != nil || len(es) != 2 || es[0].Msg.ID != 1 || es[1].Msg.ID != 2 {
		t.Fatalf("inbox = %+v, %v; want messages 1, 2", es, err)
	}
	if st := g.Stats(); st.Commits != 2 || st.Writes != 3 {
		t.Fatalf("stats %+v: want 2 commits carrying 3 writes", st)
	}
}

// TestQueuedWriteAbandoned: a request whose context ends while it waits in
// the queue is skipped by the committer.
func TestQueuedWriteAbandoned(t *testing.T) {
	g := openGated(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch := g.async(t, func() error {
		_, err := g.Append(ctx, persist.Message{ID: 1, From: "a", ClientMsgID: "1"}, []string{"x"})
		return err
	})
	cancel()
	if err := <-ch; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	g.release()
	// A later write is committed after the skipped one.
	if _, err := g.Append(context.Background(), persist.Message{ID: 2, From: "a", ClientMsgID: "2"}, []string{"x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Lookup(context.Background(), "a", "1"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("abandoned append was stored: %v", err)
	}
}

func TestEncodingRoundTrip(t *testing.T) {
	msgs := []persist.Message{
		{ID: 1},
		{ID: 2, From: "a", To: "b", Group: true, ClientMsgID: "c", Timestamp: -5, Kind: math.MaxUint32, Body: []byte{0, 1}},
		{ID: math.MaxUint64, From: "\x00", To: string(make([]byte, 300)), ClientMsgID: "x", Timestamp: math.MinInt64, Body: make([]byte, 70000)},
	}
	for _, m := range msgs {
		got, err := decodeMessage(m.ID, encodeMessage(&m))
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != m.ID || got.From != m.From || got.To != m.To || got.Group != m.Group || got.ClientMsgID != m.ClientMsgID ||
			got.Timestamp != m.Timestamp || got.Kind != m.Kind || !bytes.Equal(got.Body, m.Body) {
			t.Fatalf("round trip: got %+v, want %+v", got, m)
		}
	}
	rec := encodeMessage(&msgs[1])
	for n := range len(rec) - len(msgs[1].Body) {
		if _, err := decodeMessage(1, rec[:n]); !errors.Is(err, errCorrupt) {
			t.Fatalf("truncated header (%d bytes): err %v, want errCorrupt", n, err)
		}
	}
	u := persist.User{ID: "u", PasswordHash: "$argon2id$", Created: 77}
	if got, err := decodeUser("u", encodeUser(&u)); err != nil || got != u {
		t.Fatalf("user round trip: %+v, %v", got, err)
	}
	gr := groupRecord{name: "n", owner: "o", created: -1, count: 1 << 40}
	if got, err := decodeGroup("g", encodeGroup(&gr)); err != nil || got != gr {
		t.Fatalf("group round trip: %+v, %v", got, err)
	}
	if _, err := decodeUser("u", append(encodeUser(&u), 0)); !errors.Is(err, errCorrupt) {
		t.Fatalf("trailing bytes accepted: %v", err)
	}
}

// FuzzDecodeMessage: decoding arbitrary bytes never panics, and whatever
// decodes re-encodes to the same record.
func FuzzDecodeMessage(f *testing.F) {
	f.Add(encodeMessage(&persist.Message{ID: 1, From: "a", To: "b", ClientMsgID: "c", Body: []byte("hi")}))
	f.Add([]byte{recordV1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, rec []byte) {
		m, err := decodeMessage(7, rec)
		if err != nil {
			return
		}
		again, err := decodeMessage(7, encodeMessage(&m))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if again.From != m.From || again.To != m.To || again.ClientMsgID != m.ClientMsgID || again.Timestamp != m.Timestamp ||
			again.Kind != m.Kind || again.Group != m.Group || !bytes.Equal(again.Body, m.Body) {
			t.Fatalf("unstable: %+v vs %+v", m, again)
		}
	})
}

// TestCorruptRecordIsUnavailable: a record that does not decode is reported
// as ErrUnavailable (never a panic, never a wrong answer), on reads and on a
// write that needs it, and does not fail other writes.
func TestCorruptRecordIsUnavailable(t *testing.T) {
	s, err := Open(Options{Path: filepath.Join(t.TempDir(), "imgn.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Append(ctx, persist.Message{ID: 1, From: "a", ClientMsgID: "1", Body: []byte("x")}, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, persist.User{ID: "bob"}); err != nil {
		t.Fatal(err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketMsgs).Put(be64(1), []byte{recordV1, 0xff}); err != nil {
			return err
		}
		return tx.Bucket(bucketUsers).Put([]byte("bob"), []byte{9})
	})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name string
		err  error
	}{
		{"Lookup", second(s.Lookup(ctx, "a", "1"))},
		{"ReadInbox", second(s.ReadInbox(ctx, "u", 0, 10))},
		{"Append duplicate", second(s.Append(ctx, persist.Message{ID: 5, From: "a", ClientMsgID: "1"}, []string{"v"}))},
		{"GetUser", second(s.GetUser(ctx, "bob"))},
	}
	for _, c := range checks {
		if !errors.Is(c.err, persist.ErrUnavailable) || !errors.Is(c.err, errCorrupt) {
			t.Errorf("%s on a corrupt record: %v, want ErrUnavailable wrapping errCorrupt", c.name, c.err)
		}
	}
	if _, err := s.Append(ctx, persist.Message{ID: 2, From: "a", ClientMsgID: "2"}, []string{"u"}); err != nil {
		t.Fatalf("unrelated append: %v", err)
	}
}

func second[T any](_ T, err error) error { return err }
