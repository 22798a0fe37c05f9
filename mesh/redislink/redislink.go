// Package redislink is the Redis pub/sub mesh.Transport (`--mesh redis`,
// the older design's alternative to direct links), on github.com/redis/rueidis.
//
// Every node subscribes to one channel, ChannelPrefix+<node id>
// ("im:mesh:n1"). A request to node X is published to X's channel; an
// APPEND carries the requester's id and boot epoch, and its APPEND_RESULT
// is published to the requester's channel with the request id in the
// header seq and the epoch echoed, so that a restarted requester ignores
// answers meant for its previous run. Each published message is one IMGN
// mesh frame, byte for byte what a direct link carries (docs/cluster.md,
// "Mesh frames").
//
// Redis pub/sub is at-most-once: a message published while the receiver
// is not subscribed (down, restarting, reconnecting to Redis) is lost.
// Hence: a PUBLISH that reaches no subscriber fails its Append at once
// with cluster.ErrForward; any other loss (of the request or of the reply)
// ends in cluster.ErrForward when the deadline passes. An Append never
// reports success without the owner's reply. Pushes and kicks are best
// effort. Per-peer order: one goroutine publishes each peer's requests in
// call order over one pipelined connection, and the receiver handles them
// in arrival order (appends and admin requests concurrently, at most
// MaxInflight at once; pushes, kicks and signals one at a time). Received
// requests are decoded and run by mesh.Inbound, as on a direct link.
package redislink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/rueidis"
	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/defaults"
	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/meshpb"
	"github.com/imgn/imgn/persist"
)

// Defaults of Config; those both transports have are the mesh's.
const (
	DefaultChannelPrefix  = "im:mesh:"
	DefaultRequestTimeout = mesh.DefaultRequestTimeout
	DefaultQueueSize      = mesh.DefaultQueueSize
	DefaultMaxInflight    = mesh.DefaultMaxInflight
	DefaultInboundQueue   = 4096
	DefaultMaxBody        = mesh.DefaultMeshMaxBody
)

// publishBatch is the most frames one pipelined round trip publishes.
const publishBatch = 128

// Config configures a Transport. Zero fields take the defaults named.
type Config struct {
	// Addrs are the Redis addresses to dial (ignored when Client is set).
	Addrs    []string
	Username string
	Password string
	DB       int
	// Client, if set, is used instead of dialing Addrs; Close does not
	// close it.
	Client rueidis.Client
	// ChannelPrefix starts every node's channel (DefaultChannelPrefix).
	// All nodes of a cluster must use the same prefix.
	ChannelPrefix string
	// RequestTimeout bounds an Append whose ctx has no deadline
	// (DefaultRequestTimeout); it is also the owner's budget for a request
	// that announces none, and bounds each PUBLISH.
	RequestTimeout time.Duration
	// QueueSize bounds, per peer, the Appends waiting for a reply and,
	// separately, the frames waiting to be published (DefaultQueueSize).
	// Beyond it Append fails at once with cluster.ErrForward; pushes and
	// kicks are dropped.
	QueueSize int
	// MaxInflight bounds the forwarded appends and admin requests this
	// node handles at once (DefaultMaxInflight).
	MaxInflight int
	// InboundQueue bounds the received requests waiting to be handled
	// (DefaultInboundQueue). Beyond it requests are dropped (their
	// senders' Appends time out into cluster.ErrForward): the subscription
	// is never blocked, since rueidis shares its connection.
	InboundQueue int
	// MaxBody is the largest frame body sent or accepted
	// (DefaultMaxBody).
	MaxBody int
	// Logger receives subscription and publishing failures (default
	// slog.Default()).
	Logger *slog.Logger
}

// Transport is the Redis pub/sub mesh.Transport. It is safe for concurrent
// use.
type Transport struct {
	cfg       Config
	log       *slog.Logger
	client    rueidis.Client
	ownClient bool
	dec       codec.Decoder

	mu    sync.Mutex // guards state, self, h, peers
	state int
	self  membership.NodeInfo
	h     cluster.Handler
	peers map[string]*peer

	// pending holds the requests waiting for a reply on this node's
	// channel, by frame seq, whichever peer they went to.
	pending mesh.Pending

	inbound chan inMsg
	sem     chan struct{}

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the transport
}

