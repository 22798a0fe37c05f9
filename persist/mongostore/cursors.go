package mongostore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/imgn/imgn/persist"
)

// Cursor writes are batched: SetCursor records the new position in memory
// and returns; a flusher goroutine writes everything recorded, at most once
// per Options.CursorInterval, as one unordered bulk write of $max upserts
// (one command per interval per node, however many devices acknowledged;
// on FerretDB one per ferretUpdateBatch cursors, see bulkWrite).
// Cursor reads the recorded position too, so a node sees its own updates at
// once; other nodes see them after the flush. A crash loses at most the
// last interval's updates: clients are then offered those messages again
// and drop them by seq, which is what a lost cursor means anyway.

// cursorID names one cursor.
type cursorID struct{ user, device string }

// SetCursor implements persist.MessageStore: the cursor only moves forward.
// It returns once the position is recorded for the next flush (see above);
// it waits only when Options.CursorQueue positions are already waiting,
// until the flusher took them or ctx ends. Safe for concurrent use.
func (s *Store) SetCursor(ctx context.Context, user, device string, seq uint64) error {
	if err := checkIDs("user", user, "device", device); err != nil {
		return fmt.Errorf("mongostore: set cursor: %w", err)
	}
	id := cursorID{user, device}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		s.curMu.Lock()
		if s.curClosed {
			s.curMu.Unlock()
			return persist.ErrClosed
		}
		cur, ok := s.curPending[id]
		if ok || len(s.curPending) < s.opts.CursorQueue {
			if !ok {
				id = cursorID{ownString(user), ownString(device)}
			}
			s.curPending[id] = max(cur, seq)
			s.curMu.Unlock()
			select {
			case s.curWake <- struct{}{}:
			default:
			}
			return nil
		}
		taken := s.curTaken
		s.curMu.Unlock()
		select { // full: wait for the flusher to take the batch
		case s.curWake <- struct{}{}:
		default:
		}
		select {
		case <-taken:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// ownString copies s (see ownMessage).
func ownString(s string) string { return string([]byte(s)) }

// Cursor implements persist.MessageStore: the higher of the stored position
// and one recorded by SetCursor and not flushed yet.
func (s *Store) Cursor(ctx context.Context, user, device string) (uint64, error) {
	if err := checkIDs("user", user, "device", device); err != nil {
		return 0, fmt.Errorf("mongostore: cursor: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return 0, err
	}
	defer leave()
	s.curMu.Lock()
	pending := max(s.curPending[cursorID{user, device}], s.curFlushing[cursorID{user, device}])
	s.curMu.Unlock()
	raw, err := s.cursors.FindOne(ctx, bson.D{{Key: "_id", Value: cursorKey(user, device)}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return pending, nil
	}
	if err != nil {
		return 0, mapErr(ctx, "cursor", err)
	}
	v, err := int64Field(raw, "pos")
	if err != nil {
		return 0, mapErr(ctx, "cursor", err)
	}
	return max(cursorFromDB(v), pending), nil
}

// flushCursors is the cursor flusher goroutine: it writes the recorded
// positions when there are some, at most once per CursorInterval, until
// stop is closed; then it writes what is left once and exits.
func (s *Store) flushCursors(stop <-chan struct{}) {
	defer close(s.curDone)
	flushLoop(s.curWake, nil, stop, s.opts.CursorInterval, s.writeCursors)
}

// logFlushFailure logs a flusher's failed write: as a warning the first
// of a run of failures (failures is the count before it), then at debug
// level, so a server that is down does not flood the log.
func (s *Store) logFlushFailure(failures int, msg, what string, n int, err error) {
	lvl := slog.LevelWarn
	if failures > 0 {
		lvl = slog.LevelDebug
	}
	s.opts.Logger.Log(context.Background(), lvl, msg, what, n, "err", err)
}

// flushLoop is the loop of a flusher: after each wake it lingers for
// interval (so that what is recorded meanwhile shares the write; after
// failures longer, doubling up to 2 s) unless now or stop fires, and calls
// write with the count of failed writes before it; write reports success.
// When stop is closed it writes once more and returns.
func flushLoop(wake, now, stop <-chan struct{}, interval time.Duration, write func(failures int) bool) {
	failures := 0
	for {
		select {
		case <-wake:
		case <-stop:
			write(failures)
			return
		}
		wait := interval
		for i := 0; i < failures && wait < 2*time.Second; i++ {
			wait *= 2
		}
		t := time.NewTimer(min(wait, max(2*time.Second, interval)))
		select {
		case <-t.C:
		case <-now:
			t.Stop()
		case <-stop:
			t.Stop()
		}
		if write(failures) {
			failures = 0
		} else {
			failures++
		}
	}
}

// writeCursors writes the recorded positions in one bulk write. Positions
// it could not write are recorded again for the next flush (a later
// SetCursor of the same cursor merges by max). It reports whether the
// write succeeded; failures is the count of failed flushes before it (only
// the first of a run is logged as a warning).
func (s *Store) writeCursors(failures int) bool {
	s.curMu.Lock()
	batch := s.curPending
	if len(batch) == 0 {
		s.curMu.Unlock()
		return true
	}
	s.curPending = make(map[cursorID]uint64, len(batch))
	s.curFlushing = batch
	close(s.curTaken)
	s.curTaken = make(chan struct{})
	s.curMu.Unlock()

	ids := make([]cursorID, 0, len(batch))
	models := make([]mongo.WriteModel, 0, len(batch))
	for id, seq := range batch {
		ids = append(ids, id)
		models = append(models, mongo.NewUpdateOneModel().
			SetFilter(bson.D{{Key: "_id", Value: cursorKey(id.user, id.device)}}).
			SetUpdate(bson.D{
				{Key: "$max", Value: bson.D{{Key: "pos", Value: cursorToDB(seq)}}},
				{Key: "$setOnInsert", Value: bson.D{{Key: "user", Value: enc(id.user)}, {Key: "device", Value: enc(id.device)}}},
			}).
			SetUpsert(true))
	}
	failed, err := s.bulkWrite(s.cursors, models)
	var retry []cursorID
	for i, id := range ids {
		if failed[i] {
			// A duplicate key: two nodes' first upserts of one cursor
			// raced; the document exists now, so the next flush updates
			// it. Or the outcome is unknown: written again ($max makes
			// that harmless).
			retry = append(retry, id)
		}
	}
	if err != nil {
		s.stats.cursorFailures.Add(1)
		s.logFlushFailure(failures, "mongostore: cursor write failed; retrying at the next flush", "cursors", len(retry), err)
	}
	s.curMu.Lock()
	for _, id := range retry {
		s.curPending[id] = max(s.curPending[id], batch[id])
	}
	s.curFlushing = nil
	closed := s.curClosed
	s.curMu.Unlock()
	if len(retry) > 0 && !closed {
		select {
		case s.curWake <- struct{}{}:
		default:
		}
	}
	return err == nil
}
