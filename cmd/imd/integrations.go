package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/api"
	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/events"
	"github.com/imgn/imgn/internal/envflag"
	"github.com/imgn/imgn/internal/logging"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/webhook"
)

// integrationOptions are the settings of what the node offers applications
// besides the protocol: the server API, the event stream and the
// offline-push webhook (all off by default).
type integrationOptions struct {
	apiListen string
	apiKeys   listValue

	events        string // "" or eventsRedis
	eventsRedis   string
	eventsRecover listValue      // node ids whose last moments this node publishes again at start
	stream        events.Config  // Stream, MaxLen, QueueSize, ReplayMargin; the rest: eventsConfig
	webhookSecret string         // copied to hook.Secret
	hook          webhook.Config // URL, Concurrency, QueueSize, MaxAttempts, Timeout; the rest: webhookConfig
}

// eventsConfig returns the event publisher's configuration for node (this
// one, or one whose events are recovered): the bound settings plus what
// only exists at run time.
func (o *integrationOptions) eventsConfig(node string, store persist.MessageStore, unordered bool, reg prometheus.Registerer, log *slog.Logger) events.Config {
	c := o.stream
	c.Addrs, c.NodeID, c.Store, c.Unordered, c.Registry, c.Logger = splitList(o.eventsRedis), node, store, unordered, reg, log
	return c
}

// webhookConfig returns the notifier's configuration: the bound settings
// plus what only exists at run time.
func (o *integrationOptions) webhookConfig(node string, online func(string) bool, reg prometheus.Registerer, log *slog.Logger) webhook.Config {
	c := o.hook
	c.Secret, c.NodeID, c.Online, c.Registry, c.Logger = []byte(o.webhookSecret), node, online, reg, log
	return c
}

// Values of --events.
const eventsRedis = "redis"

// integrationGroups are the help and config-example groups of these flags.
var integrationGroups = []envflag.Group{
	{Title: "Server API (on when --api-key is set)", Names: []string{"api-listen", "api-key"}},
	{Title: "Event stream (--events redis)", Names: []string{"events", "events-redis", "events-stream", "events-maxlen", "events-queue", "events-replay-margin", "events-recover-nodes"}},
	{Title: "Offline-push webhook (on when --webhook-url is set)", Names: []string{"webhook-url", "webhook-secret", "webhook-concurrency",
		"webhook-queue", "webhook-attempts", "webhook-timeout"}},
}

// defineIntegrationFlags defines the flags of integrationOptions on fs.
func defineIntegrationFlags(fs *envflag.Flags, o *integrationOptions) {
	fs.StringVar(&o.apiListen, "api-listen", "127.0.0.1:9093", "server API listener `HOST:PORT` (HTTP, for application backends; see docs/api.md)")
	fs.Var(&o.apiKeys, "api-key", "API `KEY` the server API accepts (Authorization: Bearer KEY), at least 16 characters; repeat the flag or separate keys with commas; none leaves the API off")
	fs.StringVar(&o.events, "events", "", "publish stored messages, cursors and group changes to an event stream: redis (Redis Streams; see docs/events.md), or empty for none")
	fs.StringVar(&o.eventsRedis, "events-redis", "", "event stream: Redis servers `HOST:PORT,...` (default the --redis servers)")
	fs.StringVar(&o.stream.Stream, "events-stream", events.DefaultStream, "event stream: the stream key every node appends to")
	fs.Int64Var(&o.stream.MaxLen, "events-maxlen", events.DefaultMaxLen, "event stream: trim the stream to about this many entries (XADD MAXLEN ~)")
	fs.IntVar(&o.stream.QueueSize, "events-queue", events.DefaultQueueSize, "event stream: events waiting for Redis; beyond it new events are dropped and counted")
	fs.DurationVar(&o.stream.ReplayMargin, "events-replay-margin", events.DefaultReplayMargin, "event stream: at start, publish again the messages stored from this long before the last checkpoint (the longest a send may take from arrival to ack)")
	fs.Var(&o.eventsRecover, "events-recover-nodes", "event stream: at start, also publish again what these nodes `ID,...` stored after their last checkpoint (nodes that will not come back; MongoDB store only; see docs/events.md)")
	fs.StringVar(&o.hook.URL, "webhook-url", "", "offline-push webhook: `URL` that receives a signed POST for each message whose recipient has no online device")
	fs.StringVar(&o.webhookSecret, "webhook-secret", "", "offline-push webhook: HMAC-SHA256 secret signing each request (required with --webhook-url)")
	fs.IntVar(&o.hook.Concurrency, "webhook-concurrency", webhook.DefaultConcurrency, "offline-push webhook: requests in flight to the endpoint at most")
	fs.IntVar(&o.hook.QueueSize, "webhook-queue", webhook.DefaultQueueSize, "offline-push webhook: requests waiting; beyond it new ones are dropped and counted")
	fs.IntVar(&o.hook.MaxAttempts, "webhook-attempts", webhook.DefaultMaxAttempts, "offline-push webhook: tries per request (network errors, 5xx and 429 are retried with backoff)")
	fs.DurationVar(&o.hook.Timeout, "webhook-timeout", webhook.DefaultTimeout, "offline-push webhook: timeout of one request")
}

