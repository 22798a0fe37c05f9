package pebblestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
)

// Conversations (persist.ChatStore).
//
// Every message an append adds to an inbox also gets one key in the
// inbox's conversation index, 'x' lp(user) kind lp(conv) be64(seq), in the
// same batch. Its value carries the conversation's counts as of that entry
// (messages from others so far, the seq of the owner's newest own message),
// so the last entry of a conversation is its state: last seq, unread base
// and the read cursor raised by the owner's own messages. The conversation
// record 'v' lp(user) kind lp(conv) is written with a conversation's first
// message (it marks that the conversation exists, which a bloom-filtered
// lookup can rule out), and holds what the index cannot: the read cursor
// moved by MarkRead, and floors of the counts, rewritten when retention
// removes all the entries of a conversation. So an append writes one key
// per inbox for its conversations (two for a conversation's first message)
// and reads nothing: the committer keeps the state of the conversations it
// appended to in memory (loaded on first use, like the inbox heads).
//
// Unread counts come from one seek: the first entry above the read cursor
// that the inbox still holds carries the count of others' messages before
// it. Delete-for-me rewrites the inbox entry's value with a hidden flag;
// Recall rewrites the message record (recalled, the event's id, no body)
// and appends the event to every inbox holding the message.

var (
	_ persist.ChatStore         = (*Store)(nil)
	_ persist.AsyncCursorSetter = (*Store)(nil)
)

// convState is a conversation's state: the last entry's counts and the
// record's cursor. last 0 means the conversation does not exist.
type convState struct {
	last, others, own, read uint64
}

// readSeq is the read cursor: the owner's own messages raise it.
func (st *convState) readSeq() uint64 { return max(st.read, st.own) }

// record is the conversation record that keeps st.
func (st *convState) record() convRecord {
	return convRecord{read: st.readSeq(), last: st.last, others: st.others}
}

// convAt reads the state of user's conversation id through it (positioned
// anywhere): its record, then its last index entry. Every conversation has
// a record from its first message on, so a conversation without one does
// not exist, which a prefix seek finds out through bloom filters, without
// reading blocks: the first message of a conversation costs no block read.
func convAt(it *pebble.Iterator, user string, id persist.ConvID) (convState, error) {
	var st convState
	k := keyConv(nil, tConv, user, id)
	if !it.SeekPrefixGE(k) || !bytes.Equal(it.Key(), k) {
		return convState{}, it.Error()
	}
	v, err := it.ValueAndErr()
	var r convRecord
	if err == nil {
		r, err = decodeConvRecord(v)
	}
	if err != nil {
		return convState{}, err
	}
	st = convState{last: r.last, others: r.others, read: r.read}
	prefix := keyConv(k, tConvIdx, user, id)
	if it.SeekLT(prefixEnd(prefix)) && bytes.HasPrefix(it.Key(), prefix) {
		if err := st.addLast(it, len(prefix)); err != nil {
			return convState{}, err
		}
	}
	return st, it.Error()
}

// addLast merges the index entry at it (a conversation's last; its prefix
// is n bytes long) into st.
func (st *convState) addLast(it *pebble.Iterator, n int) error {
	seq, err := u64(it.Key()[n:])
	if err != nil {
		return err
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return err
	}
	e, err := decodeConvEntry(v)
	if err != nil {
		return err
	}
	st.last, st.others, st.own = max(st.last, seq), max(st.others, e.others), e.own
	return nil
}

// conv returns the cached state of user's conversation id, loading it on a
// miss. The states hang off the inbox's cached head, so a lookup hashes
// the conversation id in a map of one user's conversations. With create
// false a conversation that does not exist is not cached and conv returns
// nil.
func (c *committer) conv(user string, id persist.ConvID, create bool) (*convState, error) {
	e, err := c.head(user)
	if err != nil {
		return nil, err
	}
	return c.convIn(e, id, create)
}