var _ mesh.Transport = (*Transport)(nil)

const (
	stateNew = iota
	stateStarted
	stateClosed
)

// peer is one node this node sends to: a bounded queue and the goroutine
// that publishes it.
type peer struct {
	id      string
	channel string
	queue   chan outMsg
	ctx     context.Context
	cancel  context.CancelFunc
	pp      *mesh.PendingPeer // refused once the peer is removed
}

// outMsg is one encoded frame waiting to be published. Its bytes are not
// pooled: rueidis may still hold them after a timed-out call returns.
type outMsg struct {
	frame   []byte
	id      uint32    // the pending append's id, 0 for push and kick
	expires time.Time // a push or kick older than this is dropped
}

// inMsg is a received request waiting for the dispatcher.
type inMsg struct {
	cmd  codec.Command
	seq  uint32
	body string
}

// New applies cfg's defaults, validates it and connects to Redis (failing
// if it cannot be reached at all). The transport is idle until Start.
func New(cfg Config) (*Transport, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("redislink: config: %w", err)
	}
	t := &Transport{
		cfg: cfg, log: cfg.Logger, client: cfg.Client, dec: codec.Decoder{MaxBody: cfg.MaxBody},
		peers:   make(map[string]*peer),
		inbound: make(chan inMsg, cfg.InboundQueue), sem: make(chan struct{}, cfg.MaxInflight),
	}
	if t.client == nil {
		if len(cfg.Addrs) == 0 {
			return nil, errors.New("redislink: no Redis address configured")
		}
		c, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress:      cfg.Addrs,
			Username:         cfg.Username,
			Password:         cfg.Password,
			SelectDB:         cfg.DB,
			ClientName:       "imgn-mesh",
			DisableCache:     true,
			Dialer:           net.Dialer{Timeout: cfg.RequestTimeout, KeepAlive: time.Second},
			ConnWriteTimeout: max(3*time.Second, 2*cfg.RequestTimeout),
		})
		if err != nil {
			return nil, fmt.Errorf("redislink: connect %v: %w", cfg.Addrs, err)
		}
		t.client, t.ownClient = c, true
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t, nil
}

// WithDefaults returns c with every zero field set to its default (the
// Default... constants above). It does not validate.
func (c Config) WithDefaults() Config {
	defaults.Set(&c.ChannelPrefix, DefaultChannelPrefix)
	defaults.Set(&c.RequestTimeout, DefaultRequestTimeout)
	defaults.Set(&c.QueueSize, DefaultQueueSize)
	defaults.Set(&c.MaxInflight, DefaultMaxInflight)
	defaults.Set(&c.InboundQueue, DefaultInboundQueue)
	defaults.Set(&c.MaxBody, DefaultMaxBody)
	defaults.Set(&c.Logger, slog.Default())
	return c
}

// Validate reports every invalid field of c (after WithDefaults); it
// changes nothing.
func (c Config) Validate() error {
	errs := mesh.CheckLimits(c.RequestTimeout, c.QueueSize, c.MaxInflight, c.MaxBody)
	if c.InboundQueue < 0 {
		errs = append(errs, fmt.Errorf("InboundQueue must not be negative, got %d", c.InboundQueue))
	}
	return errors.Join(errs...)
}

// Start implements mesh.Transport: it subscribes to this node's channel
// and returns once Redis confirmed the subscription. When ctx ends first
// it returns the error and keeps trying in the background; Close releases
// the transport either way.
func (t *Transport) Start(ctx context.Context, self membership.NodeInfo, h cluster.Handler) error {
	if h == nil {
		return errors.New("redislink: nil handler")
	}
	if err := membership.ValidateNode(membership.NodeInfo{ID: self.ID}); err != nil {
		return err
	}
	t.mu.Lock()
	if t.state != stateNew {
		t.mu.Unlock()
		return errors.New("redislink: Start called twice or after Close")
	}
	t.state = stateStarted
	t.self, t.h = self, h
	t.log = t.log.With("node", self.ID)
	subscribed := make(chan struct{})
	t.wg.Add(2)
	go t.subscribeLoop(subscribed)
	go t.dispatch()
	for _, p := range t.peers {
		t.startPeerLocked(p)
	}
	t.mu.Unlock()
	select {
	case <-subscribed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("redislink: subscribe to %s%s: %w", t.cfg.ChannelPrefix, self.ID, ctx.Err())
	}
}

