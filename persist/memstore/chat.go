package memstore

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/imgn/imgn/persist"
)

// Conversations (persist.ChatStore).
//
// Each inbox keeps a map of its conversations. A conversation holds its
// index: one entry per message, in seq order, with the number of messages
// from others before it, so an unread count is a binary search, never a
// scan. Entries below the inbox's first seq (removed by retention) are
// dropped on the conversation's next append by moving an offset; the array
// is compacted in place when it fills and at least half of it is dead, so
// steady traffic under retention allocates nothing here either.

// conv is one conversation of an inbox.
type conv struct {
	id     persist.ConvID // its key in inbox.convs (the store's copy)
	idx    []convEntry    // idx[off:] is the index; idx[:off] is dead
	off    int
	last   uint64 // seq of the newest message (kept when retention removes it)
	others uint64 // messages from others, ever
	read   uint64 // the read cursor
}

// convEntry is one message of a conversation.
type convEntry struct {
	seq    uint64
	before uint64 // messages from others before this one
}

// converse records the message at seq of in in its conversation (s.mu
// held, in the same write as the append).
func (m *messages) converse(in *inbox, msg *persist.Message, seq uint64) {
	id := persist.ConvOf(in.name, msg)
	if id.ID == "" {
		return // a system message: no conversation
	}
	// Consecutive messages of an inbox are mostly of one conversation:
	// the last one is checked before the map (whose key hashing costs as
	// much as the rest of this function).
	c := in.lastConv
	if c == nil || c.id != id {
		c = in.convs[id]
		if c == nil {
			if in.convs == nil {
				in.convs = make(map[persist.ConvID]*conv)
			}
			id.ID = strings.Clone(id.ID)
			c = &conv{id: id}
			in.convs[id] = c
		}
		in.lastConv = c
	}
	for c.off < len(c.idx) && c.idx[c.off].seq < in.first {
		c.off++
	}
	if len(c.idx) == cap(c.idx) && c.off >= len(c.idx)/2 && c.off > 0 {
		n := copy(c.idx, c.idx[c.off:])
		c.idx, c.off = c.idx[:n], 0
	}
	c.idx = append(c.idx, convEntry{seq: seq, before: c.others})
	c.last = seq
	if msg.From == in.name {
		c.read = max(c.read, seq)
	} else {
		c.others++
	}
}