// convIn is conv for the cached head e of the user's inbox.
func (c *committer) convIn(e *headEntry, id persist.ConvID, create bool) (*convState, error) {
	user := e.inbox
	if st, ok := e.convs[id]; ok {
		return st, nil
	}
	var st convState
	// An inbox that never had an entry has no conversation to read.
	if e.h.last != 0 {
		if err := c.openIter(); err != nil {
			return nil, err
		}
		var err error
		if st, err = convAt(c.it, user, id); err != nil {
			return nil, fmt.Errorf("conversation %q of %q: %w", id.ID, user, err)
		}
	}
	if st.last == 0 && !create {
		return nil, nil
	}
	p := &st
	if e.convs == nil {
		e.convs = make(map[persist.ConvID]*convState)
	}
	e.convs[persist.ConvID{ID: strings.Clone(id.ID), Group: id.Group}] = p
	c.nconvs++
	return p, nil
}

// convsFor loads the conversations that message m's entries in inboxes
// belong to into c.cst (nil for an inbox where m belongs to none), before
// the append writes anything. heads, when not nil, holds the inboxes'
// cached heads, in order.
func (c *committer) convsFor(m *persist.Message, inboxes []string, heads []*headEntry) error {
	c.cst = c.cst[:0]
	for i, in := range inboxes {
		id := persist.ConvOf(in, m)
		if id.ID == "" || m.Event != persist.EventNone {
			c.cst = append(c.cst, nil)
			continue
		}
		var st *convState
		var err error
		if heads != nil {
			st, err = c.convIn(heads[i], id, true)
		} else {
			st, err = c.conv(in, id, true)
		}
		if err != nil {
			return unavailable("append", err)
		}
		c.cst = append(c.cst, st)
	}
	return nil
}

// converse adds the entry at seq of inbox to its conversation st (from
// c.cst; nil: none), in the append's batch.
func (c *committer) converse(st *convState, inbox string, m *persist.Message, seq uint64) {
	if st == nil {
		return
	}
	created := st.last == 0
	if m.From == inbox {
		st.own = seq
	} else {
		st.others++
	}
	st.last = seq
	id := persist.ConvOf(inbox, m)
	c.key3 = keyConvEntry(c.key3, inbox, id, seq)
	c.val2 = appendConvEntry(c.val2[:0], convEntry{others: st.others, own: st.own})
	c.set(c.key3, c.val2)
	if created {
		// The record marks that the conversation exists (see convAt).
		c.key3 = keyConv(c.key3, tConv, inbox, id)
		c.val2 = appendConvRecord(c.val2[:0], st.record())
		c.set(c.key3, c.val2)
	}
}

// checkChat validates a chat call's user and conversation.
func checkChat(op, user string, id *persist.ConvID) error {
	if err := persist.CheckID("user", user); err != nil {
		return fmt.Errorf("pebblestore: %s: %w", op, err)
	}
	if id != nil {
		if err := persist.CheckID("conversation", id.ID); err != nil {
			return fmt.Errorf("pebblestore: %s: %w", op, err)
		}
	}
	return nil
}

// chatView is what the chat reads use: a snapshot, an iterator over it
// for walks and seeks, and another for point reads (a seek of a reused
// iterator costs less than a Get, which opens one per call).
type chatView struct {
	r      reader
	it, pt *pebble.Iterator
	key    []byte
}

// get reads key through v.pt; the value is valid until the next get.
func (v *chatView) get(key []byte) ([]byte, bool, error) {
	if v.pt == nil {
		pt, err := v.r.NewIter(nil)
		if err != nil {
			return nil, false, err
		}
		v.pt = pt
	}
	if !v.pt.SeekPrefixGE(key) || !bytes.Equal(v.pt.Key(), key) {
		return nil, false, v.pt.Error()
	}
	val, err := v.pt.ValueAndErr()
	return val, err == nil, err
}

// message reads message id's record.
func (v *chatView) message(id uint64) (persist.Message, error) {
	v.key = keyID(v.key, tMessage, id)
	val, ok, err := v.get(v.key)
	if err != nil {
		return persist.Message{}, err
	}
	if !ok {
		return persist.Message{}, fmt.Errorf("%w: missing message %d", errCorrupt, id)
	}
	return decodeMessage(id, val)
}

