package pebblestore

import (
	"fmt"
	"math"
	"strings"

	"github.com/imgn/imgn/persist"
)

// apply adds op to the current batch (on the committer) and sets
// op.Result. It reads and checks everything before its first write, so an
// error means op wrote nothing.
func (c *committer) apply(op *persist.AppendOp) error {
	m := &op.Msg
	dk := dedupKey{m.From, m.ClientMsgID}
	if pi, ok := c.pendDedup[dk]; ok {
		return c.applyDuplicate(op, pi)
	}
	c.key = keyLP2(c.key, tDedup, m.From, m.ClientMsgID)
	dh, maybe := c.dedupMayExist()
	var v []byte
	var found bool
	var err error
	if maybe {
		c.s.dedupReads.Add(1)
		v, found, err = c.lookup(c.key)
	}
	switch {
	case err != nil:
		return unavailable("append", err)
	case found:
		id, err := u64(v)
		if err != nil {
			return unavailable("append", err)
		}
		pi, err := c.loadStored(id)
		if err != nil {
			return unavailable("append", err)
		}
		c.pendDedup[dk] = pi
		return c.applyDuplicate(op, pi)
	}

	// A fresh message: its ID must be free.
	if _, ok := c.pendID[m.ID]; ok || m.ID <= c.maxID {
		if err := c.checkIDFree(m.ID); err != nil {
			return err
		}
	}
	seqs := op.Result.Seqs[:0]
	c.hst = c.hst[:0]
	for _, in := range op.Inboxes {
		e, seq, err := c.headNext(in)
		if err != nil {
			return err
		}
		seqs, c.hst = append(seqs, seq), append(c.hst, e)
	}
	if err := c.convsFor(m, op.Inboxes, c.hst); err != nil {
		return err
	}

	// Writes. Inboxes are distinct, so their next seqs do not interfere.
	c.key = keyLP2(c.key, tDedup, m.From, m.ClientMsgID)
	c.val = appendBE64(c.val[:0], m.ID)
	c.set(c.key, c.val)
	c.dedupWritten(dh)
	p := c.newPending()
	p.msg = *m
	for i, in := range op.Inboxes {
		p.refs = append(p.refs, ref{in, seqs[i]})
		c.addEntryAt(c.hst[i], seqs[i], m.ID)
		c.converse(c.cst[i], in, m, seqs[i])
	}
	c.writeRecord(p)
	pi := len(c.pend) - 1
	c.pendDedup[dk] = pi
	c.pendID[m.ID] = pi
	c.maxID = max(c.maxID, m.ID)
	op.Result = persist.AppendResult{Msg: op.Msg, Seqs: seqs}
	return nil
}

// nextSeq returns the seq inbox's next entry gets (its head is cached
// afterwards); it changes nothing.
func (c *committer) nextSeq(inbox string) (uint64, error) {
	_, seq, err := c.headNext(inbox)
	return seq, err
}

// headNext is nextSeq that also returns the inbox's cached head.
func (c *committer) headNext(inbox string) (*headEntry, uint64, error) {
	e, err := c.head(inbox)
	if err != nil {
		return nil, 0, unavailable("append", err)
	}
	if e.h.last == math.MaxUint64 {
		return nil, 0, fmt.Errorf("pebblestore: append: %w: inbox %q seq exhausted", persist.ErrUnavailable, inbox)
	}
	return e, e.h.last + 1, nil
}

// addEntry writes inbox entry (inbox, seq) -> id and moves the inbox's
// head; the head is cached (apply read it).
func (c *committer) addEntry(inbox string, seq, id uint64) { c.addEntryAt(c.heads[inbox], seq, id) }

// addEntryAt is addEntry for the cached head e.
func (c *committer) addEntryAt(e *headEntry, seq, id uint64) {
	c.key2 = keyInbox(c.key2, e.inbox, seq)
	c.set(c.key2, appendBE64(c.idv[:0], id))
	c.advance(e, seq)
}

// checkIDFree returns ErrInvalid when id is stored (or stored by this
// batch) for another (From, ClientMsgID): the caller found no dedup entry.
func (c *committer) checkIDFree(id uint64) error {
	var other persist.Message
	if pi, ok := c.pendID[id]; ok {
		other = c.pend[pi].msg
	} else {
		v, found, err := c.lookup(keyID(c.key, tMessage, id))
		if err != nil {
			return unavailable("append", err)
		}
		if !found {
			return nil
		}
		if other, err = decodeMessage(id, v); err != nil {
			return unavailable("append", err)
		}
	}
	return fmt.Errorf("pebblestore: append: %w: message id %d already stored for another (from, client message id) (%q, %q)",
		persist.ErrInvalid, id, other.From, other.ClientMsgID)
}

func (c *committer) newPending() *pending {
	if len(c.pend) < cap(c.pend) {
		c.pend = c.pend[:len(c.pend)+1]
	} else {
		c.pend = append(c.pend, pending{})
	}
	return &c.pend[len(c.pend)-1]
}

