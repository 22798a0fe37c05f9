package engine

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/persist"
)

// appendInboxes stores msg in every inbox of inboxes, each through the node
// that owns it (single writer per inbox), and returns the seqs in the order
// of inboxes. The owner of inboxes[0] (the sender's own inbox, by the
// callers' convention) goes first: it stores the message and its entry,
// and its result settles the message (on a retry, the original id and
// time). The other owners then write only their entries for the stored
// message (AppendEntries: the message is stored once, and each entry is
// idempotent per (inbox, message)), in parallel. The call succeeds only if
// every owner stored its part; on failure some inboxes may hold the
// message, and the client's retry completes the rest without duplicates.
func (s *Server) appendInboxes(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	cl := s.cfg.Cluster
	if cl == nil {
		return s.localAppend(ctx, msg, inboxes)
	}
	// Group inbox positions by owner, keeping first-seen order.
	var order []string
	groups := map[string][]int{}
	for i, u := range inboxes {
		node, _ := cl.Owner(u)
		if _, ok := groups[node]; !ok {
			order = append(order, node)
		}
		groups[node] = append(groups[node], i)
	}
	out := persist.AppendResult{Seqs: make([]uint64, len(inboxes))}
	part := func(ctx context.Context, node string, m persist.Message, entriesOnly bool) (persist.AppendResult, error) {
		idx := groups[node]
		users := make([]string, len(idx))
		for j, i := range idx {
			users[j] = inboxes[i]
		}
		var res persist.AppendResult
		var err error
		switch {
		case node == cl.NodeID() && entriesOnly:
			s.metrics.appendsLocal.Add(float64(len(users)))
			res, err = s.localAppendEntries(ctx, m, users)
		case node == cl.NodeID():
			s.metrics.appendsLocal.Add(float64(len(users)))
			res, err = s.localAppend(ctx, m, users)
		case entriesOnly:
			s.metrics.appendsForwarded.Add(float64(len(users)))
			res, err = cl.AppendEntries(ctx, node, m, users)
		default:
			s.metrics.appendsForwarded.Add(float64(len(users)))
			res, err = cl.Append(ctx, node, m, users)
		}
		if err != nil {
			return res, err
		}
		if len(res.Seqs) != len(idx) {
			return res, errors.New("engine: owner returned a wrong number of seqs")
		}
		for j, i := range idx {
			out.Seqs[i] = res.Seqs[j]
		}
		return res, nil
	}
	first, err := part(ctx, order[0], msg, false)
	if err != nil {
		return out, err
	}
	out.Msg, out.Duplicate = first.Msg, first.Duplicate
	rest := order[1:]
	if len(rest) == 0 {
		return out, nil
	}
	if len(rest) == 1 {
		_, err := part(ctx, rest[0], first.Msg, true)
		return out, err
	}
	errs := make([]error, len(rest))
	var wg sync.WaitGroup
	for k, node := range rest {
		wg.Go(func() { _, errs[k] = part(ctx, node, first.Msg, true) })
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// localAppend appends on this node's store, measuring it, and tells the
// observer (see appendObserved).
func (s *Server) localAppend(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	t0 := time.Now()
	res, err := s.appendObserved(ctx, msg, inboxes)
	s.metrics.storeLatency.Observe(time.Since(t0).Seconds())
	return res, err
}

// entryAppender is a store that can write inbox entries for a message it
// holds already (mongostore.Store).
type entryAppender interface {
	AppendEntries(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error)
}

// localAppendEntries appends entries for the stored msg on this node's
// store and tells the observer, like localAppend: the owner of an inbox
// publishes its events whichever owner stored the message document. A
// store without AppendEntries gets a full Append, which finds the message
// by (From, ClientMsgID) and adds the entries: the same effect.
func (s *Server) localAppendEntries(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	ea, ok := s.store.(entryAppender)
	if !ok {
		return s.localAppend(ctx, msg, inboxes)
	}
	t0 := time.Now()
	res, err := ea.AppendEntries(ctx, msg, inboxes)
	s.metrics.storeLatency.Observe(time.Since(t0).Seconds())
	if err == nil && s.cfg.Observer != nil {
		s.cfg.Observer.MessageStored(&res.Msg, inboxes, res.Seqs, res.Duplicate)
	}
	return res, err
}

// HandleAppend implements cluster.Handler.
func (s *Server) HandleAppend(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	return s.localAppend(ctx, msg, inboxes)
}

// HandleAppendEntries implements cluster.Handler.
func (s *Server) HandleAppendEntries(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	return s.localAppendEntries(ctx, msg, inboxes)
}

// HandleAdmin implements cluster.Handler.
func (s *Server) HandleAdmin(req cluster.AdminRequest) int {
	switch req.Kind {
	case cluster.AdminBroadcast:
		return s.broadcastAt(req.Text, req.Time)
	case cluster.AdminKick:
		return s.Kick(req.User, req.Device)
	}
	return 0
}

// HandlePush implements cluster.Handler: msg goes to the local devices of
// every target.
func (s *Server) HandlePush(msg persist.Message, targets []cluster.PushTarget) {
	for _, t := range targets {
		if msg.Event != persist.EventNone || msg.Recalled {
			s.pushEvent(nil, t.User, t.Seq, &msg)
			continue
		}
		s.pushTo(nil, nil, t.User, t.Seq, &msg, nil)
	}
}

// HandleKick implements cluster.Handler.
func (s *Server) HandleKick(user, device string, connID uint64) {
	var arr [8]*conn
	for _, c := range s.sessions.devices(user, arr[:0]) {
		if c.device == device && c.id == connID {
			s.sessions.remove(c)
			c.kick(nil, codec.CodeKickDuplicateLogin, "the same user and device logged in on another node")
		}
	}
}

// deliver pushes msg, stored at seqs[i] of inboxes[i], to every online
// device of those users: this node's devices straight from the session map,
// other nodes' through the cluster after a route lookup. Delivery is best
// effort: a failed lookup or push delays the message until the receiver
// syncs; it never loses it.
//
// origin (may be nil) is the connection that sent the message: it has its
// SEND_ACK and is not pushed the message. src is the loop the caller runs
// on (nil off-loop) and op (may be nil) lends its encoding structs. The
// cross-node part, which does I/O, runs only in cluster mode, where callers
// are workers holding no lock.
func (s *Server) deliver(src *loop, op *sendOp, msg *persist.Message, inboxes []string, seqs []uint64, origin *conn) {
	for i, u := range inboxes {
		s.pushTo(src, op, u, seqs[i], msg, origin)
	}
	s.pushRemote(msg, inboxes, seqs)
}

// pushRemote pushes msg, stored at seqs[i] of inboxes[i], to the devices
// of those users on other nodes (cluster mode; a no-op otherwise).
func (s *Server) pushRemote(msg *persist.Message, inboxes []string, seqs []uint64) {
	for node, idx := range s.remoteNodes(inboxes) {
		targets := make([]cluster.PushTarget, len(idx))
		for j, i := range idx {
			targets[j] = cluster.PushTarget{User: inboxes[i], Seq: seqs[i]}
		}
		s.metrics.remotePushes.Inc()
		s.cfg.Cluster.Push(node, *msg, targets)
	}
}

// remoteNodes maps each other live node where one of users has a device
// to the indexes of those users (each once per node: one push serves all
// of a user's devices there), after one route lookup. Nil outside
// cluster mode, or when the lookup fails (receivers then sync).
func (s *Server) remoteNodes(users []string) map[string][]int {
	if s.cfg.Sessions == nil || s.cfg.Cluster == nil || len(users) == 0 {
		return nil
	}
	cl := s.cfg.Cluster
	self := cl.NodeID()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	all, err := s.lookupRoutes(ctx, users)
	if err != nil {
		s.log.Debug("session lookup failed; receivers will sync", "users", len(users), "err", err)
		return nil
	}
	remote := map[string][]int{}
	for i := range users {
		for _, r := range all[i] {
			if r.NodeID == self || !cl.Live(r.NodeID, r.BootEpoch) {
				continue
			}
			if idx := remote[r.NodeID]; len(idx) == 0 || idx[len(idx)-1] != i {
				remote[r.NodeID] = append(idx, i)
			}
		}
	}
	return remote
}

// bulkLookup is a session store that reads many users' routes in one
// round trip (redisstore.Store).
type bulkLookup interface {
	LookupMany(ctx context.Context, users []string) ([][]persist.Route, error)
}

// lookupRoutes returns the routes of every user of users (out[i] for
// users[i]): in one call when the session store can, else one lookup per
// user (a failed one leaves its user without routes).
func (s *Server) lookupRoutes(ctx context.Context, users []string) ([][]persist.Route, error) {
	if b, ok := s.cfg.Sessions.(bulkLookup); ok {
		return b.LookupMany(ctx, users)
	}
	out := make([][]persist.Route, len(users))
	for i, u := range users {
		routes, err := s.cfg.Sessions.Lookup(ctx, u)
		if err != nil {
			s.log.Debug("session lookup failed; receivers will sync", "user", u, "err", err)
			continue
		}
		out[i] = routes
	}
	return out, nil
}

// sessionOp is a route change queued for the session writer.
type sessionOp struct {
	remove bool
	route  persist.Route
	c      *conn // for a renewal: skipped once the connection is closing
}

// routeOf returns c's cluster route. c must be logged in.
func (s *Server) routeOf(c *conn) persist.Route {
	return persist.Route{User: c.user, Device: c.device, NodeID: s.cfg.Cluster.NodeID(), BootEpoch: s.cfg.Cluster.BootEpoch(), ConnID: c.id}
}

// queueSessionOp hands a route removal or renewal to the session writer
// without blocking (the event loop calls it from OnClose). When the queue
// is full the op is dropped: a missed renewal heals at the next one, a
// missed removal expires with its lease and is ignored meanwhile because the
// connection id no longer exists.
func (s *Server) queueSessionOp(op sessionOp) {
	select {
	case s.sessOps <- op:
	default:
		s.log.Warn("session op queue full; dropping", "user", op.route.User)
	}
}

// sessionWriter applies queued route removals and renewals.
func (s *Server) sessionWriter() {
	defer close(s.sessDone)
	for op := range s.sessOps {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var err error
		switch {
		case op.remove:
			err = s.cfg.Sessions.Remove(ctx, op.route)
		case op.c.state.Load() != stateLoggedIn:
			// Closed after the renewal was queued: renewing would
			// re-create the route its removal deleted.
		default:
			err = s.cfg.Sessions.Renew(ctx, op.route, s.cfg.SessionTTL)
		}
		cancel()
		if err != nil && !errors.Is(err, persist.ErrReplaced) {
			s.log.Debug("session store", "remove", op.remove, "user", op.route.User, "err", err)
		}
	}
}

// publishRoute records c's route cluster-wide after its login, and kicks
// the connection it replaces on another node.
func (s *Server) publishRoute(ctx context.Context, c *conn) {
	if s.cfg.Sessions == nil {
		return
	}
	r := s.routeOf(c)
	c.renewed.Store(s.uptimeSec(time.Now().UnixNano()))
	old, err := s.cfg.Sessions.Put(ctx, r, s.cfg.SessionTTL)
	if err != nil {
		// Degraded: other nodes cannot find this device until the next
		// renewal; its messages wait in the inbox for sync.
		s.log.Warn("publish session route", "user", c.user, "err", err)
		return
	}
	if old != nil && old.NodeID != r.NodeID && s.cfg.Cluster.Live(old.NodeID, old.BootEpoch) {
		s.cfg.Cluster.Kick(old.NodeID, old.User, old.Device, old.ConnID)
	}
}

// presenceDevices lists user's online devices: cluster-wide from the
// session store when there is one, always including this node's own.
func (s *Server) presenceDevices(ctx context.Context, user string) []string {
	var arr [8]*conn
	var devs []string
	for _, c := range s.sessions.devices(user, arr[:0]) {
		devs = append(devs, c.device)
	}
	if s.cfg.Sessions != nil {
		routes, err := s.cfg.Sessions.Lookup(ctx, user)
		if err == nil {
			for _, r := range persist.FilterLive(routes, s.cfg.Cluster.Live) {
				devs = append(devs, r.Device)
			}
		}
	}
	return devs
}
