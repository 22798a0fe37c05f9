package mongostore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/imgn/imgn/persist"
)

// maxRounds bounds the inbox insert attempts of one batch: each conflict
// (another writer took a seq, or an entry already existed) costs a round.
const maxRounds = 16

// ferretBatch is FerretDB v1.24's internal insert batch size in embedded
// mode (see insertOrdered).
const ferretBatch = 100

// ferretUpdateBatch is the most updates bulkWrite sends to FerretDB in one
// command. FerretDB v1's update command keeps the query of every update
// whose filter matched (and so one connection of its PostgreSQL pool) open
// until the whole command ends, and takes one more connection to write each
// document: a command of more updates than the pool has connections waits
// forever for one it holds itself, and every other command with it. At 16,
// a node's two writers of updates (cursors, heads) hold at most 34
// connections, so devmongo's pool of 150 serves four such nodes at once
// even when all of them flush together.
const ferretUpdateBatch = 16

// headsEvery: the heads hint of a user is rewritten when the user's last
// seq crosses a multiple of it, so a cold lookup searches at most that many
// entries past the hint (about 2*log2(headsEvery) point reads) while most
// batches skip the extra write.
const headsEvery = 16

// appendReq is one Append waiting for the committer.
type appendReq struct {
	ctx     context.Context
	msg     persist.Message // the store's own copy (strings and Body)
	inboxes []string        // the store's own copy (strings too)
	// entriesOnly: the message document exists (AppendEntries); only the
	// inbox entries are written.
	entriesOnly bool

	// Set by the committer before done is closed.
	res  persist.AppendResult
	err  error
	done chan struct{}

	// Committer scratch.
	// origin: an Append whose inboxes include the sender's: the message
	// is stored in the sender's entry (the origin entry), not in messages.
	origin  bool
	stored  bool     // the message (fresh or the original) is in the store
	entries []*entry // one per inbox, in inbox order
}

// entry is one inbox reference the committer must make exist. Appends of
// the same message to the same inbox in one batch share their entry.
type entry struct {
	user  string
	msgID uint64
	seq   uint64
	done  bool // the entry exists in the store at seq
	chat  chatRef
	// msg is the message an origin entry carries (nil: a plain entry,
	// which references its message by id), and req the append it is of.
	msg *persist.Message
	req *appendReq
	// gone: the entry of a fresh id whose append turned out a duplicate
	// of a stored message; it must never be written.
	gone bool
}

// dedup is the value of the entry's d field (see the package doc): the
// sender's client message id for an origin entry, the message id for any
// other. Unique per inbox with the user, so it catches a retry of an
// origin append as a duplicate key.
func (e *entry) dedup() any {
	if e.msg != nil {
		return originDedup(e.msg.ClientMsgID)
	}
	return plainDedup(e.msgID)
}

func originDedup(cmid string) any { return enc("c" + cmid) }
func plainDedup(id uint64) string { return "m" + midKey(id) }

// doc is the document of the entry at its planned seq.
func (e *entry) doc(s *Store) bson.D {
	d := e.chat.appendTo(bson.D{
		{Key: "_id", Value: inboxKey(e.user, e.seq)},
		{Key: "user", Value: enc(e.user)},
		{Key: "seq", Value: int64(e.seq)},
		{Key: "msg", Value: idToDB(e.msgID)},
		{Key: replayField, Value: s.replayBucket(e.msgID)},
		{Key: dedupField, Value: e.dedup()},
	})
	if e.msg != nil {
		d = appendMessageFields(d, e.msg)
	}
	return d
}

type entryKey struct {
	user  string
	msgID uint64
}

func (r *appendReq) finish(err error) {
	r.err = err
	close(r.done)
}

// Append implements persist.MessageStore. It returns nil only when the
// message and all its inbox entries were acknowledged with the configured
// write concern. On ErrUnavailable some of the effects may be stored (see
// the package doc); a retry with the same (From, ClientMsgID) completes them.
// If ctx ends while the append is queued or being written, Append returns
// ctx.Err() at once and the append may still complete later. Append keeps
// no reference to the memory of msg's strings and Body or of inboxes: the
// caller may reuse it as soon as Append returns, in every case.
func (s *Store) Append(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	if err := persist.CheckAppend(msg, inboxes); err != nil {
		return persist.AppendResult{}, fmt.Errorf("mongostore: append: %w", err)
	}
	return s.submit(ctx, msg, inboxes, false)
}

