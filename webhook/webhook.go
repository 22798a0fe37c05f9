// Package webhook tells an application's endpoint about messages whose
// recipient has no online device, so that the application can send a push
// notification (APNs, FCM) through its own service.
//
// A Notifier is an engine.Observer. For each stored message (not a retried
// one) it queues a job naming the recipients, in a bounded queue, without
// waiting; it never blocks or fails a send. Workers, at most Concurrency at
// a time (the limit per endpoint), check each recipient's presence when
// they take the job and POST the message with the recipients found offline,
// as JSON, signed with HMAC-SHA256 over a timestamp and the body (Sign,
// Verify). A network error, a 5xx or a 429 is retried with exponential
// backoff up to MaxAttempts; any other 4xx is not retried. A job that
// exhausts its attempts or gets a 4xx is a dead letter
// (imgn_webhook_dead_letters_total, and a log line); a job that finds the
// queue full is dropped (imgn_webhook_dropped_total).
//
// In a cluster each inbox owner reports the inboxes it stored, so the
// owner posts, once per message and recipient: a retried send is
// recognised for as long as the notifier remembers the pair (the last
// 65,536 to 131,072 recipients queued); a retry later than that may post
// again, with the same X-Imgn-Delivery value. The queue lives in memory:
// jobs queued when a node dies are lost (the event stream, package events,
// is the at-least-once record).
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/defaults"
	"github.com/imgn/imgn/persist"
)

// Defaults of Config.
const (
	DefaultQueueSize   = 10000
	DefaultConcurrency = 4
	DefaultMaxAttempts = 8
	DefaultTimeout     = 5 * time.Second
	DefaultBackoffMin  = 500 * time.Millisecond
	DefaultBackoffMax  = time.Minute
)

// Headers of a webhook request.
const (
	// HeaderSignature is "t=<unix seconds>,v1=<hex HMAC-SHA256>" (Sign).
	HeaderSignature = "X-Imgn-Signature"
	// HeaderEvent names the payload's type.
	HeaderEvent = "X-Imgn-Event"
	// HeaderDelivery is the message id: a receiver that got a retry of a
	// request it already handled finds the same value.
	HeaderDelivery = "X-Imgn-Delivery"
)

// TypeOffline is the type of the payload (Payload.Type).
const TypeOffline = "message.offline"

