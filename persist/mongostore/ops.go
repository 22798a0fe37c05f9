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

// existing returns which of the _ids keys exist in c. One key is a plain
// equality (the only filter FerretDB answers from its primary key); more
// use $in, in chunks.
func existing(ctx context.Context, c *mongo.Collection, keys []string, op string) (map[string]bson.Raw, error) {
	found := make(map[string]bson.Raw, len(keys))
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), maxInKeys)]
		keys = keys[len(chunk):]
		var filter bson.D
		if len(chunk) == 1 {
			filter = bson.D{{Key: "_id", Value: chunk[0]}}
		} else {
			filter = bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: chunk}}}}
		}
		cur, err := c.Find(ctx, filter)
		if err != nil {
			return nil, mapErr(ctx, op, err)
		}
		for cur.Next(ctx) {
			id, err := lookup(cur.Current, "_id", bson.TypeString)
			if err != nil {
				cur.Close(ctx)
				return nil, mapErr(ctx, op, err)
			}
			found[id.StringValue()] = slices.Clone(cur.Current)
		}
		err = cur.Err()
		cur.Close(ctx)
		if err != nil {
			return nil, mapErr(ctx, op, err)
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
	heads, err := existing(ctx, s.heads, hkeys, "last seq: read heads")
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
		found, err := existing(ctx, s.inbox, keys, "last seq: probe inbox")
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
	raw, err := s.messages.FindOne(ctx, bson.D{{Key: "from", Value: enc(from)}, {Key: "cmid", Value: enc(clientMsgID)}}).Raw()
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
	cur, err := s.inbox.Find(ctx,
		bson.D{{Key: "user", Value: enc(user)}, {Key: "seq", Value: bson.D{{Key: "$gt", Value: int64(afterSeq)}}}},
		options.Find().SetSort(bson.D{{Key: "seq", Value: 1}}).SetLimit(int64(limit)).
			SetProjection(bson.D{{Key: "user", Value: 1}, {Key: "seq", Value: 1}, {Key: "msg", Value: 1}}))
	if err != nil {
		return nil, mapErr(ctx, "read inbox", err)
	}
	var out []persist.InboxEntry
	var ids bson.A
	want := afterSeq + 1
	for cur.Next(ctx) {
		_, msgID, seq, err := decodeEntry(cur.Current)
		if err != nil {
			cur.Close(ctx)
			return nil, mapErr(ctx, "read inbox", err)
		}
		if seq != want {
			break // not contiguous (yet): end the page here
		}
		want++
		out = append(out, persist.InboxEntry{Seq: seq, Msg: persist.Message{ID: msgID}})
		ids = append(ids, idToDB(msgID))
	}
	err = cur.Err()
	cur.Close(ctx)
	if err != nil {
		return nil, mapErr(ctx, "read inbox", err)
	}
	if len(out) == 0 {
		return []persist.InboxEntry{}, nil
	}
	mcur, err := s.messages.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return nil, mapErr(ctx, "read inbox: messages", err)
	}
	defer mcur.Close(ctx)
	msgs := make(map[uint64]persist.Message, len(out))
	for mcur.Next(ctx) {
		m, err := decodeMessage(mcur.Current)
		if err != nil {
			return nil, mapErr(ctx, "read inbox: messages", err)
		}
		msgs[m.ID] = m
	}
	if err := mcur.Err(); err != nil {
		return nil, mapErr(ctx, "read inbox: messages", err)
	}
	for i := range out {
		m, ok := msgs[out[i].Msg.ID]
		if !ok {
			return nil, mapErr(ctx, "read inbox", fmt.Errorf("%w: inbox %q seq %d references missing message %d",
				errCorrupt, user, out[i].Seq, out[i].Msg.ID))
		}
		out[i].Msg = m
		delete(msgs, m.ID) // an inbox references a message once; a second use would share Body
	}
	return out, nil
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

// SetCursor implements persist.MessageStore with an upsert using $max, so
// the cursor only moves forward.
func (s *Store) SetCursor(ctx context.Context, user, device string, seq uint64) error {
	if err := checkIDs("user", user, "device", device); err != nil {
		return fmt.Errorf("mongostore: set cursor: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer leave()
	filter := bson.D{{Key: "_id", Value: cursorKey(user, device)}}
	update := bson.D{
		{Key: "$max", Value: bson.D{{Key: "pos", Value: cursorToDB(seq)}}},
		{Key: "$setOnInsert", Value: bson.D{{Key: "user", Value: enc(user)}, {Key: "device", Value: enc(device)}}},
	}
	for attempt := 0; ; attempt++ {
		_, err = s.cursors.UpdateOne(ctx, filter, update, options.UpdateOne().SetUpsert(true))
		// Two first upserts race: the loser's insert is a duplicate key;
		// the document exists now, so a second attempt updates it.
		if err == nil || attempt == 1 || !mongo.IsDuplicateKeyError(err) {
			return mapErr(ctx, "set cursor", err)
		}
	}
}

// Cursor implements persist.MessageStore.
func (s *Store) Cursor(ctx context.Context, user, device string) (uint64, error) {
	if err := checkIDs("user", user, "device", device); err != nil {
		return 0, fmt.Errorf("mongostore: cursor: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return 0, err
	}
	defer leave()
	raw, err := s.cursors.FindOne(ctx, bson.D{{Key: "_id", Value: cursorKey(user, device)}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	if err != nil {
		return 0, mapErr(ctx, "cursor", err)
	}
	v, err := int64Field(raw, "pos")
	if err != nil {
		return 0, mapErr(ctx, "cursor", err)
	}
	return cursorFromDB(v), nil
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