// refs reads message id's refs into r: ErrNotFound when it is gone.
func (v *chatView) refs(id uint64, r *refsRecord) error {
	v.key = keyID(v.key, tMessage, id)
	val, ok, err := v.get(v.key)
	if err != nil {
		return err
	}
	if !ok {
		return persist.ErrNotFound
	}
	return recordRefs(id, val, r, v.get)
}

// chatRead runs fn on the current snapshot with a fresh chatView.
func (s *Store) chatRead(ctx context.Context, op string, fn func(v *chatView) error) error {
	return s.viewRead(ctx, op, func(r reader) (err error) {
		it, err := r.NewIter(nil)
		if err != nil {
			return err
		}
		v := &chatView{r: r, it: it}
		defer func() {
			if cerr := it.Close(); err == nil {
				err = cerr
			}
			if v.pt != nil {
				if cerr := v.pt.Close(); err == nil {
					err = cerr
				}
			}
		}()
		return fn(v)
	})
}

// first returns the lowest seq user's inbox still holds.
func (v *chatView) first(user string) (uint64, error) {
	h, err := headAt(v.it, user)
	return h.first, err
}

// entry reads user's inbox entry at seq: false when the inbox does not
// hold it.
func (v *chatView) entry(user string, seq uint64) (persist.InboxEntry, bool, error) {
	v.key = keyInbox(v.key, user, seq)
	val, ok, err := v.get(v.key)
	if err != nil || !ok {
		return persist.InboxEntry{}, false, err
	}
	id, hidden, err := decodeEntry(val)
	if err != nil {
		return persist.InboxEntry{}, false, err
	}
	e := persist.InboxEntry{Seq: seq, Deleted: hidden}
	if e.Msg, err = v.message(id); err != nil {
		return persist.InboxEntry{}, false, err
	}
	if hidden {
		e.Msg.Body = nil
	}
	return e, true, nil
}

// unread counts the messages of others in conversation id (state st) above
// its read cursor that the inbox still holds (seq >= first).
func (v *chatView) unread(user string, id persist.ConvID, st *convState, first uint64) (int, error) {
	prefix := keyConv(nil, tConvIdx, user, id)
	v.key = keyConvEntry(v.key, user, id, max(st.readSeq()+1, first))
	if !v.it.SeekGE(v.key) || !bytes.HasPrefix(v.it.Key(), prefix) {
		return 0, v.it.Error()
	}
	seq, err := u64(v.it.Key()[len(prefix):])
	if err != nil {
		return 0, err
	}
	val, err := v.it.ValueAndErr()
	if err != nil {
		return 0, err
	}
	e, err := decodeConvEntry(val)
	if err != nil {
		return 0, err
	}
	before := e.others
	if e.own != seq {
		before-- // the entry is a message from another
	}
	return int(st.others - before), nil
}

// walkBack calls fn for the entries of conversation id with first <= seq
// < before (0: no bound), newest first, until fn returns false. fn must
// not move v.it.
func (v *chatView) walkBack(user string, id persist.ConvID, first, before uint64, fn func(seq uint64) (bool, error)) error {
	prefix := keyConv(nil, tConvIdx, user, id)
	var ok bool
	if before == 0 {
		ok = v.it.SeekLT(prefixEnd(prefix))
	} else {
		ok = v.it.SeekLT(keyConvEntry(nil, user, id, before))
	}
	for ; ok && bytes.HasPrefix(v.it.Key(), prefix); ok = v.it.Prev() {
		seq, err := u64(v.it.Key()[len(prefix):])
		if err != nil {
			return err
		}
		if seq < first {
			break
		}
		more, err := fn(seq) // point reads in fn use v.pt, so v.it stays put
		if err != nil || !more {
			return err
		}
	}
	return v.it.Error()
}

// lastVisible returns the newest entry of conversation id that the inbox
// holds and its owner has not deleted.
func (v *chatView) lastVisible(user string, id persist.ConvID, first uint64) (persist.InboxEntry, bool, error) {
	var out persist.InboxEntry
	var found bool
	err := v.walkBack(user, id, first, 0, func(seq uint64) (bool, error) {
		e, ok, err := v.entry(user, seq)
		if err != nil || !ok || e.Deleted {
			return err == nil, err
		}
		out, found = e, true
		return false, nil
	})
	return out, found, err
}

