package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/defaults"
)

// Resolver picks the node to connect to: addr is a TCP "host:port" or a
// WebSocket "ws://host:port/path" (see Config.Addr). exclude lists node
// ids to avoid (the node that sent GO_AWAY, nodes whose dial or login
// just failed); a resolver may ignore it when nothing else is available.
// nodeID may be "" when unknown (LOGIN_OK then tells it).
//
// It is the seam for router mode: the default resolver returns Config.Addr
// and ignores exclude; a router-backed one asks imrouter
// (GET /v1/route?uid=) for a node other than those excluded. It is called
// from the Client's connection goroutine (never concurrently with itself
// for one Client) and must honour ctx.
type Resolver func(ctx context.Context, exclude []string) (addr, nodeID string, err error)

// Defaults of the Config fields.
const (
	DefaultDialTimeout     = 5 * time.Second
	DefaultRequestTimeout  = 5 * time.Second
	DefaultHeartbeat       = 30 * time.Second // when LOGIN_OK carries no heartbeat_ms
	DefaultReconnectBase   = 100 * time.Millisecond
	DefaultReconnectMax    = 5 * time.Second
	DefaultReceiveBuffer   = 256
	DefaultNoticeBuffer    = 16
	DefaultChatEventBuffer = 64
	DefaultReorderBuffer   = 4096
	DefaultInboundQueue    = 1024
	DefaultGapGrace        = 50 * time.Millisecond
	DefaultSyncLimit       = 200
	DefaultAckInterval     = 100 * time.Millisecond
	DefaultAckEvery        = 64
	DefaultMaxFrameBody    = 16 << 20
)

