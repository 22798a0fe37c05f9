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
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

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

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(name, bin, logPath string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

// stop sends SIGTERM and waits, then SIGKILL.
func (p *proc) stop(grace time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitHTTP polls url until it answers 200, the process p exits (its
// output says why: a port it could not bind, ...) or 60 s pass.
func waitHTTP(ctx context.Context, p *proc, url string) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited during start-up: %v", p.name, p.cmd.ProcessState)
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after 60s", url)
}

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

	var procs []*proc
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop(20 * time.Second)
		}
	}()
	for i := range o.nodes {
		id := nodeID(i)
		base := o.basePort + 10*i
		listen, admin, meshAddr := addr(base), addr(base+1), addr(base+2)
		p, err := startProc(id, filepath.Join(o.bin, "imd"), filepath.Join(o.dir, id+".log"),
			"--node-id", id, "--listen", listen, "--admin", admin, "--mesh-listen", meshAddr, "--mesh", o.mesh,
			"--zk", zk.Addr, "--redis", redis.Addr, "--mongo-uri", mongo.URI(), "--jwt-secret", o.jwtSecret)
		if err != nil {
			return err
		}
		procs = append(procs, p)
		if err := waitHTTP(ctx, p, "http://"+admin+"/readyz"); err != nil {
			return fmt.Errorf("%s: %w (see %s)", id, err, filepath.Join(o.dir, id+".log"))
		}
		fmt.Fprintf(out, "  node %-3s clients %s  admin http://%s  mesh %s\n", id, listen, admin, meshAddr)
	}
	if _, err := os.Stat(filepath.Join(o.bin, "imrouter")); o.withRouter && err == nil {
		raddr := addr(o.basePort - 20)
		p, err := startProc("imrouter", filepath.Join(o.bin, "imrouter"), filepath.Join(o.dir, "imrouter.log"),
			"--listen", raddr, "--zk", zk.Addr, "--lb", o.lbStrategy)
		if err != nil {
			return err
		}
		procs = append(procs, p)
		if err := waitHTTP(ctx, p, "http://"+raddr+"/healthz"); err != nil {
			return fmt.Errorf("imrouter: %w", err)
		}
		fmt.Fprintf(out, "  router   http://%s  (%s)\n", raddr, o.lbStrategy)
	}
	fmt.Fprintf(out, "cluster up; logs in %s. Ctrl-C stops everything.\n", o.dir)
	for _, p := range procs {
		go func() {
			<-p.done
			if ctx.Err() == nil {
				fmt.Fprintf(out, "%s exited\n", p.name)
			}
		}()
	}
	<-ctx.Done()
	fmt.Fprintln(out, "stopping...")
	return nil
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
