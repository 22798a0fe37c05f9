package mongostore

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/imgn/imgn/persist"
)

// The replay seam (persist.Replayer) on MongoDB.
//
// Several nodes share one database, and each node publishes the events of
// the inbox entries it wrote (the owner of an inbox writes its entries), so
// a node replays the entries it wrote, not every message of the range: each
// inbox entry records its writer and the coarse time of its message in one
// string field, rb = keyPart(Options.NodeID) + the message ID's bucket
// (replayShift: 2^16 ms of ID time) as 8 hex digits, indexed with msg
// (replayIndexes). Recording the writer, rather than replaying the inboxes
// a node owns when it restarts, keeps the answer exact when ownership moved
// while the node was away: another node took over its inboxes and
// published what it wrote itself.
//
// ReplayFrom reads one bucket at a time with an equality on rb (and msg >=
// fromID): on MongoDB a range of the (rb, msg) index; on FerretDB, whose
// database is handed only top-level equalities, an index lookup of the
// bucket followed by a filter of its entries. Buckets up to replayWalk
// before the newest are walked one by one; further back an empty bucket is
// skipped with one range query for the next non-empty one (an index seek on
// MongoDB, a collection scan on FerretDB, paid only when the replay starts
// hours back).

const (
	// replayField is the inbox entries' field of the writer and bucket.
	replayField = "rb"
	// replayShift: a bucket holds the message IDs minted in 2^16 ms (IDs
	// are the milliseconds since the ID epoch shifted left by 22 bits).
	replayShift = 22 + 16
	// replayWalk is how many buckets before the newest are probed one by
	// one rather than skipped with a range query: about 70 minutes.
	replayWalk = 64
	// replaySlack: entries of messages minted this far in the future of
	// the replaying node's clock (another node's clock ahead) are still
	// found.
	replaySlack = 5 * time.Minute
	// idEpochMs is the zero of message IDs' time, Unix ms: the engine's
	// ID epoch (2025-01-01). The events package's TestRecoverFromMongoStore
	// stores messages with IDs of engine.MessageIDAt(now), which this
	// bound would miss if the two differed.
	idEpochMs = 1735689600000
)

// lastReplayBucket is the newest bucket ReplayFrom reads at now.
func lastReplayBucket(now time.Time) uint64 {
	return uint64(max(now.Add(replaySlack).UnixMilli()-idEpochMs, 0)) << 22 >> replayShift
}

// replayIndexes serve ReplayFrom; Open creates them with the others (a
// fresh model each time: see chatInboxIndexes).
func replayIndexes() []mongo.IndexModel {
	return []mongo.IndexModel{
		{Keys: bson.D{{Key: replayField, Value: 1}, {Key: "msg", Value: 1}}, Options: options.Index().SetName("replay")},
	}
}

var _ persist.Replayer = (*Store)(nil)

// replayKey is the rb value of the entries node writes for messages of
// bucket b (below 2^26: 8 hex digits). keyPart is self-delimiting and the
// bucket fixed-width, so the keys of one node sort by bucket and no other
// node's fall between them.
func replayKey(node string, b uint64) string {
	const digits = "0123456789abcdef"
	var h [8]byte
	for i := len(h) - 1; i >= 0; i-- {
		h[i] = digits[b&0xf]
		b >>= 4
	}
	return keyPart(node) + string(h[:])
}

// replayBucket is the rb value of an entry this store writes for msgID.
func (s *Store) replayBucket(msgID uint64) string {
	return replayKey(s.opts.NodeID, msgID>>replayShift)
}

// replayedEntry is one inbox entry read by ReplayFrom.
type replayedEntry struct {
	msgID uint64
	user  string
	seq   uint64
}

// ReplayFrom implements persist.Replayer for the entries this node wrote
// (those tagged with Options.NodeID): every message with ID >= fromID, in
// ascending ID order, with those of its entries; entries retention removed
// are gone and left out, entries deleted by their owner are included. The
// store has no snapshots: entries acknowledged before the call are all
// read, entries written during it may be read or not. Entries written
// before the store recorded writers, or of messages minted more than
// replaySlack in the future of this node's clock, are not found.
func (s *Store) ReplayFrom(ctx context.Context, fromID uint64, fn func(msg *persist.Message, inboxes []string, seqs []uint64) error) error {
	return s.replay(ctx, s.opts.NodeID, fromID, fn)
}

// ReplayerFor returns a persist.Replayer over the entries another node
// wrote: ReplayFrom as that node's store would answer it. It lets a live
// node publish again what a node that does not come back had queued
// (docs/events.md). It uses s, and ends with it.
func (s *Store) ReplayerFor(node string) persist.Replayer { return nodeReplayer{s, node} }

type nodeReplayer struct {
	s    *Store
	node string
}

func (r nodeReplayer) ReplayFrom(ctx context.Context, fromID uint64, fn func(msg *persist.Message, inboxes []string, seqs []uint64) error) error {
	return r.s.replay(ctx, r.node, fromID, fn)
}

