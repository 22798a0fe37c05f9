package clusterkit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/imgn/imgn/internal/nodestats"
	"github.com/imgn/imgn/internal/testsvc"
)

// Node is one imd process. The addresses are fixed at creation and kept
// across restarts (same node id, same ports).
type Node struct {
	*Proc
	ID string
	// Listen is the client listener; Advertise is what the router hands
	// out (ClientProxy.Addr with Config.ProxyClients, else Listen). Mesh
	// is the mesh listener of a cluster node, "" for a single one.
	Listen, Advertise, Admin, Mesh string
	// WSListen is the WebSocket listener (--ws-listen), "" unless asked
	// for (NodeSpec.WS, Config.WS); WSAdvertise is where clients reach it
	// (WSProxy.Addr with a client proxy, else WSListen).
	WSListen, WSAdvertise string
	// Proxies, nil unless asked for (see the package comment).
	ClientProxy, ZKProxy, RedisProxy, MongoProxy *testsvc.Proxy
	// WSProxy sits in front of the WebSocket listener when both a client
	// proxy and WebSocket are asked for, so the client-side network faults
	// reach WebSocket connections too.
	WSProxy *testsvc.Proxy
	// MeshProxy sits in front of the node's mesh listener; every peer's
	// link into this node passes through it (Config.ProxyDeps).
	MeshProxy *testsvc.Proxy
}

// NodeSpec describes a node for NewNode.
type NodeSpec struct {
	Bin  string // directory holding imd
	Path string // the imd binary; default Bin/imd
	Dir  string // directory for the log <ID>.log
	ID   string
	// Listen, Admin and (with Deps) Mesh are the node's addresses; each
	// empty one is a free loopback port (internal/ports).
	Listen, Admin, Mesh string
	// Deps, when set, makes the node a cluster member: --mesh-listen,
	// --advertise and Deps.Args follow the addresses.
	Deps *Deps
	// Args come after every flag NewNode writes, so they can override
	// them (imd takes the last of a repeated flag).
	Args []string
	// ClientProxy puts a testsvc.Proxy in front of the client listener
	// (and of the WebSocket listener with WS).
	ClientProxy bool
	// WS gives the node a WebSocket listener (--ws-listen) on a free
	// loopback port.
	WS bool
}

// Deps names what a cluster node connects to. Empty fields leave imd's
// defaults.
type Deps struct {
	ZK, Redis        string // host:port
	MongoURI         string
	MongoDB          string // database name
	Mesh             string // node-to-node transport: direct or redis
	Secret           string // --jwt-secret
	ZKSessionTimeout time.Duration
}

// Args returns imd's flags for d.
func (d Deps) Args() []string {
	var args []string
	for _, f := range [][2]string{{"--zk", d.ZK}, {"--redis", d.Redis}, {"--mongo-uri", d.MongoURI},
		{"--mongo-db", d.MongoDB}, {"--mesh", d.Mesh}, {"--jwt-secret", d.Secret}} {
		if f[1] != "" {
			args = append(args, f[0], f[1])
		}
	}
	if d.ZKSessionTimeout > 0 {
		args = append(args, "--zk-session-timeout", d.ZKSessionTimeout.String())
	}
	return args
}

// FreeAddr returns "127.0.0.1:<port>" for a port that was free a moment
// ago (internal/ports).
func FreeAddr() (string, error) {
	p, err := testsvc.FreePort()
	return "127.0.0.1:" + strconv.Itoa(p), err
}

// NewNode picks free ports and prepares a node; Start runs it. On error
// the proxies it made are closed.
func NewNode(spec NodeSpec) (_ *Node, err error) {
	n := &Node{ID: spec.ID, Listen: spec.Listen, Admin: spec.Admin, Mesh: spec.Mesh}
	defer func() {
		if err != nil {
			n.closeProxies()
		}
	}()
	addrs := []*string{&n.Listen, &n.Admin}
	if spec.Deps != nil {
		addrs = append(addrs, &n.Mesh)
	}
	for _, a := range addrs {
		if *a == "" {
			if *a, err = FreeAddr(); err != nil {
				return nil, err
			}
		}
	}
	n.Advertise = n.Listen
	if spec.ClientProxy {
		if n.ClientProxy, err = testsvc.NewProxy(n.Listen); err != nil {
			return nil, err
		}
		n.Advertise = n.ClientProxy.Addr
	}
	args := []string{"--node-id", n.ID, "--listen", n.Listen, "--admin", n.Admin}
	if spec.WS {
		if n.WSListen, err = FreeAddr(); err != nil {
			return nil, err
		}
		n.WSAdvertise = n.WSListen
		if spec.ClientProxy {
			if n.WSProxy, err = testsvc.NewProxy(n.WSListen); err != nil {
				return nil, err
			}
			n.WSAdvertise = n.WSProxy.Addr
		}
		args = append(args, "--ws-listen", n.WSListen)
	}
	if spec.Deps != nil {
		args = append(args, "--mesh-listen", n.Mesh, "--advertise", n.Advertise)
		args = append(args, spec.Deps.Args()...)
	}
	args = append(args, spec.Args...)
	path := spec.Path
	if path == "" {
		path = filepath.Join(spec.Bin, "imd")
	}
	n.Proc = &Proc{Name: n.ID, Path: path, Args: args, LogPath: filepath.Join(spec.Dir, n.ID+".log")}
	return n, nil
}

