package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
)

// Budgets of one maintenance request: each runs on the committer in a batch
// of its own, so they bound how long appends wait behind retention.
const (
	ageBudget   = 512  // expired messages removed per request
	capBudget   = 1024 // inboxes (or heads scanned) per request
	sweepBudget = 1024 // message records examined per request
	// sweepPerPass bounds the cap sweep of one pass; the next pass resumes
	// where it stopped.
	sweepPerPass = 64 * sweepBudget
	// convBudget bounds the conversations one request of the
	// conversation cleanup visits (two seeks each).
	convBudget = 4096
	// rangeDeleteMin: fewer consecutive keys than this are deleted one by
	// one, since many small range tombstones slow reads down.
	rangeDeleteMin = 64
)

// EnforceRetention implements persist.Retainer: one pass of the rules of
// Options.Retention (see the package doc for how). It returns nil at once
// when retention is off.
func (s *Store) EnforceRetention(ctx context.Context) error {
	r := s.opts.Retention
	if !r.Enabled() {
		return nil
	}
	s.retMu.Lock()
	defer s.retMu.Unlock()
	now := s.opts.Now()
	var ageHi uint64 // highest message ID removed by age
	if r.MaxAge > 0 {
		cutoff := now.Add(-r.MaxAge).UnixMilli()
		for more := true; more; {
			err := s.maint(ctx, func(c *committer) (err error) {
				var hi uint64
				hi, more, err = c.trimAge(cutoff)
				ageHi = max(ageHi, hi)
				return err
			})
			if err != nil {
				return fmt.Errorf("pebblestore: retention by age: %w", err)
			}
		}
	}
	if r.InboxMax > 0 {
		for more := true; more; {
			err := s.maint(ctx, func(c *committer) (err error) {
				more, err = c.trimCaps()
				return err
			})
			if err != nil {
				return fmt.Errorf("pebblestore: retention by inbox cap: %w", err)
			}
		}
		if r.MaxAge == 0 || r.DedupWindow < r.MaxAge {
			// Messages the cap removed from every inbox, once older than
			// the dedup window (with a shorter MaxAge the age rule gets
			// them first).
			cutoff := now.Add(-r.DedupWindow).UnixMilli()
			for scanned, wrapped := 0, false; !wrapped && scanned < sweepPerPass; {
				err := s.maint(ctx, func(c *committer) (err error) {
					var n int
					n, wrapped, err = c.sweep(cutoff)
					scanned += n
					return err
				})
				if err != nil {
					return fmt.Errorf("pebblestore: retention sweep: %w", err)
				}
			}
		}
	}
	for more := true; more; {
		err := s.maint(ctx, func(c *committer) (err error) {
			more, err = c.trimConvSteps()
			return err
		})
		if err != nil {
			return fmt.Errorf("pebblestore: retention of conversation entries: %w", err)
		}
	}
	s.passes.Add(1)
	if ageHi > 0 {
		// The removed messages are a prefix of the message and refs tables:
		// compacting it gives the space back now rather than whenever
		// compactions pass by.
		if err := s.compact(ctx, ageHi); err != nil {
			return fmt.Errorf("pebblestore: retention compaction: %w", err)
		}
	}
	return nil
}

// compact compacts the message and refs tables up to message ID hi. It
// holds mu for reading, so Close waits for it (Close cancels the
// background passes' context first).
func (s *Store) compact(ctx context.Context, hi uint64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return persist.ErrClosed
	}
	for _, t := range []byte{tMessage, tRefs} {
		if err := s.db.Compact(ctx, keyID(nil, t, 0), keyID(nil, t, hi+1), false); err != nil {
			return err
		}
	}
	return nil
}

// maint runs fn on the committer in a batch of its own and waits for it.
func (s *Store) maint(ctx context.Context, fn func(c *committer) error) error {
	return s.write(ctx, &writeReq{apply: fn, alone: true})
}

// trimAge removes up to ageBudget messages older than cutoff (Unix ms), in
// message-ID order, with their dedup keys and inbox entries. It returns the
// highest ID removed and whether more may be left.
func (c *committer) trimAge(cutoff int64) (hi uint64, more bool, err error) {
	it, err := c.s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tMessage}, UpperBound: []byte{tMessage + 1}})
	if err != nil {
		return 0, false, err
	}
	var ids, ext []uint64         // ext: the removed messages with a refs record
	firsts := map[string]uint64{} // inbox -> first seq to keep
	for ok := it.First(); ok && len(ids) < ageBudget; ok = it.Next() {
		id, err := u64(it.Key()[1:])
		var inline bool
		if err == nil {
			inline, err = c.recordRefs(id, it.Value())
		}
		if err != nil {
			it.Close()
			return 0, false, err
		}
		if c.refs.ts >= cutoff {
			break
		}
		ids = append(ids, id)
		if !inline {
			ext = append(ext, id)
		}
		if c.refs.clientMsgID != "" { // events have no dedup key
			c.del(keyLP2(c.key, tDedup, c.refs.from, c.refs.clientMsgID))
		}
		for _, r := range c.refs.refs {
			firsts[r.inbox] = max(firsts[r.inbox], r.seq+1)
		}
	}
	err = it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, false, err
	}
	if len(ids) == 0 {
		return 0, false, nil
	}
	lo, hi := ids[0], ids[len(ids)-1]
	// Every ID in [lo, hi] is removed (a prefix of the message table), so
	// a range deletion covers the refs records among them too.
	for _, tab := range []struct {
		t   byte
		ids []uint64
	}{{tMessage, ids}, {tRefs, ext}} {
		if len(tab.ids) >= rangeDeleteMin {
			c.delRange(keyID(c.key, tab.t, lo), keyID(c.key2, tab.t, hi+1))
			continue
		}
		for _, id := range tab.ids {
			c.del(keyID(c.key, tab.t, id))
		}
	}
	for in, first := range firsts {
		if err := c.trimInbox(in, first); err != nil {
			return 0, false, err
		}
	}
	c.rmMsgs += uint64(len(ids))
	return hi, len(ids) == ageBudget, nil
}

