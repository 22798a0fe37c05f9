package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

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

func openGated(t *testing.T, opts Options) *gatedStore {
	t.Helper()
	g := &gatedStore{gate: make(chan struct{})}
	first := true
	opts.Dir = t.TempDir()
	opts.beforeCommit = func(n int) {
		g.mu.Lock()
		g.batches = append(g.batches, n)
		g.mu.Unlock()
		if first { // only the committer goroutine touches first
			first = false
			<-g.gate
		}
	}
	s, err := Open(opts)
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

func (g *gatedStore) sizes() []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.batches)
}

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
	for {
		atGate := len(g.sizes()) > 0
		if (n == 0 && atGate) || (n > 0 && len(g.queue) >= n) {
			return
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("queue length %d, want %d", len(g.queue), n)
		case <-time.After(100 * time.Microsecond):
		}
	}
}

// chanOp is an AppendOp whose completion is sent on a channel.
type chanOp struct {
	persist.AppendOp
	done chan *chanOp
}

func (o *chanOp) AppendDone(*persist.AppendOp) { o.done <- o }

func (g *gatedStore) appendAsync(m persist.Message, done chan *chanOp, inboxes ...string) *chanOp {
	o := &chanOp{done: done}
	o.AppendOp = persist.AppendOp{Msg: m, Inboxes: inboxes, Done: o}
	g.AppendAsync(&o.AppendOp)
	return o
}

func TestGroupCommitBatches(t *testing.T) {
	g := openGated(t, Options{})
	const n = 500
	done := make(chan *chanOp, n)
	for i := range n {
		g.appendAsync(persist.Message{ID: uint64(i + 1), From: "a", ClientMsgID: strconv.Itoa(i), Body: []byte("x")}, done, "all", "u"+strconv.Itoa(i%7))
	}
	g.release()
	for i := range n {
		o := <-done
		if o.Err != nil || o.Msg.ID != uint64(i+1) || o.Result.Seqs[0] != uint64(i+1) {
			t.Fatalf("completion %d: message %d seqs %v, %v; want message %d at seq %d (queue order)", i, o.Msg.ID, o.Result.Seqs, o.Err, i+1, i+1)
		}
	}
	if b := g.sizes(); !slices.Equal(b, []int{1, n}) {
		t.Fatalf("batches %v, want [1 %d]", b, n)
	}
	if st := g.StoreStats(); st.Commits != 2 || st.Writes != n+1 {
		t.Fatalf("stats %+v: want %d writes in 2 commits", st, n+1)
	}
	if last, _ := g.LastSeq(t.Context(), "all"); last != n {
		t.Fatalf("LastSeq = %d, want %d", last, n)
	}
}

func TestMaxBatchSplits(t *testing.T) {
	g := openGated(t, Options{MaxBatch: 4})
	var wg sync.WaitGroup
	for i := range 10 {
		ch := g.async(t, func() error { return g.SetCursor(t.Context(), "u", "d", uint64(i+2)) })
		wg.Go(func() {
			if err := <-ch; err != nil {
				t.Error(err)
			}
		})
	}
	g.release()
	wg.Wait()
	if b := g.sizes(); !slices.Equal(b, []int{1, 4, 4, 2}) {
		t.Fatalf("batches %v, want [1 4 4 2]", b)
	}
	if c, _ := g.Cursor(t.Context(), "u", "d"); c != 11 {
		t.Fatalf("cursor %d, want 11", c)
	}
}

