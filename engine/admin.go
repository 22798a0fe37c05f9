package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"slices"
	"strconv"
	"time"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/nodestats"
	"github.com/imgn/imgn/persist"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Broadcast sends an operator NOTICE to every logged-in connection on this
// node. Notices are not stored. It returns how many connections were sent it.
// ClusterAdmin reaches every node of a cluster.
func (s *Server) Broadcast(text string) int {
	return s.broadcastAt(text, time.Now().UnixMilli())
}

func (s *Server) broadcastAt(text string, at int64) int {
	n := 0
	s.sessions.each(func(c *conn) {
		if c.writeMsg(nil, c.ser, codec.CmdNotice, 0, &pb.Notice{Text: text, Time: at}) {
			n++
		}
	})
	return n
}

// ClusterAdmin runs req on every node: through the cluster when there is
// one (each member's answer, sorted by node), else on this node alone.
func (s *Server) ClusterAdmin(ctx context.Context, req cluster.AdminRequest) []cluster.NodeCount {
	if req.Kind == cluster.AdminBroadcast && req.Time == 0 {
		req.Time = time.Now().UnixMilli()
	}
	if s.cfg.Cluster == nil {
		return []cluster.NodeCount{{Node: s.cfg.NodeID, Count: s.HandleAdmin(req)}}
	}
	return s.cfg.Cluster.Admin(ctx, req)
}

// adminCounts is the JSON answer of a cluster-wide admin call: the total
// under key, each node's count, and the nodes that could not be asked.
func adminCounts(key string, counts []cluster.NodeCount) map[string]any {
	total := 0
	nodes := map[string]int{}
	failed := map[string]string{}
	for _, c := range counts {
		if c.Err != nil {
			failed[c.Node] = c.Err.Error()
			continue
		}
		total += c.Count
		nodes[c.Node] = c.Count
	}
	out := map[string]any{key: total, "nodes": nodes}
	if len(failed) > 0 {
		out["failed"] = failed
	}
	return out
}

// SystemMessage stores a message from the system (From "") in user's inbox
// and pushes it to the user's online devices. The user must exist.
func (s *Server) SystemMessage(ctx context.Context, user string, kind uint32, body []byte) (persist.AppendResult, error) {
	sent, err := s.Send(ctx, Outgoing{To: user, Kind: kind, Body: body})
	if err != nil && ErrorCode(err) == codec.CodeUnknownRecipient {
		err = fmt.Errorf("engine: system message: %w: user %q", persist.ErrNotFound, user)
	}
	return sent.AppendResult, err
}

// Outgoing is a message sent with Send.
type Outgoing struct {
	// From is the sending user; "" sends as the system.
	From string
	// To is the recipient user, or the group when Group is set.
	To    string
	Group bool
	// ClientMsgID is the idempotency key: (From, ClientMsgID) is stored
	// once, whatever the number of retries. Empty makes a fresh key, so
	// such a send is never recognised as a retry.
	ClientMsgID string
	Kind        uint32
	Body        []byte
}

// Sent is the outcome of Send: the stored message (on a retry, the
// original), and its seq in each inbox it was appended to.
type Sent struct {
	persist.AppendResult
	// Inboxes[i] got the message at Seqs[i]: the sender's own inbox first
	// (not for a system message), then the recipients'.
	Inboxes []string
}

