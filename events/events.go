// Package events publishes what a node stores to a Redis stream, for the
// applications around the IM server: push notifications, moderation,
// search indexing, analytics, archiving. Consumers read the stream with
// consumer groups (XREADGROUP, XACK); docs/events.md documents the schema
// and has a runnable consumer (examples/eventconsumer).
//
// A Publisher is an engine.Observer. The engine calls it where appends
// complete (under the memory store's lock, on the embedded store's
// committer), so its observer methods only copy the event into a bounded
// queue and return: publishing never blocks or fails a send. One goroutine
// takes batches from the queue and appends each batch to the stream with one
// Lua script (XADD ... MAXLEN ~ for every event, then the node's checkpoint),
// so a batch is in the stream entirely or not at all. While Redis cannot be
// reached the batch is retried with backoff (counted); events that arrive
// while the queue is full are dropped, counted in imgn_events_dropped_total
// and logged.
//
// Order: each inbox's message events reach the stream in seq order, with
// no hole. The engine reports a single node's appends in commit order; in
// a cluster, where two appends to one inbox may be reported the other way
// round, an event waits briefly for its predecessors (see sequencer). A
// hole (a dropped event, a report that never came) is filled from the
// store when the inbox's next event is published, so a dropped message
// event comes back then; dropped cursor and group events are lost. A
// retried batch, a retried send and the recovery below may repeat events.
//
// At-least-once across a crash: the event of a message is queued after the
// message's ack, so a node killed in between loses it from the queue. Each
// batch therefore also records the node's checkpoint: the time before which
// everything queued has been published. On start, Recover reads the store
// (persist.Replayer) from shortly before the checkpoint and publishes those
// messages again, before the node takes traffic. A consumer sees a message
// at least once and drops the seqs of an inbox it has already seen.
package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/defaults"
	"github.com/imgn/imgn/persist"
)

// Defaults of Config.
const (
	DefaultStream       = "imgn:events"
	DefaultMaxLen       = 1_000_000
	DefaultQueueSize    = 65536
	DefaultBatchSize    = 256
	DefaultReplayMargin = 30 * time.Second
	DefaultOpTimeout    = 5 * time.Second
)

// Config configures a Publisher. Zero fields take the defaults above.
type Config struct {
	// Addrs are the Redis servers, "host:port" (required unless Client is
	// set).
	Addrs              []string
	Username, Password string
	// Client, if set, is used instead of dialing Addrs; Close leaves it
	// open.
	Client rueidis.Client
	// Stream is the stream key. Every node of a cluster appends to the same
	// stream.
	Stream string
	// MaxLen trims the stream to about this many entries (XADD MAXLEN ~).
	MaxLen int64
	// QueueSize bounds the events waiting to be published; beyond it new
	// events are dropped (imgn_events_dropped_total).
	QueueSize int
	// BatchSize bounds the events of one round trip to Redis.
	BatchSize int
	// NodeID names the node in its events and its checkpoint key. Required.
	NodeID string
	// ReplayMargin is how far before the checkpoint Recover starts: the
	// longest a message may take from acceptance to ack.
	ReplayMargin time.Duration
	// OpTimeout bounds each round trip to Redis.
	OpTimeout time.Duration
	// Store, if set, fills the holes in an inbox's events (a dropped
	// event, an append reported late) from the entries it holds.
	Store persist.MessageStore
	// Unordered says that the engine may report two messages of one inbox
	// in the other order (cluster mode): each event then waits up to
	// UnorderedHold for its predecessors.
	Unordered bool
	// Registry receives the metrics (nil: not registered).
	Registry prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// WithDefaults returns c with every zero field set to its default (the
// Default... constants above; slog.Default()). It judges nothing: New
// calls WithDefaults, then Validate.
func (c Config) WithDefaults() Config {
	defaults.Set(&c.Stream, DefaultStream)
	defaults.Set(&c.MaxLen, DefaultMaxLen)
	defaults.Set(&c.QueueSize, DefaultQueueSize)
	defaults.Set(&c.BatchSize, DefaultBatchSize)
	defaults.Set(&c.ReplayMargin, DefaultReplayMargin)
	defaults.Set(&c.OpTimeout, DefaultOpTimeout)
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
	if c.NodeID == "" {
		errs = append(errs, errors.New("a NodeID is required"))
	}
	if c.Client == nil && len(c.Addrs) == 0 {
		errs = append(errs, errors.New("a Client or Addrs (the Redis servers) is required"))
	}
	if c.Stream == "" {
		errs = append(errs, errors.New("a non-empty Stream is required"))
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"MaxLen", c.MaxLen}, {"QueueSize", int64(c.QueueSize)}, {"BatchSize", int64(c.BatchSize)}} {
		if f.v < 1 {
			errs = append(errs, fmt.Errorf("%s must be at least 1, got %d", f.name, f.v))
		}
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"ReplayMargin", c.ReplayMargin}, {"OpTimeout", c.OpTimeout}} {
		if f.d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", f.name, f.d))
		}
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("a Logger is required (WithDefaults sets slog.Default())"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("events: config: %w", err)
	}
	return nil
}