// AppendEntries appends msg to each of inboxes without writing the message
// document: msg must be a message this store already holds durably (the
// result of an earlier successful Append, possibly by another node: the
// ID, From and ClientMsgID of the stored original). It is how a cluster
// stores a message once while each inbox owner writes its own entries.
// Entries that exist already keep their seq (a retry is resolved by the
// unique (user, msg) index, with one lookup per conflicting batch, not per
// message). The result's Msg is msg and Duplicate is false. Failure,
// cancellation and memory rules are those of Append.
func (s *Store) AppendEntries(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	if err := persist.CheckAppend(msg, inboxes); err != nil {
		return persist.AppendResult{}, fmt.Errorf("mongostore: append entries: %w", err)
	}
	return s.submit(ctx, msg, inboxes, true)
}

// submit queues one append for the committer and waits for its outcome.
func (s *Store) submit(ctx context.Context, msg persist.Message, inboxes []string, entriesOnly bool) (persist.AppendResult, error) {
	if err := ctx.Err(); err != nil {
		return persist.AppendResult{}, err
	}
	r := &appendReq{ctx: ctx, msg: ownMessage(msg), inboxes: ownStrings(inboxes), entriesOnly: entriesOnly, done: make(chan struct{})}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return persist.AppendResult{}, persist.ErrClosed
	}
	select {
	case s.queue <- r:
		s.mu.RUnlock()
	case <-ctx.Done():
		s.mu.RUnlock()
		return persist.AppendResult{}, ctx.Err()
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		select {
		case <-r.done: // finished at the same moment: report the real outcome
		default:
			return persist.AppendResult{}, ctx.Err()
		}
	}
	if r.err != nil {
		return persist.AppendResult{}, r.err
	}
	return r.res, nil
}

// ownMessage returns a copy of m that shares no memory with the caller's:
// the committer keeps using a request after Append returned on its
// caller's deadline, and keeps inbox names as seq-cache keys, while callers
// reuse the memory behind their strings (the engine passes views into
// pooled request buffers). A cached seq found under a name whose bytes
// changed to another user's would plan that user's next seq past its real
// end: a gap, and an acknowledged message that readers never reach.
func ownMessage(m persist.Message) persist.Message {
	m.From, m.To, m.ClientMsgID = strings.Clone(m.From), strings.Clone(m.To), strings.Clone(m.ClientMsgID)
	m.Body = bytes.Clone(m.Body)
	return m
}

// ownStrings copies ss and every string in it (see ownMessage).
func ownStrings(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.Clone(s)
	}
	return out
}

// run is the committer loop. It exits when the queue is closed and drained.
func (s *Store) run() {
	defer close(s.done)
	batch := make([]*appendReq, 0, s.opts.MaxBatch)
	for {
		var ok bool
		if batch, ok = persist.NextBatch(s.queue, batch, s.opts.MaxBatch); !ok {
			return
		}
		s.commit(batch)
		clear(batch)
	}
}

// committerOp marks the contexts of the committer's operations: when one
// ends (OpTimeout, or canceled after use), mapErr reports ErrUnavailable,
// not a context error, since no caller's context is involved.
type committerOp struct{}

// opCtx bounds one database operation of the committer.
func (s *Store) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithValue(context.Background(), committerOp{}, true), s.opts.OpTimeout)
}

// commit writes one batch and finishes every request in it.
func (s *Store) commit(batch []*appendReq) {
	live := make([]*appendReq, 0, len(batch))
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.finish(err) // the caller has gone: skip, as if never queued
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	s.stats.batches.Add(1)
	s.stats.appends.Add(uint64(len(live)))
	if len(s.seqCache) >= s.opts.SeqCacheSize {
		clear(s.seqCache) // crude but bounded: entries are refetched in bulk
	}
	for len(live) > 0 {
		var later []*appendReq
		live, later = splitRepeats(live)
		s.commitPass(live)
		live = later
	}
}

// splitRepeats returns the appends of live to write now, and those to
// write after them: an origin append with the (From, ClientMsgID) of an
// earlier one in the batch waits for the next pass, where its origin
// entry meets the first one's as a duplicate and it becomes a Duplicate
// of what the first stored, as a retry arriving a batch later would.
func splitRepeats(live []*appendReq) (now, later []*appendReq) {
	var seen map[dedupKey]bool
	now = live[:0:0]
	for _, r := range live {
		r.origin = !r.entriesOnly && slices.Contains(r.inboxes, r.msg.From)
		if r.origin {
			k := dedupKey{r.msg.From, r.msg.ClientMsgID}
			if seen[k] {
				later = append(later, r)
				continue
			}
			if seen == nil {
				seen = map[dedupKey]bool{}
			}
			seen[k] = true
		}
		now = append(now, r)
	}
	return now, later
}

// batchEntries is the set of entries of one commit pass: one per (inbox,
// message), shared by the requests of the pass, in the order first seen.
type batchEntries struct {
	byKey map[entryKey]*entry
	order []*entry
}

