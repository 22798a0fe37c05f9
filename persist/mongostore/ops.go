package mongostore

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/imgn/imgn/persist"
)

// maxInKeys bounds the keys of one {_id: {$in: ...}} query.
const maxInKeys = 2000

// ferretMaxEq is the most equality queries findAny sends to FerretDB in
// place of one query: past it, one scan of the collection is cheaper.
const ferretMaxEq = 64

// findAny calls fn with every document of c that matches one of the
// filters each (conjunctions of top-level field equalities), and possibly
// with others that match all, a filter that matches every document each
// does (fn picks what it wants). On MongoDB it sends all, one query the
// indexes answer. On FerretDB it sends each filter of each as a query of
// its own, up to ferretMaxEq of them: FerretDB v1 hands only top-level
// equalities to its database, and answers any other filter ($in, $or,
// ranges) by reading and decoding the whole collection (at 20,000
// documents on its PostgreSQL backend: 800 ms for an $in of 20 keys, 7 ms
// for an equality). With no each, all is sent on FerretDB too. fn's
// document is valid only during the call. Errors are mapped for operation
// op.
func (s *Store) findAny(ctx context.Context, c *mongo.Collection, all bson.D, each []bson.D, op string, fn func(bson.Raw) error, opts ...options.Lister[options.FindOptions]) error {
	filters := []bson.D{all}
	if s.eqQueries && len(each) > 0 && len(each) <= ferretMaxEq {
		filters = each
	}
	for _, f := range filters {
		cur, err := c.Find(ctx, f, opts...)
		if err != nil {
			return mapErr(ctx, op, err)
		}
		for cur.Next(ctx) {
			if err := fn(cur.Current); err != nil {
				cur.Close(ctx)
				return mapErr(ctx, op, err)
			}
		}
		err = cur.Err()
		cur.Close(ctx)
		if err != nil {
			return mapErr(ctx, op, err)
		}
	}
	return nil
}