// check validates the integration settings; redis is the cluster's
// --redis (empty on a single node).
func (o *integrationOptions) check(redis string) error {
	if len(o.apiKeys) > 0 && o.apiListen != "" {
		if err := api.CheckKeys(o.apiKeys); err != nil {
			return envflag.Usagef("--api-key: %s", strings.TrimPrefix(err.Error(), "api: "))
		}
		if _, _, err := net.SplitHostPort(o.apiListen); err != nil {
			return envflag.Usagef("--api-listen %q: %v", o.apiListen, err)
		}
	}
	switch o.events {
	case "":
	case eventsRedis:
		if o.eventsRedis == "" {
			o.eventsRedis = redis
		}
		if o.eventsRedis == "" {
			return envflag.Usagef("--events redis needs --events-redis (or --redis in cluster mode)")
		}
	default:
		return envflag.Usagef("--events must be redis or empty, got %q", o.events)
	}
	if len(o.eventsRecover) > 0 && o.events == "" {
		return envflag.Usagef("--events-recover-nodes needs --events redis")
	}
	switch {
	case o.stream.Stream == "":
		return envflag.Usagef("--events-stream must not be empty")
	case o.stream.MaxLen <= 0:
		return envflag.Usagef("--events-maxlen must be positive, got %d", o.stream.MaxLen)
	case o.stream.QueueSize <= 0:
		return envflag.Usagef("--events-queue must be positive, got %d", o.stream.QueueSize)
	case o.stream.ReplayMargin <= 0:
		return envflag.Usagef("--events-replay-margin must be positive, got %s", o.stream.ReplayMargin)
	case o.hook.Concurrency <= 0 || o.hook.QueueSize <= 0 || o.hook.MaxAttempts <= 0 || o.hook.Timeout <= 0:
		return envflag.Usagef("--webhook-concurrency, --webhook-queue, --webhook-attempts and --webhook-timeout must be positive")
	}
	if o.hook.URL != "" {
		if !strings.HasPrefix(o.hook.URL, "http://") && !strings.HasPrefix(o.hook.URL, "https://") {
			return envflag.Usagef("--webhook-url must be an http:// or https:// URL, got %q", o.hook.URL)
		}
		if o.webhookSecret == "" {
			return envflag.Usagef("--webhook-url needs --webhook-secret: the requests are signed")
		}
	}
	return nil
}

// listValue is a flag that may be repeated; each value may also hold
// several items separated by commas (as IM_* variables and config files
// give lists).
type listValue []string

func (l *listValue) String() string { return strings.Join(*l, ",") }

func (l *listValue) Set(s string) error {
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}

// integrations is what runs around the engine: the observers it reports to
// and the API server.
type integrations struct {
	o         *integrationOptions
	log       *slog.Logger
	publisher *events.Publisher
	notifier  *webhook.Notifier
	srv       *engine.Server // set by attach, before the node starts
	apiServer *http.Server
	apiErr    chan error
}

