package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/persist"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaktest.Gnet()...) }

var secret = []byte("webhook-secret")

// endpoint is a real HTTP server that records requests and answers with
// the statuses it is given in turn (the last one repeats).
type endpoint struct {
	srv      *httptest.Server
	mu       sync.Mutex
	statuses []int
	got      []request
	hold     chan struct{} // when set, handlers wait for it to close
	inFlight atomic.Int32
}

type request struct {
	header http.Header
	body   []byte
	at     time.Time
}

func newEndpoint(t *testing.T, statuses ...int) *endpoint {
	e := &endpoint{statuses: statuses}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.inFlight.Add(1)
		defer e.inFlight.Add(-1)
		body, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		e.got = append(e.got, request{r.Header.Clone(), body, time.Now()})
		status := e.statuses[min(len(e.got), len(e.statuses))-1]
		hold := e.hold
		e.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
			}
		}
		if status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "0")
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *endpoint) requests() []request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.got)
}

func newNotifier(t *testing.T, url string, online map[string]bool, mod func(*Config)) *Notifier {
	t.Helper()
	cfg := Config{URL: url, Secret: secret, NodeID: "n1", BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond,
		Online: func(u string) bool { return online[u] }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = n.Close(ctx)
	})
	return n
}

var groupMsg = &persist.Message{ID: 1 << 60, From: "alice", To: "g7", Group: true, ClientMsgID: "c1", Timestamp: 1_700_000_000_000, Body: []byte("hi all")}

// TestSignedPostForOfflineRecipients: one POST per message naming the
// recipients without an online device (never the sender), signed so that
// Verify accepts it; nothing for a retried message or when everyone is
// online.
func TestSignedPostForOfflineRecipients(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	n := newNotifier(t, ep.srv.URL, map[string]bool{"carol": true}, nil)
	inboxes := []string{"alice", "bob", "carol", "dave"}
	n.MessageStored(groupMsg, inboxes, []uint64{5, 6, 7, 8}, false)
	n.MessageStored(groupMsg, inboxes, []uint64{5, 6, 7, 8}, true)                                          // a retry: nothing
	n.MessageStored(&persist.Message{ID: 9, From: "x", To: "carol"}, []string{"carol"}, []uint64{1}, false) // online: skipped
	n.MessageStored(&persist.Message{ID: 10, From: "x", To: "x"}, []string{"x"}, []uint64{1}, false)        // the sender only: nothing
	testutil.Until(t, 10*time.Second, "the POST and the skip", func() bool { return promtest.ToFloat64(n.m.posted) == 1 && promtest.ToFloat64(n.m.skipped) == 1 })
	reqs := ep.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if err := Verify(secret, r.header.Get(HeaderSignature), r.body, time.Now(), time.Minute); err != nil {
		t.Fatalf("signature: %v (%q)", err, r.header.Get(HeaderSignature))
	}
	if r.header.Get(HeaderEvent) != TypeOffline || r.header.Get(HeaderDelivery) != "1152921504606846976" || r.header.Get("Content-Type") != "application/json" {
		t.Errorf("headers %v", r.header)
	}
	var p Payload
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatal(err)
	}
	want := []Recipient{{"bob", 6, "g7"}, {"dave", 8, "g7"}}
	if p.Type != TypeOffline || p.MsgID != "1152921504606846976" || p.From != "alice" || p.GroupID != "g7" || string(p.Body) != "hi all" ||
		p.SentAt != groupMsg.Timestamp || p.Node != "n1" || !slices.Equal(p.Recipients, want) {
		t.Fatalf("payload %+v", p)
	}
	// A changed body or another secret does not verify; an old request is
	// refused as a replay.
	if err := Verify(secret, r.header.Get(HeaderSignature), append(r.body, ' '), time.Now(), time.Minute); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered body: %v", err)
	}
	if err := Verify([]byte("other"), r.header.Get(HeaderSignature), r.body, time.Now(), time.Minute); !errors.Is(err, ErrBadSignature) {
		t.Errorf("other secret: %v", err)
	}
	if err := Verify(secret, r.header.Get(HeaderSignature), r.body, time.Now().Add(10*time.Minute), 5*time.Minute); !errors.Is(err, ErrStale) {
		t.Errorf("replayed later: %v", err)
	}
	for _, h := range []string{"", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz"} {
		if err := Verify(secret, h, r.body, time.Now(), time.Minute); !errors.Is(err, ErrMalformed) {
			t.Errorf("header %q: %v", h, err)
		}
	}
}