// listedConv is a conversation found by list.
type listedConv struct {
	id persist.ConvID
	st convState
}

// list returns every conversation of user with its state: the records,
// then one pair of seeks per conversation in the index (its last entry,
// then the next conversation).
func (v *chatView) list(user string) ([]listedConv, error) {
	var out []listedConv
	pos := map[persist.ConvID]int{}
	pre := keyLP(nil, tConv, user)
	for ok := v.it.SeekGE(pre); ok && bytes.HasPrefix(v.it.Key(), pre); ok = v.it.Next() {
		id, n, err := parseConvID(v.it.Key()[len(pre):])
		if err == nil && len(pre)+n != len(v.it.Key()) {
			err = fmt.Errorf("%w: conversation record key", errCorrupt)
		}
		var r convRecord
		if err == nil {
			var val []byte
			if val, err = v.it.ValueAndErr(); err == nil {
				r, err = decodeConvRecord(val)
			}
		}
		if err != nil {
			return nil, err
		}
		pos[id] = len(out)
		out = append(out, listedConv{id: id, st: convState{last: r.last, others: r.others, read: r.read}})
	}
	if err := v.it.Error(); err != nil {
		return nil, err
	}
	pre = keyLP(pre, tConvIdx, user)
	for ok := v.it.SeekGE(pre); ok && bytes.HasPrefix(v.it.Key(), pre); {
		id, n, err := parseConvID(v.it.Key()[len(pre):])
		if err != nil {
			return nil, err
		}
		cp := bytes.Clone(v.it.Key()[:len(pre)+n])
		end := prefixEnd(cp)
		if !v.it.SeekLT(end) || !bytes.HasPrefix(v.it.Key(), cp) {
			return nil, fmt.Errorf("%w: conversation index moved under a snapshot", errCorrupt)
		}
		i, seen := pos[id]
		if !seen {
			i = len(out)
			pos[id] = i
			out = append(out, listedConv{id: id})
		}
		if err := out[i].st.addLast(v.it, len(cp)); err != nil {
			return nil, err
		}
		ok = v.it.SeekGE(end)
	}
	return out, v.it.Error()
}