// Send stores a message from a user, or from the system, through the path
// of the protocol's SEND and GROUP_SEND: appended to the sender's inbox
// (not for a system message) and every recipient's, each by the node that
// owns it, durable when Send returns; then pushed to every online device of
// those inboxes (the sender's included: no connection sent it). The
// idempotency key is the protocol's, (From, ClientMsgID): a retry returns
// the stored message with Duplicate set and stores nothing twice.
//
// Refusals are Errors: INVALID_ARGUMENT, UNKNOWN_RECIPIENT (no such
// sender or recipient), UNKNOWN_GROUP, NOT_GROUP_MEMBER, AUTH_FAILED (a
// disabled sender); store and cluster failures are retryable with the same
// ClientMsgID (ErrorCode classifies them).
func (s *Server) Send(ctx context.Context, m Outgoing) (Sent, error) {
	if m.From != "" {
		if err := checkUserID("from", m.From); err != nil {
			return Sent{}, err
		}
	}
	if err := checkUserID("to", m.To); err != nil {
		return Sent{}, err
	}
	if len(m.ClientMsgID) > 64 {
		return Sent{}, refuse(codec.CodeInvalidArgument, "client_msg_id must be at most 64 bytes")
	}
	if len(m.Body) > s.cfg.MaxBody {
		return Sent{}, refuse(codec.CodeInvalidArgument, "body larger than the maximum of %d bytes", s.cfg.MaxBody)
	}
	var inboxes []string
	if m.From != "" {
		u, err := s.User(ctx, m.From)
		if err != nil {
			return Sent{}, err
		}
		if u.Disabled() {
			return Sent{}, errDisabled
		}
		inboxes = append(inboxes, m.From)
	}
	if m.Group {
		g, err := s.Group(ctx, m.To)
		if err != nil {
			return Sent{}, err
		}
		if _, member := slices.BinarySearch(g.Members, m.From); m.From != "" && !member {
			return Sent{}, refuse(codec.CodeNotGroupMember, "%s is not a member of %s", m.From, g.ID)
		}
		for _, u := range g.Members {
			if u != m.From {
				inboxes = append(inboxes, u)
			}
		}
		if len(inboxes) == 0 {
			return Sent{}, refuse(codec.CodeInvalidArgument, "group %s has no members", g.ID)
		}
	} else {
		ok, err := s.userExists(ctx, m.To)
		if err != nil {
			return Sent{}, fmt.Errorf("engine: read recipient: %w", err)
		}
		if !ok {
			return Sent{}, refuse(codec.CodeUnknownRecipient, "no such user: %s", m.To)
		}
		if m.To != m.From {
			inboxes = append(inboxes, m.To)
		}
	}
	now := time.Now().UnixMilli()
	id := s.ids.nextAt(now)
	if m.ClientMsgID == "" {
		prefix := "api-"
		if m.From == "" {
			prefix = "sys-"
		}
		m.ClientMsgID = prefix + strconv.FormatUint(id, 36)
	}
	msg := persist.Message{ID: id, From: m.From, To: m.To, Group: m.Group, ClientMsgID: m.ClientMsgID, Timestamp: now, Kind: m.Kind, Body: m.Body}
	res, err := s.appendInboxes(ctx, msg, inboxes)
	if err != nil {
		return Sent{AppendResult: res, Inboxes: inboxes}, fmt.Errorf("engine: send: %w", err)
	}
	if !res.Duplicate {
		s.metrics.messages.Inc()
	}
	s.deliver(nil, nil, &res.Msg, inboxes, res.Seqs, nil)
	return Sent{AppendResult: res, Inboxes: inboxes}, nil
}

// Kick ends the sessions of user on this node (only device's when device is
// not empty) with KICK_ADMIN, and returns how many were kicked.
func (s *Server) Kick(user, device string) int {
	var arr [8]*conn
	n := 0
	for _, c := range s.sessions.devices(user, arr[:0]) {
		if device == "" || c.device == device {
			s.sessions.remove(c)
			c.kick(nil, codec.CodeKickAdmin, "removed by an operator")
			n++
		}
	}
	return n
}

// Online reports user's online devices: cluster-wide when the node has a
// session store, else on this node.
func (s *Server) Online(user string) (devices []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.presence(ctx, user).Devices
}

// Conns returns the number of open client connections (for load
// publishing).
func (s *Server) Conns() int64 { return int64(s.conns.len()) }

// Stats is a snapshot for the admin API and benchmarks (GET /admin/stats).
type Stats = nodestats.Stats

