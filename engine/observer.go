package engine

import (
	"context"
	"strings"
	"time"

	"github.com/imgn/imgn/persist"
)

// Observer learns what this node stored, for the integrations outside the
// protocol: the event stream (package events) and the offline-push webhook
// (package webhook). Set it in Config.Observer; nil (the default) costs the
// message path one comparison and nothing else.
//
// Where the calls come from: the paths that complete store writes, inline.
// With the memory store MessageStored runs under the store's lock, with the
// embedded store on its committer goroutine, in cluster mode (and with
// stores that have no committer) on the worker that ran the append;
// Delivered with the embedded store on its committer's completer goroutine;
// the other calls run on an event loop or a worker. An implementation must
// therefore be cheap and must never block, wait for I/O, or call back into
// the Server or its store: it copies what it needs into a bounded queue of
// its own, drops (and counts) what does not fit, and does the work on its
// own goroutines. Arguments are valid only during the call: strings and
// bodies may point into a request buffer or store memory reused once the
// call returns.
//
// Every call describes a write that is durable: MessageStored comes after
// the store acknowledged the append (and, for a protocol SEND, after the
// SEND_ACK was queued), never for a failed one. A crash can lose calls that
// were due (the write is durable, the call never happened); persist.Replayer
// lets a consumer recover them from the store.
type Observer interface {
	// MessageStored reports that msg is durable at seqs[i] of inboxes[i],
	// for the inboxes this node owns (a message whose inboxes have several
	// owners in a cluster gives one call on each owner). duplicate is set
	// for a retried send: the seqs are the ones the message already had,
	// except for inboxes the retry added.
	//
	// Order: on a single node with the memory or the embedded store, the
	// calls for one inbox come in seq order, one returning before the next
	// starts (they run where the store completes appends, in commit order).
	// In cluster mode two appends to one inbox that complete together may be
	// reported in either order, from different goroutines.
	MessageStored(msg *persist.Message, inboxes []string, seqs []uint64, duplicate bool)
	// Delivered reports that device of user acknowledged (PUSH_ACK) every
	// message of the inbox up to seq, and the stored cursor moved there.
	Delivered(user, device string, seq uint64)
	// GroupChanged reports a group created, a member added or removed, an
	// owner or admin changed; only changes that changed something.
	GroupChanged(ch GroupChange)
}

// GroupChangeKind says what a GroupChange is.
type GroupChangeKind string

// The kinds of group change.
const (
	GroupCreated       GroupChangeKind = "group.created"
	GroupMemberAdded   GroupChangeKind = "group.member_added"
	GroupMemberRemoved GroupChangeKind = "group.member_removed"
	// User is the new owner; By is who transferred the group ("" when the
	// owner left or was removed and ownership passed on).
	GroupOwnerChanged GroupChangeKind = "group.owner_changed"
	// User is the member who became, or stopped being, an admin.
	GroupAdminAdded   GroupChangeKind = "group.admin_added"
	GroupAdminRemoved GroupChangeKind = "group.admin_removed"
)

// GroupChange is one change of a group's existence or membership.
type GroupChange struct {
	Kind  GroupChangeKind
	Group string
	// User is the member added or removed (the owner for GroupCreated).
	User string
	// By is who made the change: the user itself for a join or leave over
	// the protocol, "" for the server API.
	By string
	// Name, Owner and Members describe a created group (Members sorted).
	Name    string
	Owner   string
	Members []string
	// Time is the server time of the change, Unix milliseconds.
	Time int64
}

