package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/defaults"
	"github.com/imgn/imgn/persist"
)

// Config configures a Server. Zero fields take the defaults documented on
// each field (the Default... constants; WithDefaults fills them); Validate
// reports every bad value. A Config is read once by New and must not be
// changed afterwards.
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

// Defaults of the Config fields: WithDefaults fills zero fields with them,
// and imd's flags start from them. EventLoops and HashConcurrency default
// to GOMAXPROCS, IdleTimeout to DefaultIdleHeartbeats x HeartbeatInterval.
const (
	DefaultAddr                 = "127.0.0.1:9090"
	DefaultNodeID               = "n1"
	DefaultNodeNum              = 1
	DefaultMaxBody              = codec.DefaultMaxBody
	DefaultLoginTimeout         = 10 * time.Second
	DefaultHeartbeatInterval    = 30 * time.Second
	DefaultIdleHeartbeats       = 3
	DefaultHeartbeatRate        = 5000
	DefaultMaxHeartbeatInterval = 5 * time.Minute
	DefaultMaxOutbound          = 4 << 20
	DefaultMaxConns             = 19000
	DefaultSendRate             = 200
	DefaultSendBurst            = 400
	DefaultMaxGroupSize         = 1000
	DefaultSyncLimit            = 100
	DefaultSyncMaxLimit         = 500
	DefaultRecallWindow         = 2 * time.Minute
	DefaultTypingRate           = 2
	DefaultTypingBurst          = 5
	DefaultTypingExpiry         = 6 * time.Second
	DefaultWorkers              = 256
	DefaultMaxConnInbound       = 256 << 10
	DefaultMaxNodeInbound       = 64 << 20
	DefaultLoginRatePerIP       = 10
	DefaultLoginBurstPerIP      = 30
	DefaultGoAwayWindow         = 2 * time.Second
	DefaultSessionTTL           = 5 * time.Minute
	DefaultMaxTLSHandshakes     = 1024
)

// Bounds Validate enforces beyond "positive".
const (
	maxNodeNum        = 1023
	maxNodeIDLen      = 64
	maxBodyLimit      = 16 << 20
	maxConnInboundCap = 1 << 30
)

