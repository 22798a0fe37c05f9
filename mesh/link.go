package mesh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/defaults"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/meshpb"
	"github.com/imgn/imgn/persist"
)

// Defaults of LinkConfig.
const (
	DefaultRequestTimeout = 2 * time.Second
	DefaultQueueSize      = 1024
	DefaultMaxInflight    = 256
	DefaultMeshMaxBody    = 1 << 20
	DefaultDialTimeout    = time.Second
	DefaultBackoffMin     = 100 * time.Millisecond
	DefaultBackoffMax     = 5 * time.Second
	DefaultPingInterval   = time.Second
	DefaultWriteTimeout   = 5 * time.Second
)

// LinkConfig configures Links. Zero fields take the defaults named.
type LinkConfig struct {
	// RequestTimeout bounds a forwarded Append whose ctx has no deadline
	// (DefaultRequestTimeout). It is also the owner's budget for a request
	// that announces none.
	RequestTimeout time.Duration
	// QueueSize bounds, per peer, the Appends waiting for their reply and,
	// separately, the frames waiting to be written (DefaultQueueSize).
	// Beyond it Append fails at once with cluster.ErrForward and Push and
	// Kick are dropped.
	QueueSize int
	// MaxInflight bounds, per inbound link, the forwarded appends being
	// handled at once (DefaultMaxInflight). When it is reached the link
	// stops reading, which pushes back through TCP to the sender's bounded
	// queue.
	MaxInflight int
	// MaxBody is the largest mesh frame body sent or accepted
	// (DefaultMeshMaxBody). A larger incoming frame closes the link; a
	// larger outgoing Append fails with persist.ErrInvalid.
	MaxBody int
	// DialTimeout bounds a dial plus the HELLO exchange
	// (DefaultDialTimeout).
	DialTimeout time.Duration
	// BackoffMin and BackoffMax shape reconnection: the n-th consecutive
	// failed attempt waits a uniformly random time in
	// [0, min(BackoffMax, BackoffMin*2^(n-1))) (full jitter). Defaults
	// DefaultBackoffMin and DefaultBackoffMax.
	BackoffMin, BackoffMax time.Duration
	// PingInterval is how often a dialer sends PING; either side closes a
	// link on which nothing arrived for three intervals
	// (DefaultPingInterval). The dialer announces its interval in HELLO.
	PingInterval time.Duration
	// WriteTimeout bounds one batched write; a peer that stops reading is
	// disconnected after it (DefaultWriteTimeout).
	WriteTimeout time.Duration
	// Logger receives link state changes (default slog.Default()).
	Logger *slog.Logger
	// Secret, when set, authenticates every link: both ends prove they
	// know it by an HMAC challenge at link setup, and a peer that does not
	// is refused (see link_auth.go). Every node of a cluster must have the
	// same secret, or none.
	Secret []byte
	// AuthFailures, if set, counts the links refused for authentication
	// (as Links.AuthFailures does), e.g. a prometheus.Counter.
	AuthFailures interface{ Inc() }
}

// WithDefaults returns c with every zero field set to its default (the
// Default... constants above). It does not validate.
func (c LinkConfig) WithDefaults() LinkConfig {
	defaults.Set(&c.RequestTimeout, DefaultRequestTimeout)
	defaults.Set(&c.DialTimeout, DefaultDialTimeout)
	defaults.Set(&c.BackoffMin, DefaultBackoffMin)
	defaults.Set(&c.BackoffMax, DefaultBackoffMax)
	defaults.Set(&c.PingInterval, DefaultPingInterval)
	defaults.Set(&c.WriteTimeout, DefaultWriteTimeout)
	defaults.Set(&c.QueueSize, DefaultQueueSize)
	defaults.Set(&c.MaxInflight, DefaultMaxInflight)
	defaults.Set(&c.MaxBody, DefaultMeshMaxBody)
	defaults.Set(&c.Logger, slog.Default())
	return c
}

// Validate reports every invalid field of c (after WithDefaults: a zero
// field is not a default to it); it changes nothing.
func (c LinkConfig) Validate() error {
	errs := CheckLimits(c.RequestTimeout, c.QueueSize, c.MaxInflight, c.MaxBody)
	for name, d := range map[string]time.Duration{
		"DialTimeout": c.DialTimeout, "BackoffMin": c.BackoffMin, "BackoffMax": c.BackoffMax,
		"PingInterval": c.PingInterval, "WriteTimeout": c.WriteTimeout,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative, got %s", name, d))
		}
	}
	if c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("BackoffMax (%s) is below BackoffMin (%s)", c.BackoffMax, c.BackoffMin))
	}
	return errors.Join(errs...)
}