// Conversations implements persist.ChatStore. It costs a few seeks per
// conversation of user, plus the unread count and last message of those
// returned; it never reads an inbox through.
func (s *Store) Conversations(ctx context.Context, user string, beforeSeq uint64, limit int) ([]persist.Conversation, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("pebblestore: conversations: %w: limit %d", persist.ErrInvalid, limit)
	}
	if err := checkChat("conversations", user, nil); err != nil {
		return nil, err
	}
	var out []persist.Conversation
	err := s.chatRead(ctx, "conversations", func(v *chatView) error {
		all, err := v.list(user)
		if err != nil {
			return err
		}
		all = slices.DeleteFunc(all, func(l listedConv) bool { return beforeSeq != 0 && l.st.last >= beforeSeq })
		slices.SortFunc(all, func(a, b listedConv) int { return cmpDesc(a.st.last, b.st.last) })
		all = all[:min(limit, len(all))]
		first, err := v.first(user)
		if err != nil {
			return err
		}
		out = make([]persist.Conversation, len(all))
		for i := range all {
			l := &all[i]
			cv := persist.Conversation{Conv: l.id, LastSeq: l.st.last, ReadSeq: l.st.readSeq()}
			if cv.Unread, err = v.unread(user, l.id, &l.st, first); err != nil {
				return err
			}
			if cv.Last, cv.HasLast, err = v.lastVisible(user, l.id, first); err != nil {
				return err
			}
			out[i] = cv
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func cmpDesc(a, b uint64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

// MarkRead implements persist.ChatStore. The cursor moves on the
// committer (durable when MarkRead returns); the unread count and the
// last read message are then read from the snapshot of that commit or a
// later one.
func (s *Store) MarkRead(ctx context.Context, user string, id persist.ConvID, upTo uint64) (persist.ReadResult, error) {
	if err := checkChat("mark read", user, &id); err != nil {
		return persist.ReadResult{}, err
	}
	var res persist.ReadResult
	err := s.write(ctx, &writeReq{apply: func(c *committer) error {
		st, err := c.conv(user, id, false)
		if err != nil {
			return unavailable("mark read", err)
		}
		if st == nil {
			return fmt.Errorf("pebblestore: mark read: %w: no conversation %+v", persist.ErrNotFound, id)
		}
		if upTo == 0 || upTo > st.last {
			upTo = st.last
		}
		if upTo > st.readSeq() {
			st.read, res.Moved = upTo, true
			c.set(keyConv(c.key, tConv, user, id), appendConvRecord(c.val2[:0], st.record()))
		}
		res.ReadSeq = st.readSeq()
		return nil
	}})
	if err != nil {
		return persist.ReadResult{}, err
	}
	err = s.chatRead(ctx, "mark read", func(v *chatView) error {
		st, err := convAt(v.it, user, id)
		if err != nil {
			return err
		}
		st.read = max(st.read, res.ReadSeq)
		first, err := v.first(user)
		if err != nil {
			return err
		}
		if res.Unread, err = v.unread(user, id, &st, first); err != nil {
			return err
		}
		var seq uint64
		err = v.walkBack(user, id, first, res.ReadSeq+1, func(q uint64) (bool, error) {
			seq = q
			return false, nil
		})
		if err != nil || seq == 0 {
			return err
		}
		e, ok, err := v.entry(user, seq)
		if err != nil || !ok {
			return err
		}
		res.MsgID = e.Msg.ID
		if !id.Group && id.ID != user {
			res.PeerSeq, err = v.seqOf(id.ID, e.Msg.ID)
			if errors.Is(err, persist.ErrNotFound) {
				err = nil
			}
		}
		return err
	})
	if err != nil {
		return persist.ReadResult{}, err
	}
	return res, nil
}

// seqOf returns the seq of message msgID in user's inbox, or ErrNotFound.
func (v *chatView) seqOf(user string, msgID uint64) (uint64, error) {
	var refs refsRecord
	if err := v.refs(msgID, &refs); err != nil {
		return 0, err
	}
	for _, r := range refs.refs {
		if r.inbox != user {
			continue
		}
		first, err := v.first(user)
		if err != nil {
			return 0, err
		}
		if r.seq >= first {
			return r.seq, nil
		}
	}
	return 0, persist.ErrNotFound
}

// History implements persist.ChatStore: a backwards walk of the
// conversation's index, one inbox entry and message read per message.
func (s *Store) History(ctx context.Context, user string, id persist.ConvID, beforeSeq uint64, limit int) ([]persist.InboxEntry, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("pebblestore: history: %w: limit %d", persist.ErrInvalid, limit)
	}
	if err := checkChat("history", user, &id); err != nil {
		return nil, err
	}
	var out []persist.InboxEntry
	err := s.chatRead(ctx, "history", func(v *chatView) error {
		first, err := v.first(user)
		if err != nil {
			return err
		}
		return v.walkBack(user, id, first, beforeSeq, func(seq uint64) (bool, error) {
			e, ok, err := v.entry(user, seq)
			if err != nil {
				return false, err
			}
			if ok && !e.Deleted {
				out = append(out, e)
			}
			return len(out) < limit, nil
		})
	})
	if err != nil {
		return nil, err
	}
	slices.Reverse(out)
	return out, nil
}

// SeqOf implements persist.ChatStore.
func (s *Store) SeqOf(ctx context.Context, user string, msgID uint64) (uint64, error) {
	if err := checkChat("seq of", user, nil); err != nil {
		return 0, err
	}
	var seq uint64
	err := s.chatRead(ctx, "seq of", func(v *chatView) (err error) {
		seq, err = v.seqOf(user, msgID)
		return err
	})
	return seq, err
}

// ReadCount implements persist.ChatStore: one conversation state read per
// other inbox holding the message.
func (s *Store) ReadCount(ctx context.Context, user string, id persist.ConvID, seq uint64) (read, members int, err error) {
	if err := checkChat("read count", user, &id); err != nil {
		return 0, 0, err
	}
	err = s.chatRead(ctx, "read count", func(v *chatView) error {
		first, err := v.first(user)
		if err != nil {
			return err
		}
		e, ok, err := v.entry(user, seq)
		if err != nil {
			return err
		}
		msg := &e.Msg
		if !ok || seq < first || msg.Event != persist.EventNone || persist.ConvOf(user, msg) != id {
			return fmt.Errorf("pebblestore: read count: %w: seq %d of %+v", persist.ErrNotFound, seq, id)
		}
		var refs refsRecord
		if err := v.refs(msg.ID, &refs); err != nil {
			return err
		}
		for _, r := range refs.refs {
			if r.inbox == msg.From {
				continue
			}
			if f, err := v.first(r.inbox); err != nil || r.seq < f {
				if err != nil {
					return err
				}
				continue
			}
			members++
			st, err := convAt(v.it, r.inbox, persist.ConvOf(r.inbox, msg))
			if err != nil {
				return err
			}
			if st.readSeq() >= r.seq {
				read++
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	return read, members, nil
}

// Recall implements persist.ChatStore. It runs on the committer; req.Done
// is called on the completer, after the event is durable and in queue order
// with the completions of the appends around it (so the event's pushes keep seq
// order with theirs). If ctx ends before the call returns, the recall may
// still happen, and Done still be called, later.
func (s *Store) Recall(ctx context.Context, req persist.EventRequest) (persist.EventResult, error) {
	return s.event(ctx, "recall", &req, (*committer).recall)
}

// Delete implements persist.ChatStore, on the committer like Recall.
func (s *Store) Delete(ctx context.Context, req persist.EventRequest) (persist.EventResult, error) {
	return s.event(ctx, "delete", &req, (*committer).delete)
}

func (s *Store) event(ctx context.Context, op string, req *persist.EventRequest,
	run func(c *committer, req *persist.EventRequest, res *persist.EventResult) error) (persist.EventResult, error) {
	if err := checkChat(op, req.User, nil); err != nil {
		return persist.EventResult{}, err
	}
	var res persist.EventResult
	w := &writeReq{apply: func(c *committer) error { return run(c, req, &res) }}
	if req.Done != nil {
		w.finish = func() { req.Done(&res) }
	}
	if err := s.write(ctx, w); err != nil {
		return persist.EventResult{}, err
	}
	return res, nil
}

// target finds message req.Target in req.User's inbox (what: the call, for
// errors): its pending index (the message loaded into this batch) and seq.
func (c *committer) target(what string, req *persist.EventRequest) (int, uint64, error) {
	pi, found, err := c.stored(req.Target)
	if err != nil {
		return 0, 0, unavailable(what, err)
	}
	if found {
		p := &c.pend[pi]
		if seq, ok := refFinder(p.refs)(req.User); ok && p.msg.Event == persist.EventNone {
			e, err := c.head(req.User)
			if err != nil {
				return 0, 0, unavailable(what, err)
			}
			if seq >= e.h.first {
				return pi, seq, nil
			}
		}
	}
	return 0, 0, fmt.Errorf("pebblestore: %s %d: %w", what, req.Target, persist.ErrNotFound)
}

// stored returns the pending index of message id, loading it from the
// store; found is false when it is not stored.
func (c *committer) stored(id uint64) (int, bool, error) {
	if pi, ok := c.pendID[id]; ok {
		return pi, true, nil
	}
	_, found, err := c.lookup(keyID(c.key, tMessage, id))
	if err != nil || !found {
		return 0, false, err
	}
	pi, err := c.loadStored(id)
	return pi, err == nil, err
}

// checkEventID returns ErrInvalid when an event's id is 0 or taken.
func (c *committer) checkEventID(what string, id uint64) error {
	if id == 0 {
		return fmt.Errorf("pebblestore: %s: %w: event id 0", what, persist.ErrInvalid)
	}
	if _, ok := c.pendID[id]; ok || id <= c.maxID {
		if err := c.checkIDFree(id); err != nil {
			return fmt.Errorf("pebblestore: %s: %w", what, err)
		}
	}
	return nil
}

// storeEvent writes event ev (kind, about target message p) with entries
// in inboxes at seqs, and returns it as the caller's copy.
func (c *committer) storeEvent(req *persist.EventRequest, kind uint32, p *pending, inboxes []string, seqs []uint64) persist.Message {
	ev := persist.Message{ID: req.ID, From: strings.Clone(p.msg.From), To: strings.Clone(p.msg.To), Group: p.msg.Group,
		Timestamp: req.Timestamp, Event: kind, Target: p.msg.ID}
	np := c.newPending()
	np.msg = ev
	for i, in := range inboxes {
		np.refs = append(np.refs, ref{in, seqs[i]})
		c.addEntry(in, seqs[i], ev.ID)
	}
	c.writeRecord(np)
	c.pendID[ev.ID] = len(c.pend) - 1
	c.maxID = max(c.maxID, ev.ID)
	return ev
}

// recall runs a Recall on the committer.
func (c *committer) recall(req *persist.EventRequest, res *persist.EventResult) error {
	pi, _, err := c.target("recall", req)
	if err != nil {
		return err
	}
	p := &c.pend[pi]
	if p.msg.From != req.User {
		return fmt.Errorf("pebblestore: recall %d: %w", req.Target, persist.ErrNotSender)
	}
	if p.recallEv != 0 {
		*res = persist.EventResult{Duplicate: true}
		epi, found, err := c.stored(p.recallEv)
		if err != nil {
			return unavailable("recall", err)
		}
		if !found {
			return nil // the event is gone (retention): nothing left to report
		}
		ep := &c.pend[epi]
		res.Event = cloneMsg(ep.msg)
		for _, r := range ep.refs {
			res.Inboxes = append(res.Inboxes, strings.Clone(r.inbox))
			res.Seqs = append(res.Seqs, r.seq)
		}
		return nil
	}
	if p.msg.Timestamp < req.NotBefore {
		return fmt.Errorf("pebblestore: recall %d: %w", req.Target, persist.ErrRecallWindow)
	}
	if err := c.checkEventID("recall", req.ID); err != nil {
		return err
	}
	var holders []string
	var seqs []uint64
	for _, r := range p.refs {
		e, err := c.head(r.inbox)
		if err != nil {
			return unavailable("recall", err)
		}
		if r.seq < e.h.first {
			continue
		}
		seq, err := c.nextSeq(r.inbox)
		if err != nil {
			return err
		}
		holders, seqs = append(holders, strings.Clone(r.inbox)), append(seqs, seq)
	}
	// Writes.
	ev := c.storeEvent(req, persist.EventRecall, p, holders, seqs)
	p = &c.pend[pi] // storeEvent may have grown c.pend
	p.msg.Recalled, p.msg.Body, p.recallEv = true, nil, ev.ID
	c.writeRecord(p)
	*res = persist.EventResult{Event: ev, Inboxes: holders, Seqs: seqs}
	return nil
}

// delete runs a Delete on the committer.
func (c *committer) delete(req *persist.EventRequest, res *persist.EventResult) error {
	pi, seq, err := c.target("delete", req)
	if err != nil {
		return err
	}
	ekey := keyInbox(nil, req.User, seq)
	v, ok, err := c.get(ekey)
	if err != nil {
		return unavailable("delete", err)
	}
	if ok {
		if _, hidden, err := decodeEntry(v); err != nil || hidden {
			if err != nil {
				return unavailable("delete", err)
			}
			*res = persist.EventResult{Duplicate: true}
			return nil
		}
	}
	if err := c.checkEventID("delete", req.ID); err != nil {
		return err
	}
	evseq, err := c.nextSeq(req.User)
	if err != nil {
		return err
	}
	// Writes.
	user := strings.Clone(req.User)
	ev := c.storeEvent(req, persist.EventDelete, &c.pend[pi], []string{user}, []uint64{evseq})
	c.put(ekey, appendEntry(nil, req.Target, true))
	*res = persist.EventResult{Event: ev, Inboxes: []string{user}, Seqs: []uint64{evseq}}
	return nil
}

// cloneMsg returns a copy of m that shares no memory with it.
func cloneMsg(m persist.Message) persist.Message {
	m.From, m.To, m.ClientMsgID = strings.Clone(m.From), strings.Clone(m.To), strings.Clone(m.ClientMsgID)
	if len(m.Body) > 0 {
		m.Body = bytes.Clone(m.Body)
	} else {
		m.Body = nil
	}
	return m
}