// Addr implements mesh.Transport: peers need no address.
func (t *Transport) Addr() string { return "" }

// SetPeers implements mesh.Transport.
func (t *Transport) SetPeers(peers []membership.NodeInfo) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state == stateClosed {
		return
	}
	seen := make(map[string]bool, len(peers))
	for _, n := range peers {
		if n.ID == "" || n.ID == t.self.ID {
			continue
		}
		seen[n.ID] = true
		if t.peers[n.ID] != nil {
			continue // the channel depends on the id only
		}
		ctx, cancel := context.WithCancel(t.ctx)
		p := &peer{id: n.ID, channel: t.cfg.ChannelPrefix + n.ID, queue: make(chan outMsg, t.cfg.QueueSize), ctx: ctx, cancel: cancel,
			pp: t.pending.NewPeer(n.ID)}
		t.peers[n.ID] = p
		if t.state == stateStarted {
			t.startPeerLocked(p)
		}
	}
	for id, p := range t.peers {
		if !seen[id] {
			p.cancel()
			delete(t.peers, id)
			t.failPeer(p, "peer left the cluster")
		}
	}
}

func (t *Transport) startPeerLocked(p *peer) {
	t.wg.Add(1)
	go t.publishLoop(p)
}

func (t *Transport) peer(id string) *peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != stateStarted {
		return nil
	}
	return t.peers[id]
}

// Close implements mesh.Transport: it unsubscribes, stops publishing,
// fails the Appends in flight with cluster.ErrForward, cancels the contexts
// of handler calls in flight and waits for every goroutine (handler calls
// included). It closes the Redis client unless Config.Client supplied it.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.state == stateClosed {
		t.mu.Unlock()
		return nil
	}
	t.state = stateClosed
	for id, p := range t.peers {
		p.cancel()
		delete(t.peers, id)
		t.failPeer(p, "transport closed")
	}
	t.cancel()
	t.mu.Unlock()
	t.wg.Wait()
	t.pending.FailAll("transport closed")
	if t.ownClient {
		t.client.Close()
	}
	return nil
}

// ---- sending ----

// Append implements mesh.Transport.
func (t *Transport) Append(ctx context.Context, node string, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	return t.append(ctx, node, msg, inboxes, false)
}

// AppendEntries implements mesh.Transport.
func (t *Transport) AppendEntries(ctx context.Context, node string, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	return t.append(ctx, node, msg, inboxes, true)
}

func (t *Transport) append(ctx context.Context, node string, msg persist.Message, inboxes []string, entriesOnly bool) (persist.AppendResult, error) {
	r := t.call(ctx, node, meshpb.CmdAppend, func(budgetMs uint32) proto.Message {
		return &meshpb.AppendRequest{
			Msg: meshpb.FromMessage(msg), Inboxes: inboxes, TimeoutMs: budgetMs, EntriesOnly: entriesOnly,
			ReplyTo: t.self.ID, ReplyEpoch: t.self.BootEpoch,
		}
	})
	return r.Res, r.Err
}

// Admin implements mesh.Transport.
func (t *Transport) Admin(ctx context.Context, node string, req cluster.AdminRequest) (int, error) {
	r := t.call(ctx, node, meshpb.CmdAdmin, func(uint32) proto.Message {
		m := meshpb.FromAdmin(req)
		m.ReplyTo, m.ReplyEpoch = t.self.ID, t.self.BootEpoch
		return m
	})
	return r.Count, r.Err
}