// trimInbox raises inbox's first seq to first (at most last+1), deleting
// the entries below it.
func (c *committer) trimInbox(inbox string, first uint64) error {
	e, err := c.head(inbox)
	if err != nil {
		return err
	}
	first = min(first, e.h.last+1)
	if first <= e.h.first {
		return nil
	}
	n := first - e.h.first
	if n >= rangeDeleteMin {
		c.delRange(keyInbox(c.key, inbox, e.h.first), keyInbox(c.key2, inbox, first))
	} else {
		for seq := e.h.first; seq < first; seq++ {
			c.del(keyInbox(c.key, inbox, seq))
		}
	}
	c.setHead(e, head{last: e.h.last, first: first})
	c.rmEnts += n
	c.queueConvTrim(e.inbox)
	return nil
}

// queueConvTrim notes that inbox's conversation entries below its first
// seq are due for removal. Reads skip such entries already (they check the
// first seq), so the removal waits for trimConvSteps, which bounds the
// work per batch: it is one seek pair per conversation of the inbox, and
// an inbox may have thousands. The list is bounded; an inbox left off it
// (or forgotten by a restart) is cleaned at its next trim, which removes
// everything below its first seq then.
func (c *committer) queueConvTrim(inbox string) {
	if _, ok := c.convTrim[inbox]; ok || len(c.convTrim) >= maxOverCap {
		return
	}
	c.convTrim[inbox] = struct{}{}
	c.convTrimOrder = append(c.convTrimOrder, inbox)
}

// trimConvSteps removes the conversation entries below the first seq of
// queued inboxes, until convBudget conversations were visited. It reports
// whether inboxes are left.
func (c *committer) trimConvSteps() (more bool, err error) {
	visited := 0
	for len(c.convTrimOrder) > 0 && visited < convBudget {
		in := c.convTrimOrder[0]
		e, err := c.head(in)
		if err != nil {
			return false, err
		}
		n, err := c.trimConvs(in, e.h.first)
		if err != nil {
			return false, err
		}
		visited += n
		delete(c.convTrim, in)
		c.convTrimOrder = c.convTrimOrder[1:]
	}
	if len(c.convTrimOrder) == 0 {
		c.convTrimOrder = nil // let the backing array go
	}
	return len(c.convTrimOrder) > 0, nil
}

