package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/envflag"
	"github.com/imgn/imgn/internal/logging"
	"github.com/imgn/imgn/lb"
	"github.com/imgn/imgn/mesh/zkregistry"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/mongostore"
	"github.com/imgn/imgn/persist/pebblestore"
	"github.com/imgn/imgn/web"
)

// options is imd's configuration. The engine's settings are bound straight
// to the fields of engine.Config, with the engine's own defaults; the rest
// is what imd needs around the engine.
type options struct {
	engine engine.Config // Store, Cluster, Sessions and Logger are set at run time

	admin, logLevel, logFormat string
	adminToken                 string // bearer token of the admin API ("" only on loopback)
	jwtSecret                  string // copied to engine.JWTSecret
	shutdownTimeout            time.Duration
	configFile                 string // the --config file read, if any
	nodeNumDerived             bool   // --node-num was not given (cluster mode claims one)
	flags                      *envflag.Flags

	store   storeOptions
	cluster clusterOptions
	integ   integrationOptions
	edge    edgeOptions
}

// edgeOptions are the settings of the WebSocket, TLS and PROXY protocol
// listeners that are not engine.Config fields as they stand.
type edgeOptions struct {
	origins         string // --ws-origins, comma-separated
	tlsCert, tlsKey string // PEM files, loaded into engine.Config.Edge.TLS
	web             bool   // --web: serve the browser app (package web) on the WebSocket listeners
}

// Values of --store.
const (
	storeEmbedded = "embedded"
	storeMemory   = "memory"
)

// storeOptions chooses and configures the single-node message store.
type storeOptions struct {
	kind        string // storeEmbedded or storeMemory
	dataDir     string
	noSync      bool
	retention   time.Duration // embedded store: remove messages older than this (0: keep)
	inboxMax    int           // embedded store: newest entries kept per inbox (0: no cap)
	dedupWindow time.Duration // how long a message the cap removed is still recognised
	// backgroundNice: embedded store, nice steps below imd at which its
	// rare flushes and compactions run (0: not lowered)
	backgroundNice int
}

// clusterOptions are the cluster-mode settings (all empty on a single node).
type clusterOptions struct {
	zk, zkRoot, redis, mongoURI, mongoDB, writeConcern string
	meshMode, meshListen, meshAdvertise, advertise     string
	meshSecret                                         string // authenticates direct mesh links
	zkSessionTimeout                                   time.Duration
	weight                                             int
}

// clustered reports whether any cluster flag is set.
func (o *options) clustered() bool {
	return o.cluster.zk != "" || o.cluster.redis != "" || o.cluster.mongoURI != ""
}

// derivedDefaults are the settings whose default is computed from others:
// their flag default is the zero value, which the engine or imd replaces.
var derivedDefaults = map[string]string{
	"idle-timeout":   "3 x heartbeat",
	"event-loops":    "the CPUs the process may use (GOMAXPROCS as imd starts)",
	"node-id":        "n + the port of listen, e.g. n9090",
	"node-num":       "a hash of node-id; in cluster mode the number the node id holds in ZooKeeper, else the first free one from that hash",
	"advertise":      "the listen address",
	"mesh-advertise": "the mesh-listen address",
}

// flagGroups order imd's help and its config example.
var flagGroups = append([]envflag.Group{
	{Title: "Node", Names: []string{"listen", "admin", "admin-token", "node-id", "node-num", "jwt-secret", "log-level", "log-format",
		"ws-listen", "ws-origins", "web", "tls-listen", "wss-listen", "tls-cert", "tls-key", "proxy-protocol"}},
	{Title: "Store (single node)", Names: []string{"store", "data", "unsafe-no-fsync", "retention", "inbox-max", "dedup-window", "background-nice"}},
	{Title: "Limits", Names: []string{"max-conns", "max-conns-per-ip", "max-body", "max-group-size", "max-outbound", "max-conn-inbound", "max-node-inbound",
		"workers", "event-loops", "send-rate", "send-burst", "login-rate-per-ip", "login-burst-per-ip"}},
	{Title: "Chat", Names: []string{"recall-window", "typing-rate", "typing-burst", "typing-expiry"}},
	{Title: "Timeouts", Names: []string{"heartbeat", "heartbeat-rate", "max-heartbeat", "idle-timeout", "login-timeout", "goaway-window", "shutdown-timeout"}},
	{Title: "Cluster mode (--zk, --redis and --mongo-uri together)", Names: []string{"zk", "zk-root", "zk-session-timeout",
		"redis", "mongo-uri", "mongo-db", "write-concern", "mesh", "mesh-listen", "mesh-advertise", "mesh-secret", "advertise", "weight", "session-ttl"}},
}, integrationGroups...)