// CheckpointKey is the key holding a node's checkpoint in Redis.
func CheckpointKey(stream, node string) string { return stream + ":checkpoint:" + node }

// Publisher appends a node's events to the stream. Its observer methods
// are safe for concurrent use and never block; Start and Close are called
// once each.
type Publisher struct {
	cfg   Config
	log   *slog.Logger
	queue chan *Event
	now   func() int64 // Unix ms

	mu     sync.Mutex // guards client creation
	client rueidis.Client
	own    bool

	closed   atomic.Bool
	stop     chan struct{} // closed by Close: drain and exit
	abort    chan struct{} // closed by Close when its deadline passed: stop retrying
	done     chan struct{} // closed when the publishing goroutine ends
	started  atomic.Bool
	dropped  atomic.Uint64
	lastDrop atomic.Int64 // Unix ms of the last drop log line

	m metrics
}

type metrics struct {
	published, dropped, failures, replayed, filled prometheus.Counter
	batch                                          prometheus.Histogram
}

// New returns a Publisher that is not running yet (Start). It does not
// contact Redis: a node starts while Redis is down, and its events wait in
// the queue.
func New(cfg Config) (*Publisher, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg, log: cfg.Logger.With("component", "events"), queue: make(chan *Event, cfg.QueueSize),
		now: func() int64 { return time.Now().UnixMilli() }, client: cfg.Client,
		stop: make(chan struct{}), abort: make(chan struct{}), done: make(chan struct{})}
	p.m = metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_events_published_total", Help: "Events appended to the Redis stream."}),
		dropped:   prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_events_dropped_total", Help: "Events dropped because the queue was full (its bound was exceeded)."}),
		failures:  prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_events_publish_failures_total", Help: "Round trips to Redis that failed and were retried."}),
		replayed:  prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_events_replayed_total", Help: "Events published again from the store at start (Recover)."}),
		filled:    prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_events_filled_total", Help: "Events read from the store to fill a hole in an inbox's events."}),
		batch:     prometheus.NewHistogram(prometheus.HistogramOpts{Name: "imgn_events_batch_size", Help: "Events per round trip to Redis.", Buckets: prometheus.ExponentialBuckets(1, 4, 6)}),
	}
	if cfg.Registry != nil {
		queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "imgn_events_queue_length", Help: "Events waiting to be published."},
			func() float64 { return float64(len(p.queue)) })
		for _, c := range []prometheus.Collector{p.m.published, p.m.dropped, p.m.failures, p.m.replayed, p.m.filled, p.m.batch, queued} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("events: register metrics: %w", err)
			}
		}
	}
	return p, nil
}

// Dropped returns the number of events dropped for a full queue.
func (p *Publisher) Dropped() uint64 { return p.dropped.Load() }

// Queued returns the number of events waiting to be published.
func (p *Publisher) Queued() int { return len(p.queue) }

// MessageStored implements engine.Observer.
func (p *Publisher) MessageStored(m *persist.Message, inboxes []string, seqs []uint64, duplicate bool) {
	p.offer(messageEvent(p.cfg.NodeID, p.now(), m, inboxes, seqs, duplicate))
}

