package mongostore

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/imgn/imgn/persist"
)

// The chat seam (persist.ChatStore) on MongoDB.
//
// Each inbox entry of a message that belongs to a conversation carries the
// conversation's key (conv) and whether the inbox's owner sent it (own);
// events and system messages carry neither, so they are in no
// conversation. The convs collection holds one document per (user,
// conversation): last (the seq of its newest message) and read (the read
// cursor), both only ever raised with $max. They are derived from the
// inbox entries and written off the commit's critical path: each group
// commit records the conversations it touched, and the upkeep flusher
// upserts them, coalesced across commits (upkeep.go: guarantees, and how
// readers repair what a crash or another node's pending flush leaves
// behind). The entries a batch found existing (retries, entries-only
// repeats) are recorded too, which repairs a commit whose upkeep was lost.
//
// Reads use the indexes (docs/cluster.md, "MongoDB collections"): the
// conversation list is a range of convs by (user, last); an unread count
// counts the others' entries above the cursor on inbox (user, conv, seq),
// so it costs the unread entries, never the whole inbox; history pages that
// same index backwards; a recall finds the message's holders on inbox
// (msg).
//
// Recall marks the message recalled (rc, body emptied) where it is stored,
// its origin entry or its messages document, and appends an event
// message; delete-for-me marks the inbox entry (del; on the sender's
// origin entry it hides the message from the sender only) and appends an
// event to that inbox only. An event is an ordinary message (ev, tgt:
// stored like any other, an origin entry when its sender's inbox is among
// its inboxes) with a client message id derived from its target
// (eventCmid), so a repeat, or the retry of an attempt that failed
// halfway, finds the first event by the usual (from, cmid) deduplication
// instead of appending a second one.

const collConvs = "convs"

// Indexes of the chat seam, created by Open with the others. Functions,
// not shared values: the driver's CreateOne writes the name into the
// model's options (SetName), so concurrent Opens in one process must not
// share them.
func chatInboxIndexes() []mongo.IndexModel {
	return []mongo.IndexModel{
		{Keys: bson.D{{Key: "user", Value: 1}, {Key: "conv", Value: 1}, {Key: "seq", Value: 1}}, Options: options.Index().SetName("user_conv_seq")},
		{Keys: bson.D{{Key: "msg", Value: 1}}, Options: options.Index().SetName("msg")},
	}
}

func chatConvIndexes() []mongo.IndexModel {
	return []mongo.IndexModel{
		{Keys: bson.D{{Key: "user", Value: 1}, {Key: "last", Value: 1}}, Options: options.Index().SetName("user_last")},
	}
}

var (
	_ persist.ChatStore     = (*Store)(nil)
	_ persist.EventPreparer = (*Store)(nil)
)

// chatRef is what an inbox entry records of its conversation (conv.ID ""
// for none).
type chatRef struct {
	conv persist.ConvID
	own  bool
}

// chatRefOf returns the conversation of message m in user's inbox (none
// for events and for system messages outside groups, as persist.ConvOf).
func chatRefOf(user string, m *persist.Message) chatRef {
	if m.Event != persist.EventNone {
		return chatRef{}
	}
	c := persist.ConvOf(user, m)
	if c.ID == "" {
		return chatRef{}
	}
	return chatRef{conv: c, own: m.From == user}
}

// convKey is the key of a conversation inside its user's documents.
func convKey(c persist.ConvID) string {
	if c.Group {
		return "g" + keyPart(c.ID)
	}
	return "p" + keyPart(c.ID)
}

// convDocID is the _id of user's conversation c.
func convDocID(user string, c persist.ConvID) string { return keyPart(user) + convKey(c) }

// appendTo adds the conversation fields to an inbox entry document.
func (c chatRef) appendTo(d bson.D) bson.D {
	if c.conv.ID == "" {
		return d
	}
	return append(d, bson.E{Key: "conv", Value: convKey(c.conv)}, bson.E{Key: "own", Value: c.own})
}

// deletedEntry reports whether an inbox entry document is hidden by its
// owner's delete-for-me.
func deletedEntry(raw bson.Raw) bool {
	v, err := raw.LookupErr("del")
	return err == nil && v.Type == bson.TypeBoolean && v.Boolean()
}

// appendEventFields adds the chat fields of m to its message document.
func appendEventFields(d bson.D, m *persist.Message) bson.D {
	if m.Event != persist.EventNone {
		d = append(d, bson.E{Key: "ev", Value: int64(m.Event)}, bson.E{Key: "tgt", Value: idToDB(m.Target)})
	}
	return d
}