// existing returns which of the _ids keys exist in c: one equality query
// for one key, else one $in query per maxInKeys keys (see findAny for
// FerretDB).
func (s *Store) existing(ctx context.Context, c *mongo.Collection, keys []string, op string) (map[string]bson.Raw, error) {
	found := make(map[string]bson.Raw, len(keys))
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), maxInKeys)]
		keys = keys[len(chunk):]
		each := make([]bson.D, len(chunk))
		for i, k := range chunk {
			each[i] = bson.D{{Key: "_id", Value: k}}
		}
		all := each[0]
		if len(chunk) > 1 {
			all = bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: chunk}}}}
		}
		err := s.findAny(ctx, c, all, each, op, func(raw bson.Raw) error {
			id, err := lookup(raw, "_id", bson.TypeString)
			if err != nil {
				return err
			}
			found[id.StringValue()] = slices.Clone(raw)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return found, nil
}

// lastSeqs returns the highest seq of each of users' inboxes (distinct
// names). The seqs of an inbox always form the prefix 1..last, so existence
// is monotone in seq: each search starts at the heads hint (a seq known to
// exist), doubles its step until a seq is missing, then bisects. The
// searches of all users advance in lockstep, one query per step, so a batch
// with many cold inboxes (a large group) costs a few queries, not a few per
// member. floors (may be nil) holds seqs known to exist, which the searches
// start from when above the hint.
func (s *Store) lastSeqs(ctx context.Context, users []string, floors map[string]uint64) (map[string]uint64, error) {
	type search struct {
		user    string
		lo, hi  uint64 // lo exists (or is 0); hi is missing (when !gallop)
		step    uint64
		gallop  bool
		probe   uint64
		settled bool
	}
	hkeys := make([]string, len(users))
	for i, u := range users {
		hkeys[i] = keyPart(u)
	}
	heads, err := s.existing(ctx, s.heads, hkeys, "last seq: read heads")
	if err != nil {
		return nil, err
	}
	searches := make([]*search, len(users))
	for i, u := range users {
		sr := &search{user: u, step: 1, gallop: true}
		if raw, ok := heads[hkeys[i]]; ok {
			v, err := int64Field(raw, "seq")
			if err != nil {
				return nil, mapErr(ctx, "last seq: read heads", err)
			}
			sr.lo = uint64(max(v, 0))
		}
		sr.lo = max(sr.lo, floors[u])
		searches[i] = sr
	}
	open := slices.Clone(searches)
	for len(open) > 0 {
		keys := make([]string, 0, len(open))
		for _, sr := range open {
			if sr.gallop {
				sr.probe = min(sr.lo+sr.step, maxSeq)
			} else {
				sr.probe = sr.lo + (sr.hi-sr.lo)/2
			}
			keys = append(keys, inboxKey(sr.user, sr.probe))
		}
		found, err := s.existing(ctx, s.inbox, keys, "last seq: probe inbox")
		if err != nil {
			return nil, err
		}
		next := open[:0]
		for i, sr := range open {
			if _, ok := found[keys[i]]; ok {
				sr.lo = sr.probe
				if sr.gallop {
					sr.step *= 2
				}
				if sr.lo == maxSeq {
					sr.settled = true
				}
			} else {
				sr.hi, sr.gallop = sr.probe, false
			}
			if !sr.gallop && sr.hi-sr.lo <= 1 {
				sr.settled = true
			}
			if !sr.settled {
				next = append(next, sr)
			}
		}
		open = next
	}
	out := make(map[string]uint64, len(users))
	for _, sr := range searches {
		out[sr.user] = sr.lo
	}
	return out, nil
}

// Lookup implements persist.MessageStore.
func (s *Store) Lookup(ctx context.Context, from, clientMsgID string) (persist.Message, error) {
	if err := persist.CheckID("client message id", clientMsgID); err != nil {
		return persist.Message{}, fmt.Errorf("mongostore: lookup: %w", err)
	}
	if len(from) > persist.MaxIDLen {
		return persist.Message{}, fmt.Errorf("mongostore: lookup: %w: from longer than %d bytes", persist.ErrInvalid, persist.MaxIDLen)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return persist.Message{}, err
	}
	defer leave()
	// The sender's origin entry, else the messages document (a message
	// stored before origin entries, or not in its sender's inbox).
	raw, err := s.inbox.FindOne(ctx, bson.D{{Key: "user", Value: enc(from)}, {Key: dedupField, Value: originDedup(clientMsgID)}}).Raw()
	if err == nil && !isOrigin(raw) {
		err = mongo.ErrNoDocuments // a migrated entry: its message is in messages
	}
	if errors.Is(err, mongo.ErrNoDocuments) {
		raw, err = s.messages.FindOne(ctx, bson.D{{Key: "from", Value: enc(from)}, {Key: "cmid", Value: enc(clientMsgID)}}).Raw()
	}
	if errors.Is(err, mongo.ErrNoDocuments) {
		return persist.Message{}, persist.ErrNotFound
	}
	if err != nil {
		return persist.Message{}, mapErr(ctx, "lookup", err)
	}
	m, err := decodeMessage(raw)
	if err != nil {
		return persist.Message{}, mapErr(ctx, "lookup", err)
	}
	return m, nil
}

// ReadInbox implements persist.MessageStore. The page is a contiguous run of
// seqs from afterSeq+1: if an entry is not visible yet while a later one is
// (an append in flight), the page ends before it. Bodies are copies the
// caller owns.
func (s *Store) ReadInbox(ctx context.Context, user string, afterSeq uint64, limit int) ([]persist.InboxEntry, error) {
	if err := persist.CheckRead(user, limit); err != nil {
		return nil, fmt.Errorf("mongostore: read inbox: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer leave()
	if afterSeq >= maxSeq {
		return []persist.InboxEntry{}, nil
	}
	// Whole entries: an origin entry is its message (the user sent it),
	// the others reference theirs (loadMessages).
	cur, err := s.inbox.Find(ctx,
		bson.D{{Key: "user", Value: enc(user)}, {Key: "seq", Value: bson.D{{Key: "$gt", Value: int64(afterSeq)}}}},
		options.Find().SetSort(bson.D{{Key: "seq", Value: 1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, mapErr(ctx, "read inbox", err)
	}
	var out []persist.InboxEntry
	var full []bool
	want := afterSeq + 1
	for cur.Next(ctx) {
		e, isFull, err := decodeReadEntry(cur.Current)
		if err != nil {
			cur.Close(ctx)
			return nil, mapErr(ctx, "read inbox", err)
		}
		if e.Seq != want {
			break // not contiguous (yet): end the page here
		}
		want++
		out, full = append(out, e), append(full, isFull)
	}
	err = cur.Err()
	cur.Close(ctx)
	if err != nil {
		return nil, mapErr(ctx, "read inbox", err)
	}
	if len(out) == 0 {
		return []persist.InboxEntry{}, nil
	}
	if err := s.fillMessages(ctx, out, full); err != nil {
		return nil, err
	}
	return out, nil
}

// decodeReadEntry decodes an inbox entry read whole: the message is the
// entry's when it is an origin entry (full), else only its ID is set.
func decodeReadEntry(raw bson.Raw) (e persist.InboxEntry, full bool, err error) {
	_, msgID, seq, err := decodeEntry(raw)
	if err != nil {
		return e, false, err
	}
	e = persist.InboxEntry{Seq: seq, Msg: persist.Message{ID: msgID}, Deleted: deletedEntry(raw)}
	if !isOrigin(raw) {
		return e, false, nil
	}
	if e.Msg, err = decodeMessage(raw); err != nil {
		return e, false, err
	}
	if e.Deleted {
		e.Msg.Body = nil
	}
	return e, true, nil
}

// findByID calls fn with the documents of c holding the messages ids
// (distinct): in messages by _id, in inbox the origin entries by mid. One
// query (see findAny: on FerretDB one equality on mid per message, which
// its indexes answer).
func (s *Store) findByID(ctx context.Context, c *mongo.Collection, ids []uint64, op string, fn func(bson.Raw) error, opts ...options.Lister[options.FindOptions]) error {
	if len(ids) == 0 {
		return nil
	}
	// In messages by _id, in inbox by mid (an entry's _id is its own).
	key, val := "_id", func(id uint64) any { return idToDB(id) }
	if c == s.inbox {
		key, val = "mid", func(id uint64) any { return midKey(id) }
	}
	each := make([]bson.D, len(ids))
	in := make(bson.A, len(ids))
	for i, id := range ids {
		each[i] = bson.D{{Key: "mid", Value: midKey(id)}}
		in[i] = val(id)
	}
	return s.findAny(ctx, c, bson.D{{Key: key, Value: bson.D{{Key: "$in", Value: in}}}}, each, op, fn, opts...)
}

// loadMessages returns the messages ids (distinct): those in origin
// entries (one query on inbox), then the others from messages
// (findDocuments).
// A message found nowhere is left out.
func (s *Store) loadMessages(ctx context.Context, ids []uint64, op string) (map[uint64]persist.Message, error) {
	msgs := make(map[uint64]persist.Message, len(ids))
	keep := func(raw bson.Raw) error {
		m, err := decodeMessage(raw)
		if err != nil {
			return err
		}
		msgs[m.ID] = m
		return nil
	}
	missing := func() []uint64 {
		var out []uint64
		for _, id := range ids {
			if _, ok := msgs[id]; !ok {
				out = append(out, id)
			}
		}
		return out
	}
	if err := s.findByID(ctx, s.inbox, ids, op, keep); err != nil {
		return nil, err
	}
	if err := s.findDocuments(ctx, missing(), op, keep); err != nil {
		return nil, err
	}
	return msgs, nil
}

// findDocuments calls fn with the messages documents of ids (distinct):
// one query (findByID), and on FerretDB, when some were not found by mid,
// one more (slow) by _id for documents stored before mid existed. fn's
// document is valid only during the call; opts must keep _id.
func (s *Store) findDocuments(ctx context.Context, ids []uint64, op string, fn func(bson.Raw) error, opts ...options.Lister[options.FindOptions]) error {
	found := make(map[uint64]bool, len(ids))
	keep := func(raw bson.Raw) error {
		id, err := int64Field(raw, "_id")
		if err != nil {
			return err
		}
		found[idFromDB(id)] = true
		return fn(raw)
	}
	if err := s.findByID(ctx, s.messages, ids, op, keep, opts...); err != nil {
		return err
	}
	if !s.eqQueries || len(found) == len(ids) {
		return nil
	}
	var in bson.A
	for _, id := range ids {
		if !found[id] {
			in = append(in, idToDB(id))
		}
	}
	return s.findAny(ctx, s.messages, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: in}}}}, nil, op, keep, opts...)
}

// LastSeq implements persist.MessageStore: the highest seq of user's inbox,
// read from the store (never from this process's cache), so it reflects
// appends by other nodes.
func (s *Store) LastSeq(ctx context.Context, user string) (uint64, error) {
	if err := persist.CheckID("user", user); err != nil {
		return 0, fmt.Errorf("mongostore: last seq: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return 0, err
	}
	defer leave()
	last, err := s.lastSeqs(ctx, []string{user}, nil)
	if err != nil {
		return 0, err
	}
	return last[user], nil
}

// CreateUser implements persist.UserStore.
func (s *Store) CreateUser(ctx context.Context, u persist.User) error {
	if err := persist.CheckID("user id", u.ID); err != nil {
		return fmt.Errorf("mongostore: create user: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer leave()
	_, err = s.users.InsertOne(ctx, bson.D{
		{Key: "_id", Value: enc(u.ID)},
		{Key: "pw", Value: enc(u.PasswordHash)},
		{Key: "created", Value: u.Created},
	})
	if mongo.IsDuplicateKeyError(err) {
		return persist.ErrUserExists
	}
	return mapErr(ctx, "create user", err)
}

// GetUser implements persist.UserStore.
func (s *Store) GetUser(ctx context.Context, id string) (persist.User, error) {
	if err := persist.CheckID("user id", id); err != nil {
		return persist.User{}, fmt.Errorf("mongostore: get user: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return persist.User{}, err
	}
	defer leave()
	raw, err := s.users.FindOne(ctx, bson.D{{Key: "_id", Value: enc(id)}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return persist.User{}, persist.ErrNotFound
	}
	if err != nil {
		return persist.User{}, mapErr(ctx, "get user", err)
	}
	u := persist.User{ID: id}
	if u.PasswordHash, err = strField(raw, "pw"); err == nil {
		u.Created, err = int64Field(raw, "created")
	}
	if err != nil {
		return persist.User{}, mapErr(ctx, "get user", err)
	}
	return u, nil
}

func checkIDs(what1, id1, what2, id2 string) error {
	if err := persist.CheckID(what1, id1); err != nil {
		return err
	}
	return persist.CheckID(what2, id2)
}