// Delivered implements engine.Observer.
func (p *Publisher) Delivered(user, device string, seq uint64) {
	now := p.now()
	p.offer(&Event{V: SchemaVersion, Type: TypeDelivered, Node: p.cfg.NodeID, Time: now, enq: now,
		User: strings.Clone(user), Device: strings.Clone(device), Seq: seq})
}

// GroupChanged implements engine.Observer.
func (p *Publisher) GroupChanged(ch engine.GroupChange) {
	now := p.now()
	e := &Event{V: SchemaVersion, Type: string(ch.Kind), Node: p.cfg.NodeID, Time: ch.Time, enq: now,
		Group: strings.Clone(ch.Group), User: strings.Clone(ch.User), By: strings.Clone(ch.By), Name: strings.Clone(ch.Name),
		Owner: strings.Clone(ch.Owner)}
	// The strings may point into a request buffer reused after this call.
	for _, m := range ch.Members {
		e.Members = append(e.Members, strings.Clone(m))
	}
	p.offer(e)
}

var _ engine.Observer = (*Publisher)(nil)

// offer queues e without waiting; a full queue drops it.
func (p *Publisher) offer(e *Event) {
	if p.closed.Load() {
		p.drop(1, "the publisher is closed")
		return
	}
	select {
	case p.queue <- e:
	default:
		p.drop(1, "the queue is full")
	}
}

// dropLogEvery spaces the log lines about dropped events.
const dropLogEvery = 10 * time.Second

// drop counts n dropped events and logs, at most every dropLogEvery, what
// bound was exceeded.
func (p *Publisher) drop(n int, why string) {
	p.m.dropped.Add(float64(n))
	total := p.dropped.Add(uint64(n))
	now := p.now()
	last := p.lastDrop.Load()
	if now-last >= dropLogEvery.Milliseconds() && p.lastDrop.CompareAndSwap(last, now) {
		p.log.Error("events dropped: "+why, "queue_bound", p.cfg.QueueSize, "dropped_total", total,
			"hint", "Redis is unreachable or slower than the node; the stream misses these events")
	}
}

// Start starts the goroutine that publishes the queue. Call it once,
// after Recover (if any).
func (p *Publisher) Start() {
	if p.started.CompareAndSwap(false, true) {
		go p.run()
	}
}

// Close stops taking events, publishes what is queued (retrying while ctx
// allows), records the checkpoint, and releases the Redis client. Events
// still queued when ctx ends are dropped and counted. Close the Publisher
// after the engine has stopped, so nothing reports to it any more.
func (p *Publisher) Close(ctx context.Context) error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	var err error
	if p.started.Load() {
		close(p.stop)
		select {
		case <-p.done:
		case <-ctx.Done():
			err = fmt.Errorf("events: close: %w", ctx.Err())
			close(p.abort) // run gives up on its retries
			<-p.done
		}
	}
	if n := len(p.queue); n > 0 {
		p.drop(n, "the node stopped before Redis took them")
		err = errors.Join(err, fmt.Errorf("events: %d events not published", n))
	}
	p.mu.Lock()
	if p.own && p.client != nil {
		p.client.Close()
	}
	p.mu.Unlock()
	return err
}

// redis returns the client, dialing Redis the first time (rueidis then
// reconnects by itself).
func (p *Publisher) redis() (rueidis.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client != nil {
		return p.client, nil
	}
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: p.cfg.Addrs, Username: p.cfg.Username, Password: p.cfg.Password,
		ClientName: "imgn-events", DisableCache: true,
		Dialer:           net.Dialer{Timeout: p.cfg.OpTimeout, KeepAlive: time.Second},
		ConnWriteTimeout: p.cfg.OpTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("events: connect to Redis %v: %w", p.cfg.Addrs, err)
	}
	p.client, p.own = c, true
	return c, nil
}

// publishScript appends ARGV[3..] (type, data pairs) to the stream
// KEYS[1], trimmed to about ARGV[1] entries, and sets the checkpoint
// KEYS[2] to ARGV[2], atomically.
var publishScript = rueidis.NewLuaScript(`
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[i], 'data', ARGV[i + 1])
end
redis.call('SET', KEYS[2], ARGV[2])
return (#ARGV - 2) / 2
`)