// decodeEventFields reads the optional chat fields of a message document.
func decodeEventFields(raw bson.Raw, m *persist.Message) error {
	if v, err := raw.LookupErr("ev"); err == nil {
		if v.Type != bson.TypeInt64 {
			return fmt.Errorf("%w: field ev has BSON type %v", errCorrupt, v.Type)
		}
		m.Event = uint32(v.Int64())
		t, err := int64Field(raw, "tgt")
		if err != nil {
			return err
		}
		m.Target = idFromDB(t)
	}
	if v, err := raw.LookupErr("rc"); err == nil && v.Type == bson.TypeBoolean && v.Boolean() {
		m.Recalled, m.Body = true, nil
	}
	return nil
}

// convUpdate is the upkeep of one conversation document in a commit.
type convUpdate struct {
	user       string
	conv       persist.ConvID
	last, read uint64
	fresh      bool // an entry of it was written by this commit
}

// convUpdates returns the conversation upkeep of a commit: for every
// stored entry of entries that is in a conversation, its document raised
// to the entry's seq (and the read cursor too for the owner's own
// message), keyed by document _id. committed holds the seqs the commit
// wrote: a conversation touched only by entries that existed before (a
// retry) is not fresh, and the flusher reads it first and writes it only
// if it lags (see dropCurrent), which repairs a commit whose upkeep was
// lost at the cost of a read, never of a write per retried entry.
func convUpdates(entries []*entry, committed map[string]seqSpan) map[string]*convUpdate {
	var ups map[string]*convUpdate
	for _, e := range entries {
		if !e.done || e.chat.conv.ID == "" {
			continue
		}
		k := convDocID(e.user, e.chat.conv)
		u := ups[k]
		if u == nil {
			if ups == nil {
				ups = map[string]*convUpdate{}
			}
			u = &convUpdate{user: e.user, conv: e.chat.conv}
			ups[k] = u
		}
		u.last = max(u.last, e.seq)
		if e.chat.own {
			u.read = max(u.read, e.seq)
		}
		if sp, ok := committed[e.user]; ok && e.seq >= sp.first && e.seq <= sp.last {
			u.fresh = true
		}
	}
	return ups
}

// convInsertFields are the fields a conversation document is created with.
func convInsertFields(user string, c persist.ConvID) bson.D {
	return bson.D{{Key: "user", Value: enc(user)}, {Key: "c", Value: convKey(c)}, {Key: "cid", Value: enc(c.ID)}, {Key: "g", Value: c.Group}}
}

// dropCurrent removes from ups the conversations among keys whose
// documents are up to date already (one query; see findAny for FerretDB).
func (s *Store) dropCurrent(keys []string, ups map[string]*convUpdate) error {
	ctx, cancel := s.opCtx()
	defer cancel()
	found, err := s.existing(ctx, s.convs, keys, "append: read conversations")
	if err != nil {
		return err
	}
	for k, raw := range found {
		d, err := decodeConv(raw)
		if err != nil {
			return mapErr(ctx, "append: read conversations", err)
		}
		if u := ups[k]; u != nil && d.last >= u.last && d.read >= u.read {
			delete(ups, k)
		}
	}
	return nil
}

// convDoc is a decoded conversation document.
type convDoc struct {
	conv       persist.ConvID
	last, read uint64
}

func decodeConv(raw bson.Raw) (convDoc, error) {
	var d convDoc
	var err error
	if d.conv.ID, err = strField(raw, "cid"); err != nil {
		return d, err
	}
	g, err := lookup(raw, "g", bson.TypeBoolean)
	if err != nil {
		return d, err
	}
	d.conv.Group = g.Boolean()
	last, err := int64Field(raw, "last")
	if err != nil {
		return d, err
	}
	d.last = uint64(max(last, 0))
	if v, err := raw.LookupErr("read"); err == nil && v.Type == bson.TypeInt64 {
		d.read = uint64(max(v.Int64(), 0))
	}
	return d, nil
}

