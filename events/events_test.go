package events

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/rueidis"
	"go.uber.org/goleak"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(leaktest.Gnet(),
		// rueidis sleeps out a reconnect backoff (under a second) in a
		// goroutine that outlives Close and then exits on its own.
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"))...)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newPublisher(t *testing.T, addr string, mod func(*Config)) *Publisher {
	t.Helper()
	cfg := Config{Addrs: []string{addr}, NodeID: "n1", Logger: quiet, OpTimeout: time.Second, Registry: prometheus.NewRegistry()}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

func redisClient(t *testing.T, addr string) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// readStream returns every event of the stream, in stream order.
func readStream(t *testing.T, c rueidis.Client, stream string) []Event {
	t.Helper()
	entries, err := c.Do(context.Background(), c.B().Xrange().Key(stream).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]Event, len(entries))
	for i, en := range entries {
		if err := json.Unmarshal([]byte(en.FieldValues["data"]), &out[i]); err != nil {
			t.Fatalf("entry %s: %v: %q", en.ID, err, en.FieldValues["data"])
		}
		if en.FieldValues["type"] != out[i].Type {
			t.Fatalf("entry %s: type field %q, data type %q", en.ID, en.FieldValues["type"], out[i].Type)
		}
	}
	return out
}

func msg(id uint64, from, to string) *persist.Message {
	return &persist.Message{ID: id, From: from, To: to, ClientMsgID: "c" + strconv.FormatUint(id, 10), Timestamp: 1_700_000_000_000, Body: []byte("body " + strconv.FormatUint(id, 10))}
}

// TestSchemaAndOrder: every kind of event reaches the stream with the
// documented fields, in the order reported, and the checkpoint follows.
func TestSchemaAndOrder(t *testing.T) {
	r := testsvc.StartRedis(t)
	c := redisClient(t, r.Addr)
	p := newPublisher(t, r.Addr, func(c *Config) { c.BatchSize = 7 })
	p.Start()
	// The arguments are reused after each call, as the engine's are.
	buf := []byte("alice")
	from := string(buf)
	seqs := []uint64{0, 0}
	for i := range 100 {
		seqs[0], seqs[1] = uint64(i+1), uint64(i+1)
		p.MessageStored(msg(uint64(1000+i), from, "bob"), []string{from, "bob"}, seqs, false)
	}
	copy(buf, "XXXXX") // the publisher must have copied everything
	p.MessageStored(&persist.Message{ID: 2000, To: "bob", ClientMsgID: "sys-1", Kind: 1}, []string{"bob"}, []uint64{101}, false)
	p.MessageStored(&persist.Message{ID: 2001, From: "carol", To: "g1", Group: true, ClientMsgID: "x"}, []string{"carol", "bob"}, []uint64{1, 102}, true)
	p.Delivered("bob", "phone", 102)
	p.GroupChanged(engine.GroupChange{Kind: engine.GroupCreated, Group: "g1", User: "carol", By: "carol", Name: "team", Owner: "carol", Members: []string{"bob", "carol"}, Time: 5})
	p.GroupChanged(engine.GroupChange{Kind: engine.GroupMemberRemoved, Group: "g1", User: "bob", Time: 6})
	var evs []Event
	testutil.Until(t, 20*time.Second, "105 events", func() bool { evs = readStream(t, c, DefaultStream); return len(evs) == 105 })
	for i := range 100 {
		e := evs[i]
		if e.V != 1 || e.Type != TypeMessage || e.Node != "n1" || e.MsgID != strconv.Itoa(1000+i) || e.From != "alice" || e.To != "bob" ||
			string(e.Body) != "body "+strconv.Itoa(1000+i) || e.SentAt != 1_700_000_000_000 || e.Time == 0 || e.Duplicate || e.GroupID != "" {
			t.Fatalf("event %d: %+v", i, e)
		}
		want := []InboxRef{{"alice", uint64(i + 1), "bob"}, {"bob", uint64(i + 1), "alice"}}
		if !slices.Equal(e.Inboxes, want) {
			t.Fatalf("event %d inboxes %+v, want %+v", i, e.Inboxes, want)
		}
	}
	if e := evs[100]; e.From != "" || e.Kind != 1 || !slices.Equal(e.Inboxes, []InboxRef{{"bob", 101, ""}}) {
		t.Errorf("system message event %+v", e)
	}
	if e := evs[101]; e.GroupID != "g1" || !e.Duplicate || !slices.Equal(e.Inboxes, []InboxRef{{"carol", 1, "g1"}, {"bob", 102, "g1"}}) {
		t.Errorf("group message event %+v", e)
	}
	if e := evs[102]; e.Type != TypeDelivered || e.User != "bob" || e.Device != "phone" || e.Seq != 102 {
		t.Errorf("delivered event %+v", e)
	}
	if e := evs[103]; e.Type != "group.created" || e.Group != "g1" || e.Owner != "carol" || e.Name != "team" || !slices.Equal(e.Members, []string{"bob", "carol"}) || e.Time != 5 {
		t.Errorf("group created event %+v", e)
	}
	if e := evs[104]; e.Type != "group.member_removed" || e.User != "bob" || e.By != "" {
		t.Errorf("member removed event %+v", e)
	}
	ckpt, ok, err := p.Checkpoint(t.Context())
	if err != nil || !ok || ckpt.Before(time.Now().Add(-time.Minute)) || ckpt.After(time.Now()) {
		t.Fatalf("checkpoint %v, %v, %v", ckpt, ok, err)
	}
	if got := promtest.ToFloat64(p.m.published); got != 105 {
		t.Fatalf("published counter %v", got)
	}
}