// replay is ReplayFrom over the entries node wrote.
func (s *Store) replay(ctx context.Context, node string, fromID uint64, fn func(msg *persist.Message, inboxes []string, seqs []uint64) error) error {
	leave, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer leave()
	if fromID > math.MaxInt64 {
		return nil // beyond every ID (see idToDB)
	}
	last := lastReplayBucket(time.Now())
	var (
		inboxes []string
		seqs    []uint64
	)
	for b := fromID >> replayShift; b <= last; b++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		entries, err := s.replayEntries(ctx, node, b, fromID)
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			if last-b > replayWalk {
				next, ok, err := s.nextReplayBucket(ctx, node, b, last)
				if err != nil {
					return err
				}
				if !ok {
					return nil
				}
				b = next - 1
			}
			continue
		}
		msgs, err := s.replayMessages(ctx, entries)
		if err != nil {
			return err
		}
		for i := 0; i < len(entries); {
			id := entries[i].msgID
			inboxes, seqs = inboxes[:0], seqs[:0]
			for ; i < len(entries) && entries[i].msgID == id; i++ {
				inboxes, seqs = append(inboxes, entries[i].user), append(seqs, entries[i].seq)
			}
			m, ok := msgs[id]
			if !ok {
				return mapErr(ctx, "replay", fmt.Errorf("%w: an inbox entry references missing message %d", errCorrupt, id))
			}
			if err := fn(&m, inboxes, seqs); err != nil {
				return err
			}
		}
	}
	return nil
}

// replayEntries reads node's entries of bucket b whose message ID is at
// least fromID, ordered by message ID, then by when each was appended
// (the seq within an inbox; across inboxes, their order is kept as read).
func (s *Store) replayEntries(ctx context.Context, node string, b, fromID uint64) ([]replayedEntry, error) {
	filter := bson.D{{Key: replayField, Value: replayKey(node, b)}, {Key: "msg", Value: bson.D{{Key: "$gte", Value: idToDB(fromID)}}}}
	var out []replayedEntry
	err := s.findAny(ctx, s.inbox, filter, nil, "replay: read inbox entries", func(raw bson.Raw) error {
		user, id, seq, err := decodeEntry(raw)
		if err == nil {
			out = append(out, replayedEntry{msgID: id, user: user, seq: seq})
		}
		return err
	}, options.Find().SetProjection(bson.D{{Key: "user", Value: 1}, {Key: "seq", Value: 1}, {Key: "msg", Value: 1}}))
	slices.SortStableFunc(out, func(a, b replayedEntry) int { return cmp.Compare(a.msgID, b.msgID) })
	return out, err
}

// replayMessages reads the messages entries reference (fillMessages),
// maxInKeys per query.
func (s *Store) replayMessages(ctx context.Context, entries []replayedEntry) (map[uint64]persist.Message, error) {
	var ids []uint64
	for i, e := range entries {
		if i == 0 || e.msgID != entries[i-1].msgID {
			ids = append(ids, e.msgID)
		}
	}
	msgs := make(map[uint64]persist.Message, len(ids))
	for chunk := range slices.Chunk(ids, maxInKeys) {
		es := make([]persist.InboxEntry, len(chunk))
		for i, id := range chunk {
			es[i].Msg.ID = id
		}
		if err := s.fillMessages(ctx, es, nil); err != nil {
			return nil, err
		}
		for _, e := range es {
			msgs[e.Msg.ID] = e.Msg
		}
	}
	return msgs, nil
}

// nextReplayBucket finds the first bucket after b, up to last, that holds
// an entry of node: one range query on rb.
func (s *Store) nextReplayBucket(ctx context.Context, node string, b, last uint64) (uint64, bool, error) {
	filter := bson.D{{Key: replayField, Value: bson.D{
		{Key: "$gt", Value: replayKey(node, b)},
		{Key: "$lte", Value: replayKey(node, last)},
	}}}
	raw, err := s.inbox.FindOne(ctx, filter, options.FindOne().SetSort(bson.D{{Key: replayField, Value: 1}}).
		SetProjection(bson.D{{Key: replayField, Value: 1}})).Raw()
	if err == mongo.ErrNoDocuments {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, mapErr(ctx, "replay: find the next bucket", err)
	}
	v, err := lookup(raw, replayField, bson.TypeString)
	if err != nil {
		return 0, false, mapErr(ctx, "replay: find the next bucket", err)
	}
	hex, ok := strings.CutPrefix(v.StringValue(), keyPart(node))
	next, perr := strconv.ParseUint(hex, 16, 64)
	if !ok || perr != nil || next <= b {
		return 0, false, mapErr(ctx, "replay: find the next bucket", fmt.Errorf("%w: replay key %q", errCorrupt, v.StringValue()))
	}
	return next, true, nil
}