// getConv reads user's conversation c (ErrNotFound when there is none).
func (s *Store) getConv(ctx context.Context, user string, c persist.ConvID) (convDoc, error) {
	raw, err := s.convs.FindOne(ctx, bson.D{{Key: "_id", Value: convDocID(user, c)}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return convDoc{}, fmt.Errorf("mongostore: %w: no conversation %+v", persist.ErrNotFound, c)
	}
	if err != nil {
		return convDoc{}, mapErr(ctx, "read conversation", err)
	}
	d, err := decodeConv(raw)
	return d, mapErr(ctx, "read conversation", err)
}

// unread counts the others' entries of user's conversation c above read.
func (s *Store) unread(ctx context.Context, user string, c persist.ConvID, read uint64) (int, error) {
	n, err := s.inbox.CountDocuments(ctx, bson.D{{Key: "user", Value: enc(user)}, {Key: "conv", Value: convKey(c)},
		{Key: "seq", Value: bson.D{{Key: "$gt", Value: int64(read)}}}, {Key: "own", Value: false}})
	if err != nil {
		return 0, mapErr(ctx, "count unread", err)
	}
	return int(n), nil
}

// convEntries returns up to limit entries of user's conversation c
// matching extra, newest first: (seq, message id) only, or with withMsgs
// whole, where full[i] says es[i] holds its message (an origin entry: see
// fillMessages).
func (s *Store) convEntries(ctx context.Context, user string, c persist.ConvID, extra bson.D, limit int64, withMsgs bool) (es []persist.InboxEntry, full []bool, err error) {
	filter := append(bson.D{{Key: "user", Value: enc(user)}, {Key: "conv", Value: convKey(c)}}, extra...)
	opts := options.Find().SetSort(bson.D{{Key: "seq", Value: -1}}).SetLimit(limit)
	if !withMsgs {
		opts.SetProjection(bson.D{{Key: "user", Value: 1}, {Key: "seq", Value: 1}, {Key: "msg", Value: 1}, {Key: "del", Value: 1}})
	}
	cur, err := s.inbox.Find(ctx, filter, opts)
	if err != nil {
		return nil, nil, mapErr(ctx, "read conversation entries", err)
	}
	defer cur.Close(ctx)
	for cur.Next(ctx) {
		e, isFull, err := decodeReadEntry(cur.Current)
		if err != nil {
			return nil, nil, mapErr(ctx, "read conversation entries", err)
		}
		es, full = append(es, e), append(full, isFull)
	}
	return es, full, mapErr(ctx, "read conversation entries", cur.Err())
}

// fillMessages replaces the message ids of es by the stored messages,
// except where full[i] says es[i] holds its message already (full may be
// nil): one query for those in origin entries, one more for any in
// messages (loadMessages). Hidden entries lose their body.
func (s *Store) fillMessages(ctx context.Context, es []persist.InboxEntry, full []bool) error {
	var ids []uint64
	seen := map[uint64]bool{}
	for i, e := range es {
		if (full == nil || !full[i]) && !seen[e.Msg.ID] {
			seen[e.Msg.ID] = true
			ids = append(ids, e.Msg.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	msgs, err := s.loadMessages(ctx, ids, "read messages")
	if err != nil {
		return err
	}
	used := map[uint64]bool{}
	for i := range es {
		if full != nil && full[i] {
			continue
		}
		id := es[i].Msg.ID
		m, ok := msgs[id]
		if !ok {
			return mapErr(ctx, "read messages", fmt.Errorf("%w: an inbox entry references missing message %d", errCorrupt, id))
		}
		switch {
		case es[i].Deleted:
			m.Body = nil
		case used[id]:
			m.Body = bytes.Clone(m.Body) // several entries may reference it (replay's pages)
		}
		used[id] = true
		es[i].Msg = m
	}
	return nil
}

func checkChat(what, user string, c *persist.ConvID) error {
	if err := persist.CheckID("user", user); err != nil {
		return fmt.Errorf("mongostore: %s: %w", what, err)
	}
	if c != nil {
		if err := persist.CheckID("conversation", c.ID); err != nil {
			return fmt.Errorf("mongostore: %s: %w", what, err)
		}
	}
	return nil
}

// Conversations implements persist.ChatStore: this node's pending upkeep
// is flushed, the user's conversation entries above the newest
// conversation document are read (convTail: the upkeep other nodes have
// not flushed yet, or a crash lost) and merged into one range query of the
// conversation list, then per conversation listed an unread count and a
// read of its newest visible entry, and one query for their messages.
func (s *Store) Conversations(ctx context.Context, user string, beforeSeq uint64, limit int) ([]persist.Conversation, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("mongostore: conversations: %w: limit %d", persist.ErrInvalid, limit)
	}
	if err := checkChat("conversations", user, nil); err != nil {
		return nil, err
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer leave()
	if err := s.syncUpkeep(ctx); err != nil {
		return nil, err
	}
	top, err := s.convDocs(ctx, bson.D{{Key: "user", Value: enc(user)}}, 1)
	if err != nil {
		return nil, err
	}
	var newest uint64
	if len(top) == 1 {
		newest = top[0].last
	}
	tail, err := s.convTail(ctx, user, newest)
	if err != nil {
		return nil, err
	}
	filter := bson.D{{Key: "user", Value: enc(user)}}
	if beforeSeq != 0 {
		filter = append(filter, bson.E{Key: "last", Value: bson.D{{Key: "$lt", Value: int64(min(beforeSeq, maxSeq))}}})
	}
	// Every tail conversation is newer than every document; those of them
	// that have a document are listed from the tail, so the range reads as
	// many more documents as it may skip.
	listed, err := s.convDocs(ctx, filter, int64(limit+len(tail)))
	if err != nil {
		return nil, err
	}
	var docs []convDoc
	for _, t := range tail {
		if beforeSeq == 0 || t.doc.last < beforeSeq {
			docs = append(docs, t.doc)
		}
	}
	for _, d := range listed {
		if !slices.ContainsFunc(tail, func(t *tailConv) bool { return t.doc.conv == d.conv }) {
			docs = append(docs, d)
		}
	}
	docs = docs[:min(len(docs), limit)]
	out := make([]persist.Conversation, len(docs))
	var lasts []persist.InboxEntry
	var lastsFull []bool
	var at []int
	for i, d := range docs {
		out[i] = persist.Conversation{Conv: d.conv, LastSeq: d.last, ReadSeq: d.read}
		if out[i].Unread, err = s.unread(ctx, user, d.conv, d.read); err != nil {
			return nil, err
		}
		es, full, err := s.convEntries(ctx, user, d.conv, bson.D{{Key: "del", Value: bson.D{{Key: "$ne", Value: true}}}}, 1, true)
		if err != nil {
			return nil, err
		}
		if len(es) == 1 {
			lasts, lastsFull = append(lasts, es[0]), append(lastsFull, full[0])
			at = append(at, i)
		}
	}
	if err := s.fillMessages(ctx, lasts, lastsFull); err != nil {
		return nil, err
	}
	for j, i := range at {
		out[i].Last, out[i].HasLast = lasts[j], true
	}
	return out, nil
}

// convDocs reads up to limit conversation documents matching filter,
// newest activity first.
func (s *Store) convDocs(ctx context.Context, filter bson.D, limit int64) ([]convDoc, error) {
	cur, err := s.convs.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "last", Value: -1}}).SetLimit(limit))
	if err != nil {
		return nil, mapErr(ctx, "conversations", err)
	}
	defer cur.Close(ctx)
	var docs []convDoc
	for cur.Next(ctx) {
		d, err := decodeConv(cur.Current)
		if err != nil {
			return nil, mapErr(ctx, "conversations", err)
		}
		docs = append(docs, d)
	}
	return docs, mapErr(ctx, "conversations", cur.Err())
}

