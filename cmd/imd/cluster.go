package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/logging"
	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/zkregistry"
	"github.com/imgn/imgn/persist/mongostore"
	"github.com/imgn/imgn/persist/redisstore"
)

// closers runs cleanups in reverse order, logging failures.
type closers struct {
	log *slog.Logger
	fns []func() error
	tag []string
}

func (c *closers) add(tag string, fn func() error) {
	c.fns = append(c.fns, fn)
	c.tag = append(c.tag, tag)
}

func (c *closers) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		if err := c.fns[i](); err != nil {
			c.log.Error("close", "what", c.tag[i], logging.KeyErr, err)
		}
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// serveCluster runs a node of a cluster: messages in MongoDB, sessions in
// Redis, membership in ZooKeeper, forwarding over mesh links. Startup order
// matters: the node joins the registry and learns the membership (so it
// knows which inboxes it owns) before it accepts a single client.
func serveCluster(o *options, log *slog.Logger) error {
	nlog := nodeLog(o, log)
	cl := &closers{log: nlog}
	defer cl.run()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	c := &o.cluster
	startCtx, cancelStart := context.WithTimeout(ctx, 60*time.Second)
	defer cancelStart()
	metrics := prometheus.NewRegistry() // the engine's, the stores' and the mesh's metrics
	store, err := mongostore.Open(startCtx, mongostore.Options{URI: c.mongoURI, Database: c.mongoDB, NodeID: o.engine.NodeID, WriteConcern: c.writeConcern, Registry: metrics, Logger: nlog})
	if err != nil {
		return fmt.Errorf("message store: %w", err)
	}
	cl.add("message store", store.Close)
	sessions, err := redisstore.New(redisstore.Config{Addrs: splitList(c.redis), Registry: metrics})
	if err != nil {
		return fmt.Errorf("session store: %w", err)
	}
	cl.add("session store", sessions.Close)
	reg, err := zkregistry.New(zkregistry.Config{Servers: splitList(c.zk), Root: c.zkRoot, SessionTimeout: c.zkSessionTimeout, Logger: nlog})
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	cl.add("registry", reg.Close)
	// Message ids carry the node number: two nodes with one number could
	// mint the same id. Claim it in ZooKeeper before anything is served.
	want := o.engine.NodeNum
	if o.nodeNumDerived {
		want = 0
	}
	num, err := reg.ClaimNodeNum(startCtx, o.engine.NodeID, want, o.engine.NodeNum)
	if err != nil {
		return fmt.Errorf("node number: %w", err)
	}
	o.engine.NodeNum = num
	nlog.Info("node number claimed", "node_num", num)
	// The mesh and its transports add the node field themselves.
	transport, err := newTransport(o, metrics, log)
	if err != nil {
		return err
	}

	var srv *engine.Server
	cluster, err := mesh.New(mesh.Config{
		Self:              membership.NodeInfo{ID: o.engine.NodeID, ClientAddr: c.advertise, MeshAddr: c.meshListen, AdminAddr: o.admin, Weight: c.weight},
		Registry:          reg,
		Transport:         transport,
		AdvertiseMeshAddr: c.meshAdvertise,
		Conns:             func() int64 { return srv.Conns() },
		Logger:            log,
	})
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	integ, err := startIntegrations(ctx, o, store, metrics, nlog)
	if err != nil {
		return err
	}
	cl.add("integrations", func() error {
		cctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
		defer cancel()
		return integ.close(cctx)
	})
	cfg := engineConfig(o, store, metrics, log)
	cfg.Cluster, cfg.Sessions, cfg.Observer = cluster, sessions, integ.observer()
	srv, err = engine.New(cfg)
	if err != nil {
		return err
	}
	if err := cluster.Start(startCtx, srv); err != nil {
		return fmt.Errorf("join cluster: %w", err)
	}
	cl.add("cluster", cluster.Close)
	if err := srv.Start(ctx); err != nil {
		return err
	}

	drain := make(chan struct{}, 1)
	hooks := engine.AdminHooks{
		Drain: func() error {
			select {
			case drain <- struct{}{}:
			default:
			}
			return nil
		},
		SetWeight: func(w int) error {
			wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return cluster.SetWeight(wctx, w)
		},
	}
	mux := adminMux(srv, store, hooks)
	mux.HandleFunc("GET /admin/cluster", func(w http.ResponseWriter, r *http.Request) {
		out := map[string]any{"node_id": cluster.NodeID(), "node_num": o.engine.NodeNum, "self": cluster.Self(), "members": cluster.Members()}
		if u := r.URL.Query().Get("user"); u != "" {
			owner, _ := cluster.Owner(u)
			out["owner"] = owner
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	admin, adminErr, err := serveAdmin(o, srv, mux, nlog)
	if err == nil {
		err = integ.attach(srv, metrics)
	}
	if err != nil {
		_ = srv.Shutdown(context.Background())
		return err
	}
	nlog.Info("imd ready (cluster)", "listen", srv.Addr().String(), "mesh", c.meshMode, "members", len(cluster.Members()), "config", o.configFile)

	select {
	case <-ctx.Done():
		nlog.Info("draining: signal")
	case <-drain:
		nlog.Info("draining: admin request")
	case err := <-adminErr:
		nlog.Error("admin server stopped", logging.KeyErr, err)
	case err := <-integ.apiErr:
		nlog.Error("server API stopped", logging.KeyErr, err)
	}
	// Drain: routers stop choosing this node, clients are told to move,
	// requests in flight finish, then the node leaves the registry.
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	integ.stopAPI(sctx)
	var errs []error
	if err := cluster.SetDraining(sctx, true); err != nil {
		errs = append(errs, fmt.Errorf("mark draining: %w", err))
	}
	if err := srv.Drain(sctx); err != nil {
		errs = append(errs, err)
	}
	if admin != nil {
		_ = admin.Shutdown(sctx)
	}
	return errors.Join(errs...)
}

// newTransport builds the node-to-node transport chosen by --mesh. Direct
// links are authenticated with --mesh-secret when it is set; refused peers
// are counted in imgn_mesh_auth_failures_total on reg.
func newTransport(o *options, reg prometheus.Registerer, log *slog.Logger) (mesh.Transport, error) {
	switch o.cluster.meshMode {
	case meshRedis:
		return newRedisTransport(o, log)
	default:
		failures := prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_mesh_auth_failures_total",
			Help: "Mesh links refused because the peer did not prove it knows the mesh secret (as dialer or acceptor)."})
		reg.MustRegister(failures)
		t, err := mesh.NewLinks(mesh.LinkConfig{Logger: log, Secret: []byte(o.cluster.meshSecret), AuthFailures: failures})
		if err != nil {
			return nil, fmt.Errorf("mesh links: %w", err)
		}
		return t, nil
	}
}