// call publishes one request to node (body gets the remaining budget in
// ms) and waits for its reply or the deadline. Every failure wraps
// cluster.ErrForward.
func (t *Transport) call(ctx context.Context, node string, cmd codec.Command, body func(budgetMs uint32) proto.Message) mesh.CallResult {
	p := t.peer(node)
	if p == nil {
		return mesh.CallResult{Err: mesh.ForwardError(node, "not a known peer (unknown node, or transport not running)", nil)}
	}
	ctx, cancel, budget, err := mesh.RequestBudget(ctx, node, t.cfg.RequestTimeout)
	defer cancel()
	if err != nil {
		return mesh.CallResult{Err: err}
	}
	req := body(budget)
	id, done, err := t.pending.Add(p.pp, t.cfg.QueueSize)
	if err != nil {
		return mesh.CallResult{Err: err}
	}
	frame, err := codec.AppendFrame(nil, codec.Protobuf, cmd, 0, id, req)
	if err == nil && len(frame)-codec.HeaderSize > t.cfg.MaxBody {
		err = fmt.Errorf("%w: %s of %d bytes exceeds the mesh frame limit %d", persist.ErrInvalid, cmd, len(frame)-codec.HeaderSize, t.cfg.MaxBody)
	}
	if err != nil {
		t.pending.Forget(id)
		return mesh.CallResult{Err: fmt.Errorf("redislink: node %s: %w", node, err)}
	}
	select {
	case p.queue <- outMsg{frame: frame, id: id}:
	default:
		t.pending.Forget(id)
		return mesh.CallResult{Err: mesh.ForwardError(node, "publish queue full", nil)}
	}
	r, ok := t.pending.Wait(ctx, id, done)
	if !ok {
		return mesh.CallResult{Err: mesh.ForwardError(node, "no reply in time (pub/sub may have lost the request or the reply)", ctx.Err())}
	}
	return r
}

// Push implements mesh.Transport.
func (t *Transport) Push(node string, msg persist.Message, targets []cluster.PushTarget) {
	t.send(node, meshpb.CmdPush, &meshpb.PushRequest{Msg: meshpb.FromMessage(msg), Targets: meshpb.FromTargets(targets)})
}

// Signal implements mesh.Transport.
func (t *Transport) Signal(node string, sig cluster.Signal) {
	t.send(node, meshpb.CmdSignal, meshpb.FromSignal(sig))
}

// Kick implements mesh.Transport.
func (t *Transport) Kick(node, user, device string, connID uint64) {
	t.send(node, meshpb.CmdKick, &meshpb.KickRequest{User: user, Device: device, ConnId: connID})
}

func (t *Transport) send(node string, cmd codec.Command, m proto.Message) {
	p := t.peer(node)
	if p == nil {
		return
	}
	frame, err := codec.AppendFrame(nil, codec.Protobuf, cmd, 0, 0, m)
	if err != nil || len(frame)-codec.HeaderSize > t.cfg.MaxBody {
		t.log.Warn("redislink: frame not sent", "peer", node, "cmd", cmd, "err", err)
		return
	}
	select {
	case p.queue <- outMsg{frame: frame, expires: time.Now().Add(t.cfg.RequestTimeout)}:
	default:
		t.log.Debug("redislink: queue full; dropped", "peer", node, "cmd", cmd)
	}
}

// failPeer fails every pending call to p and refuses new ones.
func (t *Transport) failPeer(p *peer, why string) {
	// Refuse before failing, so that no request slips in between.
	t.pending.Refuse(p.pp, mesh.ForwardError(p.id, "peer gone", nil))
	t.pending.Fail(p.pp, mesh.ForwardError(p.id, why, nil))
}