// Bounds of convTail's scan: pages of tailPage entries, at most tailPages.
// Past them the list shows the conversations of the entries read, which
// the repair raises, so the next call continues from there.
const (
	tailPage  = 512
	tailPages = 8
)

// tailConv is one conversation found by convTail.
type tailConv struct {
	doc   convDoc // as the inbox says; read also as the document says
	msgID uint64  // the message of its newest entry in the tail
}

// convTail returns the conversations of user's inbox entries above seq
// after (the newest conversation document's last), newest first, merged
// with their documents' read cursors: the upkeep not written yet (another
// node's pending flush) or lost (a crash before the flush). It records the
// ones whose documents lag for the next flush, which repairs them.
func (s *Store) convTail(ctx context.Context, user string, after uint64) ([]*tailConv, error) {
	byKey := map[string]*tailConv{}
	for range tailPages {
		cur, err := s.inbox.Find(ctx, bson.D{{Key: "user", Value: enc(user)}, {Key: "seq", Value: bson.D{{Key: "$gt", Value: int64(after)}}},
			{Key: "conv", Value: bson.D{{Key: "$exists", Value: true}}}},
			options.Find().SetSort(bson.D{{Key: "seq", Value: 1}}).SetLimit(tailPage).
				SetProjection(bson.D{{Key: "user", Value: 1}, {Key: "seq", Value: 1}, {Key: "msg", Value: 1}, {Key: "conv", Value: 1}, {Key: "own", Value: 1}}))
		if err != nil {
			return nil, mapErr(ctx, "conversations: read recent entries", err)
		}
		n := 0
		for cur.Next(ctx) {
			_, id, seq, err := decodeEntry(cur.Current)
			if err != nil {
				cur.Close(ctx)
				return nil, mapErr(ctx, "conversations: read recent entries", err)
			}
			ck, err := strField(cur.Current, "conv")
			if err != nil {
				cur.Close(ctx)
				return nil, mapErr(ctx, "conversations: read recent entries", err)
			}
			n, after = n+1, max(after, seq)
			t := byKey[ck]
			if t == nil {
				t = &tailConv{}
				byKey[ck] = t
			}
			if seq > t.doc.last {
				t.doc.last, t.msgID = seq, id
			}
			if v, err := cur.Current.LookupErr("own"); err == nil && v.Type == bson.TypeBoolean && v.Boolean() {
				t.doc.read = max(t.doc.read, seq)
			}
		}
		err = cur.Err()
		cur.Close(ctx)
		if err != nil {
			return nil, mapErr(ctx, "conversations: read recent entries", err)
		}
		if n < tailPage {
			break
		}
	}
	if len(byKey) == 0 {
		return nil, nil
	}
	// The conversation of each: from its document (with its read cursor),
	// else from the message of its newest entry (one query each).
	keys := make([]string, 0, len(byKey))
	for ck := range byKey {
		keys = append(keys, keyPart(user)+ck)
	}
	found, err := s.existing(ctx, s.convs, keys, "conversations: read documents")
	if err != nil {
		return nil, err
	}
	var unknown []persist.InboxEntry
	var unknownAt []*tailConv
	for ck, t := range byKey {
		raw, ok := found[keyPart(user)+ck]
		if !ok {
			unknown = append(unknown, persist.InboxEntry{Msg: persist.Message{ID: t.msgID}})
			unknownAt = append(unknownAt, t)
			continue
		}
		d, err := decodeConv(raw)
		if err != nil {
			return nil, mapErr(ctx, "conversations: read documents", err)
		}
		t.doc.conv, t.doc.read = d.conv, max(t.doc.read, d.read)
	}
	if err := s.fillMessages(ctx, unknown, nil); err != nil {
		return nil, err
	}
	for i, t := range unknownAt {
		t.doc.conv = persist.ConvOf(user, &unknown[i].Msg)
	}
	out := make([]*tailConv, 0, len(byKey))
	repair := make(map[string]*convUpdate, len(byKey))
	for _, t := range byKey {
		out = append(out, t)
		repair[convDocID(user, t.doc.conv)] = &convUpdate{user: user, conv: t.doc.conv, last: t.doc.last, read: t.doc.read, fresh: true}
	}
	s.noteRepair(repair)
	slices.SortFunc(out, func(a, b *tailConv) int { return cmp.Compare(b.doc.last, a.doc.last) })
	return out, nil
}