// Config configures a Notifier.
type Config struct {
	// URL receives the POSTs. Required.
	URL string
	// Secret signs every request. Required.
	Secret []byte
	// Online reports whether user has an online device (cluster-wide in a
	// cluster: engine.Server.Online). Required. It is called from the
	// workers and may block briefly.
	Online func(user string) bool
	// NodeID names the node in payloads.
	NodeID string
	// QueueSize bounds the jobs waiting for a worker.
	QueueSize int
	// Concurrency bounds the requests in flight to the endpoint.
	Concurrency int
	// MaxAttempts bounds the tries of one job (the first included).
	MaxAttempts int
	// Timeout bounds one request.
	Timeout time.Duration
	// BackoffMin and BackoffMax bound the wait between tries: it doubles
	// from BackoffMin, with jitter, up to BackoffMax.
	BackoffMin, BackoffMax time.Duration
	// Client sends the requests (default: a client with Timeout).
	Client *http.Client
	// Registry receives the metrics (nil: not registered).
	Registry prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// WithDefaults returns c with every zero field set to its default (the
// Default... constants above, BackoffMax raised to BackoffMin when only
// that is set; a client with Timeout; slog.Default()). It judges nothing:
// New calls WithDefaults, then Validate.
func (c Config) WithDefaults() Config {
	defaults.Set(&c.QueueSize, DefaultQueueSize)
	defaults.Set(&c.Concurrency, DefaultConcurrency)
	defaults.Set(&c.MaxAttempts, DefaultMaxAttempts)
	defaults.Set(&c.Timeout, DefaultTimeout)
	defaults.Set(&c.BackoffMin, DefaultBackoffMin)
	defaults.Set(&c.BackoffMax, max(DefaultBackoffMax, c.BackoffMin))
	if c.Client == nil && c.Timeout > 0 {
		c.Client = &http.Client{Timeout: c.Timeout}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate judges every field as given (call WithDefaults first: a zero
// that WithDefaults would fill is an error here) and reports every
// problem, naming the field and what it accepts. It changes nothing.
func (c Config) Validate() error {
	var errs []error
	if !strings.HasPrefix(c.URL, "http://") && !strings.HasPrefix(c.URL, "https://") {
		errs = append(errs, fmt.Errorf("URL must be an http:// or https:// URL, got %q", c.URL))
	}
	if len(c.Secret) == 0 {
		errs = append(errs, errors.New("a Secret is required (requests are signed)"))
	}
	if c.Online == nil {
		errs = append(errs, errors.New("an Online function is required"))
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"QueueSize", c.QueueSize}, {"Concurrency", c.Concurrency}, {"MaxAttempts", c.MaxAttempts}} {
		if f.v < 1 {
			errs = append(errs, fmt.Errorf("%s must be at least 1, got %d", f.name, f.v))
		}
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"Timeout", c.Timeout}, {"BackoffMin", c.BackoffMin}, {"BackoffMax", c.BackoffMax}} {
		if f.d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", f.name, f.d))
		}
	}
	if c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("BackoffMax (%s) must be at least BackoffMin (%s)", c.BackoffMax, c.BackoffMin))
	}
	if c.Client == nil {
		errs = append(errs, errors.New("a Client is required (WithDefaults makes one)"))
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("a Logger is required (WithDefaults sets slog.Default())"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("webhook: config: %w", err)
	}
	return nil
}

// Payload is the JSON body of a request.
type Payload struct {
	Type string `json:"type"`
	Node string `json:"node"`
	// Time is when the request was first built, Unix milliseconds.
	Time        int64  `json:"time"`
	MsgID       string `json:"msg_id"` // decimal
	From        string `json:"from,omitempty"`
	To          string `json:"to"`
	GroupID     string `json:"group_id,omitempty"`
	ClientMsgID string `json:"client_msg_id"`
	Kind        uint32 `json:"kind,omitempty"`
	Body        []byte `json:"body,omitempty"` // standard base64
	SentAt      int64  `json:"sent_at"`
	// Recipients are the recipients found with no online device.
	Recipients []Recipient `json:"recipients"`
}

// Recipient is one offline recipient of the message.
type Recipient struct {
	User         string `json:"user"`
	Seq          uint64 `json:"seq"`
	Conversation string `json:"conversation,omitempty"`
}

// Notifier posts offline-message webhooks. Its observer methods never
// block and are safe for concurrent use.
type Notifier struct {
	cfg    Config
	log    *slog.Logger
	queue  chan *Payload
	closed atomic.Bool
	stop   chan struct{}      // closed by Close: finish the queue and exit
	abort  chan struct{}      // closed when Close's deadline passed
	ctx    context.Context    // the requests' parent: canceled with abort
	cancel context.CancelFunc // cancels ctx
	wg     sync.WaitGroup
	now    func() time.Time
	recent recentSet

	dropped, deadLetters atomic.Uint64
	lastDrop             atomic.Int64

	m struct {
		posted, retries, dropped, dead, skipped prometheus.Counter
	}
}

var _ engine.Observer = (*Notifier)(nil)