const imdSynopsis = "imd [flags]\nimd config example\nimd config check [flags]"

const imdDescription = `Runs one IM node: on its own with an embedded store, or as a member of a cluster
(ZooKeeper, Redis, MongoDB). Every flag may also be set as IM_<NAME> in the
environment (IM_LISTEN, IM_JWT_SECRET, ...) or as a key of the --config file;
a flag beats the environment, which beats the file.

'imd config example' prints a complete commented config file; 'imd config check'
validates flags, environment and file without starting and prints the result.`

// newFlagSet defines imd's flags on o. engineFields maps the engine.Config
// field behind a flag to the flag's name, for messages (see validate).
func newFlagSet(o *options, out io.Writer) (*envflag.Flags, map[string]string) {
	fs := envflag.New("imd", imdSynopsis, imdDescription, out)
	fs.WithConfig()
	fs.SetGroups(flagGroups...)
	fs.SetDerived(derivedDefaults)
	fields := map[string]string{}
	bind := func(field, name string) string { fields[field] = name; return name }
	e := &o.engine

	fs.StringVar(&e.Addr, bind("Addr", "listen"), engine.DefaultAddr, "client protocol listener `HOST:PORT`")
	fs.StringVar(&o.admin, "admin", "127.0.0.1:9091", "admin HTTP listener `HOST:PORT` (metrics, pprof, admin API); empty disables")
	fs.StringVar(&o.adminToken, "admin-token", "", "bearer token every admin API request but /healthz and /readyz must carry (at least 16 characters; required when --admin is not a loopback address)")
	fs.StringVar(&e.NodeID, bind("NodeID", "node-id"), "", "node id in logs, LOGIN_OK and the cluster registry")
	fs.Var(uint16Value{&e.NodeNum}, bind("NodeNum", "node-num"), "node number 1..1023 mixed into message ids (cluster mode: claimed in ZooKeeper; a number another node holds stops the start)")
	fs.StringVar(&o.jwtSecret, "jwt-secret", "", "HS256 secret for token login (empty disables token login)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", logging.FormatText, "text (key=value) or json (one object per line)")
	fs.StringVar(&e.Edge.WSAddr, bind("WSAddr", "ws-listen"), "", "WebSocket listener `HOST:PORT` (the client protocol in binary messages); empty disables")
	fs.StringVar(&o.edge.origins, bind("WSOrigins", "ws-origins"), "", "comma-separated origins browsers may connect from, e.g. https://chat.example.com, or * for any (empty: same host only)")
	fs.StringVar(&e.Edge.TLSAddr, bind("TLSAddr", "tls-listen"), "", "client protocol over TLS listener `HOST:PORT` (needs --tls-cert); empty disables")
	fs.StringVar(&e.Edge.WSSAddr, bind("WSSAddr", "wss-listen"), "", "WebSocket over TLS listener `HOST:PORT` (needs --tls-cert); empty disables")
	fs.BoolVar(&o.edge.web, "web", false, "serve the browser chat app on --ws-listen and --wss-listen (open http://HOST:PORT/ of the listener)")
	fs.StringVar(&o.edge.tlsCert, "tls-cert", "", "PEM certificate chain `FILE` of --tls-listen and --wss-listen")
	fs.StringVar(&o.edge.tlsKey, "tls-key", "", "PEM private key `FILE` of --tls-cert")
	fs.BoolVar(&e.Edge.ProxyProtocol, bind("ProxyProtocol", "proxy-protocol"), false, "expect a PROXY protocol v1/v2 header on every --listen and --ws-listen connection (only behind a proxy that always sends one)")

	fs.StringVar(&o.store.kind, "store", storeEmbedded, "message store: embedded (durable, file-backed) or memory (not durable)")
	fs.StringVar(&o.store.dataDir, "data", "./data", "data directory of the embedded store (locked while imd runs)")
	fs.BoolVar(&o.store.noSync, "unsafe-no-fsync", false, "embedded store: skip fsync (UNSAFE: acked messages can be lost on a crash; benchmarks only)")
	fs.DurationVar(&o.store.retention, "retention", 0, "remove messages older than this, e.g. 720h (0 keeps them for ever); embedded and memory stores")
	fs.DurationVar(&o.store.dedupWindow, "dedup-window", persist.DefaultDedupWindow, "how long a message that --inbox-max removed from every inbox is still recognised when resent (capped by --retention)")
	fs.IntVar(&o.store.backgroundNice, "background-nice", pebblestore.DefaultBackgroundNice, "embedded store: run its rare flushes and compactions this many nice steps (1-19) below imd, so client traffic goes first (0: never lowered; Linux, needs root, CAP_SYS_NICE or RLIMIT_NICE 20)")
	fs.IntVar(&o.store.inboxMax, "inbox-max", 0, "keep at most this many newest messages per inbox (0: no cap); embedded and memory stores")

	fs.IntVar(&e.MaxConns, bind("MaxConns", "max-conns"), engine.DefaultMaxConns, "maximum client connections")
	fs.IntVar(&e.MaxConnsPerIP, bind("MaxConnsPerIP", "max-conns-per-ip"), 0, "maximum client connections from one source address (0: no limit)")
	fs.IntVar(&e.MaxBody, bind("MaxBody", "max-body"), engine.DefaultMaxBody, "maximum frame body bytes")
	fs.IntVar(&e.MaxGroupSize, bind("MaxGroupSize", "max-group-size"), engine.DefaultMaxGroupSize, "maximum group members")
	fs.IntVar(&e.MaxOutbound, bind("MaxOutbound", "max-outbound"), engine.DefaultMaxOutbound, "bytes queued to one connection before it is closed as a slow consumer")
	fs.IntVar(&e.MaxConnInbound, bind("MaxConnInbound", "max-conn-inbound"), engine.DefaultMaxConnInbound, "bytes of one connection's requests that may wait for a worker (beyond: BUSY), and of the sends it pipelines to the embedded store")
	fs.IntVar(&e.MaxNodeInbound, bind("MaxNodeInbound", "max-node-inbound"), engine.DefaultMaxNodeInbound, "bytes of requests that may wait for a worker, node-wide (beyond: BUSY)")
	fs.IntVar(&e.Workers, bind("Workers", "workers"), engine.DefaultWorkers, "request worker goroutines (store and hashing)")
	fs.IntVar(&e.EventLoops, bind("EventLoops", "event-loops"), 0, "gnet event loops")
	fs.Float64Var(&e.SendRate, bind("SendRate", "send-rate"), engine.DefaultSendRate, "per-user messages per second")
	fs.IntVar(&e.SendBurst, bind("SendBurst", "send-burst"), engine.DefaultSendBurst, "per-user message burst")
	fs.Float64Var(&e.LoginRatePerIP, bind("LoginRatePerIP", "login-rate-per-ip"), engine.DefaultLoginRatePerIP, "password attempts (login, register) per second per source address; negative disables")
	fs.IntVar(&e.LoginBurstPerIP, bind("LoginBurstPerIP", "login-burst-per-ip"), engine.DefaultLoginBurstPerIP, "password-attempt burst per source address")

	fs.DurationVar(&e.RecallWindow, bind("RecallWindow", "recall-window"), engine.DefaultRecallWindow, "how long after sending a message its sender may recall it")
	fs.Float64Var(&e.TypingRate, bind("TypingRate", "typing-rate"), engine.DefaultTypingRate, "per-user typing notifications forwarded per second (negative: no bound)")
	fs.IntVar(&e.TypingBurst, bind("TypingBurst", "typing-burst"), engine.DefaultTypingBurst, "per-user typing notification burst")
	fs.DurationVar(&e.TypingExpiry, bind("TypingExpiry", "typing-expiry"), engine.DefaultTypingExpiry, "how long receivers show a typing indication without a new one")

	fs.DurationVar(&e.HeartbeatInterval, bind("HeartbeatInterval", "heartbeat"), engine.DefaultHeartbeatInterval, "heartbeat interval announced to clients")
	fs.Float64Var(&e.HeartbeatRate, bind("HeartbeatRate", "heartbeat-rate"), engine.DefaultHeartbeatRate, "heartbeats per second the node aims to answer at most: the announced interval grows with the connections (negative: fixed)")
	fs.DurationVar(&e.MaxHeartbeatInterval, bind("MaxHeartbeatInterval", "max-heartbeat"), engine.DefaultMaxHeartbeatInterval, "the longest heartbeat interval announced")
	fs.DurationVar(&e.IdleTimeout, bind("IdleTimeout", "idle-timeout"), 0, "close logged-in connections silent this long (stretched with a lengthened heartbeat)")
	fs.DurationVar(&e.LoginTimeout, bind("LoginTimeout", "login-timeout"), engine.DefaultLoginTimeout, "close connections not logged in after this long")
	fs.DurationVar(&e.GoAwayWindow, bind("GoAwayWindow", "goaway-window"), engine.DefaultGoAwayWindow, "spread of client reconnect delays on shutdown")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long a graceful shutdown may take")

	c := &o.cluster
	fs.StringVar(&c.zk, "zk", "", "cluster mode: ZooKeeper servers `HOST:PORT,...` (membership)")
	fs.StringVar(&c.zkRoot, "zk-root", zkregistry.DefaultRoot, "cluster mode: znode under which nodes register")
	fs.DurationVar(&c.zkSessionTimeout, "zk-session-timeout", zkregistry.DefaultSessionTimeout, "cluster mode: ZooKeeper session timeout (a dead node leaves the view after about this long)")
	fs.StringVar(&c.redis, "redis", "", "cluster mode: Redis servers `HOST:PORT,...` (who is online where; the redis mesh)")
	fs.StringVar(&c.mongoURI, "mongo-uri", "", "cluster mode: MongoDB connection string (messages, users, groups)")
	fs.StringVar(&c.mongoDB, "mongo-db", mongostore.DefaultDatabase, "cluster mode: MongoDB database")
	fs.StringVar(&c.writeConcern, "write-concern", mongostore.DefaultWriteConcern, "cluster mode: MongoDB write concern: majority, majority,journaled, journaled, or a number")
	fs.StringVar(&c.meshMode, "mesh", meshDirect, "cluster mode: node-to-node transport: direct (TCP links) or redis (pub/sub)")
	fs.StringVar(&c.meshListen, "mesh-listen", "127.0.0.1:9092", "cluster mode: listener for direct mesh links `HOST:PORT`")
	fs.StringVar(&c.meshAdvertise, "mesh-advertise", "", "cluster mode: mesh address published for peers (set it when a proxy or NAT sits in front)")
	fs.StringVar(&c.meshSecret, "mesh-secret", "", "cluster mode: shared secret that direct mesh links prove with an HMAC challenge (at least 16 characters, the same on every node; required when --mesh-listen is not a loopback address)")
	fs.StringVar(&c.advertise, "advertise", "", "cluster mode: client address published for routers")
	fs.IntVar(&c.weight, "weight", lb.DefaultWeight, "cluster mode: balancing weight (0 = no new connections)")
	fs.DurationVar(&e.SessionTTL, bind("SessionTTL", "session-ttl"), engine.DefaultSessionTTL, "cluster mode: lease of a session route in Redis (renewed every third of it)")
	defineIntegrationFlags(fs, &o.integ)
	return fs, fields
}