// MarkRead implements persist.ChatStore: the cursor is raised with $max,
// so concurrent calls on any node never move it back. The conversation's
// newest entry and the owner's newest own entry are read from the inbox
// too, so a document that lags them (another node's upkeep not flushed
// yet, or lost in a crash) is raised with the cursor, or created.
func (s *Store) MarkRead(ctx context.Context, user string, c persist.ConvID, upTo uint64) (persist.ReadResult, error) {
	if err := checkChat("mark read", user, &c); err != nil {
		return persist.ReadResult{}, err
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return persist.ReadResult{}, err
	}
	defer leave()
	if err := s.syncUpkeep(ctx); err != nil {
		return persist.ReadResult{}, err
	}
	d, err := s.getConv(ctx, user, c)
	missing := errors.Is(err, persist.ErrNotFound)
	if err != nil && !missing {
		return persist.ReadResult{}, err
	}
	newest, _, err := s.convEntries(ctx, user, c, nil, 1, false)
	if err != nil {
		return persist.ReadResult{}, err
	}
	if len(newest) == 0 && missing {
		return persist.ReadResult{}, fmt.Errorf("mongostore: mark read: %w: no conversation %+v", persist.ErrNotFound, c)
	}
	own, _, err := s.convEntries(ctx, user, c, bson.D{{Key: "own", Value: true}}, 1, false)
	if err != nil {
		return persist.ReadResult{}, err
	}
	last, read := d.last, d.read
	if len(newest) == 1 {
		last = max(last, newest[0].Seq)
	}
	if len(own) == 1 {
		read = max(read, own[0].Seq)
	}
	if upTo == 0 || upTo > last {
		upTo = last
	}
	res := persist.ReadResult{ReadSeq: read}
	if upTo > read || last > d.last || missing {
		before, err := s.raiseConv(ctx, user, c, last, max(upTo, read))
		if err != nil {
			return persist.ReadResult{}, err
		}
		before.read = max(before.read, read)
		res.Moved = upTo > before.read
		res.ReadSeq = max(before.read, upTo)
	}
	if res.Unread, err = s.unread(ctx, user, c, res.ReadSeq); err != nil {
		return persist.ReadResult{}, err
	}
	es, _, err := s.convEntries(ctx, user, c, bson.D{{Key: "seq", Value: bson.D{{Key: "$lte", Value: int64(res.ReadSeq)}}}}, 1, false)
	if err != nil || len(es) == 0 {
		return res, err
	}
	res.MsgID = es[0].Msg.ID
	if !c.Group && c.ID != user {
		seq, err := s.seqOf(ctx, c.ID, res.MsgID)
		switch {
		case err == nil:
			res.PeerSeq = seq
		case !errors.Is(err, persist.ErrNotFound):
			return persist.ReadResult{}, err
		}
	}
	return res, nil
}