// Stats returns current connection counts and process memory. It reads
// runtime memory statistics, a short stop-the-world: call it at most a few
// times a second.
func (s *Server) Stats() Stats {
	st := nodestats.Process(s.conns.len())
	st.NodeID = s.cfg.NodeID
	st.Users, st.Sessions = s.sessions.count()
	if r, ok := s.store.(persist.StatsReporter); ok {
		ss := r.StoreStats()
		st.Store = &ss
	}
	return st
}

// AdminHooks lets the process that runs the server act on admin calls that
// reach beyond the engine. A nil hook answers 501.
type AdminHooks struct {
	// Drain starts a graceful drain of the node (as SIGTERM does) and
	// returns at once.
	Drain func() error
	// SetWeight publishes a new balancing weight for the node.
	SetWeight func(weight int) error
}

// AdminHandler returns the admin HTTP API: /metrics, /debug/pprof/,
// /healthz, /readyz and the /admin/ endpoints (see docs/operations.md).
// It must only be served on a trusted interface: it has no authentication.
func (s *Server) AdminHandler(hooks AdminHooks) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.shutting.Load() || !s.started.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("GET /admin/stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Stats())
	})
	mux.HandleFunc("GET /admin/online", func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if !validID(user) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "user query parameter required"})
			return
		}
		devs := s.Online(user)
		if devs == nil {
			devs = []string{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"user": user, "online": len(devs) > 0, "devices": devs})
	})
	mux.HandleFunc("POST /admin/kick", func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if !validID(user) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "user query parameter required"})
			return
		}
		counts := s.ClusterAdmin(r.Context(), cluster.AdminRequest{Kind: cluster.AdminKick, User: user, Device: r.URL.Query().Get("device")})
		writeJSON(w, http.StatusOK, adminCounts("kicked", counts))
	})
	mux.HandleFunc("POST /admin/broadcast", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Text string `json:"text"`
		}
		if err := decodeJSON(r, &body); err != nil || body.Text == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "JSON body {\"text\": \"...\"} required"})
			return
		}
		counts := s.ClusterAdmin(r.Context(), cluster.AdminRequest{Kind: cluster.AdminBroadcast, Text: body.Text})
		writeJSON(w, http.StatusOK, adminCounts("delivered", counts))
	})
	mux.HandleFunc("POST /admin/rebalance", func(w http.ResponseWriter, r *http.Request) {
		f, err := strconv.ParseFloat(r.URL.Query().Get("fraction"), 64)
		if err != nil || f <= 0 || f > 1 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "fraction query parameter in (0, 1] required"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"moved": s.Rebalance(f, s.cfg.GoAwayWindow)})
	})
	mux.HandleFunc("POST /admin/drain", func(w http.ResponseWriter, _ *http.Request) {
		if hooks.Drain == nil {
			writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "drain is not available in this process"})
			return
		}
		if err := hooks.Drain(); err != nil {
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "draining"})
	})
	mux.HandleFunc("POST /admin/weight", func(w http.ResponseWriter, r *http.Request) {
		weight, err := strconv.Atoi(r.URL.Query().Get("weight"))
		if err != nil || weight < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "weight query parameter >= 0 required"})
			return
		}
		if hooks.SetWeight == nil {
			writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "weights exist only in cluster mode"})
			return
		}
		if err := hooks.SetWeight(weight); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"weight": weight})
	})
	mux.HandleFunc("POST /admin/message", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			To   string `json:"to"`
			Text string `json:"text"`
			Kind uint32 `json:"kind"`
		}
		if err := decodeJSON(r, &body); err != nil || !validID(body.To) || body.Text == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "JSON body {\"to\": user, \"text\": \"...\"} required"})
			return
		}
		kind := body.Kind
		if kind == 0 {
			kind = 1 // system notice
		}
		res, err := s.SystemMessage(r.Context(), body.To, kind, []byte(body.Text))
		switch {
		case errors.Is(err, persist.ErrNotFound):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
		case err != nil:
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		default:
			writeJSON(w, http.StatusOK, map[string]uint64{"msg_id": res.Msg.ID, "seq": res.Seqs[0]})
		}
	})
	return mux
}

func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	return dec.Decode(v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
