// Command imcluster runs a local development cluster in the foreground:
// ZooKeeper, Redis and the dev MongoDB (FerretDB) on loopback, N imd nodes
// and one imrouter, each with its data and log under --dir. Ctrl-C stops
// everything. It is what `make cluster` runs; it installs the Debian
// packages and builds the dev MongoDB when they are missing.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/imgn/imgn/internal/clusterkit"
	"github.com/imgn/imgn/internal/dirlock"
	"github.com/imgn/imgn/internal/envflag"
	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/lb"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

type options struct {
	nodes        int
	dir, bin     string
	basePort     int
	mesh         string
	jwtSecret    string
	withRouter   bool
	lbStrategy   string
	mongoBackend string
}

const clusterDescription = `Runs a local development cluster in the foreground: ZooKeeper, Redis and a dev
MongoDB (FerretDB) on loopback, --nodes imd nodes and one imrouter, each with
its data and log under --dir. Ctrl-C stops everything. Every flag may also be
set as IM_<NAME> in the environment (IM_NODES, IM_BASE_PORT, ...); flags win.

Ports: node i (from 0) takes clients on --base-port + 10i, its admin API on +1
and its mesh on +2; the router listens on --base-port - 20; ZooKeeper, Redis
and MongoDB on --base-port - 7, - 6 and - 5.`