// raiseConv raises (or creates) user's conversation document c to last
// and read, returning the document as it was before (zero when created).
// A creation that races another's is retried once, as an update.
func (s *Store) raiseConv(ctx context.Context, user string, c persist.ConvID, last, read uint64) (convDoc, error) {
	raise := bson.D{{Key: "last", Value: int64(last)}}
	if read > 0 {
		raise = append(raise, bson.E{Key: "read", Value: int64(read)})
	}
	update := bson.D{{Key: "$setOnInsert", Value: convInsertFields(user, c)}, {Key: "$max", Value: raise}}
	var raw bson.Raw
	var err error
	for range 2 {
		raw, err = s.convs.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: convDocID(user, c)}}, update,
			options.FindOneAndUpdate().SetUpsert(true).SetReturnDocument(options.Before)).Raw()
		if !mongo.IsDuplicateKeyError(err) {
			break
		}
	}
	if errors.Is(err, mongo.ErrNoDocuments) {
		return convDoc{conv: c}, nil // created
	}
	if err != nil {
		return convDoc{}, mapErr(ctx, "mark read", err)
	}
	d, err := decodeConv(raw)
	return d, mapErr(ctx, "mark read", err)
}

// History implements persist.ChatStore, from the (user, conv, seq) index.
func (s *Store) History(ctx context.Context, user string, c persist.ConvID, beforeSeq uint64, limit int) ([]persist.InboxEntry, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("mongostore: history: %w: limit %d", persist.ErrInvalid, limit)
	}
	if err := checkChat("history", user, &c); err != nil {
		return nil, err
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer leave()
	extra := bson.D{{Key: "del", Value: bson.D{{Key: "$ne", Value: true}}}}
	if beforeSeq != 0 {
		extra = append(extra, bson.E{Key: "seq", Value: bson.D{{Key: "$lt", Value: int64(min(beforeSeq, maxSeq))}}})
	}
	es, full, err := s.convEntries(ctx, user, c, extra, int64(limit), true)
	if err != nil {
		return nil, err
	}
	if err := s.fillMessages(ctx, es, full); err != nil {
		return nil, err
	}
	slices.Reverse(es)
	return es, nil
}

// SeqOf implements persist.ChatStore.
func (s *Store) SeqOf(ctx context.Context, user string, msgID uint64) (uint64, error) {
	if err := checkChat("seq of", user, nil); err != nil {
		return 0, err
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return 0, err
	}
	defer leave()
	return s.seqOf(ctx, user, msgID)
}

