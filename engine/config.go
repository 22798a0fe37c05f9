package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/persist"
)

// Config configures a Server. Zero fields take the defaults documented on
// each field; Validate reports the first bad value. A Config is read once by
// New and must not be changed afterwards.
type Config struct {
	// Addr is the client listener, "host:port". Default 127.0.0.1:9090.
	Addr string
	// NodeID names this node in msg ids, logs and LOGIN_OK. Default "n1".
	NodeID string
	// NodeNum (0..1023) is mixed into every msg_id so ids from different
	// nodes never collide. Default 1.
	NodeNum uint16
	// EventLoops is the number of gnet event loops. Default GOMAXPROCS.
	EventLoops int

	// MaxBody is the largest accepted frame body. Default 65536.
	MaxBody int
	// LoginTimeout closes connections that have not logged in. Default 10s.
	LoginTimeout time.Duration
	// HeartbeatInterval is announced to clients in LOGIN_OK. Default 30s.
	// The node lengthens it as its connection count grows (HeartbeatRate).
	HeartbeatInterval time.Duration
	// HeartbeatRate is the heartbeats per second the node aims to answer at
	// most: a client logging in is told max(HeartbeatInterval,
	// connections/HeartbeatRate seconds), capped at MaxHeartbeatInterval.
	// Default 5000; negative keeps HeartbeatInterval whatever the count.
	HeartbeatRate float64
	// MaxHeartbeatInterval caps the lengthened interval. Default 5m.
	MaxHeartbeatInterval time.Duration
	// IdleTimeout closes logged-in connections silent for this long.
	// Default 3 x HeartbeatInterval. A connection told a longer heartbeat
	// interval gets a proportionally longer idle timeout.
	IdleTimeout time.Duration
	// MaxOutbound bounds the bytes queued for one connection (ours plus
	// gnet's unsent buffer); beyond it the connection is closed as a slow
	// consumer. Default 4 MiB.
	MaxOutbound int
	// MaxConns bounds open client connections. Default 19,000, which fits
	// a process capped at 20,000 open files (RLIMIT_NOFILE) with room for
	// the listeners, stores and logs; raise it together with the limit
	// (docs/BENCHMARKS.md, "One node with 1,000,000 connections").
	MaxConns int
	// MaxConnsPerIP bounds the open client connections from one source
	// address (IPv4, or one IPv6 address); beyond it a connection gets
	// TOO_MANY_CONNECTIONS at accept. 0, the default, sets no bound (clients
	// behind one NAT or proxy share an address).
	MaxConnsPerIP int
	// SendRate and SendBurst are the per-user token bucket for SEND,
	// GROUP_SEND, GROUP_CREATE and the group changes. Defaults 200/s and 400.
	SendRate  float64
	SendBurst int
	// MaxGroupSize bounds group membership. Default 1000.
	MaxGroupSize int
	// SyncLimit is the default SYNC page (100); SyncMaxLimit caps it (500).
	SyncLimit, SyncMaxLimit int
	// RecallWindow is how long after a message's time its sender may
	// recall it. Default 2m.
	RecallWindow time.Duration
	// TypingRate and TypingBurst bound the TYPING notifications forwarded
	// per user (the rest are dropped). Defaults 2/s and 5; a negative rate
	// disables the bound.
	TypingRate  float64
	TypingBurst int
	// TypingExpiry is announced in every TYPING_EVENT: receivers turn the
	// indication off after it. Default 6s.
	TypingExpiry time.Duration
	// Workers is the size of the pool running everything that does I/O
	// (store, password hashing). Default 256.
	Workers int
	// MaxConnInbound bounds the bytes of one connection's requests that
	// are decoded but waiting to run (requests of one connection run one at
	// a time, in order); each queued request counts its body plus 64 bytes.
	// Beyond it a request is answered BUSY. With an asynchronous store it
	// also bounds the sends a connection pipelines to the store's committer
	// (beyond it they queue as above). Default 256 KiB.
	MaxConnInbound int
	// MaxNodeInbound bounds the same across the node. Default 64 MiB.
	MaxNodeInbound int
	// HashConcurrency bounds concurrent password hashes (each argon2id
	// hash holds 19 MiB). Default GOMAXPROCS.
	HashConcurrency int
	// LoginRatePerIP and LoginBurstPerIP bound password attempts (LOGIN
	// with a password, REGISTER) per source address, checked before any
	// hashing; beyond them the attempt gets RATE_LIMITED. Defaults 10/s
	// and 30; a negative rate disables the limit.
	LoginRatePerIP  float64
	LoginBurstPerIP int
	// GoAwayWindow spreads the reconnect delays sent in GO_AWAY on
	// shutdown. Default 2s.
	GoAwayWindow time.Duration

	// JWTSecret verifies HS256 login tokens; empty disables token login.
	JWTSecret []byte

	// Store persists messages, users and groups. Required. The Server does
	// not close it.
	Store persist.Store
	// Cluster connects the node to its peers; nil runs a single node that
	// owns every inbox.
	Cluster cluster.Cluster
	// Sessions records who is online where, cluster-wide; nil keeps only
	// this node's sessions (enough for a single node).
	Sessions persist.SessionStore
	// SessionTTL is the lease of a session route; routes are renewed every
	// SessionTTL/3 while the connection lives. Default 5m.
	SessionTTL time.Duration
	// Observer, if set, is told of every message, cursor and group change
	// this node stores (the event stream, webhooks). It must never block:
	// see Observer.
	Observer Observer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registry receives the server's metrics; default a new registry
	// (Server.Registry returns it).
	Registry *prometheus.Registry

	// Edge adds WebSocket, TLS and PROXY protocol listeners (wsconfig.go).
	Edge EdgeConfig
}