// parse reads args and the IM_* variables of getenv; help and version go
// to stdout.
func parse(args []string, getenv func(string) string, stdout io.Writer) (*options, error) {
	o := &options{}
	fs := envflag.New("imcluster", "imcluster [flags]", clusterDescription, stdout)
	fs.IntVar(&o.nodes, "nodes", 3, "number of imd nodes (1..20)")
	fs.StringVar(&o.dir, "dir", "./data/cluster", "directory for the services' and nodes' data and logs")
	fs.StringVar(&o.bin, "bin", "./bin", "directory holding imd and imrouter")
	fs.IntVar(&o.basePort, "base-port", 9100, "first node's client port; the other ports follow from it (see above)")
	fs.StringVar(&o.mesh, "mesh", "direct", "node-to-node transport: direct or redis")
	fs.StringVar(&o.jwtSecret, "jwt-secret", "dev-secret", "HS256 secret for token login on every node")
	fs.BoolVar(&o.withRouter, "router", true, "also run imrouter")
	fs.StringVar(&o.lbStrategy, "lb", lb.ConsistentHash, "router strategy: "+strings.Join(lb.Strategies(), ", "))
	fs.StringVar(&o.mongoBackend, "mongo-backend", "postgresql", "the dev MongoDB's storage: postgresql or sqlite")
	if err := fs.Parse(args, getenv); err != nil {
		return nil, err
	}
	if o.nodes < 1 || o.nodes > 20 {
		return nil, envflag.Usagef("--nodes must be 1..20, got %d", o.nodes)
	}
	if o.basePort < 1034 || o.basePort+10*o.nodes > 65000 {
		return nil, envflag.Usagef("--base-port %d out of range: the ports used are %d..%d", o.basePort, o.basePort-20, o.basePort+10*o.nodes)
	}
	if o.mesh != "direct" && o.mesh != "redis" {
		return nil, envflag.Usagef("--mesh must be direct or redis, got %q", o.mesh)
	}
	if o.mongoBackend != "postgresql" && o.mongoBackend != "sqlite" {
		return nil, envflag.Usagef("--mongo-backend must be postgresql or sqlite, got %q", o.mongoBackend)
	}
	if !slices.Contains(lb.Strategies(), o.lbStrategy) {
		return nil, envflag.Usagef("--lb %q: want one of %s", o.lbStrategy, strings.Join(lb.Strategies(), ", "))
	}
	return o, nil
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	o, err := parse(args, getenv, stdout)
	if code, stop := envflag.Exit("imcluster", err, stderr); stop {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := runCluster(ctx, o, stdout); err != nil {
		fmt.Fprintln(stderr, "imcluster:", err)
		return 1
	}
	return 0
}

// nodeID names node i (from 0): n1, n2, ...
func nodeID(i int) string { return "n" + strconv.Itoa(i+1) }

// plannedPorts lists every port the cluster will listen on, with what
// listens there.
func plannedPorts(o *options) []plannedPort {
	ps := []plannedPort{{o.basePort - 7, "ZooKeeper"}, {o.basePort - 6, "Redis"}, {o.basePort - 5, "MongoDB"}}
	if o.withRouter {
		ps = append(ps, plannedPort{o.basePort - 20, "imrouter"})
	}
	for i := range o.nodes {
		base := o.basePort + 10*i
		id := nodeID(i)
		ps = append(ps, plannedPort{base, id + " clients"}, plannedPort{base + 1, id + " admin"}, plannedPort{base + 2, id + " mesh"})
	}
	return ps
}

type plannedPort struct {
	port int
	what string
}

// checkPorts fails, naming them, when any of the cluster's ports is taken
// (another cluster, most likely): starting would reach that cluster's
// servers instead of ours.
func checkPorts(o *options) error {
	var busy []string
	for _, p := range plannedPorts(o) {
		ln, err := net.Listen("tcp", addr(p.port))
		if err != nil {
			busy = append(busy, fmt.Sprintf("%d (%s)", p.port, p.what))
			continue
		}
		ln.Close()
	}
	if len(busy) > 0 {
		return fmt.Errorf("ports in use: %s; stop what listens there (another cluster?) or choose another --base-port", strings.Join(busy, ", "))
	}
	return nil
}

func runCluster(ctx context.Context, o *options, out io.Writer) error {
	// The directory first: a second imcluster on the same --dir must not
	// touch the first one's data or logs.
	lock, err := dirlock.Acquire(o.dir)
	if err != nil {
		return err
	}
	defer lock.Release()
	if err := checkPorts(o); err != nil {
		return err
	}
	fmt.Fprintln(out, "starting ZooKeeper, Redis and the dev MongoDB (first run installs packages and builds FerretDB)...")
	var svcs []*testsvc.Service
	defer func() {
		for i := len(svcs) - 1; i >= 0; i-- {
			_ = svcs[i].Stop()
		}
	}()
	launch := func(kind string, port int) (*testsvc.Service, error) {
		var opts []testsvc.Option
		if kind == testsvc.KindMongo {
			opts = append(opts, testsvc.WithDevmongoArgs("--backend", o.mongoBackend))
		}
		s, err := testsvc.Launch(ctx, kind, filepath.Join(o.dir, kind), port, opts...)
		if err != nil {
			return nil, err
		}
		svcs = append(svcs, s)
		return s, nil
	}
	zk, err := launch(testsvc.KindZooKeeper, o.basePort-7)
	if err != nil {
		return err
	}
	redis, err := launch(testsvc.KindRedis, o.basePort-6)
	if err != nil {
		return err
	}
	mongo, err := launch(testsvc.KindMongo, o.basePort-5)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  zookeeper %s\n  redis     %s\n  mongodb   %s\n", zk.Addr, redis.Addr, mongo.URI())

	var procs []*clusterkit.Proc
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Term(20 * time.Second)
		}
	}()
	deps := &clusterkit.Deps{ZK: zk.Addr, Redis: redis.Addr, MongoURI: mongo.URI(), Mesh: o.mesh, Secret: o.jwtSecret}
	for i := range o.nodes {
		base := o.basePort + 10*i
		n, err := clusterkit.NewNode(clusterkit.NodeSpec{Bin: o.bin, Dir: o.dir, ID: nodeID(i),
			Listen: addr(base), Admin: addr(base + 1), Mesh: addr(base + 2), Deps: deps})
		if err != nil {
			return err
		}
		if err := n.Proc.Start(); err != nil {
			return err
		}
		procs = append(procs, n.Proc)
		if err := n.WaitReady(ctx, 60*time.Second); err != nil {
			return err
		}
		fmt.Fprintf(out, "  node %-3s clients %s  admin http://%s  mesh %s\n", n.ID, n.Listen, n.Admin, n.Mesh)
	}
	if _, err := os.Stat(filepath.Join(o.bin, "imrouter")); o.withRouter && err == nil {
		p, raddr, err := clusterkit.NewRouter(clusterkit.RouterSpec{Bin: o.bin, Dir: o.dir, Listen: addr(o.basePort - 20),
			ZK: zk.Addr, Args: []string{"--lb", o.lbStrategy}})
		if err != nil {
			return err
		}
		if err := p.Start(); err != nil {
			return err
		}
		procs = append(procs, p)
		if err := p.WaitHTTP(ctx, "http://"+raddr+"/healthz", 60*time.Second); err != nil {
			return err
		}
		fmt.Fprintf(out, "  router   http://%s  (%s)\n", raddr, o.lbStrategy)
	}
	fmt.Fprintf(out, "cluster up; logs in %s. Ctrl-C stops everything.\n", o.dir)
	for _, p := range procs {
		go func() { // ends when the process does, at the latest in the deferred Term
			<-p.Exited()
			if ctx.Err() == nil {
				fmt.Fprintf(out, "%s exited\n", p.Name)
			}
		}()
	}
	<-ctx.Done()
	fmt.Fprintln(out, "stopping...")
	return nil
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