// TestBatchIsolation: requests committed in one batch see each other as if
// serialised, and a failing request fails alone.
func TestBatchIsolation(t *testing.T) {
	g := openGated(t, Options{})
	ctx := context.Background()
	done := make(chan *chanOp, 10)
	r1 := g.appendAsync(persist.Message{ID: 1, From: "a", ClientMsgID: "c1", Body: []byte("one")}, done, "x")
	r2 := g.appendAsync(persist.Message{ID: 2, From: "a", ClientMsgID: "c1", Body: []byte("retry")}, done, "x", "y")
	r3 := g.appendAsync(persist.Message{ID: 1, From: "b", ClientMsgID: "c3"}, done, "x")
	u1 := g.async(t, func() error { return g.CreateUser(ctx, persist.User{ID: "u"}) })
	u2 := g.async(t, func() error { return g.CreateUser(ctx, persist.User{ID: "u", PasswordHash: "second"}) })
	r4 := g.appendAsync(persist.Message{ID: 4, From: "a", ClientMsgID: "c4"}, done, "x")
	gm := g.async(t, func() error { return g.AddMember(ctx, "nogroup", "u", 0) })
	cg := g.async(t, func() error { return g.CreateGroup(ctx, persist.Group{ID: "g", Members: []string{"a"}}) })
	am := g.async(t, func() error { return g.AddMember(ctx, "g", "b", 2) })
	full := g.async(t, func() error { return g.AddMember(ctx, "g", "c", 2) })
	g.release()
	for range 4 {
		<-done
	}
	if r1.Err != nil || r1.Result.Duplicate || !slices.Equal(r1.Result.Seqs, []uint64{1}) {
		t.Errorf("first append: %+v, %v", r1.Result, r1.Err)
	}
	if r2.Err != nil || !r2.Result.Duplicate || r2.Result.Msg.ID != 1 || string(r2.Result.Msg.Body) != "one" ||
		!slices.Equal(r2.Result.Seqs, []uint64{1, 1}) {
		t.Errorf("retry in the same batch: %+v, %v; want Duplicate of message 1 with seqs [1 1]", r2.Result, r2.Err)
	}
	if !errors.Is(r3.Err, persist.ErrInvalid) {
		t.Errorf("id clash in the same batch: err %v, want ErrInvalid", r3.Err)
	}
	if err := <-u1; err != nil {
		t.Errorf("CreateUser: %v", err)
	}
	if err := <-u2; !errors.Is(err, persist.ErrUserExists) {
		t.Errorf("second CreateUser in the same batch: %v, want ErrUserExists", err)
	}
	if r4.Err != nil || !slices.Equal(r4.Result.Seqs, []uint64{2}) {
		t.Errorf("append after failures in the batch: %+v, %v; want seq 2", r4.Result, r4.Err)
	}
	if err := <-gm; !errors.Is(err, persist.ErrNotFound) {
		t.Errorf("AddMember to a missing group: %v", err)
	}
	if err := <-cg; err != nil {
		t.Errorf("CreateGroup: %v", err)
	}
	if err := <-am; err != nil {
		t.Errorf("AddMember to a group created in the same batch: %v", err)
	}
	if err := <-full; !errors.Is(err, persist.ErrGroupFull) {
		t.Errorf("AddMember past the limit, counting a member added in the same batch: %v, want ErrGroupFull", err)
	}
	if b := g.sizes(); !slices.Equal(b, []int{1, 10}) {
		t.Fatalf("batches %v, want [1 10]: the requests were not committed together", b)
	}
	if u, err := g.GetUser(ctx, "u"); err != nil || u.PasswordHash != "" {
		t.Fatalf("GetUser = %+v, %v; the first CreateUser must win", u, err)
	}
	if gr, err := g.GetGroup(ctx, "g"); err != nil || !slices.Equal(gr.Members, []string{"a", "b"}) {
		t.Fatalf("GetGroup = %+v, %v; want members [a b]", gr, err)
	}
}

