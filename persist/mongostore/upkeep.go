package mongostore

import (
	"cmp"
	"context"
	"slices"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// Upkeep: the writes a group commit causes besides its messages and inbox
// entries, the conversation documents (chat.go) and the heads hints, are
// idempotent $max upserts that summarise entries already stored. They are
// off the commit's critical path: the committer records them in a bounded
// table (one slot per conversation document and per user's hint, later
// commits merge into the slot by max) before it wakes the batch's callers,
// and the upkeep flusher writes the table at most once per
// Options.UpkeepInterval, as one unordered bulk write per collection (on
// FerretDB 16 upserts to a command, see bulkWrite). A burst of messages in
// one conversation costs one upsert per interval, not one per commit; and
// the commit's latency no longer includes them: on the FerretDB dev server
// each upsert is a PostgreSQL transaction with an fsync of its own.
//
// Guarantees. Append still returns only after the message and its inbox
// entries are acknowledged: those are the store's truth, and the upkeep is
// derived from them. Readers of this Store see their own node's upkeep at
// once (Conversations, MarkRead and ReadCount flush the table first, see
// syncUpkeep). What other nodes, and a crash, can miss is repaired from the
// inbox: Conversations merges the user's conversation entries above the
// newest conversation document into the list and records those
// conversations for the next flush; MarkRead raises a document that lags
// its conversation's entries. A crash between an ack and the next flush
// therefore loses no message, and the user's first CONVERSATIONS after it
// repairs the list, except in one case: a flush cut short by the crash
// that wrote a user's later conversation and not an earlier one leaves the
// earlier one below the repaired range, stale (or, for a conversation's
// first message, absent from the list) until the conversation's next
// message or READ. ReadCount on another node sees that a member read up
// to the member's own newer message only once the member's node flushed.
//
// A failed flush is retried (failed upserts go back to the table, merged by
// max); heads hints are only hints, so a failed one is logged and dropped.

// noteUpkeep records the upkeep of a commit: the conversations of every
// entry of entries that is stored (see convUpdates) and the heads hints of
// committed. It waits while the table is full, until the flusher takes it
// (so the committer never outruns the flusher by more than UpkeepQueue
// documents). Committer only.
func (s *Store) noteUpkeep(entries []*entry, committed map[string]seqSpan) {
	ups := convUpdates(entries, committed)
	var heads map[string]uint64
	for user, sp := range committed {
		if sp.last/headsEvery == (sp.first-1)/headsEvery {
			continue // no multiple of headsEvery in [first, last]
		}
		if heads == nil {
			heads = map[string]uint64{}
		}
		heads[user] = sp.last
	}
	if len(ups) == 0 && len(heads) == 0 {
		return
	}
	for {
		s.upMu.Lock()
		if s.upClosed || len(s.upConvs)+len(s.upHeads) < s.opts.UpkeepQueue {
			s.mergeUpkeep(ups, heads)
			s.upMu.Unlock()
			s.wakeUpkeep(false)
			return
		}
		taken := s.upTaken
		s.upMu.Unlock()
		s.wakeUpkeep(true) // full: flush now, then there is room
		<-taken
	}
}

// noteRepair records conversation updates a reader derived from the inbox
// (Conversations), if the table has room; otherwise the next read repairs
// them again. Safe for concurrent use.
func (s *Store) noteRepair(ups map[string]*convUpdate) {
	if len(ups) == 0 {
		return
	}
	s.upMu.Lock()
	room := !s.upClosed && len(s.upConvs)+len(s.upHeads) < s.opts.UpkeepQueue
	if room {
		s.mergeUpkeep(ups, nil)
	}
	s.upMu.Unlock()
	if room {
		s.wakeUpkeep(false)
	}
}

// mergeUpkeep merges updates into the table by max. upMu must be held.
func (s *Store) mergeUpkeep(ups map[string]*convUpdate, heads map[string]uint64) {
	for k, u := range ups {
		if cur := s.upConvs[k]; cur != nil {
			cur.last, cur.read = max(cur.last, u.last), max(cur.read, u.read)
			cur.fresh = cur.fresh || u.fresh
			continue
		}
		c := *u
		s.upConvs[k] = &c
	}
	for user, seq := range heads {
		s.upHeads[user] = max(s.upHeads[user], seq)
	}
	s.upGen++
}

// wakeUpkeep tells the flusher there is work; now also skips its linger.
func (s *Store) wakeUpkeep(now bool) {
	if now {
		select {
		case s.upNow <- struct{}{}:
		default:
		}
	}
	select {
	case s.upWake <- struct{}{}:
	default:
	}
}

// syncUpkeep waits until a flush has tried every upkeep recorded before
// the call (at once when there is none), so a read that follows sees this
// node's writes; it asks the flusher to skip its linger. A flush that
// failed does not hold the caller: it reads what the store has. It returns
// early, with ctx's error, when ctx ends.
func (s *Store) syncUpkeep(ctx context.Context) error {
	s.upMu.Lock()
	target := s.upGen
	s.upMu.Unlock()
	for {
		s.upMu.Lock()
		done, flushed := s.upTried >= target, s.upFlushed
		s.upMu.Unlock()
		if done {
			return nil
		}
		s.wakeUpkeep(true)
		select {
		case <-flushed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// flushUpkeep is the upkeep flusher goroutine: it writes the table when it
// holds something, at most once per UpkeepInterval unless a reader or a
// full table asks for it now, until stop is closed; then it writes what is
// left once and exits.
func (s *Store) flushUpkeep(stop <-chan struct{}) {
	defer close(s.upDone)
	flushLoop(s.upWake, s.upNow, stop, s.opts.UpkeepInterval, s.writeUpkeep)
}

// writeUpkeep writes the table: the conversations (the ones recorded only
// by retries are read first and written only if they lag, see dropCurrent)
// and the heads hints, one bulk write each. Conversations it could not
// write go back to the table. It reports whether everything was written;
// failures is the count of failed flushes before it (only the first of a
// run is logged as a warning).
func (s *Store) writeUpkeep(failures int) bool {
	s.upMu.Lock()
	convs, heads, gen := s.upConvs, s.upHeads, s.upGen
	if len(convs)+len(heads) > 0 {
		s.upConvs = make(map[string]*convUpdate, len(convs))
		s.upHeads = make(map[string]uint64, len(heads))
		close(s.upTaken)
		s.upTaken = make(chan struct{})
	}
	s.upMu.Unlock()

	retry, err := s.writeConvs(convs)
	s.writeHeads(heads)
	if err != nil {
		s.stats.upkeepFailures.Add(1)
		s.logFlushFailure(failures, "mongostore: conversation upkeep failed; retrying at the next flush", "conversations", len(retry), err)
	}

	s.upMu.Lock()
	if len(retry) > 0 {
		// Back into the table, past its bound if need be: these were
		// counted in it already, and dropping them would leave their
		// conversations stale.
		s.mergeUpkeep(retry, nil)
	}
	s.upTried = max(s.upTried, gen)
	close(s.upFlushed)
	s.upFlushed = make(chan struct{})
	closed := s.upClosed
	s.upMu.Unlock()
	if len(retry) > 0 && !closed {
		s.wakeUpkeep(false)
	}
	return err == nil
}

// writeConvs upserts ups (one bulk write; a first upsert that raced
// another node's on the unique _id is retried at once, as an update). It
// returns the updates that were not written, and the first error.
func (s *Store) writeConvs(ups map[string]*convUpdate) (retry map[string]*convUpdate, err error) {
	var stale []string
	for k, u := range ups {
		if !u.fresh {
			stale = append(stale, k)
		}
	}
	if len(stale) > 0 {
		if err := s.dropCurrent(stale, ups); err != nil {
			return ups, err
		}
	}
	if len(ups) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(ups))
	for k := range ups {
		keys = append(keys, k)
	}
	// Ascending last: a flush cut short by a crash is more likely to have
	// written a user's older conversations than newer ones, which the read
	// side repairs (see the comment at the top).
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(ups[a].last, ups[b].last) })
	models := make([]mongo.WriteModel, len(keys))
	for i, k := range keys {
		models[i] = convUpsert(k, ups[k])
	}
	failed, _ := s.bulkWrite(s.convs, models)
	var again []mongo.WriteModel
	var againKeys []string
	for i, f := range failed {
		if f {
			again = append(again, models[i])
			againKeys = append(againKeys, keys[i])
		}
	}
	if len(again) == 0 {
		return nil, nil
	}
	failed, err = s.bulkWrite(s.convs, again)
	for i, f := range failed {
		if f {
			if retry == nil {
				retry = map[string]*convUpdate{}
			}
			retry[againKeys[i]] = ups[againKeys[i]]
		}
	}
	return retry, err
}

// convUpsert is the $max upsert of conversation document k.
func convUpsert(k string, u *convUpdate) mongo.WriteModel {
	raise := bson.D{{Key: "last", Value: int64(u.last)}}
	if u.read > 0 {
		raise = append(raise, bson.E{Key: "read", Value: int64(u.read)})
	}
	return mongo.NewUpdateOneModel().
		SetFilter(bson.D{{Key: "_id", Value: k}}).
		SetUpdate(bson.D{
			{Key: "$setOnInsert", Value: convInsertFields(u.user, u.conv)},
			{Key: "$max", Value: raise},
		}).SetUpsert(true)
}

// writeHeads raises the heads hints. Failures only make later cold
// lookups search further, so they are logged, not retried.
func (s *Store) writeHeads(heads map[string]uint64) {
	if len(heads) == 0 {
		return
	}
	models := make([]mongo.WriteModel, 0, len(heads))
	for user, seq := range heads {
		models = append(models, mongo.NewUpdateOneModel().
			SetFilter(bson.D{{Key: "_id", Value: keyPart(user)}}).
			SetUpdate(bson.D{{Key: "$max", Value: bson.D{{Key: "seq", Value: int64(seq)}}}}).
			SetUpsert(true))
	}
	if _, err := s.bulkWrite(s.heads, models); err != nil && !mongo.IsDuplicateKeyError(err) {
		s.opts.Logger.Warn("mongostore: heads hint update failed", "err", err)
	}
}