// WithDefaults returns c with every zero field set to its documented
// default (the only place the defaults live: imd's flags start from them).
// It does not validate; New calls WithDefaults, then Validate.
func (c Config) WithDefaults() Config {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	if c.Addr == "" {
		c.Addr = "127.0.0.1:9090"
	}
	if c.NodeID == "" {
		c.NodeID = "n1"
	}
	if c.NodeNum == 0 {
		c.NodeNum = 1
	}
	def(&c.EventLoops, runtime.GOMAXPROCS(0))
	def(&c.MaxBody, codec.DefaultMaxBody)
	if c.LoginTimeout == 0 {
		c.LoginTimeout = 10 * time.Second
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 30 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 3 * c.HeartbeatInterval
	}
	if c.HeartbeatRate == 0 {
		c.HeartbeatRate = 5000
	}
	if c.MaxHeartbeatInterval == 0 {
		c.MaxHeartbeatInterval = 5 * time.Minute
	}
	def(&c.MaxOutbound, 4<<20)
	def(&c.MaxConns, 19000)
	if c.SendRate == 0 {
		c.SendRate = 200
	}
	def(&c.SendBurst, 400)
	def(&c.MaxGroupSize, 1000)
	def(&c.SyncLimit, 100)
	def(&c.SyncMaxLimit, 500)
	if c.RecallWindow == 0 {
		c.RecallWindow = 2 * time.Minute
	}
	if c.TypingRate == 0 {
		c.TypingRate = 2
	}
	def(&c.TypingBurst, 5)
	if c.TypingExpiry == 0 {
		c.TypingExpiry = 6 * time.Second
	}
	def(&c.Workers, 256)
	def(&c.MaxConnInbound, 256<<10)
	def(&c.MaxNodeInbound, 64<<20)
	def(&c.HashConcurrency, runtime.GOMAXPROCS(0))
	if c.LoginRatePerIP == 0 {
		c.LoginRatePerIP = 10
	}
	def(&c.LoginBurstPerIP, 30)
	if c.GoAwayWindow == 0 {
		c.GoAwayWindow = 2 * time.Second
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = 5 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	c.Edge = c.Edge.withDefaults()
	return c
}

// Validate checks every field of a configuration that WithDefaults has
// filled, and reports every problem it finds; it changes nothing.
func (c Config) Validate() error {
	var errs []error
	pos := func(name string, v int) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative, got %d", name, v))
		}
	}
	pos("EventLoops", c.EventLoops)
	pos("MaxOutbound", c.MaxOutbound)
	pos("MaxConns", c.MaxConns)
	pos("MaxConnsPerIP", c.MaxConnsPerIP)
	pos("SendBurst", c.SendBurst)
	pos("TypingBurst", c.TypingBurst)
	pos("MaxGroupSize", c.MaxGroupSize)
	pos("Workers", c.Workers)
	pos("MaxConnInbound", c.MaxConnInbound)
	if c.MaxConnInbound > 1<<30 {
		errs = append(errs, fmt.Errorf("MaxConnInbound must be at most 1 GiB, got %d", c.MaxConnInbound))
	}
	pos("MaxNodeInbound", c.MaxNodeInbound)
	pos("HashConcurrency", c.HashConcurrency)
	if c.MaxBody < 0 || c.MaxBody > 16<<20 {
		errs = append(errs, fmt.Errorf("MaxBody must be in 1..16777216, got %d", c.MaxBody))
	}
	if !utf8.ValidString(c.NodeID) || len(c.NodeID) > 64 {
		errs = append(errs, fmt.Errorf("NodeID must be at most 64 bytes of UTF-8, got %q", c.NodeID))
	}
	if c.NodeNum > 1023 {
		errs = append(errs, fmt.Errorf("NodeNum must be in 1..1023, got %d", c.NodeNum))
	}
	for name, d := range map[string]time.Duration{"LoginTimeout": c.LoginTimeout, "HeartbeatInterval": c.HeartbeatInterval, "IdleTimeout": c.IdleTimeout, "GoAwayWindow": c.GoAwayWindow,
		"RecallWindow": c.RecallWindow, "TypingExpiry": c.TypingExpiry} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative, got %s", name, d))
		}
	}
	if c.IdleTimeout < c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("IdleTimeout (%s) must be at least HeartbeatInterval (%s)", c.IdleTimeout, c.HeartbeatInterval))
	}
	if c.SendRate < 0 {
		errs = append(errs, fmt.Errorf("SendRate must not be negative, got %g", c.SendRate))
	}
	if c.SyncLimit > c.SyncMaxLimit {
		errs = append(errs, fmt.Errorf("SyncLimit (%d) exceeds SyncMaxLimit (%d)", c.SyncLimit, c.SyncMaxLimit))
	}
	if c.Sessions != nil && c.Cluster == nil {
		errs = append(errs, errors.New("a session store (Sessions) needs a Cluster: routes name cluster nodes"))
	}
	if c.Sessions != nil {
		if err := persist.CheckSessionTTL(c.SessionTTL); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Store == nil {
		errs = append(errs, errors.New("a Store is required"))
	}
	if err := c.Edge.validate(c.Addr); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("engine: config: %w", err)
	}
	return nil
}