func (s *Store) seqOf(ctx context.Context, user string, msgID uint64) (uint64, error) {
	raw, err := s.inbox.FindOne(ctx, bson.D{{Key: "user", Value: enc(user)}, {Key: "msg", Value: idToDB(msgID)}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, persist.ErrNotFound
	}
	if err != nil {
		return 0, mapErr(ctx, "find inbox entry", err)
	}
	_, _, seq, err := decodeEntry(raw)
	return seq, mapErr(ctx, "find inbox entry", err)
}

// getMessage reads message id (ErrNotFound when there is none): from its
// origin entry, whose _id it returns too, else from messages (origin "").
func (s *Store) getMessage(ctx context.Context, id uint64) (m persist.Message, origin string, err error) {
	found := false
	keep := func(raw bson.Raw) error {
		var err error
		if m, err = decodeMessage(raw); err != nil {
			return err
		}
		found = true
		if v, err := raw.LookupErr("_id"); err == nil && v.Type == bson.TypeString {
			origin = v.StringValue()
		}
		return nil
	}
	if err := s.findByID(ctx, s.inbox, []uint64{id}, "read message", keep); err != nil || found {
		return m, origin, err
	}
	if err := s.findByID(ctx, s.messages, []uint64{id}, "read message", keep); err != nil {
		return persist.Message{}, "", err
	}
	if !found {
		return persist.Message{}, "", persist.ErrNotFound
	}
	return m, "", nil
}

// holders returns the users whose inboxes hold message id, with their seqs.
func (s *Store) holders(ctx context.Context, id uint64) ([]string, []uint64, error) {
	cur, err := s.inbox.Find(ctx, bson.D{{Key: "msg", Value: idToDB(id)}},
		options.Find().SetProjection(bson.D{{Key: "user", Value: 1}, {Key: "seq", Value: 1}, {Key: "msg", Value: 1}}))
	if err != nil {
		return nil, nil, mapErr(ctx, "find holders", err)
	}
	defer cur.Close(ctx)
	var users []string
	var seqs []uint64
	for cur.Next(ctx) {
		u, _, seq, err := decodeEntry(cur.Current)
		if err != nil {
			return nil, nil, mapErr(ctx, "find holders", err)
		}
		users, seqs = append(users, u), append(seqs, seq)
	}
	return users, seqs, mapErr(ctx, "find holders", cur.Err())
}

// eventCmid is the client message id of the event of kind about target by
// user: fixed per (kind, target, user), so a repeat finds the first event.
// It is longer than the 64 bytes a client's or an operator's id may have
// (protocol.md §4.4), so no sent message can take it, and valid UTF-8, so
// it crosses the mesh.
func eventCmid(kind uint32, target uint64, user string) string {
	sum := sha256.Sum256([]byte(user))
	return "event:" + strconv.FormatUint(uint64(kind), 10) + ":" + strconv.FormatUint(target, 10) + ":" + hex.EncodeToString(sum[:])
}

// PrepareEvent implements persist.EventPreparer.
func (s *Store) PrepareEvent(ctx context.Context, kind uint32, req persist.EventRequest) (persist.PreparedEvent, error) {
	what := "delete"
	if kind == persist.EventRecall {
		what = "recall"
	} else if kind != persist.EventDelete {
		return persist.PreparedEvent{}, fmt.Errorf("mongostore: prepare event: %w: kind %d", persist.ErrInvalid, kind)
	}
	if err := checkChat(what, req.User, nil); err != nil {
		return persist.PreparedEvent{}, err
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return persist.PreparedEvent{}, err
	}
	defer leave()
	notFound := fmt.Errorf("mongostore: %s %d: %w", what, req.Target, persist.ErrNotFound)
	entry, err := s.inbox.FindOne(ctx, bson.D{{Key: "user", Value: enc(req.User)}, {Key: "msg", Value: idToDB(req.Target)}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return persist.PreparedEvent{}, notFound
	}
	if err != nil {
		return persist.PreparedEvent{}, mapErr(ctx, what, err)
	}
	target, origin, err := s.getMessage(ctx, req.Target)
	if errors.Is(err, persist.ErrNotFound) || (err == nil && target.Event != persist.EventNone) {
		return persist.PreparedEvent{}, notFound
	}
	if err != nil {
		return persist.PreparedEvent{}, err
	}
	ev := persist.Message{ID: req.ID, From: target.From, To: target.To, Group: target.Group, Timestamp: req.Timestamp,
		ClientMsgID: eventCmid(kind, target.ID, req.User), Event: kind, Target: target.ID}
	out := persist.PreparedEvent{Event: ev, Inboxes: []string{req.User}}
	if kind == persist.EventRecall {
		if target.From != req.User {
			return persist.PreparedEvent{}, fmt.Errorf("mongostore: recall %d: %w", req.Target, persist.ErrNotSender)
		}
		out.Duplicate = target.Recalled
		if !out.Duplicate && target.Timestamp < req.NotBefore {
			return persist.PreparedEvent{}, fmt.Errorf("mongostore: recall %d: %w", req.Target, persist.ErrRecallWindow)
		}
		users, _, err := s.holders(ctx, target.ID)
		if err != nil {
			return persist.PreparedEvent{}, err
		}
		for _, u := range users {
			if u != req.User {
				out.Inboxes = append(out.Inboxes, u)
			}
		}
	} else {
		out.Duplicate = deletedEntry(entry)
	}
	if out.Duplicate {
		return out, nil
	}
	if err := s.checkEventID(ctx, &ev); err != nil {
		return persist.PreparedEvent{}, err
	}
	if kind == persist.EventRecall {
		// The one copy of the body: the origin entry's, or the document's.
		recall := bson.D{{Key: "$set", Value: bson.D{{Key: "rc", Value: true}, {Key: "body", Value: bson.Binary{Subtype: bson.TypeBinaryGeneric}}}}}
		if origin != "" {
			_, err = s.inbox.UpdateOne(ctx, bson.D{{Key: "_id", Value: origin}}, recall)
		} else {
			_, err = s.messages.UpdateOne(ctx, bson.D{{Key: "_id", Value: idToDB(target.ID)}}, recall)
		}
	} else {
		_, err = s.inbox.UpdateOne(ctx, bson.D{{Key: "user", Value: enc(req.User)}, {Key: "msg", Value: idToDB(target.ID)}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "del", Value: true}}}})
	}
	return out, mapErr(ctx, what, err)
}