// of returns r's entries (for the message r.res.Msg), creating those the
// pass does not have yet. The sender's entry of an origin append that is
// not a duplicate is its origin entry.
func (b *batchEntries) of(r *appendReq) []*entry {
	m := &r.res.Msg
	out := make([]*entry, len(r.inboxes))
	for i, in := range r.inboxes {
		k := entryKey{in, m.ID}
		e := b.byKey[k]
		if e == nil {
			e = &entry{user: in, msgID: m.ID, chat: chatRefOf(in, m)}
			b.byKey[k] = e
			b.order = append(b.order, e)
		}
		if r.origin && !r.res.Duplicate && in == m.From && !e.done {
			e.msg, e.req = m, r
		}
		out[i] = e
	}
	return out
}

// commitPass writes appends of which no two origin appends share a
// (From, ClientMsgID), and finishes them.
func (s *Store) commitPass(live []*appendReq) {
	// fail records the first error of a request; it is finished below.
	fail := func(r *appendReq, err error) {
		if r.err == nil {
			r.err = err
		}
		r.stored = false
	}

	s.insertMessages(live, fail)
	refuseSharedIDs(live, fail)

	b := &batchEntries{byKey: make(map[entryKey]*entry)}
	var dups []*appendReq
	for _, r := range live {
		if !r.stored {
			continue
		}
		r.entries = b.of(r)
		if r.res.Duplicate {
			dups = append(dups, r)
		}
	}
	if len(dups) > 0 {
		if err := s.findExisting(dups, b.byKey); err != nil {
			for _, r := range dups {
				fail(r, err)
			}
		}
	}

	committed := s.insertEntries(live, b, fail)
	// Recorded before the callers wake, so that a read on this node after
	// the ack sees it (syncUpkeep); written by the upkeep flusher.
	s.noteUpkeep(b.order, committed)

	failed := false
	for _, r := range live {
		if r.err == nil && r.stored && slices.ContainsFunc(r.entries, func(e *entry) bool { return !e.done }) {
			r.err = fmt.Errorf("mongostore: append: %w: not written", persist.ErrUnavailable) // cannot happen
		}
		if r.err != nil || !r.stored {
			if r.err == nil { // cannot happen: every unstored request was failed
				r.err = fmt.Errorf("mongostore: append: %w: not written", persist.ErrUnavailable)
			}
			failed = true
			r.finish(r.err)
			continue
		}
		r.res.Seqs = make([]uint64, len(r.entries))
		for i, e := range r.entries {
			r.res.Seqs[i] = e.seq
		}
		r.finish(nil)
	}
	if failed {
		s.stats.failedBatches.Add(1)
	}
}

// refuseSharedIDs fails with ErrInvalid every origin append of live whose
// message ID an earlier one of live has (their (From, ClientMsgID) differ:
// see splitRepeats): two such appends of one sender would share the
// sender's entry, the later one's message replacing the earlier's under
// its acknowledged seqs, and of two senders store two messages of one ID.
// Across batches the (user, msg) index refuses a reuse in the sender's
// inbox (a reuse by another sender is not detected: see the package doc).
func refuseSharedIDs(live []*appendReq, fail func(*appendReq, error)) {
	seen := map[uint64]bool{}
	for _, r := range live {
		if !r.origin || !r.stored || r.err != nil {
			continue
		}
		if seen[r.msg.ID] {
			fail(r, fmt.Errorf("mongostore: append: %w: message id %d is used by another message", persist.ErrInvalid, r.msg.ID))
			continue
		}
		seen[r.msg.ID] = true
	}
}