// Values of --mesh.
const (
	meshDirect = "direct"
	meshRedis  = "redis"
)

// parseOptions reads args, the IM_* variables of getenv and the config
// file, derives the defaults that depend on other settings, and validates
// the result the way the engine will, so every bad setting is reported
// here (exit 2) before anything is opened. Help and version go to out.
func parseOptions(args []string, getenv func(string) string, out io.Writer) (*options, error) {
	o := &options{}
	fs, fields := newFlagSet(o, out)
	if err := fs.Parse(args, getenv); err != nil {
		return nil, err
	}
	o.configFile, o.flags = fs.ConfigPath(), fs
	if err := o.finish(fields); err != nil {
		return nil, err
	}
	return o, nil
}

// finish checks imd's own settings, fills the derived defaults and
// validates the engine configuration.
func (o *options) finish(fields map[string]string) error {
	if _, err := logging.New(io.Discard, o.logFormat, o.logLevel); err != nil {
		return envflag.Usagef("%v", err)
	}
	if o.store.kind != storeEmbedded && o.store.kind != storeMemory {
		return envflag.Usagef("--store must be embedded or memory, got %q", o.store.kind)
	}
	switch st := &o.store; {
	case st.retention < 0:
		return envflag.Usagef("--retention must be >= 0, got %s", st.retention)
	case st.inboxMax < 0:
		return envflag.Usagef("--inbox-max must be >= 0, got %d", st.inboxMax)
	case st.backgroundNice < 0 || st.backgroundNice > 19:
		return envflag.Usagef("--background-nice must be 0..19, got %d", st.backgroundNice)
	case st.dedupWindow <= 0:
		return envflag.Usagef("--dedup-window must be positive, got %s", st.dedupWindow)
	case (st.retention > 0 || st.inboxMax > 0) && o.clustered():
		return envflag.Usagef("--retention and --inbox-max apply to the single-node stores; a cluster's MongoDB store does not enforce them")
	}
	if o.shutdownTimeout <= 0 {
		return envflag.Usagef("--shutdown-timeout must be positive, got %s", o.shutdownTimeout)
	}
	if err := checkSecret("--admin-token", o.adminToken, "--admin", o.admin); err != nil {
		return err
	}
	if o.clustered() {
		c := &o.cluster
		switch {
		case c.zk == "" || c.redis == "" || c.mongoURI == "":
			return envflag.Usagef("cluster mode needs --zk, --redis and --mongo-uri together (have zk=%q redis=%q mongo-uri=%q)", c.zk, c.redis, redactURI(c.mongoURI))
		case c.meshMode != meshDirect && c.meshMode != meshRedis:
			return envflag.Usagef("--mesh must be direct or redis, got %q", c.meshMode)
		case c.weight < 0:
			return envflag.Usagef("--weight must be >= 0, got %d", c.weight)
		}
		if err := persist.CheckSessionTTL(o.engine.SessionTTL); err != nil {
			return envflag.Usagef("--session-ttl: %v", err)
		}
		if c.meshMode == meshDirect {
			if err := checkSecret("--mesh-secret", c.meshSecret, "--mesh-listen", c.meshListen); err != nil {
				return err
			}
		}
		if c.advertise == "" {
			c.advertise = o.engine.Addr
		}
	}
	if err := o.integ.check(o.cluster.redis); err != nil {
		return err
	}
	if o.engine.NodeID == "" {
		_, port, err := net.SplitHostPort(o.engine.Addr)
		if err != nil {
			return envflag.Usagef("--listen %q: %v", o.engine.Addr, err)
		}
		o.engine.NodeID = "n" + port
	}
	if o.engine.NodeNum == 0 {
		o.nodeNumDerived = true
		h := uint(0)
		for _, c := range o.engine.NodeID {
			h = h*31 + uint(c)
		}
		o.engine.NodeNum = uint16(h%1023 + 1)
	}
	o.engine.JWTSecret = []byte(o.jwtSecret)
	if err := o.edge.apply(&o.engine.Edge); err != nil {
		return err
	}
	eff, err := o.effective(fields)
	if err != nil {
		return err
	}
	// Pin the derived engine settings, so what is logged and checked is
	// what runs.
	// (Also the hash workers: with the embedded store imd raises
	// GOMAXPROCS later, and they must stay at the CPUs.)
	o.engine.IdleTimeout, o.engine.EventLoops, o.engine.HashConcurrency = eff.IdleTimeout, eff.EventLoops, eff.HashConcurrency
	return nil
}