// TestAlreadyStoredMessageToNewInboxes: in a cluster every inbox owner but
// the first appends a message that is already stored, so the engine
// reports it as a duplicate; its recipients are still posted, once. A
// client's retry posts only the recipients it added.
func TestAlreadyStoredMessageToNewInboxes(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	n := newNotifier(t, ep.srv.URL, nil, nil)
	m := &persist.Message{ID: 77, From: "alice", To: "g1", Group: true, ClientMsgID: "c"}
	n.MessageStored(m, []string{"bob"}, []uint64{3}, true)                         // second owner: bob is new here
	n.MessageStored(m, []string{"bob"}, []uint64{3}, true)                         // the client's retry: nothing new
	n.MessageStored(m, []string{"alice", "bob", "carol"}, []uint64{9, 3, 4}, true) // a retry that added carol
	testutil.Until(t, 10*time.Second, "two POSTs", func() bool { return promtest.ToFloat64(n.m.posted) == 2 })
	time.Sleep(50 * time.Millisecond) // room for a wrong third one to show up
	reqs := ep.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	var got []string
	for _, r := range reqs {
		var p Payload
		if err := json.Unmarshal(r.body, &p); err != nil {
			t.Fatal(err)
		}
		for _, rc := range p.Recipients {
			got = append(got, rc.User)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"bob", "carol"}) {
		t.Fatalf("recipients posted %v, want bob and carol once each", got)
	}
}

// TestRecentSetIsBounded: the set forgets the older generation once the
// newer fills, so it never holds more than two generations.
func TestRecentSetIsBounded(t *testing.T) {
	var r recentSet
	for id := range uint64(3 * recentPerGeneration) {
		if !r.add(id, "u") {
			t.Fatalf("pair %d reported seen", id)
		}
	}
	if n := len(r.cur) + len(r.old); n > 2*recentPerGeneration {
		t.Fatalf("%d pairs held", n)
	}
	if r.add(3*recentPerGeneration-1, "u") {
		t.Fatal("a recent pair was forgotten")
	}
	if !r.add(0, "u") {
		t.Fatal("the oldest pair is still held")
	}
}