// TestQueuedWriteAbandoned: a write whose context ends while it waits in the
// queue is skipped by the committer.
func TestQueuedWriteAbandoned(t *testing.T) {
	g := openGated(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	ch := g.async(t, func() error { return g.CreateUser(ctx, persist.User{ID: "gone"}) })
	cancel()
	if err := <-ch; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	g.release()
	if err := g.CreateUser(context.Background(), persist.User{ID: "later"}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.GetUser(context.Background(), "gone"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("abandoned write was stored: %v", err)
	}
}

// TestQueueFull: AppendAsync never waits: past the queue's bound, ops fail at
// once with ErrUnavailable and nothing of them is stored.
func TestQueueFull(t *testing.T) {
	g := openGated(t, Options{QueueSize: 4})
	done := make(chan *chanOp, 10)
	var ops []*chanOp
	for i := range 10 {
		ops = append(ops, g.appendAsync(persist.Message{ID: uint64(i + 1), From: "a", ClientMsgID: strconv.Itoa(i)}, done, "u"))
	}
	for i, o := range ops[4:] {
		select {
		case got := <-done:
			if got != o || !errors.Is(o.Err, persist.ErrUnavailable) {
				t.Fatalf("op %d past the bound: %v, want ErrUnavailable at once", 4+i, o.Err)
			}
		default:
			t.Fatalf("op %d past the bound did not complete at once", 4+i)
		}
	}
	g.release()
	for i := range 4 {
		if o := <-done; o.Err != nil || o.Result.Seqs[0] != uint64(i+1) {
			t.Fatalf("queued op %d: %v, seqs %v", i, o.Err, o.Result.Seqs)
		}
	}
	if last, _ := g.LastSeq(t.Context(), "u"); last != 4 {
		t.Fatalf("LastSeq = %d, want 4", last)
	}
}

// TestStoreFull: below the free-space minimum writes fail with
// ErrUnavailable and say why, reads go on; writes resume once space is back.
func TestStoreFull(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), housekeepEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	if _, err := s.Append(ctx, persist.Message{ID: 1, From: "a", ClientMsgID: "1"}, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	s.opts.MinFreeBytes = math.MaxInt64 // no file system has that much free
	s.housekeep()
	if !s.StoreStats().Full {
		t.Fatal("StoreStats().Full = false below the free-space minimum")
	}
	_, err = s.Append(ctx, persist.Message{ID: 2, From: "a", ClientMsgID: "2"}, []string{"u"})
	if !errors.Is(err, persist.ErrUnavailable) || !strings.Contains(err.Error(), "store full") {
		t.Fatalf("Append on a full store: %v, want ErrUnavailable saying the store is full", err)
	}
	if err := s.CreateUser(ctx, persist.User{ID: "v"}); !errors.Is(err, persist.ErrUnavailable) {
		t.Fatalf("CreateUser on a full store: %v, want ErrUnavailable", err)
	}
	if es, err := s.ReadInbox(ctx, "u", 0, 10); err != nil || len(es) != 1 {
		t.Fatalf("ReadInbox on a full store = %d entries, %v; reads must go on", len(es), err)
	}
	s.opts.MinFreeBytes = -1
	s.housekeep()
	if r, err := s.Append(ctx, persist.Message{ID: 2, From: "a", ClientMsgID: "2"}, []string{"u"}); err != nil || r.Seqs[0] != 2 {
		t.Fatalf("Append once space is back: %+v, %v; want seq 2", r, err)
	}
}

// TestHeadCacheBound: with a head cache far smaller than the number of
// inboxes, heads are read again and seqs stay gap-free.
func TestHeadCacheBound(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), HeadCacheSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for round := uint64(1); round <= 3; round++ {
		for u := range 50 {
			in := "u" + strconv.Itoa(u)
			r, err := s.Append(t.Context(), persist.Message{ID: round*100 + uint64(u) + 1, From: "a", ClientMsgID: strconv.Itoa(int(round*100) + u)}, []string{in})
			if err != nil || r.Seqs[0] != round {
				t.Fatalf("round %d inbox %s: %+v, %v; want seq %d", round, in, r, err, round)
			}
		}
	}
}

func TestEncodingRoundTrip(t *testing.T) {
	msgs := []persist.Message{
		{ID: 1},
		{ID: 2, From: "a", To: "b", Group: true, ClientMsgID: "c", Timestamp: -5, Kind: math.MaxUint32, Body: []byte{0, 1}},
		{ID: math.MaxUint64, From: "\x00", To: string(make([]byte, 300)), ClientMsgID: "x", Timestamp: math.MinInt64, Body: make([]byte, 70000)},
	}
	for _, m := range msgs {
		got, err := decodeMessage(m.ID, appendMessage(nil, &m))
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != m.ID || got.From != m.From || got.To != m.To || got.Group != m.Group || got.ClientMsgID != m.ClientMsgID ||
			got.Timestamp != m.Timestamp || got.Kind != m.Kind || !bytes.Equal(got.Body, m.Body) {
			t.Fatalf("round trip: got %+v, want %+v", got, m)
		}
	}
	rec := appendMessage(nil, &msgs[1])
	for n := range len(rec) - len(msgs[1].Body) {
		if _, err := decodeMessage(1, rec[:n]); !errors.Is(err, errCorrupt) {
			t.Fatalf("truncated header (%d bytes): err %v, want errCorrupt", n, err)
		}
	}
	// Chat fields: events, recalled messages (no body), hidden entries,
	// the conversation index and records.
	ev := persist.Message{ID: 4, From: "a", To: "g", Group: true, Timestamp: 5, Event: persist.EventDelete, Target: math.MaxUint64}
	if got, err := decodeMessage(4, appendMessage(nil, &ev)); err != nil || got.Event != ev.Event || got.Target != ev.Target || got.Recalled {
		t.Fatalf("event round trip: %+v, %v", got, err)
	}
	rc := msgs[1]
	got, recallEv, err := decodeMessageRec(2, appendMessageRec(nil, &rc, 77, nil))
	if err != nil || !got.Recalled || recallEv != 77 || got.Body != nil || got.Kind != rc.Kind || got.From != rc.From {
		t.Fatalf("recalled round trip: %+v, %d, %v", got, recallEv, err)
	}
	if _, err := decodeMessage(2, append(appendMessageRec(nil, &rc, 77, nil), 1)); !errors.Is(err, errCorrupt) {
		t.Fatalf("a recalled record with a body: %v, want errCorrupt", err)
	}
	if _, err := decodeMessage(2, []byte{recordV1, 0, 0, 1 << 5, 0, 0, 0}); !errors.Is(err, errCorrupt) {
		t.Fatalf("unknown message flags: %v, want errCorrupt", err)
	}
	for _, hidden := range []bool{false, true} {
		if id, h, err := decodeEntry(appendEntry(nil, 1<<60, hidden)); err != nil || id != 1<<60 || h != hidden {
			t.Fatalf("entry round trip (hidden %v): %d %v %v", hidden, id, h, err)
		}
	}
	if _, _, err := decodeEntry([]byte{0, 0, 0, 0, 0, 0, 0, 1, 2}); !errors.Is(err, errCorrupt) {
		t.Fatalf("entry with unknown flags: %v, want errCorrupt", err)
	}
	for _, id := range []persist.ConvID{{ID: "bob"}, {ID: "g\x00", Group: true}} {
		k := keyConvEntry(nil, "al", id, 9)
		got, n, err := parseConvID(k[len(keyLP(nil, tConvIdx, "al")):])
		if err != nil || got != id || n+len(keyLP(nil, tConvIdx, "al"))+8 != len(k) {
			t.Fatalf("conversation key %q: %+v %d %v", k, got, n, err)
		}
	}
	if _, _, err := parseConvID([]byte{2, 1, 'a'}); !errors.Is(err, errCorrupt) {
		t.Fatalf("conversation key of kind 2: %v, want errCorrupt", err)
	}
	if _, _, err := parseConvID([]byte{0, 5, 'a'}); !errors.Is(err, errCorrupt) {
		t.Fatalf("short conversation key: %v, want errCorrupt", err)
	}
	if e, err := decodeConvEntry(appendConvEntry(nil, convEntry{others: 1 << 50, own: 3})); err != nil || e != (convEntry{1 << 50, 3}) {
		t.Fatalf("conversation entry round trip: %+v, %v", e, err)
	}
	if r, err := decodeConvRecord(appendConvRecord(nil, convRecord{1, 2, 3})); err != nil || r != (convRecord{1, 2, 3}) {
		t.Fatalf("conversation record round trip: %+v, %v", r, err)
	}
	u := persist.User{ID: "u", PasswordHash: "$argon2id$", Created: 77}
	if got, err := decodeUser("u", appendUser(nil, &u)); err != nil || got != u {
		t.Fatalf("user round trip: %+v, %v", got, err)
	}
	gr := groupRecord{name: "n", owner: "o", created: -1, count: 1 << 40, admins: []string{"a", "b"}}
	if got, err := decodeGroup("g", appendGroup(nil, &gr)); err != nil || !reflect.DeepEqual(got, gr) {
		t.Fatalf("group round trip: %+v, %v", got, err)
	}
	gr.open, gr.admins = true, nil
	if got, err := decodeGroup("g", appendGroup(nil, &gr)); err != nil || !reflect.DeepEqual(got, gr) {
		t.Fatalf("open group round trip: %+v, %v", got, err)
	}
	// A record written before access control: open, no admins.
	legacy := binary.AppendUvarint(binary.AppendVarint(appendLP(appendLP([]byte{recordV1}, "n"), "o"), 5), 2)
	if got, err := decodeGroup("g", legacy); err != nil || !got.open || got.admins != nil || got.count != 2 || got.owner != "o" {
		t.Fatalf("legacy group record: %+v, %v", got, err)
	}
	if _, err := decodeGroup("g", append(legacy, 0, 3)); !errors.Is(err, errCorrupt) {
		t.Fatalf("admins count beyond the record accepted: %v", err)
	}
	if _, err := decodeUser("u", append(appendUser(nil, &u), 0)); !errors.Is(err, errCorrupt) {
		t.Fatalf("trailing bytes accepted: %v", err)
	}
	refs := appendRef(appendRef(appendRefsHeader(nil, -7, "from", "cmid"), "in\x00box", 1<<40), "b", 1)
	var r refsRecord
	if err := decodeRefs(9, refs, &r); err != nil || r.ts != -7 || r.from != "from" || r.clientMsgID != "cmid" ||
		!slices.Equal(r.refs, []ref{{"in\x00box", 1 << 40}, {"b", 1}}) {
		t.Fatalf("refs round trip: %+v, %v", r, err)
	}
	if err := decodeRefs(9, refs[:len(refs)-1], &r); !errors.Is(err, errCorrupt) {
		t.Fatalf("truncated refs: %v, want errCorrupt", err)
	}
	if h, err := decodeHead(appendHead(nil, head{last: 9, first: 3})); err != nil || h != (head{9, 3}) {
		t.Fatalf("head round trip: %+v, %v", h, err)
	}
	if in, err := inboxOfHeadKey(keyLP(nil, tHead, "al\x00ice")); err != nil || in != "al\x00ice" {
		t.Fatalf("head key: %q, %v", in, err)
	}
	if _, err := inboxOfHeadKey([]byte{tHead, 5, 'a'}); !errors.Is(err, errCorrupt) {
		t.Fatalf("short head key: %v, want errCorrupt", err)
	}
}

// FuzzDecodeMessage: decoding arbitrary bytes never panics, and whatever
// decodes re-encodes to the same record.
func FuzzDecodeMessage(f *testing.F) {
	f.Add(appendMessage(nil, &persist.Message{ID: 1, From: "a", To: "b", ClientMsgID: "c", Body: []byte("hi")}))
	f.Add([]byte{recordV1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{})
	f.Add(appendMessage(nil, &persist.Message{ID: 1, From: "a", To: "g", Group: true, Event: persist.EventRecall, Target: 3}))
	f.Add(appendMessageRec(nil, &persist.Message{ID: 1, From: "a", To: "b", ClientMsgID: "c", Body: []byte("gone")}, 9, nil))
	f.Add(appendMessageRec(nil, &persist.Message{ID: 1, From: "a", To: "b", ClientMsgID: "c", Body: []byte("hi")}, 0,
		[]ref{{"a", 1}, {"b", 1 << 40}, {"c", 2}}))
	f.Add(appendMessageRec(nil, &persist.Message{ID: 1, From: "a", To: "b", ClientMsgID: "c"}, 9, []ref{{"b", 3}}))
	f.Fuzz(func(t *testing.T, rec []byte) {
		var refs []ref
		m, ev, inline, err := decodeMessageRefs(7, rec, &refs, true)
		if err != nil {
			return
		}
		if !inline {
			refs = nil
		}
		var refs2 []ref
		again, ev2, inline2, err := decodeMessageRefs(7, appendMessageRec(nil, &m, ev, refs), &refs2, true)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if again.From != m.From || again.To != m.To || again.ClientMsgID != m.ClientMsgID || again.Timestamp != m.Timestamp ||
			again.Kind != m.Kind || again.Group != m.Group || !bytes.Equal(again.Body, m.Body) ||
			again.Event != m.Event || again.Target != m.Target || again.Recalled != m.Recalled || ev2 != ev ||
			inline2 != inline || (inline && !slices.Equal(refs2, refs)) {
			t.Fatalf("unstable: %+v %v vs %+v %v", m, refs, again, refs2)
		}
	})
}

// TestCorruptRecordIsUnavailable: a record that does not decode is reported
// as ErrUnavailable (never a panic, never a wrong answer), on reads and on a
// write that needs it, and does not fail other writes.
func TestCorruptRecordIsUnavailable(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir()})
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
	// Damage records behind the store's back (on the committer, so no
	// write races), then publish them to readers.
	err = s.maint(ctx, func(c *committer) error {
		c.set(keyID(nil, tMessage, 1), []byte{recordV1, 0xff})
		c.set(keyString(nil, tUser, "bob"), []byte{9})
		c.set(keyLP(nil, tHead, "w"), []byte{1, 2, 3})
		return nil
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
		{"LastSeq", second(s.LastSeq(ctx, "w"))},
		{"Append to an inbox with a broken head", second(s.Append(ctx, persist.Message{ID: 6, From: "a", ClientMsgID: "6"}, []string{"w"}))},
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

// TestMaintenanceCommitsAlone: a retention step never shares a batch with
// other requests.
func TestMaintenanceCommitsAlone(t *testing.T) {
	g := openGated(t, Options{Retention: persist.Retention{InboxMax: 1}})
	done := make(chan *chanOp, 2)
	g.appendAsync(persist.Message{ID: 1, From: "a", ClientMsgID: "1"}, done, "u")
	ret := g.async(t, func() error { return g.EnforceRetention(t.Context()) })
	g.release()
	<-done
	if err := <-ret; err != nil {
		t.Fatal(err)
	}
	b := g.sizes()
	if len(b) < 3 || b[1] != 1 || b[2] != 1 {
		t.Fatalf("batches %v: want the append and the retention step in batches of their own", b)
	}
}

func second[T any](_ T, err error) error { return err }

// TestViewsKeepTwoSnapshots: however many commits publish a view, the store
// holds two Pebble snapshots (the view and the older anchor; the dedup
// filter, which holds one while it builds, is off), so replaced views are
// closed; Close closes both (Pebble's Close fails on a snapshot left open).
func TestViewsKeepTwoSnapshots(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), DedupFilterBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 200 {
		m := persist.Message{ID: uint64(i + 1), From: "a", ClientMsgID: strconv.Itoa(i)}
		if _, err := s.Append(t.Context(), m, []string{"u", "v"}); err != nil {
			t.Fatal(err)
		}
		if n := s.db.Metrics().Snapshots.Count; n != 2 {
			t.Fatalf("after commit %d: %d snapshots open, want 2", i+1, n)
		}
	}
	if last, err := s.LastSeq(t.Context(), "v"); err != nil || last != 200 {
		t.Fatalf("LastSeq = %d, %v; want 200", last, err)
	}
	// Pebble's Close fails on snapshots left open.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestConvTrimInSteps: the removal of conversation entries below an
// inbox's first seq is spread over batches of at most convBudget
// conversations, and in the end leaves exactly the kept entries, with a
// record for each conversation that lost all of them.
func TestConvTrimInSteps(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), NoSync: true, Retention: persist.Retention{InboxMax: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	const peers = convBudget + 500
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < peers; i += 8 {
				m := persist.Message{ID: uint64(i + 1), From: fmt.Sprint("p", i), To: "alice", ClientMsgID: "c", Timestamp: time.Now().UnixMilli()}
				if _, err := s.Append(ctx, m, []string{"alice"}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := s.EnforceRetention(ctx); err != nil {
		t.Fatal(err)
	}
	countKeys := func(t byte) int {
		pre := keyLP(nil, t, "alice")
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: pre, UpperBound: prefixEnd(pre)})
		if err != nil {
			panic(err)
		}
		defer it.Close()
		n := 0
		for ok := it.First(); ok; ok = it.Next() {
			n++
		}
		return n
	}
	if n := countKeys(tConvIdx); n != 1 {
		t.Fatalf("%d conversation entries left, want 1 (the kept message's)", n)
	}
	if n := countKeys(tConv); n != peers {
		t.Fatalf("%d conversation records, want %d (one per conversation)", n, peers)
	}
	cs, err := s.Conversations(ctx, "alice", 0, peers+1)
	if err != nil || len(cs) != peers {
		t.Fatalf("Conversations: %d, %v; want %d", len(cs), err, peers)
	}
	for _, c := range cs[1:] {
		if c.HasLast || c.Unread != 0 || c.LastSeq == 0 {
			t.Fatalf("a conversation whose messages were removed: %+v", c)
		}
	}
	if c := cs[0]; !c.HasLast || c.Unread != 1 || c.LastSeq != peers {
		t.Fatalf("the newest conversation: %+v", c)
	}
}

// TestChatInOneBatch: appends, a read, a recall and deletes of messages
// appended earlier in the same batch see those messages (the committer's
// pending state, not the database), and their completions keep queue
// order: Done of the recall runs after the completion of the append
// before it and before that of the append after it.
func TestChatInOneBatch(t *testing.T) {
	g := openGated(t, Options{})
	ctx := t.Context()
	done := make(chan *notedOp, 4)
	var order []string
	var mu sync.Mutex
	note := func(s string) {
		mu.Lock()
		order = append(order, s)
		mu.Unlock()
	}
	msg := func(id uint64, from, to string) persist.Message {
		return persist.Message{ID: id, From: from, To: to, ClientMsgID: fmt.Sprint(id), Timestamp: 10, Body: []byte("body")}
	}
	appendNoted := func(m persist.Message) {
		o := &notedOp{note: note, done: done}
		o.AppendOp = persist.AppendOp{Msg: m, Inboxes: []string{"bob", "alice"}, Done: o}
		g.AppendAsync(&o.AppendOp)
	}
	appendNoted(msg(1, "bob", "alice"))
	appendNoted(msg(2, "bob", "alice"))
	g.waitQueued(t, 2)
	read := g.async(t, func() error {
		res, err := g.MarkRead(ctx, "alice", persist.ConvID{ID: "bob"}, 1)
		if err == nil && (!res.Moved || res.ReadSeq != 1) {
			err = fmt.Errorf("MarkRead: %+v", res)
		}
		return err
	})
	recall := g.async(t, func() error {
		res, err := g.Recall(ctx, persist.EventRequest{User: "bob", Target: 1, ID: 10, Timestamp: 11,
			Done: func(*persist.EventResult) { note("recall") }})
		if err == nil && (res.Duplicate || len(res.Seqs) != 2 || res.Seqs[0] != 3 || res.Seqs[1] != 3) {
			err = fmt.Errorf("Recall: %+v", res)
		}
		return err
	})
	del := g.async(t, func() error {
		res, err := g.Delete(ctx, persist.EventRequest{User: "alice", Target: 2, ID: 11, Timestamp: 12})
		if err == nil && (res.Duplicate || res.Seqs[0] != 4) {
			err = fmt.Errorf("Delete: %+v", res)
		}
		return err
	})
	again := g.async(t, func() error {
		res, err := g.Delete(ctx, persist.EventRequest{User: "alice", Target: 2, ID: 12, Timestamp: 13})
		if err == nil && !res.Duplicate {
			err = fmt.Errorf("repeated Delete in the same batch: %+v", res)
		}
		return err
	})
	appendNoted(msg(3, "bob", "alice"))
	g.waitQueued(t, 7)
	g.release()
	for range 3 {
		if o := <-done; o.Err != nil {
			t.Fatal(o.Err)
		}
	}
	for _, ch := range []<-chan error{read, recall, del, again} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"append 1", "append 2", "recall", "append 3"}; !slices.Equal(order, want) {
		t.Fatalf("completion order %v, want %v", order, want)
	}
	if n := len(g.sizes()); n != 2 { // the gate's write, then everything else
		t.Fatalf("%d batches, want 2: %v", n, g.sizes())
	}
	es, err := g.ReadInbox(ctx, "alice", 0, 10)
	if err != nil || len(es) != 5 {
		t.Fatalf("alice's inbox: %+v, %v", es, err)
	}
	if !es[0].Msg.Recalled || es[0].Msg.Body != nil || !es[1].Deleted || es[2].Msg.Event != persist.EventRecall ||
		es[3].Msg.Event != persist.EventDelete || es[4].Msg.ID != 3 {
		t.Fatalf("alice's inbox after one batch: %+v", es)
	}
	cs, err := g.Conversations(ctx, "alice", 0, 10)
	if err != nil || len(cs) != 1 || cs[0].LastSeq != 5 || cs[0].ReadSeq != 1 || cs[0].Unread != 2 || cs[0].Last.Msg.ID != 3 {
		t.Fatalf("alice's conversations: %+v, %v", cs, err)
	}
}

// notedOp notes its completion (on the committer, in completion order),
// then sends itself on done.
type notedOp struct {
	persist.AppendOp
	note func(string)
	done chan *notedOp
}

func (o *notedOp) AppendDone(*persist.AppendOp) {
	o.note(fmt.Sprint("append ", o.Msg.ID))
	o.done <- o
}

// TestL0Thresholds: the L0 compaction threshold reaches Pebble (default 8,
// writes stalling at four times as many sublevels), a store opens with a
// threshold set, and a negative one is refused.
func TestL0Thresholds(t *testing.T) {
	for _, c := range []struct{ set, compact, stop int }{{0, DefaultL0CompactionThreshold, 4 * DefaultL0CompactionThreshold}, {3, 3, 12}} {
		o, err := Options{Dir: t.TempDir(), L0CompactionThreshold: c.set}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		p := pebbleOptions(o, newMetrics(), nil)
		if p.L0CompactionThreshold != c.compact || p.L0StopWritesThreshold != c.stop {
			t.Errorf("L0CompactionThreshold %d: Pebble got %d and %d, want %d and %d", c.set, p.L0CompactionThreshold, p.L0StopWritesThreshold, c.compact, c.stop)
		}
		s, err := Open(o)
		if err != nil {
			t.Fatalf("open with L0CompactionThreshold %d: %v", c.set, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(Options{Dir: t.TempDir(), L0CompactionThreshold: -1}); !errors.Is(err, persist.ErrInvalid) {
		t.Errorf("negative L0CompactionThreshold: %v, want ErrInvalid", err)
	}
}