// apply sets the origins and loads the TLS certificate into cfg.
func (eo *edgeOptions) apply(cfg *engine.EdgeConfig) error {
	cfg.WSOrigins = nil
	for _, o := range strings.Split(eo.origins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			cfg.WSOrigins = append(cfg.WSOrigins, o)
		}
	}
	cfg.WebFiles = nil
	if eo.web {
		if cfg.WSAddr == "" && cfg.WSSAddr == "" {
			return envflag.Usagef("--web needs --ws-listen or --wss-listen: the app is served there")
		}
		cfg.WebFiles = web.Files()
	}
	wantTLS := cfg.TLSAddr != "" || cfg.WSSAddr != ""
	switch {
	case (eo.tlsCert == "") != (eo.tlsKey == ""):
		return envflag.Usagef("--tls-cert and --tls-key go together")
	case eo.tlsCert != "" && !wantTLS:
		return envflag.Usagef("--tls-cert is set but neither --tls-listen nor --wss-listen is")
	case eo.tlsCert == "" && wantTLS:
		return envflag.Usagef("--tls-listen and --wss-listen need --tls-cert and --tls-key")
	case eo.tlsCert == "":
		return nil
	}
	cert, err := tls.LoadX509KeyPair(eo.tlsCert, eo.tlsKey)
	if err != nil {
		return envflag.Usagef("--tls-cert/--tls-key: %v", err)
	}
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	return nil
}