// TestRetryOn5xxNotOn4xx: 5xx and 429 are retried with backoff until the
// endpoint accepts; a 4xx is given up at once; exhausted attempts are a
// dead letter.
func TestRetryOn5xxNotOn4xx(t *testing.T) {
	one := func(n *Notifier) {
		n.MessageStored(&persist.Message{ID: 1, From: "a", To: "b"}, []string{"a", "b"}, []uint64{1, 1}, false)
	}
	t.Run("5xx then ok", func(t *testing.T) {
		ep := newEndpoint(t, 500, 503, 429, 200)
		n := newNotifier(t, ep.srv.URL, nil, nil)
		one(n)
		testutil.Until(t, 10*time.Second, "posted", func() bool { return promtest.ToFloat64(n.m.posted) == 1 })
		if got := len(ep.requests()); got != 4 || promtest.ToFloat64(n.m.retries) != 3 || n.DeadLetters() != 0 {
			t.Fatalf("%d requests, %v retries, %d dead", got, promtest.ToFloat64(n.m.retries), n.DeadLetters())
		}
		reqs := ep.requests()
		for i := 1; i < len(reqs); i++ {
			if string(reqs[i].body) != string(reqs[0].body) {
				t.Fatal("a retry changed the body")
			}
		}
	})
	t.Run("4xx", func(t *testing.T) {
		ep := newEndpoint(t, 400, 200)
		n := newNotifier(t, ep.srv.URL, nil, nil)
		one(n)
		testutil.Until(t, 10*time.Second, "dead letter", func() bool { return n.DeadLetters() == 1 })
		time.Sleep(50 * time.Millisecond) // room for a wrong retry to show up
		if got := len(ep.requests()); got != 1 || promtest.ToFloat64(n.m.retries) != 0 {
			t.Fatalf("a 4xx was retried: %d requests", got)
		}
	})
	t.Run("attempts exhausted", func(t *testing.T) {
		ep := newEndpoint(t, 502)
		n := newNotifier(t, ep.srv.URL, nil, func(c *Config) { c.MaxAttempts = 3 })
		one(n)
		testutil.Until(t, 10*time.Second, "dead letter", func() bool { return n.DeadLetters() == 1 })
		if got := len(ep.requests()); got != 3 {
			t.Fatalf("%d requests, want 3 attempts", got)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		ep := newEndpoint(t, 200)
		url := ep.srv.URL
		ep.srv.Close()
		n := newNotifier(t, url, nil, func(c *Config) { c.MaxAttempts = 2 })
		one(n)
		testutil.Until(t, 10*time.Second, "dead letter", func() bool { return n.DeadLetters() == 1 })
		if promtest.ToFloat64(n.m.retries) != 1 {
			t.Fatalf("retries %v", promtest.ToFloat64(n.m.retries))
		}
	})
}

// TestBoundedQueueUnderDeadEndpoint: an endpoint that never answers holds
// Concurrency requests; the queue holds its bound; everything beyond is
// dropped and counted, the node never waits; Close gives up at its
// deadline and counts the rest.
func TestBoundedQueueUnderDeadEndpoint(t *testing.T) {
	ep := newEndpoint(t, 200)
	ep.hold = make(chan struct{})
	defer close(ep.hold)
	n := newNotifier(t, ep.srv.URL, nil, func(c *Config) {
		c.Concurrency, c.QueueSize, c.Timeout = 2, 5, time.Minute
	})
	send := func(id uint64) {
		n.MessageStored(&persist.Message{ID: id, From: "a", To: "b"}, []string{"a", "b"}, []uint64{id, id}, false)
	}
	send(1)
	send(2)
	testutil.Until(t, 10*time.Second, "two requests in flight", func() bool { return ep.inFlight.Load() == 2 })
	// The observer never waits: with both workers held, these calls return
	// (a blocking one would hang the test) and the queue's bound holds.
	for id := uint64(3); id <= 30; id++ {
		send(id)
	}
	if n.Dropped() != 23 || len(n.queue) != 5 {
		t.Fatalf("dropped %d, queued %d; want 23 and 5", n.Dropped(), len(n.queue))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := n.Close(ctx); err == nil {
		t.Fatal("Close with requests hung reported success")
	}
	if n.Dropped() != 30 {
		t.Fatalf("dropped %d after Close, want 30 (the 5 queued and the 2 in flight too)", n.Dropped())
	}
	send(99) // after Close
	if n.Dropped() != 31 {
		t.Fatalf("a job after Close was not counted: %d", n.Dropped())
	}
}

func TestConfigErrors(t *testing.T) {
	online := func(string) bool { return false }
	for _, cfg := range []Config{
		{Secret: secret, Online: online},
		{URL: "ftp://x", Secret: secret, Online: online},
		{URL: "http://x", Online: online},
		{URL: "http://x", Secret: secret},
		{URL: "http://x", Secret: secret, Online: online, QueueSize: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// TestConfigValidateApartFromDefaults: Validate judges the fields as given
// and changes nothing; WithDefaults fills the zero fields with the
// Default... constants and leaves a bad value for Validate.
func TestConfigValidateApartFromDefaults(t *testing.T) {
	c := Config{URL: "http://x", Secret: secret, Concurrency: -1, BackoffMin: 2 * time.Minute}
	before := c
	err := c.Validate()
	if err == nil || !reflect.DeepEqual(c, before) {
		t.Fatalf("Validate of an undefaulted config: err %v, config changed %v", err, !reflect.DeepEqual(c, before))
	}
	for _, want := range []string{"an Online function is required", "QueueSize must be at least 1, got 0", "Concurrency must be at least 1, got -1", "Timeout must be positive", "Client", "Logger"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate must report %q: %v", want, err)
		}
	}
	c.Online = func(string) bool { return false }
	d := c.WithDefaults()
	if d.Concurrency != -1 || d.QueueSize != DefaultQueueSize || d.MaxAttempts != DefaultMaxAttempts || d.Timeout != DefaultTimeout ||
		d.BackoffMax != 2*time.Minute || d.Client == nil || d.Client.Timeout != DefaultTimeout || d.Logger == nil {
		t.Fatalf("WithDefaults: %+v", d)
	}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "Concurrency") || strings.Contains(err.Error(), "QueueSize") {
		t.Fatalf("after WithDefaults only Concurrency is wrong: %v", err)
	}
	if err := (Config{BackoffMin: time.Second, BackoffMax: time.Millisecond}).WithDefaults().Validate(); err == nil ||
		!strings.Contains(err.Error(), "BackoffMax (1ms) must be at least BackoffMin (1s)") || !strings.Contains(err.Error(), "URL") {
		t.Fatalf("the zero Config needs a URL; backoffs out of order: %v", err)
	}
	d.Concurrency = 0
	if err := d.WithDefaults().Validate(); err != nil {
		t.Fatalf("the defaulted config is refused: %v", err)
	}
}