// checkEventID fails with ErrInvalid when ev's ID belongs to another
// message than ev itself (a stored event of an earlier attempt is fine).
func (s *Store) checkEventID(ctx context.Context, ev *persist.Message) error {
	if ev.ID == 0 {
		return fmt.Errorf("mongostore: event: %w: event id 0", persist.ErrInvalid)
	}
	m, _, err := s.getMessage(ctx, ev.ID)
	switch {
	case errors.Is(err, persist.ErrNotFound):
		return nil
	case err != nil:
		return err
	case m.From != ev.From || m.ClientMsgID != ev.ClientMsgID:
		return fmt.Errorf("mongostore: event: %w: event id %d is used by another message", persist.ErrInvalid, ev.ID)
	}
	return nil
}

// Recall implements persist.ChatStore on a store that is the single writer
// of every inbox (one node): PrepareEvent, then the event is appended to
// every holder's inbox here. A cluster appends it through the inbox owners
// instead (the engine). req.Done runs before Recall returns.
func (s *Store) Recall(ctx context.Context, req persist.EventRequest) (persist.EventResult, error) {
	return s.runEvent(ctx, persist.EventRecall, req)
}

// Delete implements persist.ChatStore, as Recall does.
func (s *Store) Delete(ctx context.Context, req persist.EventRequest) (persist.EventResult, error) {
	return s.runEvent(ctx, persist.EventDelete, req)
}

func (s *Store) runEvent(ctx context.Context, kind uint32, req persist.EventRequest) (persist.EventResult, error) {
	p, err := s.PrepareEvent(ctx, kind, req)
	if err != nil {
		return persist.EventResult{}, err
	}
	res, err := s.Append(ctx, p.Event, p.Inboxes)
	if err != nil {
		return persist.EventResult{}, err
	}
	out, err := p.Result(res)
	if err != nil {
		return persist.EventResult{}, fmt.Errorf("mongostore: %w", err)
	}
	if req.Done != nil {
		req.Done(&out)
	}
	return out, nil
}

// ReadCount implements persist.ChatStore: one query for the message's
// holders, one for their conversations' cursors.
func (s *Store) ReadCount(ctx context.Context, user string, c persist.ConvID, seq uint64) (read, members int, err error) {
	if err := checkChat("read count", user, &c); err != nil {
		return 0, 0, err
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer leave()
	if err := s.syncUpkeep(ctx); err != nil {
		return 0, 0, err
	}
	notFound := fmt.Errorf("mongostore: read count: %w: seq %d", persist.ErrNotFound, seq)
	if seq == 0 || seq > maxSeq {
		return 0, 0, notFound
	}
	raw, err := s.inbox.FindOne(ctx, bson.D{{Key: "_id", Value: inboxKey(user, seq)}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, 0, notFound
	}
	if err != nil {
		return 0, 0, mapErr(ctx, "read count", err)
	}
	if v, err := raw.LookupErr("conv"); err != nil || v.Type != bson.TypeString || v.StringValue() != convKey(c) {
		return 0, 0, notFound
	}
	_, id, _, err := decodeEntry(raw)
	if err != nil {
		return 0, 0, mapErr(ctx, "read count", err)
	}
	m, _, err := s.getMessage(ctx, id)
	if err != nil {
		return 0, 0, err
	}
	users, seqs, err := s.holders(ctx, id)
	if err != nil {
		return 0, 0, err
	}
	at := map[string]uint64{}
	var keys []string
	for i, u := range users {
		if u == m.From {
			continue
		}
		members++
		k := convDocID(u, persist.ConvOf(u, &m))
		at[k] = seqs[i]
		keys = append(keys, k)
	}
	found, err := s.existing(ctx, s.convs, keys, "read count")
	if err != nil {
		return 0, 0, err
	}
	for k, raw := range found {
		d, err := decodeConv(raw)
		if err != nil {
			return 0, 0, mapErr(ctx, "read count", err)
		}
		if d.read >= at[k] {
			read++
		}
	}
	return read, members, nil
}
