package router

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/imgn/imgn/internal/logging"
)

// Limits of a route request.
const (
	// MaxUIDLen is the longest accepted user ID (the server's rule,
	// auth.ValidID: 1..64 of [A-Za-z0-9_.-]).
	MaxUIDLen = auth.MaxIDLen
	// MaxExclude is the largest number of node IDs one request may
	// exclude.
	MaxExclude = 128
)

// NodeStatus is one member as listed by GET /v1/nodes.
type NodeStatus struct {
	ID         string `json:"id"`
	ClientAddr string `json:"client_addr"`
	MeshAddr   string `json:"mesh_addr"`
	AdminAddr  string `json:"admin_addr,omitempty"`
	Weight     int    `json:"weight"`
	Conns      int64  `json:"conns"`
	BootEpoch  int64  `json:"boot_epoch"`
	Draining   bool   `json:"draining"`
	// Available: the router may hand this node out (weight > 0, not
	// draining, a client address, a valid entry).
	Available bool `json:"available"`
}

// NodesResponse is the body of GET /v1/nodes.
type NodesResponse struct {
	Strategy string `json:"strategy"`
	// Ready is false until the first membership view arrived.
	Ready bool `json:"ready"`
	// Updated is when the current view was applied (absent before the
	// first view). The view is kept while the registry is unreachable.
	Updated   *time.Time   `json:"updated,omitempty"`
	Available int          `json:"available"`
	Nodes     []NodeStatus `json:"nodes"`
}

// errorBody is every error answer; Reason only for 503.
type errorBody struct {
	Error  string `json:"error"`
	Reason string `json:"reason,omitempty"`
}

// Handler returns the Router's HTTP API:
//
//	GET /v1/route?uid=U[&exclude=n1,n2]  200 Route | 400 | 503 {"error","reason"}
//	GET /v1/nodes                        200 NodesResponse
//	GET /healthz                         200 while the process runs
//	GET /readyz                          200 once a membership view arrived, else 503
//	GET /metrics                         Prometheus metrics of Config.Registry
//
// Every answer but /metrics is JSON. The handler is safe for concurrent use
// and keeps working after Close (from the last view).
func (r *Router) Handler() http.Handler { return r.handler }

func (r *Router) newHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/route", getOnly(r.serveRoute))
	mux.HandleFunc("/v1/nodes", getOnly(r.serveNodes))
	mux.HandleFunc("/healthz", getOnly(r.serveHealth))
	mux.HandleFunc("/readyz", getOnly(r.serveReady))
	mux.Handle("/metrics", promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg}))
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{Error: "not found"})
	})
	return mux
}

func getOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "method not allowed"})
			return
		}
		h(w, req)
	}
}

func (r *Router) serveRoute(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	defer func() { r.m.latency.Observe(time.Since(start).Seconds()) }()
	q := req.URL.Query()
	uid := q.Get("uid")
	if !auth.ValidID(uid) {
		r.m.badRequest.Inc()
		msg := "invalid uid: want 1..64 of [A-Za-z0-9_.-]"
		if uid == "" {
			msg = "missing uid"
		}
		writeJSON(w, http.StatusBadRequest, errorBody{Error: msg})
		return
	}
	var exclude []string
	for _, v := range q["exclude"] {
		for id := range strings.SplitSeq(v, ",") {
			if id = strings.TrimSpace(id); id != "" {
				exclude = append(exclude, id)
			}
		}
	}
	if len(exclude) > MaxExclude {
		r.m.badRequest.Inc()
		writeJSON(w, http.StatusBadRequest, errorBody{Error: "too many excluded nodes"})
		return
	}
	route, err := r.Pick(uid, exclude...)
	var ue *UnavailableError
	// One debug line per answer, with the fields imd's lines use, so a
	// user's path can be followed from the router to the node.
	debug := r.log.Enabled(req.Context(), slog.LevelDebug)
	switch {
	case err == nil:
		r.m.ok.Inc()
		if debug {
			r.log.Debug("route", logging.KeyUser, uid, logging.KeyNode, route.NodeID, logging.KeyAddr, route.Addr, "exclude", exclude)
		}
		writeJSON(w, http.StatusOK, route)
	case errors.As(err, &ue):
		if debug {
			r.log.Debug("no route", logging.KeyUser, uid, "exclude", exclude, "reason", ue.Reason)
		}
		r.m.unavailable.Inc()
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "no available node", Reason: ue.Reason})
	default: // Pick returns nothing else; answer like a 503 anyway
		r.m.unavailable.Inc()
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "no available node", Reason: err.Error()})
	}
}

func (r *Router) serveNodes(w http.ResponseWriter, _ *http.Request) {
	resp := NodesResponse{Strategy: r.strategy, Nodes: []NodeStatus{}}
	if v := r.view.Load(); v != nil {
		at := v.at.UTC()
		resp.Ready, resp.Updated, resp.Available = true, &at, v.available
		for _, n := range v.nodes {
			valid := true
			for _, id := range v.invalid {
				valid = valid && id != n.ID
			}
			resp.Nodes = append(resp.Nodes, NodeStatus{
				ID: n.ID, ClientAddr: n.ClientAddr, MeshAddr: n.MeshAddr, AdminAddr: n.AdminAddr,
				Weight: n.Weight, Conns: n.Conns, BootEpoch: n.BootEpoch, Draining: n.Draining,
				Available: valid && n.Weight > 0 && !n.Draining && n.ClientAddr != "",
			})
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

type healthBody struct {
	Status string `json:"status"`
	Ready  bool   `json:"ready"`
	Nodes  int    `json:"nodes"`
}

func (r *Router) health() healthBody {
	h := healthBody{Status: "ok"}
	if v := r.view.Load(); v != nil {
		h.Ready, h.Nodes = true, len(v.nodes)
	}
	return h
}

func (r *Router) serveHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, r.health())
}

func (r *Router) serveReady(w http.ResponseWriter, _ *http.Request) {
	h := r.health()
	if !h.Ready {
		h.Status = "waiting for the first membership view"
		writeJSON(w, http.StatusServiceUnavailable, h)
		return
	}
	writeJSON(w, http.StatusOK, h)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // only plain structs are written; cannot happen
		code, b = http.StatusInternalServerError, []byte(`{"error":"internal error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