// WithDefaults returns c with every zero field set to its default (the
// Default... constants above; slog.Default(); a new registry). It judges
// nothing: New calls WithDefaults, then Validate.
func (c Config) WithDefaults() Config {
	defaults.Set(&c.Addr, DefaultAddr)
	defaults.Set(&c.NodeID, DefaultNodeID)
	defaults.Set(&c.NodeNum, DefaultNodeNum)
	defaults.Set(&c.EventLoops, runtime.GOMAXPROCS(0))
	defaults.Set(&c.MaxBody, DefaultMaxBody)
	defaults.Set(&c.LoginTimeout, DefaultLoginTimeout)
	defaults.Set(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	defaults.Set(&c.IdleTimeout, DefaultIdleHeartbeats*c.HeartbeatInterval)
	defaults.Set(&c.HeartbeatRate, DefaultHeartbeatRate)
	defaults.Set(&c.MaxHeartbeatInterval, DefaultMaxHeartbeatInterval)
	defaults.Set(&c.MaxOutbound, DefaultMaxOutbound)
	defaults.Set(&c.MaxConns, DefaultMaxConns)
	defaults.Set(&c.SendRate, DefaultSendRate)
	defaults.Set(&c.SendBurst, DefaultSendBurst)
	defaults.Set(&c.MaxGroupSize, DefaultMaxGroupSize)
	defaults.Set(&c.SyncLimit, DefaultSyncLimit)
	defaults.Set(&c.SyncMaxLimit, DefaultSyncMaxLimit)
	defaults.Set(&c.RecallWindow, DefaultRecallWindow)
	defaults.Set(&c.TypingRate, DefaultTypingRate)
	defaults.Set(&c.TypingBurst, DefaultTypingBurst)
	defaults.Set(&c.TypingExpiry, DefaultTypingExpiry)
	defaults.Set(&c.Workers, DefaultWorkers)
	defaults.Set(&c.MaxConnInbound, DefaultMaxConnInbound)
	defaults.Set(&c.MaxNodeInbound, DefaultMaxNodeInbound)
	defaults.Set(&c.HashConcurrency, runtime.GOMAXPROCS(0))
	defaults.Set(&c.LoginRatePerIP, DefaultLoginRatePerIP)
	defaults.Set(&c.LoginBurstPerIP, DefaultLoginBurstPerIP)
	defaults.Set(&c.GoAwayWindow, DefaultGoAwayWindow)
	defaults.Set(&c.SessionTTL, DefaultSessionTTL)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	c.Edge = c.Edge.withDefaults()
	return c
}

// Validate judges every field as given (call WithDefaults first: a zero
// that WithDefaults would fill is an error here) and reports every problem,
// naming the field and what it accepts. It changes nothing.
func (c Config) Validate() error {
	var errs []error
	atLeast := func(name string, v, lo int) {
		if v < lo {
			errs = append(errs, fmt.Errorf("%s must be at least %d, got %d", name, lo, v))
		}
	}
	in := func(name string, v, lo, hi int) {
		if v < lo || v > hi {
			errs = append(errs, fmt.Errorf("%s must be in %d..%d, got %d", name, lo, hi, v))
		}
	}
	positive := func(name string, d time.Duration) {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", name, d))
		}
	}
	// A negative rate disables its bound; zero is no rate at all.
	rate := func(name string, r float64, negativeDisables bool) {
		switch {
		case r == 0 || (r < 0 && !negativeDisables):
			want := "positive"
			if negativeDisables {
				want = "positive, or negative to disable the bound"
			}
			errs = append(errs, fmt.Errorf("%s must be %s, got %g", name, want, r))
		}
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("Addr must be HOST:PORT, got %q: %w", c.Addr, err))
	}
	if c.NodeID == "" || !utf8.ValidString(c.NodeID) || len(c.NodeID) > maxNodeIDLen {
		errs = append(errs, fmt.Errorf("NodeID must be 1..%d bytes of UTF-8, got %q", maxNodeIDLen, c.NodeID))
	}
	in("NodeNum", int(c.NodeNum), 1, maxNodeNum)
	atLeast("EventLoops", c.EventLoops, 1)
	in("MaxBody", c.MaxBody, 1, maxBodyLimit)
	atLeast("MaxOutbound", c.MaxOutbound, 1)
	atLeast("MaxConns", c.MaxConns, 1)
	atLeast("MaxConnsPerIP", c.MaxConnsPerIP, 0)
	atLeast("SendBurst", c.SendBurst, 1)
	atLeast("TypingBurst", c.TypingBurst, 1)
	atLeast("LoginBurstPerIP", c.LoginBurstPerIP, 1)
	atLeast("MaxGroupSize", c.MaxGroupSize, 1)
	atLeast("Workers", c.Workers, 1)
	in("MaxConnInbound", c.MaxConnInbound, 1, maxConnInboundCap)
	atLeast("MaxNodeInbound", c.MaxNodeInbound, 1)
	atLeast("HashConcurrency", c.HashConcurrency, 1)
	atLeast("SyncLimit", c.SyncLimit, 1)
	atLeast("SyncMaxLimit", c.SyncMaxLimit, 1)
	if c.SyncLimit > c.SyncMaxLimit {
		errs = append(errs, fmt.Errorf("SyncLimit (%d) must be at most SyncMaxLimit (%d)", c.SyncLimit, c.SyncMaxLimit))
	}
	positive("LoginTimeout", c.LoginTimeout)
	positive("HeartbeatInterval", c.HeartbeatInterval)
	positive("MaxHeartbeatInterval", c.MaxHeartbeatInterval)
	positive("IdleTimeout", c.IdleTimeout)
	positive("GoAwayWindow", c.GoAwayWindow)
	positive("RecallWindow", c.RecallWindow)
	positive("TypingExpiry", c.TypingExpiry)
	if c.IdleTimeout < c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("IdleTimeout (%s) must be at least HeartbeatInterval (%s)", c.IdleTimeout, c.HeartbeatInterval))
	}
	rate("SendRate", c.SendRate, false)
	rate("TypingRate", c.TypingRate, true)
	rate("LoginRatePerIP", c.LoginRatePerIP, true)
	rate("HeartbeatRate", c.HeartbeatRate, true)
	if c.Logger == nil {
		errs = append(errs, errors.New("a Logger is required (WithDefaults sets slog.Default())"))
	}
	if c.Registry == nil {
		errs = append(errs, errors.New("a Registry is required (WithDefaults makes one)"))
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