// minSecret is the shortest --admin-token and --mesh-secret accepted.
const minSecret = 16

// checkSecret checks a shared secret (flag name) that protects the
// listener addr (flag listener): it is required unless addr is a loopback
// address (or empty: the listener is off), and too short a value is
// refused.
func checkSecret(name, secret, listener, addr string) error {
	switch {
	case secret != "" && len(secret) < minSecret:
		return envflag.Usagef("%s must be at least %d characters", name, minSecret)
	case secret == "" && addr != "" && !loopback(addr):
		return envflag.Usagef("%s is required: %s %s is reachable from other hosts (use a loopback address, or set the secret)", name, listener, addr)
	}
	return nil
}

// loopback reports whether the HOST:PORT addr listens only on a loopback
// interface ("localhost", 127.0.0.0/8, ::1). An empty host listens on
// every interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// placeholderStore stands in for the store while the configuration is
// validated; Validate only checks that a store is set and never calls it.
type placeholderStore struct{ persist.Store }

// effective returns the engine configuration the node will run with
// (defaults and derived values filled in) or the engine's objection, with
// its field names replaced by imd's flag names.
func (o *options) effective(fields map[string]string) (engine.Config, error) {
	cfg := o.engine
	cfg.Store = placeholderStore{}
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		msg := strings.TrimPrefix(err.Error(), "engine: config: ")
		msg = fieldName.ReplaceAllStringFunc(msg, func(f string) string {
			if name, ok := fields[f]; ok {
				return "--" + name
			}
			return f
		})
		return cfg, envflag.Usagef("%s", strings.ReplaceAll(msg, "\n", "; "))
	}
	return cfg, nil
}

var fieldName = regexp.MustCompile(`\b[A-Z][A-Za-z]+\b`)

// redactURI hides the password of a connection string for messages.
func redactURI(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	userinfo, host, ok := strings.Cut(rest, "@")
	if !ok {
		return s
	}
	if user, _, hasPass := strings.Cut(userinfo, ":"); hasPass {
		return scheme + "://" + user + ":REDACTED@" + host
	}
	return s
}

// uint16Value is a flag bound to a uint16 field (engine.Config.NodeNum).
type uint16Value struct{ p *uint16 }

func (v uint16Value) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.Itoa(int(*v.p))
}

func (v uint16Value) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return fmt.Errorf("want an integer 0..65535: %w", err)
	}
	*v.p = uint16(n)
	return nil
}

// Get implements flag.Getter.
func (v uint16Value) Get() any { return *v.p }
