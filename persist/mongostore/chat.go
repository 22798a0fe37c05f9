package mongostore

import (
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
// cursor), both only ever raised with $max. The committer upserts them
// after each group commit's inbox insert, one unordered bulk write for the
// whole batch (at most one command per commit, counted in
// imgn_store_ops_total as "update"); the entries a batch found existing
// (retries, entries-only repeats) are upserted again, which repairs a
// commit that failed between the insert and the upkeep.
//
// Reads use the indexes (docs/cluster.md, "MongoDB collections"): the
// conversation list is a range of convs by (user, last); an unread count
// counts the others' entries above the cursor on inbox (user, conv, seq),
// so it costs the unread entries, never the whole inbox; history pages that
// same index backwards; a recall finds the message's holders on inbox
// (msg).
//
// Recall marks the message document recalled (rc, body emptied) and
// appends an event message; delete-for-me marks the inbox entry (del) and
// appends an event to that inbox only. An event is an ordinary message
// document (ev, tgt) with a client message id derived from its target
// (eventCmid), so a repeat, or the retry of an attempt that failed
// halfway, finds the first event by the usual (from, cmid) deduplication
// instead of appending a second one.

const collConvs = "convs"

// Indexes of the chat seam, created by Open with the others.
var (
	chatInboxIndexes = []mongo.IndexModel{
		{Keys: bson.D{{Key: "user", Value: 1}, {Key: "conv", Value: 1}, {Key: "seq", Value: 1}}, Options: options.Index().SetName("user_conv_seq")},
		{Keys: bson.D{{Key: "msg", Value: 1}}, Options: options.Index().SetName("msg")},
	}
	chatConvIndexes = []mongo.IndexModel{
		{Keys: bson.D{{Key: "user", Value: 1}, {Key: "last", Value: 1}}, Options: options.Index().SetName("user_last")},
	}
)

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

// upkeepConvs raises the conversations of every written entry of a commit
// (one bulk write; a concurrent first upsert of the same document by
// another node is retried once). committed holds the seqs this commit
// wrote: conversations touched only by entries that existed before (a
// retry) are read first, with one query, and written only if they lag,
// which repairs a commit that failed before its upkeep at the cost of a
// read, never of a write per retried entry.
func (s *Store) upkeepConvs(entries []*entry, committed map[string]seqSpan) error {
	ups := map[string]*convUpdate{}
	var keys []string
	var stale []string
	for _, e := range entries {
		if !e.done || e.chat.conv.ID == "" {
			continue
		}
		k := convDocID(e.user, e.chat.conv)
		u := ups[k]
		if u == nil {
			u = &convUpdate{user: e.user, conv: e.chat.conv}
			ups[k] = u
			keys = append(keys, k)
		}
		u.last = max(u.last, e.seq)
		if e.chat.own {
			u.read = max(u.read, e.seq)
		}
		if sp, ok := committed[e.user]; ok && e.seq >= sp.first && e.seq <= sp.last {
			u.fresh = true
		}
	}
	for _, k := range keys {
		if !ups[k].fresh {
			stale = append(stale, k)
		}
	}
	if len(stale) > 0 {
		if err := s.dropCurrent(stale, ups); err != nil {
			return err
		}
		keys = slices.DeleteFunc(keys, func(k string) bool { return ups[k] == nil })
	}
	if len(keys) == 0 {
		return nil
	}
	models := make([]mongo.WriteModel, len(keys))
	for i, k := range keys {
		u := ups[k]
		raise := bson.D{{Key: "last", Value: int64(u.last)}}
		if u.read > 0 {
			raise = append(raise, bson.E{Key: "read", Value: int64(u.read)})
		}
		models[i] = mongo.NewUpdateOneModel().
			SetFilter(bson.D{{Key: "_id", Value: k}}).
			SetUpdate(bson.D{
				{Key: "$setOnInsert", Value: bson.D{{Key: "user", Value: enc(u.user)}, {Key: "c", Value: convKey(u.conv)},
					{Key: "cid", Value: enc(u.conv.ID)}, {Key: "g", Value: u.conv.Group}}},
				{Key: "$max", Value: raise},
			}).SetUpsert(true)
	}
	// One command (on FerretDB one per ferretUpdateBatch: see there). A
	// first upsert of a document that another node created at the same
	// moment fails on the unique _id; it is retried once, as an update.
	failed, _ := s.bulkWrite(s.convs, models)
	var again []mongo.WriteModel
	for i, f := range failed {
		if f {
			again = append(again, models[i])
		}
	}
	if len(again) > 0 {
		if failed, err := s.bulkWrite(s.convs, again); slices.Contains(failed, true) {
			return mapErr(context.Background(), "append: conversations", err)
		}
	}
	return nil
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

// convEntries returns up to limit entries (seq, message id) of user's
// conversation c matching extra, newest first.
func (s *Store) convEntries(ctx context.Context, user string, c persist.ConvID, extra bson.D, limit int64) ([]persist.InboxEntry, error) {
	filter := append(bson.D{{Key: "user", Value: enc(user)}, {Key: "conv", Value: convKey(c)}}, extra...)
	cur, err := s.inbox.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "seq", Value: -1}}).SetLimit(limit).
		SetProjection(bson.D{{Key: "user", Value: 1}, {Key: "seq", Value: 1}, {Key: "msg", Value: 1}, {Key: "del", Value: 1}}))
	if err != nil {
		return nil, mapErr(ctx, "read conversation entries", err)
	}
	defer cur.Close(ctx)
	var out []persist.InboxEntry
	for cur.Next(ctx) {
		_, id, seq, err := decodeEntry(cur.Current)
		if err != nil {
			return nil, mapErr(ctx, "read conversation entries", err)
		}
		out = append(out, persist.InboxEntry{Seq: seq, Msg: persist.Message{ID: id}, Deleted: deletedEntry(cur.Current)})
	}
	return out, mapErr(ctx, "read conversation entries", cur.Err())
}