// Retry backoff of a failed round trip.
const (
	retryMin = 50 * time.Millisecond
	retryMax = 5 * time.Second
)

// run publishes the queue in batches, each inbox's events in order (see
// sequencer), until Close; then it drains the queue.
func (p *Publisher) run() {
	defer close(p.done)
	hold := time.Duration(0)
	if p.cfg.Unordered {
		hold = UnorderedHold
	}
	seq := newSequencer(p.cfg.Store, hold, p.cfg.NodeID, p.now, func(n int) { p.m.filled.Add(float64(n)) })
	maxPending := max(4*p.cfg.BatchSize, 8192)
	args := make([]string, 0, 2+2*p.cfg.BatchSize)
	var ckpt int64
	stopping := false
	for {
		held, _ := seq.held()
		if held == 0 && stopping && len(p.queue) == 0 {
			return // closed and drained
		}
		// Wait for an event (or for a hold to end), then take what is
		// queued.
		if !stopping {
			var timer *time.Timer
			var expired <-chan time.Time
			if d := seq.wait(); d > 0 {
				timer = time.NewTimer(d)
				expired = timer.C
			}
			select {
			case e := <-p.queue:
				seq.add(e)
			case <-expired:
			case <-p.stop:
				stopping = true
			}
			if timer != nil {
				timer.Stop()
			}
		}
	take:
		for n, _ := seq.held(); n < maxPending; n++ {
			select {
			case e := <-p.queue:
				seq.add(e)
			default:
				break take
			}
		}
		ready := seq.ready(context.Background(), stopping)
		_, oldestHeld := seq.held()
		for len(ready) > 0 {
			batch := ready[:min(len(ready), p.cfg.BatchSize)]
			ready = ready[len(batch):]
			// The checkpoint: every event queued before it is published,
			// except those still held.
			for _, e := range batch {
				ckpt = max(ckpt, e.enq)
			}
			if n, _ := seq.held(); n > 0 {
				ckpt = min(ckpt, oldestHeld)
			}
			args = p.encode(batch, ckpt, args[:0])
			if !p.publish(batch, args) {
				n, _ := seq.held()
				p.drop(len(batch)+len(ready)+n, "the node stopped before Redis took them")
				return
			}
		}
	}
}

// encode renders batch, and the checkpoint that goes with it, as the
// script's arguments.
func (p *Publisher) encode(batch []*Event, ckpt int64, args []string) []string {
	args = append(args, strconv.FormatInt(p.cfg.MaxLen, 10), strconv.FormatInt(ckpt, 10))
	for _, e := range batch {
		data, err := json.Marshal(e)
		if err != nil { // cannot happen for these types; never lose the slot
			data = fmt.Appendf(nil, `{"v":%d,"type":%q,"node":%q,"error":%q}`, SchemaVersion, e.Type, e.Node, err.Error())
		}
		args = append(args, e.Type, string(data))
	}
	return args
}

// publish appends one batch, retrying with backoff until it succeeds. It
// returns false when Close gave up waiting (abort).
func (p *Publisher) publish(batch []*Event, args []string) bool {
	keys := []string{p.cfg.Stream, CheckpointKey(p.cfg.Stream, p.cfg.NodeID)}
	wait := retryMin
	for attempt := 0; ; attempt++ {
		err := p.exec(keys, args)
		if err == nil {
			p.m.published.Add(float64(len(batch)))
			p.m.batch.Observe(float64(len(batch)))
			if attempt > 0 {
				p.log.Info("events: Redis is back", "retries", attempt)
			}
			return true
		}
		p.m.failures.Inc()
		if attempt == 0 || attempt%20 == 0 {
			p.log.Warn("events: publish failed; retrying", "events", len(batch), "queued", len(p.queue), "err", err)
		}
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-t.C:
		case <-p.abort:
			t.Stop()
			return false
		}
		wait = min(2*wait, retryMax)
	}
}

func (p *Publisher) exec(keys, args []string) error {
	c, err := p.redis()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.OpTimeout)
	defer cancel()
	return publishScript.Exec(ctx, c, keys, args).Error()
}