// insertMessages inserts the batch's messages (unordered: they are
// independent) and settles each request: stored fresh, stored before (a
// Duplicate carrying the original), or failed. Entries-only requests name
// a stored message already and are settled as they are; origin requests
// store their message in an entry and are settled by insertEntries. The
// originals of all duplicates are read with one query.
func (s *Store) insertMessages(live []*appendReq, fail func(*appendReq, error)) {
	var reqs []*appendReq
	var docs []any
	for _, r := range live {
		if r.entriesOnly || r.origin {
			// Stored already, or in its origin entry (insertEntries
			// settles whether it is a duplicate).
			r.stored = true
			r.res.Msg = r.msg
			continue
		}
		reqs = append(reqs, r)
		docs = append(docs, messageDoc(&r.msg))
	}
	if len(docs) == 0 {
		return
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	_, err := s.messages.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	dupAt := map[int]bool{}
	if err != nil {
		var bwe mongo.BulkWriteException
		if !errors.As(err, &bwe) || bwe.WriteConcernError != nil {
			// Outcome unknown (network, timeout, write concern not met):
			// nothing is acknowledged; a retry dedups whatever was stored.
			err = mapErr(ctx, "append: insert messages", err)
			for _, r := range reqs {
				fail(r, err)
			}
			return
		}
		for _, we := range bwe.WriteErrors {
			if we.Index < 0 || we.Index >= len(reqs) {
				continue
			}
			if isDupCode(we.Code) {
				dupAt[we.Index] = true
				continue
			}
			fail(reqs[we.Index], fmt.Errorf("mongostore: append: insert message: %w: %v", persist.ErrUnavailable, we.Message))
		}
	}
	var dups []*appendReq
	for i, r := range reqs {
		if r.err != nil {
			continue
		}
		if !dupAt[i] {
			r.stored = true
			r.res.Msg = r.msg
			continue
		}
		dups = append(dups, r)
	}
	if len(dups) == 0 {
		return
	}
	found, err := s.lookupMany(dups)
	if err != nil {
		for _, r := range dups {
			fail(r, err)
		}
		return
	}
	for _, r := range dups {
		orig, ok := found[dedupKey{r.msg.From, r.msg.ClientMsgID}]
		if !ok {
			// Not (From, ClientMsgID): the _id belongs to another message.
			fail(r, fmt.Errorf("mongostore: append: %w: message id %d is used by another message", persist.ErrInvalid, r.msg.ID))
			continue
		}
		r.stored = true
		r.res.Duplicate = true
		r.res.Msg = orig
		r.res.Msg.Body = bytes.Clone(orig.Body) // each caller owns its result
	}
}

// dedupKey is a message's idempotency key.
type dedupKey struct{ from, cmid string }

// lookupMany reads the stored messages of the (From, ClientMsgID) keys of
// reqs with one query (every pair of the keys' senders and ids matches the
// filter; the exact keys are picked from the answer; see findAny for
// FerretDB).
func (s *Store) lookupMany(reqs []*appendReq) (map[dedupKey]persist.Message, error) {
	want := map[dedupKey]bool{}
	var keys []dedupKey
	for _, r := range reqs {
		if k := (dedupKey{r.msg.From, r.msg.ClientMsgID}); !want[k] {
			want[k] = true
			keys = append(keys, k)
		}
	}
	all, each := pairFilters("from", "cmid", len(keys), func(i int) (string, string, any, any) {
		return keys[i].from, keys[i].cmid, enc(keys[i].from), enc(keys[i].cmid)
	})
	ctx, cancel := s.opCtx()
	defer cancel()
	out := make(map[dedupKey]persist.Message, len(want))
	err := s.findAny(ctx, s.messages, all, each, "append: look up duplicates", func(raw bson.Raw) error {
		m, err := decodeMessage(raw)
		if err != nil {
			return err
		}
		if k := (dedupKey{m.From, m.ClientMsgID}); want[k] {
			out[k] = m
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// findExisting marks the entries of duplicate appends that already exist
// (one query).
func (s *Store) findExisting(dups []*appendReq, entries map[entryKey]*entry) error {
	var keys []entryKey
	for _, r := range dups {
		for _, in := range r.inboxes {
			keys = append(keys, entryKey{in, r.res.Msg.ID})
		}
	}
	return s.scanEntries(keys, func(k entryKey, seq uint64) {
		if e := entries[k]; e != nil {
			e.seq, e.done = seq, true
		}
	})
}

func decodeEntry(raw bson.Raw) (user string, msgID, seq uint64, err error) {
	if user, err = strField(raw, "user"); err != nil {
		return
	}
	var v int64
	if v, err = int64Field(raw, "msg"); err != nil {
		return
	}
	msgID = idFromDB(v)
	if v, err = int64Field(raw, "seq"); err != nil {
		return
	}
	if v < 1 {
		err = fmt.Errorf("%w: inbox seq %d", errCorrupt, v)
	}
	return user, msgID, uint64(v), err
}

// insertEntries makes every entry of the pass exist: it assigns seqs,
// inserts with an ordered InsertMany and resolves conflicts. It fails the
// requests whose entries it cannot write and returns the seqs committed per
// user in this batch.
//
// The insert is laid out message-major: the entries of the live requests
// in their order, each message's origin entry before every other entry of
// that message (pending). Seqs are assigned in that order, so each user's
// entries ascend; and since the ordered insert stops at the first failure,
// no entry of a message is stored before its origin: when the origin of a
// retry (a fresh id) fails as a duplicate, nothing of the fresh id exists,
// and the request is resolved to the stored original (resolve).
func (s *Store) insertEntries(live []*appendReq, b *batchEntries, fail func(*appendReq, error)) map[string]seqSpan {
	committed := map[string]seqSpan{}
	floors := map[string]uint64{} // seqs found taken by other writers
	bad := map[*entry]error{}     // entries that cannot be written in this batch
	for round := 0; ; round++ {
		pending := pendingEntries(live, b.order, bad)
		if len(pending) == 0 {
			break
		}
		if round == maxRounds {
			for _, e := range pending {
				bad[e] = fmt.Errorf("mongostore: append: %w: inbox %q: seq conflicts persist after %d attempts", persist.ErrUnavailable, e.user, maxRounds)
			}
			break
		}
		// Plan: each user's pending entries get the seqs after its last,
		// in the order of pending.
		if err := s.warmCache(pending, floors); err != nil {
			for _, e := range pending {
				bad[e] = err
			}
			break
		}
		next := map[string]uint64{}
		docs := make([]any, 0, len(pending))
		planned := pending[:0:0]
		for _, e := range pending {
			last, ok := next[e.user]
			if !ok {
				last = s.seqCache[e.user]
			}
			if last >= maxSeq {
				bad[e] = fmt.Errorf("mongostore: append: %w: inbox %q is full", persist.ErrUnavailable, e.user)
				continue
			}
			e.seq = last + 1
			next[e.user] = e.seq
			planned = append(planned, e)
			docs = append(docs, e.doc(s))
		}
		if len(planned) == 0 {
			continue // the full inboxes are bad now: plan the rest
		}
		stored, we, err := s.insertOrdered(docs)
		s.commitPrefix(planned[:stored], committed)
		if err != nil {
			// Unknown outcome: any prefix of the rest may be stored. Forget
			// what the cache says about these users; the callers retry.
			for _, e := range planned[stored:] {
				delete(s.seqCache, e.user)
				bad[e] = err
			}
			break
		}
		if we == nil {
			continue // all stored; the next plan is empty unless inboxes filled
		}
		e := planned[stored]
		left := planned[stored:]
		if !isDupCode(we.Code) {
			delete(s.seqCache, e.user)
			err := fmt.Errorf("mongostore: append: insert inbox entry: %w: %v", persist.ErrUnavailable, we.Message)
			for _, x := range left {
				bad[x] = err
			}
			break
		}
		// Either the seq is taken (another writer), or the inbox already
		// references the message (an earlier attempt, or an entries-only
		// retry), or an origin's (user, d) is taken (a retry with a fresh
		// id). One query finds which of the unwritten entries exist; the
		// rest are planned again.
		s.stats.conflicts.Add(1)
		err = s.resolve(left, e, b, floors, fail)
		if err != nil || !(e.done || e.gone) {
			// e's seq may be taken: forget what the cache says. When e
			// was found (it existed, or its origin's retry did), the
			// duplicate is explained and the cache kept: were the seq
			// taken too, the next insert meets it, at the cost of a round.
			delete(s.seqCache, e.user)
		}
		if err != nil {
			for _, x := range left {
				bad[x] = err
			}
			break
		}
	}
	if len(bad) > 0 {
		for _, r := range live {
			if !r.stored || r.err != nil {
				continue
			}
			for _, e := range r.entries {
				if err, ok := bad[e]; ok {
					fail(r, err)
					break
				}
			}
		}
	}
	return committed
}

// pendingEntries returns the entries the live requests still need, laid
// out message-major with each message's origin entry first (see
// insertEntries). An entry of a message whose origin is bad is bad too:
// it must not exist without its message.
func pendingEntries(live []*appendReq, order []*entry, bad map[*entry]error) []*entry {
	originOf := map[uint64]*entry{}
	for _, e := range order {
		if e.msg != nil && !e.done && !e.gone {
			originOf[e.msgID] = e
		}
	}
	emitted := map[*entry]bool{}
	var out []*entry
	for _, r := range live {
		if !r.stored || r.err != nil {
			continue
		}
		for _, e := range r.entries {
			if e.done || e.gone || emitted[e] || bad[e] != nil {
				continue
			}
			if o := originOf[e.msgID]; o != nil && o != e && !emitted[o] {
				if err := bad[o]; err != nil {
					bad[e] = err
					continue
				}
				emitted[o] = true
				out = append(out, o)
			}
			emitted[e] = true
			out = append(out, e)
		}
	}
	return out
}

// resolve settles the unwritten entries left of a round whose insert
// stopped at e with a duplicate key, with one query (two when retries of
// origin appends are among them, three when an original is a message
// document): entries that exist are done; an origin whose (sender, client
// message id) is taken makes its request a Duplicate of the stored
// original, whose entries replace the request's (the fresh id's are gone:
// none was written, its origin comes first); an origin whose id is taken
// in its inbox by another message fails ErrInvalid; the rest are planned
// again, e's user above the seq another writer took.
func (s *Store) resolve(left []*entry, e *entry, b *batchEntries, floors map[string]uint64, fail func(*appendReq, error)) error {
	byKey, byDedup, err := s.findConflicts(left)
	if err != nil {
		return err
	}
	var dups, fromMessages []*appendReq
	for _, x := range left {
		if x.msg != nil {
			r := x.req
			f, taken := byDedup[dedupKey{x.msg.From, x.msg.ClientMsgID}]
			switch {
			case taken:
				r.res.Duplicate = true
				x.msg = nil // from now on a plain reference of the original
				if f.msg != nil {
					r.res.Msg = *f.msg
				} else {
					fromMessages = append(fromMessages, r)
				}
				if f.msgID == x.msgID {
					x.seq, x.done = f.seq, true // an earlier attempt with this id
					continue
				}
				x.gone = true
				dups = append(dups, r)
				continue
			case byKey[entryKey{x.user, x.msgID}] != 0:
				x.gone = true
				fail(r, fmt.Errorf("mongostore: append: %w: message id %d is used by another message", persist.ErrInvalid, x.msgID))
				continue
			}
		}
		if seq := byKey[entryKey{x.user, x.msgID}]; seq != 0 {
			x.seq, x.done = seq, true
			continue
		}
		if x == e {
			// Another writer holds e.seq: the inbox reaches at least there,
			// so the next search starts from it.
			floors[e.user] = max(floors[e.user], e.seq)
		}
		x.seq = 0
	}
	if len(fromMessages) > 0 {
		// Originals stored before origin entries existed (their sender's
		// entry got its d when the database was migrated).
		found, err := s.lookupMany(fromMessages)
		if err != nil {
			return err
		}
		for _, r := range fromMessages {
			orig, ok := found[dedupKey{r.msg.From, r.msg.ClientMsgID}]
			if !ok {
				return fmt.Errorf("mongostore: append: %w: %w: inbox %q: entry for %q's message %q without its message",
					persist.ErrUnavailable, errCorrupt, r.msg.From, r.msg.From, r.msg.ClientMsgID)
			}
			r.res.Msg = orig
		}
	}
	if len(dups) == 0 {
		return nil
	}
	// The duplicates' entries are now those of their originals: the
	// sender's was just found, the others are looked up with one query.
	var unknown []*entry
	for _, r := range dups {
		f := byDedup[dedupKey{r.msg.From, r.msg.ClientMsgID}]
		r.res.Msg.Body = bytes.Clone(r.res.Msg.Body) // each caller owns its result
		for _, x := range r.entries {
			if !x.done {
				x.gone = true // the fresh id's: none may be written now
			}
		}
		known := len(b.order)
		r.entries = b.of(r)
		for _, x := range r.entries {
			if x.user == r.msg.From && !x.done {
				x.seq, x.done = f.seq, true
			}
		}
		for _, x := range b.order[known:] {
			if !x.done {
				unknown = append(unknown, x)
			}
		}
	}
	found, err := s.findEntries(unknown)
	if err != nil {
		return err
	}
	for _, x := range unknown {
		if seq, ok := found[entryKey{x.user, x.msgID}]; ok {
			x.seq, x.done = seq, true
		}
	}
	return nil
}

// conflictOrigin is a stored entry found by its (user, d) of an origin.
type conflictOrigin struct {
	msgID, seq uint64
	msg        *persist.Message // the message, when the entry is an origin
}

// findConflicts reads which of entries exist, by (user, message): their
// seqs; and for the origin entries among them, the stored entry holding
// their (sender, client message id), with its message when it is an origin
// entry. One query (see findAny for FerretDB).
func (s *Store) findConflicts(entries []*entry) (map[entryKey]uint64, map[dedupKey]conflictOrigin, error) {
	want := map[entryKey]bool{}
	var keys []entryKey
	wantD := map[dedupKey]bool{}
	var dkeys []dedupKey
	for _, e := range entries {
		if k := (entryKey{e.user, e.msgID}); !want[k] {
			want[k] = true
			keys = append(keys, k)
		}
		if e.msg != nil {
			if k := (dedupKey{e.msg.From, e.msg.ClientMsgID}); !wantD[k] {
				wantD[k] = true
				dkeys = append(dkeys, k)
			}
		}
	}
	all, each := pairFilters("user", "msg", len(keys), func(i int) (string, string, any, any) {
		k := keys[i]
		return k.user, strconv.FormatUint(k.msgID, 10), enc(k.user), idToDB(k.msgID)
	})
	var opts []options.Lister[options.FindOptions]
	if len(dkeys) == 0 {
		opts = append(opts, options.Find().SetProjection(bson.D{{Key: "user", Value: 1}, {Key: "msg", Value: 1}, {Key: "seq", Value: 1}}))
	} else {
		allD, eachD := pairFilters("user", dedupField, len(dkeys), func(i int) (string, string, any, any) {
			k := dkeys[i]
			return k.from, "c" + k.cmid, enc(k.from), originDedup(k.cmid)
		})
		all = bson.D{{Key: "$or", Value: bson.A{all, allD}}}
		each = append(each, eachD...)
	}
	byKey := map[entryKey]uint64{}
	byDedup := map[dedupKey]conflictOrigin{}
	ctx, cancel := s.opCtx()
	defer cancel()
	err := s.findAny(ctx, s.inbox, all, each, "append: find inbox entries", func(raw bson.Raw) error {
		user, msgID, seq, err := decodeEntry(raw)
		if err != nil {
			return err
		}
		if k := (entryKey{user, msgID}); want[k] {
			byKey[k] = seq
		}
		if len(dkeys) == 0 {
			return nil
		}
		d, err := strField(raw, dedupField)
		if err != nil {
			return err
		}
		cmid, ok := strings.CutPrefix(d, "c")
		if k := (dedupKey{user, cmid}); ok && wantD[k] {
			f := conflictOrigin{msgID: msgID, seq: seq}
			if isOrigin(raw) {
				m, err := decodeMessage(raw)
				if err != nil {
					return err
				}
				f.msg = &m
			}
			byDedup[k] = f
		}
		return nil
	}, opts...)
	if err != nil {
		return nil, nil, err
	}
	return byKey, byDedup, nil
}

// commitPrefix records entries the server has stored.
func (s *Store) commitPrefix(stored []*entry, committed map[string]seqSpan) {
	for _, e := range stored {
		e.done = true
		sp, ok := committed[e.user]
		if !ok {
			sp.first = e.seq
		}
		sp.first, sp.last = min(sp.first, e.seq), max(sp.last, e.seq)
		committed[e.user] = sp
		s.cacheSeq(e.user, e.seq)
	}
}

// cacheSeq records that user's inbox holds seq (and so every seq below).
// The cache is bounded at the start of each batch (see commit), never in
// the middle of one, whose plan relies on it.
func (s *Store) cacheSeq(user string, seq uint64) {
	if cur, ok := s.seqCache[user]; !ok || seq > cur {
		s.seqCache[user] = seq
	}
}

// warmCache makes sure the seq cache knows the last seq of every user of
// pending, asking the store (in bulk) for those it does not; floors holds
// seqs known to exist, where those searches may start.
func (s *Store) warmCache(pending []*entry, floors map[string]uint64) error {
	var cold []string
	seen := map[string]bool{}
	for _, e := range pending {
		if _, ok := s.seqCache[e.user]; !ok && !seen[e.user] {
			seen[e.user] = true
			cold = append(cold, e.user)
		}
	}
	if len(cold) == 0 {
		return nil
	}
	ctx, cancel := s.opCtx()
	defer cancel()
	last, err := s.lastSeqs(ctx, cold, floors)
	if err != nil {
		return err
	}
	for u, v := range last {
		s.seqCache[u] = v
	}
	return nil
}

// insertOrdered inserts docs in order and stops at the first failure. It
// returns how many leading docs are stored, and either the write error of
// the next one (we) or, when the outcome of the rest is unknown (network,
// timeout, write concern), err. On FerretDB the docs are sent in chunks of
// ferretBatch, the size up to which its ordered insert really stops at the
// first error (v1.24 carries on with its next internal batch).
func (s *Store) insertOrdered(docs []any) (stored int, we *mongo.WriteError, err error) {
	chunk := len(docs)
	if s.ferret {
		chunk = ferretBatch
	}
	for stored < len(docs) {
		part := docs[stored:min(len(docs), stored+chunk)]
		s.stats.rounds.Add(1)
		ctx, cancel := s.opCtx()
		_, err := s.inbox.InsertMany(ctx, part, options.InsertMany().SetOrdered(true))
		if err == nil {
			cancel()
			stored += len(part)
			continue
		}
		var bwe mongo.BulkWriteException
		if !errors.As(err, &bwe) || bwe.WriteConcernError != nil || len(bwe.WriteErrors) != 1 ||
			bwe.WriteErrors[0].Index < 0 || bwe.WriteErrors[0].Index >= len(part) {
			err = mapErr(ctx, "append: insert inbox entries", err)
			cancel()
			return stored, nil, err
		}
		cancel()
		w := bwe.WriteErrors[0].WriteError
		return stored + w.Index, &w, nil
	}
	return stored, nil, nil
}

// findEntries returns the seqs of those of entries that exist in the
// store, by (user, message), with one query.
func (s *Store) findEntries(entries []*entry) (map[entryKey]uint64, error) {
	keys := make([]entryKey, len(entries))
	for i, e := range entries {
		keys[i] = entryKey{e.user, e.msgID}
	}
	out := map[entryKey]uint64{}
	err := s.scanEntries(keys, func(k entryKey, seq uint64) { out[k] = seq })
	return out, err
}

// scanEntries calls fn for every existing inbox entry of keys (one query:
// every pair of the keys' users and messages matches its filter, and fn
// sees the keys' own only; see findAny for FerretDB).
func (s *Store) scanEntries(keys []entryKey, fn func(entryKey, uint64)) error {
	if len(keys) == 0 {
		return nil
	}
	want := make(map[entryKey]bool, len(keys))
	var distinct []entryKey
	for _, k := range keys {
		if !want[k] {
			want[k] = true
			distinct = append(distinct, k)
		}
	}
	all, each := pairFilters("user", "msg", len(distinct), func(i int) (string, string, any, any) {
		k := distinct[i]
		return k.user, strconv.FormatUint(k.msgID, 10), enc(k.user), idToDB(k.msgID)
	})
	ctx, cancel := s.opCtx()
	defer cancel()
	return s.findAny(ctx, s.inbox, all, each, "append: find inbox entries", func(raw bson.Raw) error {
		user, msgID, seq, err := decodeEntry(raw)
		if err != nil {
			return err
		}
		if k := (entryKey{user, msgID}); want[k] {
			fn(k, seq)
		}
		return nil
	}, options.Find().SetProjection(bson.D{{Key: "user", Value: 1}, {Key: "msg", Value: 1}, {Key: "seq", Value: 1}}))
}

// seqSpan is the range of seqs committed for one user in one batch.
type seqSpan struct{ first, last uint64 }

// bulkWrite runs models (updates) as unordered bulk writes on c: one
// command, or on FerretDB one per ferretUpdateBatch models (see there),
// each bounded by OpTimeout. failed[i] is true for the models that
// reported a write error or whose outcome is unknown; err is the first
// error seen (a BulkWriteException for write errors), for the log.
func (s *Store) bulkWrite(c *mongo.Collection, models []mongo.WriteModel) (failed []bool, err error) {
	failed = make([]bool, len(models))
	chunk := len(models)
	if s.ferret {
		chunk = ferretUpdateBatch
	}
	for start := 0; start < len(models); start += chunk {
		part := models[start:min(len(models), start+chunk)]
		ctx, cancel := s.opCtx()
		_, werr := c.BulkWrite(ctx, part, options.BulkWrite().SetOrdered(false))
		cancel()
		if werr == nil {
			continue
		}
		if err == nil {
			err = werr
		}
		var bwe mongo.BulkWriteException
		if !errors.As(werr, &bwe) || bwe.WriteConcernError != nil {
			for i := range part {
				failed[start+i] = true // outcome unknown
			}
			continue
		}
		for _, we := range bwe.WriteErrors {
			if we.Index >= 0 && we.Index < len(part) {
				failed[start+we.Index] = true
			}
		}
	}
	return failed, err
}

// pairFilters builds findAny's filters for the documents whose fields a
// and b hold one of n distinct pairs: each, one equality filter per pair,
// and all, one filter every pair matches ({a: {$in}, b: {$in}}, or the
// equality when n is 1). pair returns the i-th pair's values, with a
// comparable key of each (its identity in the $in lists).
func pairFilters(a, b string, n int, pair func(i int) (keyA, keyB string, valA, valB any)) (all bson.D, each []bson.D) {
	var as, bs bson.A
	seenA, seenB := map[string]bool{}, map[string]bool{}
	each = make([]bson.D, n)
	for i := range n {
		ka, kb, va, vb := pair(i)
		each[i] = bson.D{{Key: a, Value: va}, {Key: b, Value: vb}}
		if !seenA[ka] {
			seenA[ka] = true
			as = append(as, va)
		}
		if !seenB[kb] {
			seenB[kb] = true
			bs = append(bs, vb)
		}
	}
	if n == 1 {
		return each[0], each
	}
	return bson.D{{Key: a, Value: bson.D{{Key: "$in", Value: as}}}, {Key: b, Value: bson.D{{Key: "$in", Value: bs}}}}, each
}

func isDupCode(code int) bool { return code == 11000 || code == 11001 || code == 12582 }