// Links is the direct TCP Transport (`--mesh direct`, the default).
//
// Each node listens on its MeshAddr and dials every peer once: the link it
// dials carries its own requests to that peer (and their replies); links
// it accepts only serve the peer's requests. Each peer therefore has one
// ordered link per direction, which pins every user to one link and keeps
// per-user order. Frames are IMGN frames with mesh commands and protobuf
// bodies (docs/cluster.md, "Mesh frames"); a HELLO exchange names both
// ends, and a dialer that reaches a node other than the one it meant to, or
// an older run of it, drops the link.
//
// Failure handling: a link that fails (I/O error, silence for three ping
// intervals, a malformed frame) is closed and every request in flight on it
// fails with cluster.ErrForward; the dialer redials at once, then with
// capped exponential backoff and full jitter. While a peer is in backoff,
// Append fails at once with cluster.ErrForward and pushes are dropped; while
// the first dial is in progress, requests wait in the bounded queue. A
// peer that sends garbage gets its link closed; nothing it sends can make
// this node panic or allocate more than MaxBody per link.
//
// Links is safe for concurrent use.
type Links struct {
	cfg LinkConfig
	log *slog.Logger

	mu      sync.RWMutex // guards everything below
	state   int          // stateNew, stateStarted, stateClosed
	self    membership.NodeInfo
	h       cluster.Handler
	ln      net.Listener
	addr    string
	peers   map[string]*peer
	inbound map[net.Conn]struct{}

	ctx    context.Context // ends at Close; handler contexts derive from it
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the transport

	authFailures atomic.Uint64 // links refused: the peer did not prove the secret
}

var _ Transport = (*Links)(nil)

// NewLinks applies cfg's defaults, validates it and returns an unstarted
// Links.
func NewLinks(cfg LinkConfig) (*Links, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mesh: link config: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Links{
		cfg: cfg, log: cfg.Logger, peers: make(map[string]*peer), inbound: make(map[net.Conn]struct{}),
		ctx: ctx, cancel: cancel,
	}, nil
}