// trimConvs removes the conversation index entries of inbox below first,
// conversation by conversation (one seek to the next), and returns how
// many conversations it visited. A conversation that loses all its entries
// gets a record with its state, so its last seq, counts and cursor outlive
// them. The committer's cached states do not change: they never depended
// on which entries are kept.
func (c *committer) trimConvs(inbox string, first uint64) (int, error) {
	pre := keyLP(nil, tConvIdx, inbox)
	it, err := c.s.db.NewIter(&pebble.IterOptions{LowerBound: pre, UpperBound: prefixEnd(pre)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	var seqs []uint64
	visited := 0
	for ok := it.First(); ok; visited++ {
		id, n, err := parseConvID(it.Key()[len(pre):])
		if err != nil {
			return visited, err
		}
		cp := bytes.Clone(it.Key()[:len(pre)+n])
		var st convState
		seqs = seqs[:0]
		for ; ok && bytes.HasPrefix(it.Key(), cp); ok = it.Next() {
			seq, err := u64(it.Key()[len(cp):])
			if err != nil {
				return visited, err
			}
			if seq >= first {
				break
			}
			if err := st.addLast(it, len(cp)); err != nil {
				return visited, err
			}
			seqs = append(seqs, seq)
		}
		allGone := !ok || !bytes.HasPrefix(it.Key(), cp)
		if len(seqs) >= rangeDeleteMin {
			c.delRange(appendBE64(bytes.Clone(cp), 0), appendBE64(bytes.Clone(cp), first))
		} else {
			for _, seq := range seqs {
				c.del(appendBE64(bytes.Clone(cp), seq))
			}
		}
		if allGone && len(seqs) > 0 {
			// Keep the state: the record's cursor, the last entry's counts.
			rk := keyConv(nil, tConv, inbox, id)
			v, found, err := c.lookup(rk)
			if err != nil {
				return visited, err
			}
			if found {
				r, err := decodeConvRecord(v)
				if err != nil {
					return visited, err
				}
				st.read = max(st.read, r.read)
			}
			c.set(rk, appendConvRecord(nil, st.record()))
		}
		if ok && bytes.HasPrefix(it.Key(), cp) {
			ok = it.SeekGE(prefixEnd(cp))
		}
	}
	return visited, it.Error()
}

// trimCaps trims up to capBudget inboxes to Retention.InboxMax: the ones the
// committer saw growing past it, or, after Open or an overflow of that list,
// every head in key order. It reports whether work is left.
func (c *committer) trimCaps() (more bool, err error) {
	capN := uint64(c.s.opts.Retention.InboxMax)
	if c.capScan {
		lower := c.capFrom
		if lower == nil {
			lower = []byte{tHead}
		}
		it, err := c.s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: []byte{tHead + 1}})
		if err != nil {
			return false, err
		}
		n := 0
		ok := it.First()
		for ; ok && n < capBudget; ok = it.Next() {
			n++
			inbox, err := inboxOfHeadKey(it.Key())
			var h head
			if err == nil {
				h, err = decodeHead(it.Value())
			}
			if err == nil && h.last-h.first+1 > capN {
				err = c.trimInbox(inbox, h.last-capN+1)
			}
			if err != nil {
				it.Close()
				return false, err
			}
		}
		if ok {
			c.capFrom = append(c.capFrom[:0], it.Key()...)
		} else {
			c.capFrom, c.capScan = nil, false
		}
		err = it.Error()
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		return true, err // the listed inboxes are next
	}
	n := min(len(c.overCap), capBudget)
	for _, in := range c.overCap[:n] {
		e, err := c.head(in)
		if err != nil {
			return false, err
		}
		e.overCap = false
		if h := e.h; h.last-h.first+1 > capN {
			if err := c.trimInbox(in, h.last-capN+1); err != nil {
				return false, err
			}
		}
	}
	c.overCap = append(c.overCap[:0], c.overCap[n:]...)
	return len(c.overCap) > 0, nil
}

// inboxOfHeadKey returns the user of a head key ('h' lp(user)).
func inboxOfHeadKey(k []byte) (string, error) {
	n, w := binary.Uvarint(k[1:])
	if w <= 0 || uint64(len(k)-1-w) != n {
		return "", fmt.Errorf("%w: head key %q", errCorrupt, k)
	}
	return string(k[1+w:]), nil
}

// recordRefs decodes message record rec of message id into c.refs, and
// reports whether the record carries the refs (else they are in its refs
// record, read from the database).
func (c *committer) recordRefs(id uint64, rec []byte) (inline bool, err error) {
	inline = true
	err = recordRefs(id, rec, &c.refs, func(key []byte) ([]byte, bool, error) {
		inline = false
		return c.lookup(key)
	})
	return inline, err
}

// sweep examines up to sweepBudget message records from where the last sweep
// stopped and removes the messages older than cutoff (Unix ms) that no inbox
// holds any more. It reports how many it examined and whether it reached
// the end (or messages younger than cutoff: IDs are time-ordered), in which
// case the next sweep starts over.
func (c *committer) sweep(cutoff int64) (n int, wrapped bool, err error) {
	it, err := c.s.db.NewIter(&pebble.IterOptions{LowerBound: keyID(nil, tMessage, c.sweepFrom), UpperBound: []byte{tMessage + 1}})
	if err != nil {
		return 0, false, err
	}
	defer func() {
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		if wrapped {
			c.sweepFrom = 0
		}
	}()
	ok := it.First()
	for ; ok && n < sweepBudget; ok = it.Next() {
		id, err := u64(it.Key()[1:])
		var inline bool
		if err == nil {
			inline, err = c.recordRefs(id, it.Value())
		}
		if err != nil {
			return n, false, err
		}
		if c.refs.ts >= cutoff {
			return n, true, nil
		}
		n++
		c.sweepFrom = id + 1
		live := false
		for _, r := range c.refs.refs {
			e, err := c.head(r.inbox)
			if err != nil {
				return n, false, err
			}
			if r.seq >= e.h.first {
				live = true
				break
			}
		}
		if live {
			continue
		}
		c.del(keyID(c.key, tMessage, id))
		if !inline {
			c.del(keyID(c.key, tRefs, id))
		}
		if c.refs.clientMsgID != "" {
			c.del(keyLP2(c.key, tDedup, c.refs.from, c.refs.clientMsgID))
		}
		c.rmMsgs++
	}
	return n, !ok, it.Error()
}

// Retention is the store's retention configuration, with defaults filled
// in.
func (s *Store) Retention() persist.Retention { return s.opts.Retention }