// fillMessages replaces the message ids of es by the stored messages (one
// query). Hidden entries lose their body.
func (s *Store) fillMessages(ctx context.Context, es []persist.InboxEntry) error {
	if len(es) == 0 {
		return nil
	}
	ids := make(bson.A, len(es))
	each := make([]bson.D, len(es))
	for i, e := range es {
		ids[i] = idToDB(e.Msg.ID)
		each[i] = bson.D{{Key: "mid", Value: midKey(e.Msg.ID)}} // see messageDoc
	}
	msgs := make(map[uint64]persist.Message, len(es))
	err := s.findAny(ctx, s.messages, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}, each, "read messages", func(raw bson.Raw) error {
		m, err := decodeMessage(raw)
		if err == nil {
			msgs[m.ID] = m
		}
		return err
	})
	if err != nil {
		return err
	}
	for i := range es {
		m, ok := msgs[es[i].Msg.ID]
		if !ok {
			return mapErr(ctx, "read messages", fmt.Errorf("%w: an inbox entry references missing message %d", errCorrupt, es[i].Msg.ID))
		}
		if es[i].Deleted {
			m.Body = nil
		}
		es[i].Msg = m
		delete(msgs, m.ID) // one entry per message here; a second would share Body
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

// Conversations implements persist.ChatStore: one range query of the
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
	filter := bson.D{{Key: "user", Value: enc(user)}}
	if beforeSeq != 0 {
		filter = append(filter, bson.E{Key: "last", Value: bson.D{{Key: "$lt", Value: int64(min(beforeSeq, maxSeq))}}})
	}
	cur, err := s.convs.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "last", Value: -1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, mapErr(ctx, "conversations", err)
	}
	var docs []convDoc
	for cur.Next(ctx) {
		d, err := decodeConv(cur.Current)
		if err != nil {
			cur.Close(ctx)
			return nil, mapErr(ctx, "conversations", err)
		}
		docs = append(docs, d)
	}
	err = cur.Err()
	cur.Close(ctx)
	if err != nil {
		return nil, mapErr(ctx, "conversations", err)
	}
	out := make([]persist.Conversation, len(docs))
	var lasts []persist.InboxEntry
	var at []int
	for i, d := range docs {
		out[i] = persist.Conversation{Conv: d.conv, LastSeq: d.last, ReadSeq: d.read}
		if out[i].Unread, err = s.unread(ctx, user, d.conv, d.read); err != nil {
			return nil, err
		}
		es, err := s.convEntries(ctx, user, d.conv, bson.D{{Key: "del", Value: bson.D{{Key: "$ne", Value: true}}}}, 1)
		if err != nil {
			return nil, err
		}
		if len(es) == 1 {
			lasts = append(lasts, es[0])
			at = append(at, i)
		}
	}
	if err := s.fillMessages(ctx, lasts); err != nil {
		return nil, err
	}
	for j, i := range at {
		out[i].Last, out[i].HasLast = lasts[j], true
	}
	return out, nil
}