// Start implements Transport: it listens on self.MeshAddr (port 0 picks a
// free port; see Addr) and starts dialing the peers known so far.
func (l *Links) Start(ctx context.Context, self membership.NodeInfo, h cluster.Handler) error {
	if h == nil {
		return errors.New("mesh: links: nil handler")
	}
	if err := membership.ValidateID(self.ID); err != nil {
		return err
	}
	if self.MeshAddr == "" {
		return errors.New("mesh: links: node has no MeshAddr to listen on")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != stateNew {
		return errors.New("mesh: links: Start called twice or after Close")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", self.MeshAddr)
	if err != nil {
		return fmt.Errorf("mesh: links: listen: %w", err)
	}
	l.ln, l.addr, l.h = ln, ln.Addr().String(), h
	self.MeshAddr = l.addr
	l.self = self
	l.state = stateStarted
	l.log = l.log.With("node", self.ID)
	l.wg.Add(1)
	go l.acceptLoop(ln)
	for _, p := range l.peers {
		l.startPeerLocked(p)
	}
	return nil
}

// Addr implements Transport: the bound listener address after Start.
func (l *Links) Addr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.addr
}

// SetPeers implements Transport.
func (l *Links) SetPeers(peers []membership.NodeInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state == stateClosed {
		return
	}
	seen := make(map[string]bool, len(peers))
	for _, n := range peers {
		if n.ID == l.self.ID || n.ID == "" {
			continue
		}
		seen[n.ID] = true
		if p := l.peers[n.ID]; p != nil {
			p.update(n)
			continue
		}
		p := newPeer(l, n)
		l.peers[n.ID] = p
		if l.state == stateStarted {
			l.startPeerLocked(p)
		}
	}
	for id, p := range l.peers {
		if !seen[id] {
			p.cancel()
			delete(l.peers, id)
		}
	}
}

// startPeerLocked starts p's connection goroutine. l.mu must be held.
func (l *Links) startPeerLocked(p *peer) {
	l.wg.Add(1)
	go p.run()
}

func (l *Links) peer(id string) *peer {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.state != stateStarted {
		return nil
	}
	return l.peers[id]
}

// Append implements Transport.
func (l *Links) Append(ctx context.Context, node string, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	p := l.peer(node)
	if p == nil {
		return persist.AppendResult{}, ForwardError(node, "not a connected peer (unknown node, or transport not running)", nil)
	}
	return p.append(ctx, msg, inboxes, false)
}

// AppendEntries implements Transport.
func (l *Links) AppendEntries(ctx context.Context, node string, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	p := l.peer(node)
	if p == nil {
		return persist.AppendResult{}, ForwardError(node, "not a connected peer (unknown node, or transport not running)", nil)
	}
	return p.append(ctx, msg, inboxes, true)
}

// Admin implements Transport.
func (l *Links) Admin(ctx context.Context, node string, req cluster.AdminRequest) (int, error) {
	p := l.peer(node)
	if p == nil {
		return 0, ForwardError(node, "not a connected peer (unknown node, or transport not running)", nil)
	}
	return p.admin(ctx, req)
}

// Push implements Transport.
func (l *Links) Push(node string, msg persist.Message, targets []cluster.PushTarget) {
	if p := l.peer(node); p != nil {
		p.send(meshpb.CmdPush, &meshpb.PushRequest{Msg: meshpb.FromMessage(msg), Targets: meshpb.FromTargets(targets)})
	}
}

// Signal implements Transport.
func (l *Links) Signal(node string, sig cluster.Signal) {
	if p := l.peer(node); p != nil {
		p.send(meshpb.CmdSignal, meshpb.FromSignal(sig))
	}
}

// Kick implements Transport.
func (l *Links) Kick(node, user, device string, connID uint64) {
	if p := l.peer(node); p != nil {
		p.send(meshpb.CmdKick, &meshpb.KickRequest{User: user, Device: device, ConnId: connID})
	}
}

// Close implements Transport: it stops listening, closes every link (their
// requests in flight fail with cluster.ErrForward), cancels the contexts of
// handler calls in flight and waits for every goroutine, handler calls
// included, to return.
func (l *Links) Close() error {
	l.mu.Lock()
	if l.state == stateClosed {
		l.mu.Unlock()
		return nil
	}
	l.state = stateClosed
	if l.ln != nil {
		l.ln.Close()
	}
	for id, p := range l.peers {
		p.cancel()
		delete(l.peers, id)
	}
	for c := range l.inbound {
		c.Close()
	}
	l.cancel()
	l.mu.Unlock()
	l.wg.Wait()
	return nil
}

// errProtocol marks a peer that broke the mesh protocol; its link is closed.
var errProtocol = errors.New("mesh: protocol violation")

// errAuth marks a peer that did not prove it knows the mesh secret.
var errAuth = errors.New("mesh: peer not authenticated")

// frameReader reads mesh frames from a buffered stream (codec.FrameReader,
// at most max bytes of body), reusing one buffer.
type frameReader struct {
	r   *bufio.Reader
	max int
	fr  codec.FrameReader
}

// next reads one frame. The body is valid until the next call. Malformed
// input gives an error wrapping errProtocol; nothing panics.
func (fr *frameReader) next() (codec.Header, []byte, error) {
	if fr.fr.R == nil {
		fr.fr = codec.FrameReader{R: fr.r, Dec: codec.Decoder{MaxBody: fr.max}}
	}
	f, err := fr.fr.Next()
	switch {
	case errors.Is(err, codec.ErrBadMagic), errors.Is(err, codec.ErrUnsupportedVersion),
		errors.Is(err, codec.ErrUnknownSerializer), errors.Is(err, codec.ErrFrameTooLarge):
		return f.Header, nil, fmt.Errorf("%w: %w", errProtocol, err)
	case err != nil:
		return f.Header, nil, err
	case f.Serializer != codec.Protobuf:
		return f.Header, nil, fmt.Errorf("%w: serializer %s (mesh frames are protobuf)", errProtocol, f.Serializer)
	case !f.Command.IsMesh():
		return f.Header, nil, fmt.Errorf("%w: command %s outside the mesh range", errProtocol, f.Command)
	}
	return f.Header, f.Body, nil
}

// unmarshal decodes a mesh body, mapping failures to errProtocol.
func unmarshal(body []byte, m proto.Message) error {
	if err := proto.Unmarshal(body, m); err != nil {
		return fmt.Errorf("%w: undecodable body: %v", errProtocol, err)
	}
	return nil
}

// encodeFrame encodes a mesh frame into a pooled buffer; the caller returns
// it with codec.PutBuffer.
func encodeFrame(cmd codec.Command, seq uint32, m proto.Message) (*codec.Buffer, error) {
	return codec.EncodeFrame(codec.Protobuf, cmd, 0, seq, m)
}

// writeFrameNow writes one frame straight to w (handshake and rejection).
func writeFrameNow(w io.Writer, cmd codec.Command, seq uint32, m proto.Message) error {
	b, err := encodeFrame(cmd, seq, m)
	if err != nil {
		return err
	}
	defer codec.PutBuffer(b)
	_, err = w.Write(b.B)
	return err
}

// backoff returns the full-jitter delay of the n-th (n >= 1) consecutive
// failed attempt.
func backoff(lo, hi time.Duration, n int) time.Duration {
	d := hi
	if n-1 < 32 {
		if s := lo << (n - 1); s > 0 && s < hi {
			d = s
		}
	}
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// deadlineSetter sets a read deadline on a connection at most once per
// quarter of the idle timeout, so a busy link does not reset its timer for
// every frame.
type deadlineSetter struct {
	conn net.Conn
	idle time.Duration
	next time.Time
}

func (d *deadlineSetter) touch() {
	if d.idle <= 0 {
		return
	}
	now := time.Now()
	if now.Before(d.next) {
		return
	}
	d.conn.SetReadDeadline(now.Add(d.idle))
	d.next = now.Add(d.idle / 4)
}