// New returns a running Notifier (its workers are started).
func New(cfg Config) (*Notifier, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Notifier{cfg: cfg, log: cfg.Logger.With("component", "webhook"), queue: make(chan *Payload, cfg.QueueSize),
		stop: make(chan struct{}), abort: make(chan struct{}), now: time.Now}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	n.m.posted = counter("imgn_webhook_posted_total", "Webhook requests the endpoint accepted (2xx).")
	n.m.retries = counter("imgn_webhook_retries_total", "Webhook requests retried after a network error, a 5xx or a 429.")
	n.m.dropped = counter("imgn_webhook_dropped_total", "Webhook jobs dropped because the queue was full.")
	n.m.dead = counter("imgn_webhook_dead_letters_total", "Webhook jobs given up: a 4xx, or every attempt failed.")
	n.m.skipped = counter("imgn_webhook_skipped_total", "Webhook jobs not sent: every recipient was online when a worker took them.")
	if cfg.Registry != nil {
		queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "imgn_webhook_queue_length", Help: "Webhook jobs waiting for a worker."},
			func() float64 { return float64(len(n.queue)) })
		for _, c := range []prometheus.Collector{n.m.posted, n.m.retries, n.m.dropped, n.m.dead, n.m.skipped, queued} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("webhook: register metrics: %w", err)
			}
		}
	}
	for range cfg.Concurrency {
		n.wg.Go(n.work)
	}
	return n, nil
}

// Dropped returns the jobs dropped for a full queue; DeadLetters those
// given up.
func (n *Notifier) Dropped() uint64     { return n.dropped.Load() }
func (n *Notifier) DeadLetters() uint64 { return n.deadLetters.Load() }

// MessageStored implements engine.Observer: it queues a job for the
// recipients of the message that this node has not queued before.
//
// duplicate does not decide it: in a cluster every owner but the first
// appends a message that is already stored (duplicate is set) to inboxes
// that are new, and a client's retry may add inboxes too. The notifier
// remembers the (message, recipient) pairs of its recent jobs instead, so
// a retry soon after the first send posts nothing.
func (n *Notifier) MessageStored(m *persist.Message, inboxes []string, seqs []uint64, duplicate bool) {
	var rcpts []Recipient
	for i, in := range inboxes {
		if in != m.From && n.recent.add(m.ID, in) {
			rcpts = append(rcpts, Recipient{User: strings.Clone(in), Seq: seqs[i], Conversation: strings.Clone(engine.Conversation(m, in))})
		}
	}
	if len(rcpts) == 0 {
		return // only the sender's own inbox, or recipients queued before
	}
	p := &Payload{Type: TypeOffline, Node: n.cfg.NodeID, MsgID: strconv.FormatUint(m.ID, 10), From: strings.Clone(m.From),
		To: strings.Clone(m.To), ClientMsgID: strings.Clone(m.ClientMsgID), Kind: m.Kind, SentAt: m.Timestamp, Recipients: rcpts}
	if m.Group {
		p.GroupID = p.To
	}
	if len(m.Body) > 0 {
		p.Body = append([]byte(nil), m.Body...)
	}
	if n.closed.Load() {
		n.drop("the notifier is closed")
		return
	}
	select {
	case n.queue <- p:
	default:
		n.drop("the queue is full")
	}
}

// Delivered implements engine.Observer (nothing to post).
func (n *Notifier) Delivered(string, string, uint64) {}

// GroupChanged implements engine.Observer (nothing to post).
func (n *Notifier) GroupChanged(engine.GroupChange) {}

func (n *Notifier) drop(why string) {
	n.m.dropped.Inc()
	total := n.dropped.Add(1)
	now := n.now().UnixMilli()
	last := n.lastDrop.Load()
	if now-last >= 10_000 && n.lastDrop.CompareAndSwap(last, now) {
		n.log.Error("webhook jobs dropped: "+why, "queue_bound", n.cfg.QueueSize, "dropped_total", total, "url", n.cfg.URL)
	}
}

// Close stops taking jobs, lets the workers finish the queue (retries
// included) until ctx ends, then gives up on the rest, requests in flight
// included (counted as dropped), and waits for the workers.
func (n *Notifier) Close(ctx context.Context) error {
	if !n.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(n.stop)
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
		n.cancel()
		return nil
	case <-ctx.Done():
		close(n.abort)
		n.cancel() // requests in flight end now
		<-done
		return fmt.Errorf("webhook: close: %w", ctx.Err())
	}
}