// Config configures a Client. Zero fields take the default documented on
// each. Dial and Register apply defaults and validate once; bad values are
// an error, never a panic. A Config is copied by Dial and may be reused.
type Config struct {
	// Addr is the node's client address: "host:port" for the raw TCP
	// listener, or "ws://host:port/path" for its WebSocket listener (imd
	// --ws-listen; the path is not significant, "/" is conventional).
	// wss:// is not supported: the client has no TLS settings. Required
	// unless Resolver is set; a Resolver may return either form too.
	Addr string

	// User is the user id. Required with Password; with a token it may be
	// empty (the token's subject is used; Client.User reports it).
	User string
	// Password logs in with a password. Exactly one of Password, Token and
	// TokenSource must be set.
	Password string
	// Token logs in with a JWT (HS256, minted by the application's auth
	// service or `imctl token`).
	Token string
	// TokenSource, when set, is called before every login (the first and
	// each reconnect) to obtain a fresh token, so an expired token does not
	// end the Client. It runs on the connection goroutine and must honour
	// ctx.
	TokenSource func(ctx context.Context) (string, error)

	// Device identifies this installation. The server keeps one live
	// session and one acknowledged position (cursor) per (user, device); a
	// newer login with the same device kicks the older one.
	//
	// Default: a random id ("go-" + 12 hex digits) chosen per Client, so
	// two Clients never kick each other by accident. The price is that a
	// random device has no history: its server cursor starts at 0, so a
	// fresh Client with the default device receives the whole inbox. Set a
	// stable Device to resume from the server cursor across restarts.
	Device string

	// Serializer encodes every frame the client sends; the server answers
	// in it. Default codec.Protobuf.
	Serializer codec.SerializerID

	// DialTimeout bounds one TCP connect, and for a ws:// address the
	// WebSocket handshake with it. Default 5s.
	DialTimeout time.Duration
	// RequestTimeout bounds the wait for one reply (one attempt). Default
	// 5s. Idempotent calls retry after a timeout; see Send.
	RequestTimeout time.Duration
	// Heartbeat overrides the interval announced by the server in LOGIN_OK
	// (heartbeat_ms, 30s when absent). Only values below the server's make
	// sense. A connection with no reply to a heartbeat within
	// RequestTimeout, or silent for 3 intervals, is closed and replaced.
	Heartbeat time.Duration

	// DisableReconnect makes a lost connection (or a GO_AWAY) final: the
	// Client stops and Err reports ErrConnectionLost. By default it
	// reconnects.
	DisableReconnect bool
	// ReconnectBase and ReconnectMax shape the reconnect and retry backoff:
	// attempt n waits a random duration in [0, min(max, base*2^n)) (full
	// jitter). Defaults 100ms and 5s.
	ReconnectBase time.Duration
	ReconnectMax  time.Duration

	// AfterSeq, when set, is the inbox position the first sync starts
	// after: the Messages stream begins at *AfterSeq+1. nil means the
	// server's cursor for this device (LOGIN_OK.cursor). Use 0 to replay
	// the whole inbox, or the last seq the application persisted (see
	// Client.LastSeq). Later reconnects always continue from the last seq
	// delivered.
	AfterSeq *uint64
	// StartAtHead starts the Messages stream after the inbox head at
	// login (LOGIN_OK.head_seq), ignoring AfterSeq: only messages stored
	// after Dial logged in are delivered, none of the backlog.
	StartAtHead bool
	// SendOnly disables receiving: no sync, pushes are discarded, no
	// PUSH_ACK, Messages is never fed. For senders, tools and benchmarks.
	SendOnly bool

	// ReceiveBuffer is the capacity of the Messages channel. Default 256.
	ReceiveBuffer int
	// NoticeBuffer is the capacity of the Notices channel; notices that do
	// not fit are dropped (they are never stored). Default 16.
	NoticeBuffer int
	// ChatEventBuffer is the capacity of the ChatEvents channel (receipts
	// and typing); events that do not fit are dropped. Default 64.
	ChatEventBuffer int
	// ReorderBuffer bounds messages held back because an earlier seq is
	// missing; beyond it they are dropped and recovered by sync. Default
	// 4096.
	ReorderBuffer int
	// InboundQueue bounds pushed batches waiting for the delivery goroutine
	// (see Messages for backpressure). Default 1024.
	InboundQueue int
	// GapGrace is how long a gap in the seqs may stay open (a push overtaken
	// by a later one) before a SYNC fills it. Default 50ms.
	GapGrace time.Duration
	// SyncLimit is the page size of SYNC requests (the server caps it,
	// default 500). Default 200.
	SyncLimit uint32
	// AckInterval and AckEvery coalesce PUSH_ACK: one ack at most every
	// AckInterval, or as soon as AckEvery messages are unacknowledged.
	// Defaults 100ms and 64.
	AckInterval time.Duration
	AckEvery    int

	// MaxFrameBody bounds the body of frames received from the server
	// (sync pages can exceed the server's own 64 KiB request limit).
	// Default 16 MiB.
	MaxFrameBody int

	// Logger receives connection events (reconnects, drops); nil discards.
	Logger *slog.Logger

	// Resolver picks the node for each (re)connect; nil returns Addr.
	Resolver Resolver
	// DialContext opens the TCP connection (for a ws:// address, the one
	// the WebSocket runs on); nil uses a net.Dialer. Tests use it to
	// inject faults.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// WithDefaults returns c with every zero field set to its default (the
// Default... constants above; a random Device; a Resolver that returns
// Addr, when Addr is set). It does not validate.
func (c Config) WithDefaults() Config {
	defaults.Set(&c.Serializer, codec.Protobuf)
	if c.Device == "" {
		c.Device = randomDevice()
	}
	defaults.Set(&c.DialTimeout, DefaultDialTimeout)
	defaults.Set(&c.RequestTimeout, DefaultRequestTimeout)
	defaults.Set(&c.ReconnectBase, DefaultReconnectBase)
	defaults.Set(&c.ReconnectMax, DefaultReconnectMax)
	defaults.Set(&c.GapGrace, DefaultGapGrace)
	defaults.Set(&c.AckInterval, DefaultAckInterval)
	defaults.Set(&c.ReceiveBuffer, DefaultReceiveBuffer)
	defaults.Set(&c.NoticeBuffer, DefaultNoticeBuffer)
	defaults.Set(&c.ChatEventBuffer, DefaultChatEventBuffer)
	defaults.Set(&c.ReorderBuffer, DefaultReorderBuffer)
	defaults.Set(&c.InboundQueue, DefaultInboundQueue)
	defaults.Set(&c.AckEvery, DefaultAckEvery)
	defaults.Set(&c.MaxFrameBody, DefaultMaxFrameBody)
	defaults.Set(&c.SyncLimit, DefaultSyncLimit)
	if c.Logger == nil { // not defaults.Set: no handler made for nothing
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Resolver == nil && c.Addr != "" {
		addr := c.Addr
		c.Resolver = func(context.Context, []string) (string, string, error) { return addr, "", nil }
	}
	if c.DialContext == nil {
		c.DialContext = (&net.Dialer{}).DialContext
	}
	return c
}

// Validate reports every problem of c for Dial (after WithDefaults: a
// zero field is not a default to it); it changes nothing.
func (c Config) Validate() error { return c.validate(true) }

// validate is Validate; needLogin=false (Register) skips the login checks.
func (c Config) validate(needLogin bool) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Addr == "" && c.Resolver == nil {
		bad("Addr is required (or a Resolver)")
	}
	if !c.Serializer.Known() {
		bad("unknown Serializer %d", uint8(c.Serializer))
	}
	if c.User != "" && !auth.ValidID(c.User) {
		bad("User %q: want 1..64 of [A-Za-z0-9_.-]", c.User)
	}
	if needLogin {
		n := 0
		for _, set := range []bool{c.Password != "", c.Token != "", c.TokenSource != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			bad("exactly one of Password, Token and TokenSource must be set (got %d)", n)
		}
		if c.Password != "" && c.User == "" {
			bad("User is required with Password")
		}
		if !auth.ValidID(c.Device) {
			bad("Device %q: want 1..64 of [A-Za-z0-9_.-]", c.Device)
		}
	}
	for name, d := range map[string]time.Duration{
		"DialTimeout": c.DialTimeout, "RequestTimeout": c.RequestTimeout, "Heartbeat": c.Heartbeat,
		"ReconnectBase": c.ReconnectBase, "ReconnectMax": c.ReconnectMax, "GapGrace": c.GapGrace,
		"AckInterval": c.AckInterval,
	} {
		if d < 0 {
			bad("%s must not be negative (got %s)", name, d)
		}
	}
	if c.ReconnectMax < c.ReconnectBase {
		bad("ReconnectMax (%s) is below ReconnectBase (%s)", c.ReconnectMax, c.ReconnectBase)
	}
	for name, v := range map[string]int{
		"ReceiveBuffer": c.ReceiveBuffer, "NoticeBuffer": c.NoticeBuffer, "ChatEventBuffer": c.ChatEventBuffer,
		"ReorderBuffer": c.ReorderBuffer, "InboundQueue": c.InboundQueue, "AckEvery": c.AckEvery,
		"MaxFrameBody": c.MaxFrameBody,
	} {
		if v < 0 {
			bad("%s must not be negative (got %d)", name, v)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("client: config: %w", err)
	}
	return nil
}

// withDefaults is WithDefaults, then validate(needLogin).
func (c Config) withDefaults(needLogin bool) (Config, error) {
	c = c.WithDefaults()
	return c, c.validate(needLogin)
}