// publishLoop publishes p's queue in order, pipelining up to publishBatch
// frames per round trip, until p is removed or the transport closes.
func (t *Transport) publishLoop(p *peer) {
	defer t.wg.Done()
	batch := make([]outMsg, 0, publishBatch)
	for {
		batch = batch[:0]
		// A fresh command slice each round: rueidis keeps reading it after
		// a DoMulti that returned early on its deadline.
		var cmds rueidis.Commands
		select {
		case <-p.ctx.Done():
			return
		case m := <-p.queue:
			batch = append(batch, m)
		}
		yielded := false // yield once, so concurrent callers share the round trip
	fill:
		for len(batch) < publishBatch {
			select {
			case m := <-p.queue:
				batch = append(batch, m)
			default:
				if yielded {
					break fill
				}
				yielded = true
				runtime.Gosched()
			}
		}
		now := time.Now()
		sent := batch[:0]
		for _, m := range batch {
			if m.id != 0 && !t.pending.Waiting(m.id) || m.id == 0 && now.After(m.expires) {
				continue // the caller gave up, or a stale push
			}
			sent = append(sent, m)
			cmds = append(cmds, t.client.B().Publish().Channel(p.channel).Message(rueidis.BinaryString(m.frame)).Build())
		}
		if len(cmds) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(p.ctx, t.cfg.RequestTimeout)
		resps := t.client.DoMulti(ctx, cmds...)
		cancel()
		for i, m := range sent {
			n, err := resps[i].AsInt64()
			switch {
			case m.id == 0:
				if err != nil {
					t.log.Debug("redislink: publish failed; dropped", "peer", p.id, "err", err)
				}
			case err != nil:
				t.pending.Complete(m.id, mesh.CallResult{Err: mesh.ForwardError(p.id, "publish failed", err)})
			case n == 0:
				t.pending.Complete(m.id, mesh.CallResult{Err: mesh.ForwardError(p.id, "nobody subscribed to "+p.channel+" (node down or restarting)", nil)})
			}
		}
	}
}

// ---- receiving ----

// subscribeLoop keeps this node subscribed to its channel, resubscribing
// with backoff when the subscription breaks, until Close. It closes
// subscribed at the first confirmation.
func (t *Transport) subscribeLoop(subscribed chan<- struct{}) {
	defer t.wg.Done()
	channel := t.cfg.ChannelPrefix + t.self.ID
	var once sync.Once
	var confirmed atomic.Bool // set by rueidis's goroutine
	failures := 0
	for t.ctx.Err() == nil {
		ctx := rueidis.WithOnSubscriptionHook(t.ctx, func(s rueidis.PubSubSubscription) {
			if s.Kind == "subscribe" {
				confirmed.Store(true)
				once.Do(func() { close(subscribed) })
			}
		})
		err := t.client.Receive(ctx, t.client.B().Subscribe().Channel(channel).Build(), t.onMessage)
		if t.ctx.Err() != nil {
			return
		}
		if confirmed.Swap(false) {
			failures = 0 // it worked for a while: retry soon
		}
		failures++
		d := rand.N(min(50*time.Millisecond<<min(failures, 6), 2*time.Second))
		t.log.Warn("redislink: subscription lost; resubscribing", "channel", channel, "err", err, "retry_in", d)
		select {
		case <-time.After(d):
		case <-t.ctx.Done():
			return
		}
	}
}

// onMessage runs on rueidis's connection goroutine: it must not block. A
// reply completes its call; a request is queued for the dispatcher
// (dropped if the queue is full); anything malformed is dropped.
func (t *Transport) onMessage(m rueidis.PubSubMessage) {
	b := unsafe.Slice(unsafe.StringData(m.Message), len(m.Message)) // read only
	f, ok, err := t.dec.ParseFrame(b)
	switch {
	case err != nil || !ok || f.FrameSize() != len(b):
		t.log.Warn("redislink: malformed message dropped", "channel", m.Channel, "len", len(b), "err", err)
		return
	case f.Serializer != codec.Protobuf || !f.Command.IsMesh():
		t.log.Warn("redislink: non-mesh frame dropped", "serializer", f.Serializer, "cmd", f.Command)
		return
	}
	switch f.Command {
	case meshpb.CmdAppendResult:
		var r meshpb.AppendResult
		if err := proto.Unmarshal(f.Body, &r); err != nil {
			t.log.Warn("redislink: undecodable reply dropped", "err", err)
			return
		}
		if r.ToEpoch != t.self.BootEpoch {
			return // meant for a previous run of this node
		}
		peer, ok := t.pending.PeerOf(f.Seq)
		if !ok {
			return // timed out already
		}
		res, rerr := r.Result(peer)
		t.pending.Complete(f.Seq, mesh.CallResult{Res: res, Err: rerr})
	case meshpb.CmdAdminResult:
		var r meshpb.AdminResult
		if err := proto.Unmarshal(f.Body, &r); err != nil {
			t.log.Warn("redislink: undecodable reply dropped", "err", err)
			return
		}
		if r.ToEpoch != t.self.BootEpoch {
			return
		}
		peer, ok := t.pending.PeerOf(f.Seq)
		if !ok {
			return
		}
		n, rerr := r.Result(peer)
		t.pending.Complete(f.Seq, mesh.CallResult{Count: n, Err: rerr})
	default:
		// Requests, and anything else the dispatcher will refuse.
		body := m.Message[codec.HeaderSize:] // strings are immutable: safe to keep
		select {
		case t.inbound <- inMsg{cmd: f.Command, seq: f.Seq, body: body}:
		default:
			t.log.Warn("redislink: inbound queue full; request dropped", "cmd", f.Command)
		}
	}
}