// TestMaxLenTrims: the stream stays near MaxLen entries.
func TestMaxLenTrims(t *testing.T) {
	r := testsvc.StartRedis(t)
	c := redisClient(t, r.Addr)
	p := newPublisher(t, r.Addr, func(c *Config) { c.MaxLen = 100 })
	p.Start()
	for i := range 2000 {
		p.Delivered("u", "d", uint64(i+1))
	}
	testutil.Until(t, 20*time.Second, "every event published", func() bool { return promtest.ToFloat64(p.m.published) == 2000 })
	n, err := c.Do(t.Context(), c.B().Xlen().Key(DefaultStream).Build()).AsInt64()
	if err != nil || n < 100 || n > 400 {
		t.Fatalf("XLEN %d (%v), want about 100", n, err)
	}
}

// TestRedisDownRetriesAndBoundsTheQueue: while Redis is down the batch in
// flight is retried (counted), the queue holds its bound and drops the
// rest (counted); when Redis is back everything kept is published, in
// order, and nothing was lost in between.
func TestRedisDownRetriesAndBoundsTheQueue(t *testing.T) {
	r := testsvc.StartRedis(t)
	c := redisClient(t, r.Addr)
	p := newPublisher(t, r.Addr, func(c *Config) { c.QueueSize = 10; c.BatchSize = 1 })
	p.Start()
	p.Delivered("u", "d", 1)
	testutil.Until(t, 20*time.Second, "the first event published", func() bool { return promtest.ToFloat64(p.m.published) == 1 })
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	p.Delivered("u", "d", 2)
	testutil.Until(t, 20*time.Second, "the batch taken and failing", func() bool { return p.Queued() == 0 && promtest.ToFloat64(p.m.failures) > 0 })
	for i := 3; i <= 50; i++ {
		p.Delivered("u", "d", uint64(i))
	}
	if p.Dropped() != 38 || p.Queued() != 10 { // 2 in flight, 3..12 queued, 13..50 dropped
		t.Fatalf("dropped %d, queued %d; want 38 and 10", p.Dropped(), p.Queued())
	}
	if got := promtest.ToFloat64(p.m.dropped); got != 38 {
		t.Fatalf("dropped counter %v", got)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	var evs []Event
	// Redis restarted empty (no persistence): the stream holds what came
	// after it.
	testutil.Until(t, 20*time.Second, "the kept events published", func() bool { evs = readStream(t, c, DefaultStream); return len(evs) == 11 })
	for i, e := range evs {
		if e.Seq != uint64(i+2) {
			t.Fatalf("event %d has seq %d, want %d", i, e.Seq, i+2)
		}
	}
}

// TestCloseDrainsAndGivesUp: Close publishes what is queued; with Redis
// down it gives up at its deadline and counts what it dropped.
func TestCloseDrainsAndGivesUp(t *testing.T) {
	r := testsvc.StartRedis(t)
	c := redisClient(t, r.Addr)
	p := newPublisher(t, r.Addr, nil)
	p.Start()
	for i := range 500 {
		p.Delivered("u", "d", uint64(i+1))
	}
	if err := p.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if evs := readStream(t, c, DefaultStream); len(evs) != 500 {
		t.Fatalf("%d events after Close, want 500", len(evs))
	}
	p.Delivered("u", "d", 501) // after Close: dropped, counted
	if p.Dropped() != 1 {
		t.Fatalf("dropped %d after a late event", p.Dropped())
	}

	p2 := newPublisher(t, r.Addr, func(c *Config) { c.NodeID = "n2" })
	p2.Start()
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		p2.Delivered("u", "d", uint64(i+1))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if err := p2.Close(ctx); err == nil {
		t.Fatal("Close with Redis down reported success")
	}
	if p2.Dropped() != 20 {
		t.Fatalf("dropped %d, want all 20", p2.Dropped())
	}
}

// TestRecoverReplaysAroundTheCheckpoint: messages stored after the
// checkpoint (and within the margin before it) are published again, each
// inbox in seq order even where ID order differs; without a checkpoint
// nothing is replayed and one is recorded.
func TestRecoverReplaysAroundTheCheckpoint(t *testing.T) {
	r := testsvc.StartRedis(t)
	c := redisClient(t, r.Addr)
	st, err := pebblestore.Open(pebblestore.Options{Dir: filepath.Join(t.TempDir(), "data"), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	ctx := t.Context()
	base := time.Now().Add(-time.Hour)
	id := func(at time.Time, n uint64) uint64 { return engine.MessageIDAt(at) + n }
	appendMsg := func(m *persist.Message, inboxes ...string) {
		if _, err := st.Append(ctx, *m, inboxes); err != nil {
			t.Fatal(err)
		}
	}
	// Long before the checkpoint: not replayed.
	appendMsg(msg(id(base.Add(-time.Hour), 1), "alice", "bob"), "alice", "bob")
	// Within the margin: stored in the other order than their IDs.
	late, early := msg(id(base.Add(-time.Second), 2), "carol", "bob"), msg(id(base.Add(-time.Second), 1), "dave", "bob")
	appendMsg(late, "carol", "bob") // bob 2
	appendMsg(early, "dave", "bob") // bob 3
	after := msg(id(base.Add(time.Second), 1), "alice", "bob")
	appendMsg(after, "alice", "bob") // bob 4, alice 2

	p := newPublisher(t, r.Addr, nil)
	if n, err := p.Recover(ctx, st); n != 0 || err != nil {
		t.Fatalf("Recover without a checkpoint = %d, %v", n, err)
	}
	if _, ok, _ := p.Checkpoint(ctx); !ok {
		t.Fatal("no checkpoint recorded")
	}
	key := CheckpointKey(DefaultStream, "n1")
	if err := c.Do(ctx, c.B().Set().Key(key).Value(strconv.FormatInt(base.UnixMilli(), 10)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	p.Start()
	n, err := p.Recover(ctx, st)
	if err != nil || n != 3 {
		t.Fatalf("Recover = %d, %v; want 3", n, err)
	}
	var evs []Event
	testutil.Until(t, 20*time.Second, "3 events", func() bool { evs = readStream(t, c, DefaultStream); return len(evs) == 3 })
	var bobSeqs []uint64
	for _, e := range evs {
		if !e.Replayed {
			t.Errorf("event %+v not marked replayed", e)
		}
		for _, in := range e.Inboxes {
			if in.User == "bob" {
				bobSeqs = append(bobSeqs, in.Seq)
			}
		}
	}
	if !slices.Equal(bobSeqs, []uint64{2, 3, 4}) {
		t.Fatalf("bob's replayed seqs %v, want 2 3 4 in order", bobSeqs)
	}
	// Replayed events keep the checkpoint where it was.
	if ckpt, _, _ := p.Checkpoint(ctx); ckpt.UnixMilli() != base.UnixMilli() {
		t.Fatalf("checkpoint moved to %v by the replay", ckpt)
	}
}

func TestOrderReplay(t *testing.T) {
	ev := func(id int, refs ...any) *Event {
		e := &Event{MsgID: fmt.Sprint(id)}
		for i := 0; i < len(refs); i += 2 {
			e.Inboxes = append(e.Inboxes, InboxRef{User: refs[i].(string), Seq: uint64(refs[i+1].(int))})
		}
		return e
	}
	// In ID order: 1 (a:2), 2 (a:1 b:2), 3 (b:1), 4 (c:1).
	in := []*Event{ev(1, "a", 2), ev(2, "a", 1, "b", 2), ev(3, "b", 1), ev(4, "c", 1)}
	var got []string
	for _, e := range orderReplay(in) {
		got = append(got, e.MsgID)
	}
	if want := []string{"3", "2", "1", "4"}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []Config{{Addrs: []string{"x:1"}}, {NodeID: "n"}, {NodeID: "n", Addrs: []string{"x:1"}, QueueSize: -1}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// TestConfigValidateApartFromDefaults: Validate judges the fields as given
// and changes nothing; WithDefaults fills the zero fields with the
// Default... constants and leaves a bad value for Validate.
func TestConfigValidateApartFromDefaults(t *testing.T) {
	c := Config{NodeID: "n1", Addrs: []string{"x:1"}, BatchSize: -1}
	before := c
	err := c.Validate()
	if err == nil || !reflect.DeepEqual(c, before) {
		t.Fatalf("Validate of an undefaulted config: err %v, config changed %v", err, !reflect.DeepEqual(c, before))
	}
	for _, want := range []string{"Stream", "MaxLen must be at least 1, got 0", "BatchSize must be at least 1, got -1", "OpTimeout must be positive", "Logger"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate must report %q: %v", want, err)
		}
	}
	d := c.WithDefaults()
	if d.BatchSize != -1 || d.Stream != DefaultStream || d.MaxLen != DefaultMaxLen || d.QueueSize != DefaultQueueSize ||
		d.ReplayMargin != DefaultReplayMargin || d.OpTimeout != DefaultOpTimeout || d.Logger == nil {
		t.Fatalf("WithDefaults: %+v", d)
	}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "BatchSize") || strings.Contains(err.Error(), "MaxLen") {
		t.Fatalf("after WithDefaults only BatchSize is wrong: %v", err)
	}
	if err := (Config{}).WithDefaults().Validate(); err == nil || !strings.Contains(err.Error(), "NodeID") || !strings.Contains(err.Error(), "Addrs") {
		t.Fatalf("the zero Config needs a node id and Redis: %v", err)
	}
	if err := (Config{NodeID: "n1", Addrs: []string{"x:1"}}).WithDefaults().Validate(); err != nil {
		t.Fatalf("the defaulted minimal config is refused: %v", err)
	}
}

// TestUnorderedReportsReachTheStreamInOrder: messages of one inbox
// reported out of order from several goroutines (as a cluster's workers
// do) reach the stream in seq order; a report that never comes is filled
// from the store.
func TestUnorderedReportsReachTheStreamInOrder(t *testing.T) {
	r := testsvc.StartRedis(t)
	c := redisClient(t, r.Addr)
	const n = 400
	st := storeWithBob(t, n)
	p := newPublisher(t, r.Addr, func(c *Config) { c.Unordered, c.Store = true, st })
	p.Start()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			// Goroutine g reports seqs g+1, g+5, ... in pairs swapped.
			var mine []uint64
			for s := uint64(g + 1); s <= n; s += 4 {
				if s != 123 { // never reported: filled from the store
					mine = append(mine, s)
				}
			}
			for i := 0; i+1 < len(mine); i += 2 {
				mine[i], mine[i+1] = mine[i+1], mine[i]
			}
			for _, s := range mine {
				p.MessageStored(&persist.Message{ID: s, From: "x", To: "bob", ClientMsgID: fmt.Sprint(s)}, []string{"bob"}, []uint64{s}, false)
			}
		})
	}
	wg.Wait()
	var evs []Event
	testutil.Until(t, 20*time.Second, "every seq in the stream", func() bool { evs = readStream(t, c, DefaultStream); return len(evs) >= n })
	highest := uint64(0)
	for _, e := range evs {
		s := e.Inboxes[0].Seq
		if s <= highest {
			continue
		}
		if s != highest+1 {
			t.Fatalf("seq %d after %d in the stream", s, highest)
		}
		highest = s
		if s == 123 && !e.Replayed {
			t.Errorf("seq 123 was never reported, yet its event is not marked replayed")
		}
	}
	if highest != n {
		t.Fatalf("the stream ends at seq %d of %d", highest, n)
	}
	if got := promtest.ToFloat64(p.m.filled); got < 1 {
		t.Fatalf("filled counter %v", got)
	}
}