// loadStored reads stored message id and its refs into a new pending entry
// (caller-owned copies), returning its index.
func (c *committer) loadStored(id uint64) (int, error) {
	v, found, err := c.lookup(keyID(c.key, tMessage, id))
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("%w: dedup entry for missing message %d", errCorrupt, id)
	}
	msg, recallEv, inline, err := decodeMessageRefs(id, v, &c.refs.refs, true)
	if err != nil {
		return 0, err
	}
	if !inline {
		if err := c.externalRefs(id); err != nil {
			return 0, err
		}
	}
	p := c.newPending()
	p.msg, p.recallEv, p.external = msg, recallEv, !inline
	p.refs = append(p.refs, c.refs.refs...)
	c.pendID[id] = len(c.pend) - 1
	return len(c.pend) - 1, nil
}

// externalRefs reads the refs record of message id into c.refs: the refs
// of a message whose record does not carry them.
func (c *committer) externalRefs(id uint64) error {
	v, found, err := c.lookup(keyID(c.key, tRefs, id))
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: missing refs of message %d", errCorrupt, id)
	}
	return decodeRefs(id, v, &c.refs)
}

// writeRecord writes the records of pending message p as it is now (its
// message, recall event and refs): the refs go into the message record when
// there are at most Options.inlineRefs of them, else into a refs record.
// A refs record that the message record now replaces is deleted.
func (c *committer) writeRecord(p *pending) {
	inline := len(p.refs) <= c.s.opts.inlineRefs
	var refs []ref
	if inline {
		refs = p.refs
	}
	c.val = appendMessageRec(c.val[:0], &p.msg, p.recallEv, refs)
	c.set(keyID(c.key, tMessage, p.msg.ID), c.val)
	switch {
	case !inline:
		c.val = appendRefsHeader(c.val[:0], p.msg.Timestamp, p.msg.From, p.msg.ClientMsgID)
		for _, r := range p.refs {
			c.val = appendRef(c.val, r.inbox, r.seq)
		}
		c.set(keyID(c.key, tRefs, p.msg.ID), c.val)
	case p.external:
		c.del(keyID(c.key, tRefs, p.msg.ID)) // written by the first layout
	}
	p.external = !inline
}

// applyDuplicate completes op as a retry of pending message pi: inboxes that
// hold it keep their seq, the others get the next one.
func (c *committer) applyDuplicate(op *persist.AppendOp, pi int) error {
	p := &c.pend[pi]
	find := refFinder(p.refs)
	seqs := op.Result.Seqs[:0]
	var fresh int
	for _, in := range op.Inboxes {
		if seq, ok := find(in); ok {
			seqs = append(seqs, seq)
			continue
		}
		seq, err := c.nextSeq(in)
		if err != nil {
			return err
		}
		seqs = append(seqs, seq)
		fresh++
	}
	if fresh > 0 {
		if err := c.convsFor(&p.msg, op.Inboxes, nil); err != nil {
			return err
		}
		id := p.msg.ID
		for i, in := range op.Inboxes {
			if _, ok := find(in); ok {
				continue
			}
			c.addEntry(in, seqs[i], id)
			c.converse(c.cst[i], in, &p.msg, seqs[i])
			p.refs = append(p.refs, ref{in, seqs[i]})
		}
		c.writeRecord(p)
	}
	// The result is the caller's: a copy, since p.msg may point into the
	// memory of an op of this batch, which its caller may reuse in Done.
	msg := p.msg
	msg.From, msg.To, msg.ClientMsgID = strings.Clone(msg.From), strings.Clone(msg.To), strings.Clone(msg.ClientMsgID)
	msg.Body = append([]byte(nil), msg.Body...)
	if len(msg.Body) == 0 {
		msg.Body = nil
	}
	op.Result = persist.AppendResult{Msg: msg, Seqs: seqs, Duplicate: true}
	return nil
}

// refFinder returns a lookup of an inbox's seq in refs as they are now:
// linear for the few inboxes of a 1:1 message, a map for a group's.
func refFinder(refs []ref) func(inbox string) (uint64, bool) {
	if len(refs) <= 16 {
		return func(inbox string) (uint64, bool) {
			for _, r := range refs {
				if r.inbox == inbox {
					return r.seq, true
				}
			}
			return 0, false
		}
	}
	idx := make(map[string]uint64, len(refs))
	for _, r := range refs {
		idx[r.inbox] = r.seq
	}
	return func(inbox string) (uint64, bool) {
		seq, ok := idx[inbox]
		return seq, ok
	}
}

// unavailable wraps an I/O or decoding failure found while applying a
// request (before any write): the request fails alone.
func unavailable(op string, err error) error {
	return fmt.Errorf("pebblestore: %s: %w: %w", op, persist.ErrUnavailable, err)
}