// work runs jobs until Close, then what is left in the queue.
func (n *Notifier) work() {
	for {
		select {
		case p := <-n.queue:
			n.handle(p)
		case <-n.stop:
			for {
				select {
				case p := <-n.queue:
					n.handle(p)
				default:
					return
				}
			}
		}
	}
}

func (n *Notifier) handle(p *Payload) {
	select {
	case <-n.abort:
		n.drop("the node stopped before they were sent")
	default:
		n.run(p)
	}
}

// run sends one job: presence first, then the POST with its retries.
func (n *Notifier) run(p *Payload) {
	offline := p.Recipients[:0]
	for _, r := range p.Recipients {
		if !n.cfg.Online(r.User) {
			offline = append(offline, r)
		}
	}
	if len(offline) == 0 {
		n.m.skipped.Inc()
		return
	}
	p.Recipients = offline
	p.Time = n.now().UnixMilli()
	body, err := json.Marshal(p)
	if err != nil {
		n.dead(p, "encode: "+err.Error())
		return
	}
	wait := n.cfg.BackoffMin
	for attempt := 1; ; attempt++ {
		retry, after, err := n.post(body, p.MsgID)
		if err == nil {
			n.m.posted.Inc()
			return
		}
		if n.ctx.Err() != nil { // Close gave up on the request in flight
			n.drop("the node stopped before they were sent")
			return
		}
		if !retry {
			n.dead(p, err.Error())
			return
		}
		if attempt >= n.cfg.MaxAttempts {
			n.dead(p, fmt.Sprintf("%d attempts failed, the last: %v", attempt, err))
			return
		}
		n.m.retries.Inc()
		d := wait/2 + rand.N(wait/2+1)
		if after > d {
			d = min(after, n.cfg.BackoffMax)
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-n.abort:
			t.Stop()
			n.drop("the node stopped before they were sent")
			return
		}
		wait = min(2*wait, n.cfg.BackoffMax)
	}
}

func (n *Notifier) dead(p *Payload, why string) {
	n.m.dead.Inc()
	n.deadLetters.Add(1)
	n.log.Warn("webhook given up (dead letter)", "msg_id", p.MsgID, "recipients", len(p.Recipients), "url", n.cfg.URL, "reason", why)
}

// post sends one signed request. retry says whether a failure may be
// retried; after is the endpoint's Retry-After, if any.
func (n *Notifier) post(body []byte, msgID string) (retry bool, after time.Duration, err error) {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return false, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "imgn-webhook/1")
	req.Header.Set(HeaderEvent, TypeOffline)
	req.Header.Set(HeaderDelivery, msgID)
	req.Header.Set(HeaderSignature, Sign(n.cfg.Secret, n.now(), body))
	resp, err := n.cfg.Client.Do(req)
	if err != nil {
		return true, 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return false, 0, nil
	case code == http.StatusTooManyRequests || code >= 500:
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return true, time.Duration(max(secs, 0)) * time.Second, fmt.Errorf("endpoint answered %s", resp.Status)
	default:
		return false, 0, fmt.Errorf("endpoint answered %s (not retried)", resp.Status)
	}
}

// Sign returns the signature header value of body sent at t:
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<unix seconds>.<body>">".
// Signing the time with the body lets a receiver refuse replays of an old
// request (Verify).
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Errors of Verify.
var (
	ErrBadSignature = errors.New("webhook: signature does not match")
	ErrStale        = errors.New("webhook: signature timestamp outside the tolerance")
	ErrMalformed    = errors.New("webhook: malformed signature header")
)

// Verify checks a signature header (HeaderSignature) against body: the
// HMAC must match (compared in constant time) and its timestamp must be
// within tolerance of now, in either direction.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return ErrMalformed
	}
	want, err := hex.DecodeString(sig)
	if err != nil {
		return ErrMalformed
	}
	if !hmac.Equal(want, mac(secret, ts, body)) {
		return ErrBadSignature
	}
	if d := now.Sub(time.Unix(secs, 0)); d > tolerance || d < -tolerance {
		return ErrStale
	}
	return nil
}