// WSURL is the URL clients dial for the node's WebSocket listener
// ("ws://" + WSAdvertise + "/"), "" without one.
func (n *Node) WSURL() string {
	if n.WSAdvertise == "" {
		return ""
	}
	return "ws://" + n.WSAdvertise + "/"
}

// Start (re)starts the process and waits until /readyz answers 200.
func (n *Node) Start(ctx context.Context) error {
	if err := n.Proc.Start(); err != nil {
		return err
	}
	return n.WaitReady(ctx, 30*time.Second)
}

// WaitReady polls /readyz until 200, the process exits, or d passes.
func (n *Node) WaitReady(ctx context.Context, d time.Duration) error {
	return n.WaitHTTP(ctx, "http://"+n.Admin+"/readyz", d)
}

var hc = &http.Client{Timeout: 2 * time.Second}

// Ready reports whether /readyz answers 200.
func (n *Node) Ready(ctx context.Context) bool { return httpOK(ctx, "http://"+n.Admin+"/readyz") }

// httpOK reports whether a GET of url answers 200.
func httpOK(ctx context.Context, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Members returns the node ids in this node's registry view (cluster mode).
func (n *Node) Members(ctx context.Context) ([]string, error) {
	var out struct {
		Members []struct {
			ID string `json:"id"`
		} `json:"members"`
	}
	if err := GetJSON(ctx, "http://"+n.Admin+"/admin/cluster", &out); err != nil {
		return nil, err
	}
	ids := make([]string, len(out.Members))
	for i, m := range out.Members {
		ids[i] = m.ID
	}
	return ids, nil
}

// Owner asks the node which node owns user's inbox.
func (n *Node) Owner(ctx context.Context, user string) string {
	var out struct {
		Owner string `json:"owner"`
	}
	_ = GetJSON(ctx, "http://"+n.Admin+"/admin/cluster?user="+user, &out)
	return out.Owner
}

// Stats is the JSON of GET /admin/stats.
type Stats = nodestats.Stats

// Stats reads /admin/stats.
func (n *Node) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	err := GetJSON(ctx, "http://"+n.Admin+"/admin/stats", &s)
	return s, err
}

// Metrics reads /metrics.
func (n *Node) Metrics(ctx context.Context) (Metrics, error) {
	return ReadMetrics(ctx, "http://"+n.Admin+"/metrics")
}

// Metrics maps a Prometheus sample as written in the text format
// (`name` or `name{label="v",...}`) to its value.
type Metrics map[string]float64

// Get returns the sample name{labels} (labels as `k="v"` pairs in the
// order the server writes them, i.e. sorted), 0 when absent.
func (m Metrics) Get(name string, labels ...string) float64 {
	if len(labels) == 0 {
		return m[name]
	}
	return m[name+"{"+strings.Join(labels, ",")+"}"]
}

// Errors returns imgn_errors_total{code=name}.
func (m Metrics) Errors(code string) float64 {
	return m.Get("imgn_errors_total", `code="`+code+`"`)
}

// ReadMetrics fetches and parses a Prometheus text endpoint.
func ReadMetrics(ctx context.Context, url string) (Metrics, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("clusterkit: %s: %s", url, resp.Status)
	}
	m := Metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// GetJSON GETs url and decodes a 200 answer into out.
func GetJSON(ctx context.Context, url string, out any) error {
	return doJSON(ctx, hc, http.MethodGet, url, "", out)
}

// PostJSON POSTs the JSON body to url and decodes a 200 answer into out.
// It waits up to 10 s (an admin action such as a broadcast may take a
// while).
func PostJSON(ctx context.Context, url, body string, out any) error {
	return doJSON(ctx, slowHC, http.MethodPost, url, body, out)
}

var slowHC = &http.Client{Timeout: 10 * time.Second}

func doJSON(ctx context.Context, hc *http.Client, method, url, body string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Close kills the process and closes its proxies.
func (n *Node) Close() {
	_ = n.Kill()
	n.closeProxies()
}

func (n *Node) closeProxies() {
	for _, p := range []*testsvc.Proxy{n.ClientProxy, n.WSProxy, n.ZKProxy, n.RedisProxy, n.MongoProxy, n.MeshProxy} {
		if p != nil {
			p.Close()
		}
	}
}