// dispatch hands received requests to mesh.Inbound in arrival order:
// pushes, kicks and signals run inline, appends and admin requests in
// goroutines (at most MaxInflight). What mesh.Inbound refuses
// (mesh.ErrBadRequest), and a request without a valid reply_to, is logged
// and dropped: pub/sub has no link to close.
func (t *Transport) dispatch() {
	defer t.wg.Done()
	in := mesh.Inbound{Handler: t.h, RequestTimeout: t.cfg.RequestTimeout, Logger: t.log}
	for {
		var m inMsg
		select {
		case <-t.ctx.Done():
			return
		case m = <-t.inbound:
		}
		body := unsafe.Slice(unsafe.StringData(m.body), len(m.body)) // read only
		req, err := in.Dispatch(m.cmd, body)
		if err != nil {
			t.log.Warn("redislink: request dropped", "err", err)
			continue
		}
		if req == nil {
			continue // a one-way command, run already
		}
		to, _ := req.ReplyTo()
		if membership.ValidateNode(membership.NodeInfo{ID: to}) != nil {
			t.log.Warn("redislink: request without a valid reply_to dropped", "cmd", m.cmd, "reply_to", to)
			continue
		}
		if !t.spawn(func() { t.serve(req, m.seq, to) }) {
			return
		}
	}
}

// spawn runs f on its own goroutine, at most MaxInflight at once, waiting
// for a slot; it reports false (f not run) once the transport is closing.
func (t *Transport) spawn(f func()) bool {
	select {
	case t.sem <- struct{}{}:
	case <-t.ctx.Done():
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer func() { <-t.sem }()
		f()
	}()
	return true
}

// serve runs one request and publishes its reply to node to's channel. A
// reply that cannot be published is dropped: the requester times out.
// Encoding and publishing are separate calls so that the handler, deep
// under Serve, does not also carry the publishing frame on its stack.
func (t *Transport) serve(req *mesh.Request, seq uint32, to string) {
	if frame := t.encodeReply(req, seq); frame != nil {
		t.publishReply(to, frame)
	}
}

// encodeReply serves req and returns its reply frame (nil, logged, when
// none could be encoded).
func (t *Transport) encodeReply(req *mesh.Request, seq uint32) []byte {
	var frame []byte
	err := req.Serve(t.ctx, func(cmd codec.Command, m proto.Message) (err error) {
		frame, err = codec.AppendFrame(nil, codec.Protobuf, cmd, 0, seq, m)
		return err
	})
	if err != nil {
		t.log.Error("redislink: reply not sent", "err", err)
		return nil
	}
	return frame
}

func (t *Transport) publishReply(to string, frame []byte) {
	ctx, cancel := context.WithTimeout(t.ctx, t.cfg.RequestTimeout)
	defer cancel()
	channel := t.cfg.ChannelPrefix + to
	if err := t.client.Do(ctx, t.client.B().Publish().Channel(channel).Message(rueidis.BinaryString(frame)).Build()).Error(); err != nil {
		t.log.Debug("redislink: reply not published; the requester will time out", "to", to, "err", err)
	}
}