// Observers returns an Observer that calls each of obs in turn (nil
// entries are skipped), or nil when none is left.
func Observers(obs ...Observer) Observer {
	var list multiObserver
	for _, o := range obs {
		if o != nil {
			list = append(list, o)
		}
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	return list
}

type multiObserver []Observer

func (m multiObserver) MessageStored(msg *persist.Message, inboxes []string, seqs []uint64, duplicate bool) {
	for _, o := range m {
		o.MessageStored(msg, inboxes, seqs, duplicate)
	}
}

func (m multiObserver) Delivered(user, device string, seq uint64) {
	for _, o := range m {
		o.Delivered(user, device, seq)
	}
}

func (m multiObserver) GroupChanged(ch GroupChange) {
	for _, o := range m {
		o.GroupChanged(ch)
	}
}

// Conversation names the conversation msg belongs to as the owner of inbox
// sees it: the group for a group message, the peer for a 1:1 message (the
// recipient in the sender's own inbox, the sender in the recipient's), and
// "" for a system message.
func Conversation(msg *persist.Message, inbox string) string {
	switch {
	case msg.Group:
		return msg.To
	case msg.From == "":
		return ""
	case inbox == msg.From:
		return msg.To
	}
	return msg.From
}

// MessageIDAt returns the smallest message ID any node mints at t (IDs are
// time-ordered): every message accepted at t or later has an ID at least
// this. The event stream's replay starts from it.
func MessageIDAt(t time.Time) uint64 {
	ms := t.UnixMilli() - idEpoch
	if ms < 0 {
		return 0
	}
	return uint64(ms) << 22
}

// appendObserved is the store's Append followed by the observer's
// MessageStored. When the store completes appends in commit order
// (persist.AsyncAppender, single node) the append goes through that path and
// the observer is called from the completion, so that these calls keep
// their seq order with the protocol's sends to the same inboxes.
func (s *Server) appendObserved(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	obs := s.cfg.Observer
	if obs == nil {
		return s.store.Append(ctx, msg, inboxes)
	}
	if s.async == nil {
		res, err := s.store.Append(ctx, msg, inboxes)
		if err == nil {
			obs.MessageStored(&res.Msg, inboxes, res.Seqs, res.Duplicate)
		}
		return res, err
	}
	if err := ctx.Err(); err != nil {
		return persist.AppendResult{}, err
	}
	w := &observedWait{obs: obs, done: make(chan struct{})}
	w.op = persist.AppendOp{Msg: msg, Inboxes: inboxes, Done: w}
	s.async.AppendAsync(&w.op)
	select {
	case <-w.done:
	case <-ctx.Done():
		select {
		case <-w.done: // completed at the same moment: report the real outcome
		default:
			// Left to the store, which may still complete it (and the
			// observer hears of it then); the caller retries with the same
			// ClientMsgID.
			return persist.AppendResult{}, ctx.Err()
		}
	}
	return w.op.Result, w.op.Err
}

// observedWait completes an append made by appendObserved: it tells the
// observer, then wakes the caller.
type observedWait struct {
	op   persist.AppendOp
	obs  Observer
	done chan struct{}
}

func (w *observedWait) AppendDone(op *persist.AppendOp) {
	if op.Err == nil {
		w.obs.MessageStored(&op.Result.Msg, op.Inboxes, op.Result.Seqs, op.Result.Duplicate)
		if op.Result.Duplicate {
			// The stored original is the store's memory, valid only until
			// this call returns: the caller reads it later.
			op.Result.Msg = cloneMessage(op.Result.Msg)
		}
	}
	close(w.done)
}

// cloneMessage returns m with its own copies of its strings and body.
func cloneMessage(m persist.Message) persist.Message {
	m.From, m.To, m.ClientMsgID = strings.Clone(m.From), strings.Clone(m.To), strings.Clone(m.ClientMsgID)
	if m.Body != nil {
		m.Body = append([]byte(nil), m.Body...)
	}
	return m
}

// observeDelivered tells the observer, if any, that a cursor moved.
func (s *Server) observeDelivered(user, device string, seq uint64) {
	if obs := s.cfg.Observer; obs != nil {
		obs.Delivered(user, device, seq)
	}
}

// observeGroup tells the observer, if any, of a group change.
func (s *Server) observeGroup(ch GroupChange) {
	if obs := s.cfg.Observer; obs != nil {
		ch.Time = time.Now().UnixMilli()
		obs.GroupChanged(ch)
	}
}