// live returns the entries of c the inbox still holds.
func (c *conv) live(in *inbox) []convEntry {
	live := c.idx[c.off:]
	i, _ := slices.BinarySearchFunc(live, in.first, func(e convEntry, seq uint64) int { return cmpU64(e.seq, seq) })
	return live[i:]
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// unread counts the messages of others above c.read that in still holds.
func (c *conv) unread(in *inbox) int {
	live := c.live(in)
	i, _ := slices.BinarySearchFunc(live, c.read+1, func(e convEntry, seq uint64) int { return cmpU64(e.seq, seq) })
	if i == len(live) {
		return 0
	}
	return int(c.others - live[i].before)
}

// chatInbox checks the common arguments and returns user's inbox (nil when
// the user has none). The caller holds s.mu.
func (s *Store) chatInbox(ctx context.Context, what, user string) (*inbox, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := persist.CheckID("user", user); err != nil {
		return nil, fmt.Errorf("memstore: %s: %w", what, err)
	}
	if s.closed {
		return nil, persist.ErrClosed
	}
	return s.m.inboxes[user], nil
}

func checkConv(what string, conv persist.ConvID) error {
	if err := persist.CheckID("conversation", conv.ID); err != nil {
		return fmt.Errorf("memstore: %s: %w", what, err)
	}
	return nil
}

// entry returns the inbox entry at seq (a caller-owned copy).
func (m *messages) entry(in *inbox, seq uint64) persist.InboxEntry {
	slot, hidden, _ := in.slotAt(seq)
	r, c := m.rec(slot)
	msg := c.message(r)
	e := persist.InboxEntry{Seq: seq, Msg: copyMsg(&msg), Deleted: hidden}
	if hidden {
		e.Msg.Body = nil
	}
	return e
}

// Conversations implements persist.ChatStore. It costs O(conversations of
// user) plus a binary search per conversation listed.
func (s *Store) Conversations(ctx context.Context, user string, beforeSeq uint64, limit int) ([]persist.Conversation, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("memstore: conversations: %w: limit %d", persist.ErrInvalid, limit)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	in, err := s.chatInbox(ctx, "conversations", user)
	if in == nil || err != nil {
		return nil, err
	}
	type ref struct {
		id persist.ConvID
		c  *conv
	}
	var list []ref
	for id, c := range in.convs {
		if beforeSeq == 0 || c.last < beforeSeq {
			list = append(list, ref{id, c})
		}
	}
	slices.SortFunc(list, func(a, b ref) int { return cmpU64(b.c.last, a.c.last) })
	list = list[:min(limit, len(list))]
	out := make([]persist.Conversation, len(list))
	for i, r := range list {
		cv := persist.Conversation{Conv: persist.ConvID{ID: strings.Clone(r.id.ID), Group: r.id.Group},
			LastSeq: r.c.last, ReadSeq: r.c.read, Unread: r.c.unread(in)}
		live := r.c.live(in)
		for j := len(live) - 1; j >= 0; j-- {
			if _, hidden, _ := in.slotAt(live[j].seq); !hidden {
				cv.Last, cv.HasLast = s.m.entry(in, live[j].seq), true
				break
			}
		}
		out[i] = cv
	}
	return out, nil
}

// MarkRead implements persist.ChatStore.
func (s *Store) MarkRead(ctx context.Context, user string, id persist.ConvID, upTo uint64) (persist.ReadResult, error) {
	if err := checkConv("mark read", id); err != nil {
		return persist.ReadResult{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in, err := s.chatInbox(ctx, "mark read", user)
	if err != nil {
		return persist.ReadResult{}, err
	}
	var c *conv
	if in != nil {
		c = in.convs[id]
	}
	if c == nil {
		return persist.ReadResult{}, fmt.Errorf("memstore: mark read: %w: no conversation %+v", persist.ErrNotFound, id)
	}
	if upTo == 0 || upTo > c.last {
		upTo = c.last
	}
	res := persist.ReadResult{}
	if upTo > c.read {
		c.read, res.Moved = upTo, true
	}
	res.ReadSeq, res.Unread = c.read, c.unread(in)
	live := c.live(in)
	i, _ := slices.BinarySearchFunc(live, c.read+1, func(e convEntry, seq uint64) int { return cmpU64(e.seq, seq) })
	if i > 0 {
		slot, _, _ := in.slotAt(live[i-1].seq)
		r, _ := s.m.rec(slot)
		res.MsgID = r.id
		if !id.Group && id.ID != user {
			if peer := s.m.inboxes[id.ID]; peer != nil {
				if seq := s.m.seqIn(slot, r, peer); seq >= peer.first {
					res.PeerSeq = seq
				}
			}
		}
	}
	return res, nil
}

// History implements persist.ChatStore.
func (s *Store) History(ctx context.Context, user string, id persist.ConvID, beforeSeq uint64, limit int) ([]persist.InboxEntry, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("memstore: history: %w: limit %d", persist.ErrInvalid, limit)
	}
	if err := checkConv("history", id); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	in, err := s.chatInbox(ctx, "history", user)
	if in == nil || err != nil {
		return nil, err
	}
	c := in.convs[id]
	if c == nil {
		return nil, nil
	}
	live := c.live(in)
	end := len(live)
	if beforeSeq != 0 {
		end, _ = slices.BinarySearchFunc(live, beforeSeq, func(e convEntry, seq uint64) int { return cmpU64(e.seq, seq) })
	}
	var out []persist.InboxEntry
	for j := end - 1; j >= 0 && len(out) < limit; j-- {
		if _, hidden, _ := in.slotAt(live[j].seq); !hidden {
			out = append(out, s.m.entry(in, live[j].seq))
		}
	}
	slices.Reverse(out)
	return out, nil
}

// SeqOf implements persist.ChatStore.
func (s *Store) SeqOf(ctx context.Context, user string, msgID uint64) (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	in, err := s.chatInbox(ctx, "seq of", user)
	if err != nil {
		return 0, err
	}
	if seq, _, _ := s.m.held(in, msgID); seq != 0 {
		return seq, nil
	}
	return 0, persist.ErrNotFound
}

// held returns the seq, slot and record of message msgID in in, or seq 0
// when in (which may be nil) does not hold it.
func (m *messages) held(in *inbox, msgID uint64) (uint64, uint64, *record) {
	slot, ok := m.idSlot(msgID)
	if !ok || in == nil {
		return 0, 0, nil
	}
	r, _ := m.rec(slot)
	if r == nil {
		return 0, 0, nil
	}
	if seq := m.seqIn(slot, r, in); seq >= in.first && seq != 0 {
		return seq, slot, r
	}
	return 0, 0, nil
}

// event stores the event entry (kind ev) of req about record r of chunk c
// and returns its slot and record.
func (m *messages) event(req *persist.EventRequest, ev uint32, r *record, c *chunk) (uint64, *record) {
	msg := c.message(r)
	e := persist.Message{ID: req.ID, From: msg.From, To: msg.To, Group: msg.Group, Timestamp: req.Timestamp, Event: ev, Target: msg.ID}
	return m.store(&e, nil)
}

// eventMessage returns the event record at slot as a caller-owned message.
func (m *messages) eventMessage(slot uint64) persist.Message {
	r, c := m.rec(slot)
	msg := c.message(r)
	return copyMsg(&msg)
}

// eventTarget finds the message req is about in req.User's inbox (s.mu
// held): ErrNotFound unless the inbox holds it and it is not an event.
func (s *Store) eventTarget(ctx context.Context, what string, req *persist.EventRequest) (*inbox, uint64, uint64, *record, error) {
	in, err := s.chatInbox(ctx, what, req.User)
	if err != nil {
		return nil, 0, 0, nil, err
	}
	seq, slot, r := s.m.held(in, req.Target)
	if r == nil || r.event != persist.EventNone {
		return nil, 0, 0, nil, fmt.Errorf("memstore: %s %d: %w", what, req.Target, persist.ErrNotFound)
	}
	return in, seq, slot, r, nil
}

// Recall implements persist.ChatStore. req.Done runs under the store's
// lock, like an append's completion.
func (s *Store) Recall(ctx context.Context, req persist.EventRequest) (persist.EventResult, error) {
	return s.event(ctx, &req, s.recall)
}

// Delete implements persist.ChatStore. req.Done runs under the store's
// lock, like an append's completion.
func (s *Store) Delete(ctx context.Context, req persist.EventRequest) (persist.EventResult, error) {
	return s.event(ctx, &req, s.delete)
}

// event runs a recall or a delete under the lock and completes it there.
func (s *Store) event(ctx context.Context, req *persist.EventRequest, run func(context.Context, persist.EventRequest) (persist.EventResult, error)) (persist.EventResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	res, err := run(ctx, *req)
	if err == nil && req.Done != nil {
		req.Done(&res)
	}
	return res, err
}

// recall runs a Recall (s.mu held).
func (s *Store) recall(ctx context.Context, req persist.EventRequest) (persist.EventResult, error) {
	_, _, slot, r, err := s.eventTarget(ctx, "recall", &req)
	if err != nil {
		return persist.EventResult{}, err
	}
	m := s.m
	_, c := m.rec(slot)
	if c.str(r.from) != req.User {
		return persist.EventResult{}, fmt.Errorf("memstore: recall %d: %w", req.Target, persist.ErrNotSender)
	}
	if r.recalled {
		evslot := r.evslot - 1
		res := persist.EventResult{Duplicate: true}
		er, _ := m.rec(evslot)
		if er == nil || er.id == 0 {
			// The event is gone (retention), which inboxes remove only
			// after the message itself: nothing left to report.
			return res, nil
		}
		res.Event = m.eventMessage(evslot)
		for _, ref := range m.refs(evslot, er) {
			res.Inboxes = append(res.Inboxes, m.list[ref.in-1].name)
			res.Seqs = append(res.Seqs, ref.seq)
		}
		return res, nil
	}
	if r.ts < req.NotBefore {
		return persist.EventResult{}, fmt.Errorf("memstore: recall %d: %w", req.Target, persist.ErrRecallWindow)
	}
	if _, taken := m.idSlot(req.ID); taken || req.ID == 0 {
		return persist.EventResult{}, fmt.Errorf("memstore: recall: %w: event id %d", persist.ErrInvalid, req.ID)
	}
	evslot, er := m.event(&req, persist.EventRecall, r, c)
	var holders []*inbox
	for _, ref := range m.refs(slot, r) {
		if h := m.list[ref.in-1]; ref.seq >= h.first {
			holders = append(holders, h)
		}
	}
	if n := len(holders); n > len(er.in) {
		m.more[evslot] = make([]inboxRef, 0, n-len(er.in))
	}
	res := persist.EventResult{Event: m.eventMessage(evslot)}
	for _, h := range holders {
		res.Inboxes = append(res.Inboxes, h.name)
		res.Seqs = append(res.Seqs, m.appendTo(h, evslot, er))
	}
	r.recalled, r.evslot, r.body = true, evslot+1, span{}
	return res, nil
}

// refs returns the inboxes of the record at slot (a new slice).
func (m *messages) refs(slot uint64, r *record) []inboxRef {
	out := make([]inboxRef, 0, 2)
	for _, ref := range r.in {
		if ref.in != 0 {
			out = append(out, ref)
		}
	}
	if r.in[1].in != 0 {
		out = append(out, m.more[slot]...)
	}
	return out
}

// delete runs a Delete (s.mu held).
func (s *Store) delete(ctx context.Context, req persist.EventRequest) (persist.EventResult, error) {
	in, seq, slot, r, err := s.eventTarget(ctx, "delete", &req)
	if err != nil {
		return persist.EventResult{}, err
	}
	m := s.m
	if _, hidden, _ := in.slotAt(seq); hidden {
		return persist.EventResult{Duplicate: true}, nil
	}
	if _, taken := m.idSlot(req.ID); taken || req.ID == 0 {
		return persist.EventResult{}, fmt.Errorf("memstore: delete: %w: event id %d", persist.ErrInvalid, req.ID)
	}
	_, c := m.rec(slot)
	evslot, er := m.event(&req, persist.EventDelete, r, c)
	in.slots[seq-in.first] |= hiddenBit
	evseq := m.appendTo(in, evslot, er)
	return persist.EventResult{Event: m.eventMessage(evslot), Inboxes: []string{in.name}, Seqs: []uint64{evseq}}, nil
}

// ReadCount implements persist.ChatStore.
func (s *Store) ReadCount(ctx context.Context, user string, id persist.ConvID, seq uint64) (read, members int, err error) {
	if err := checkConv("read count", id); err != nil {
		return 0, 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	in, err := s.chatInbox(ctx, "read count", user)
	if err != nil {
		return 0, 0, err
	}
	var slot uint64
	ok := false
	if in != nil {
		slot, _, ok = in.slotAt(seq)
	}
	var r *record
	var c *chunk
	if ok {
		r, c = s.m.rec(slot)
	}
	if r == nil || r.event != persist.EventNone {
		return 0, 0, fmt.Errorf("memstore: read count: %w: seq %d", persist.ErrNotFound, seq)
	}
	msg := c.message(r)
	if persist.ConvOf(user, &msg) != id {
		return 0, 0, fmt.Errorf("memstore: read count: %w: seq %d is not in %+v", persist.ErrNotFound, seq, id)
	}
	for _, ref := range s.m.refs(slot, r) {
		h := s.m.list[ref.in-1]
		if h.name == msg.From || ref.seq < h.first {
			continue
		}
		members++
		if cv := h.convs[persist.ConvOf(h.name, &msg)]; cv != nil && cv.read >= ref.seq {
			read++
		}
	}
	return read, members, nil
}