// startIntegrations starts the event publisher (recovering what the last
// run may have left unpublished, from store when it can replay) and the
// webhook notifier. Call it before the engine takes traffic, and give the
// engine observer(); then attach the server.
func startIntegrations(ctx context.Context, o *options, store persist.Store, reg prometheus.Registerer, log *slog.Logger) (*integrations, error) {
	in := &integrations{o: &o.integ, log: log, apiErr: make(chan error, 1)}
	if o.integ.events == eventsRedis {
		// A cluster's workers may report an inbox's appends out of order;
		// holes are filled from the store either way.
		p, err := events.New(o.integ.eventsConfig(o.engine.NodeID, store, o.clustered(), reg, log))
		if err != nil {
			return nil, err
		}
		in.publisher = p
		p.Start()
		if r, ok := store.(persist.Replayer); ok {
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := p.Recover(rctx, r)
			cancel()
			if err != nil {
				log.Error("event stream: recovery incomplete", logging.KeyErr, err)
			}
		} else {
			log.Info("event stream: this store cannot replay; events queued when the node stops abruptly are lost")
		}
		if err := recoverNodes(ctx, o, store, log); err != nil {
			in.close(ctx)
			return nil, err
		}
		log.Info("event stream", "redis", o.integ.eventsRedis, "stream", o.integ.stream.Stream)
	}
	if o.integ.hook.URL != "" {
		online := func(user string) bool { return len(in.srv.Online(user)) > 0 }
		n, err := webhook.New(o.integ.webhookConfig(o.engine.NodeID, online, reg, log))
		if err != nil {
			in.close(ctx)
			return nil, err
		}
		in.notifier = n
		log.Info("offline-push webhook", "url", o.integ.hook.URL)
	}
	return in, nil
}

// observer is what the engine reports to (nil when nothing listens).
func (in *integrations) observer() engine.Observer {
	var obs []engine.Observer
	if in.publisher != nil {
		obs = append(obs, in.publisher)
	}
	if in.notifier != nil {
		obs = append(obs, in.notifier)
	}
	return engine.Observers(obs...)
}

// attach gives the integrations the running server and starts the server
// API when keys are configured.
func (in *integrations) attach(srv *engine.Server, reg prometheus.Registerer) error {
	in.srv = srv
	if len(in.o.apiKeys) == 0 || in.o.apiListen == "" {
		return nil
	}
	a, err := api.New(api.Config{Backend: srv, Keys: in.o.apiKeys, Registry: reg, Logger: in.log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", in.o.apiListen)
	if err != nil {
		return fmt.Errorf("server API listener (--api-listen %s): %w", in.o.apiListen, err)
	}
	in.apiServer = &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(in.log.Handler(), slog.LevelWarn)}
	go func() { in.apiErr <- in.apiServer.Serve(ln) }()
	in.log.Info("server API listening", logging.KeyAddr, ln.Addr().String(), "keys", len(in.o.apiKeys))
	return nil
}

// stopAPI stops the server API (before the engine stops).
func (in *integrations) stopAPI(ctx context.Context) {
	if in.apiServer != nil {
		_ = in.apiServer.Shutdown(ctx)
	}
}

// close flushes and stops the publisher and the notifier, after the engine
// stopped (nothing reports to them any more).
func (in *integrations) close(ctx context.Context) error {
	var errs []error
	if in.notifier != nil {
		if err := in.notifier.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if in.publisher != nil {
		if err := in.publisher.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		in.log.Error("integrations: stopped with work left", logging.KeyErr, err)
		return err
	}
	return nil
}

// nodeReplayer is a store that can replay what another node wrote: the
// MongoDB store of a cluster.
type nodeReplayer interface {
	ReplayerFor(node string) persist.Replayer
}

// recoverNodes publishes again, for each node of --events-recover-nodes,
// what that node stored after its checkpoint: the recovery the node would
// have run at its own restart, for a node that will not come back
// (docs/events.md). Each runs on a publisher of its own, named as that
// node (its events, its checkpoint), drained and closed before the next.
// Failures are logged: this node starts all the same.
func recoverNodes(ctx context.Context, o *options, store persist.Store, log *slog.Logger) error {
	ids := o.integ.eventsRecover
	if len(ids) == 0 {
		return nil
	}
	nr, ok := store.(nodeReplayer)
	if !ok {
		return envflag.Usagef("--events-recover-nodes needs the MongoDB store of a cluster (the nodes' entries are told apart there)")
	}
	for _, id := range ids {
		if id == o.engine.NodeID {
			return envflag.Usagef("--events-recover-nodes names this node (%s), which recovers its own at every start", id)
		}
	}
	for _, id := range ids {
		nlog := log.With("recovered_node", id)
		p, err := events.New(o.integ.eventsConfig(id, store, true, nil, nlog))
		if err != nil {
			return err
		}
		p.Start()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := p.Recover(rctx, nr.ReplayerFor(id))
		cancel()
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cerr := p.Close(cctx)
		cancel()
		switch {
		case err != nil:
			nlog.Error("event stream: recovery of another node incomplete", logging.KeyErr, err)
		case cerr != nil:
			nlog.Error("event stream: recovery of another node not fully published", "events", n, logging.KeyErr, cerr)
		default:
			nlog.Info("event stream: published again what another node stored after its checkpoint", "events", n)
		}
	}
	return nil
}