// MarkRead implements persist.ChatStore: the cursor is raised with $max,
// so concurrent calls on any node never move it back.
func (s *Store) MarkRead(ctx context.Context, user string, c persist.ConvID, upTo uint64) (persist.ReadResult, error) {
	if err := checkChat("mark read", user, &c); err != nil {
		return persist.ReadResult{}, err
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return persist.ReadResult{}, err
	}
	defer leave()
	d, err := s.getConv(ctx, user, c)
	if err != nil {
		return persist.ReadResult{}, err
	}
	if upTo == 0 || upTo > d.last {
		upTo = d.last
	}
	res := persist.ReadResult{ReadSeq: d.read}
	if upTo > d.read {
		raw, err := s.convs.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: convDocID(user, c)}},
			bson.D{{Key: "$max", Value: bson.D{{Key: "read", Value: int64(upTo)}}}},
			options.FindOneAndUpdate().SetReturnDocument(options.Before)).Raw()
		if err != nil {
			return persist.ReadResult{}, mapErr(ctx, "mark read", err)
		}
		before, err := decodeConv(raw)
		if err != nil {
			return persist.ReadResult{}, mapErr(ctx, "mark read", err)
		}
		res.Moved = upTo > before.read
		res.ReadSeq = max(before.read, upTo)
	}
	if res.Unread, err = s.unread(ctx, user, c, res.ReadSeq); err != nil {
		return persist.ReadResult{}, err
	}
	es, err := s.convEntries(ctx, user, c, bson.D{{Key: "seq", Value: bson.D{{Key: "$lte", Value: int64(res.ReadSeq)}}}}, 1)
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
	es, err := s.convEntries(ctx, user, c, extra, int64(limit))
	if err != nil {
		return nil, err
	}
	if err := s.fillMessages(ctx, es); err != nil {
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

// getMessage reads message id (ErrNotFound when there is none).
func (s *Store) getMessage(ctx context.Context, id uint64) (persist.Message, error) {
	var m persist.Message
	found := false
	err := s.findAny(ctx, s.messages, bson.D{{Key: "_id", Value: idToDB(id)}}, []bson.D{{{Key: "mid", Value: midKey(id)}}}, "read message",
		func(raw bson.Raw) error {
			var err error
			m, err = decodeMessage(raw)
			found = err == nil
			return err
		})
	if err != nil {
		return persist.Message{}, err
	}
	if !found {
		return persist.Message{}, persist.ErrNotFound
	}
	return m, nil
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
	target, err := s.getMessage(ctx, req.Target)
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
		_, err = s.messages.UpdateOne(ctx, bson.D{{Key: "_id", Value: idToDB(target.ID)}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "rc", Value: true}, {Key: "body", Value: bson.Binary{Subtype: bson.TypeBinaryGeneric}}}}})
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
	m, err := s.getMessage(ctx, ev.ID)
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
	m, err := s.getMessage(ctx, id)
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
