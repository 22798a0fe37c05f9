package mongostore

import (
	"context"
	"errors"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// The store's format and its migration.
//
// Format 1 kept every message in messages and made every inbox entry a
// plain reference. Format 2 (this build) stores a message its sender's
// inbox holds in the sender's entry (the origin entry) and gives every
// entry the dedup field d, unique with the user. The format is the v of the
// document {_id: "format"} in meta; a database without it is format 1
// (or new). Open migrates a format-1 database before it creates the
// (user, d) index, which MongoDB would refuse while entries lack d (all of
// them count as null there): every entry without d gets one, the sender's
// entry of a message in messages "c"+cmid (so a retry of that message is
// caught by the index, as by messages' (from, cmid) before) and any other
// "m"+id, reading the entries in pages of migratePage in _id order and
// writing each page in bulk (at most ferretUpdateBatch updates to a
// command on FerretDB); then the index is created and the format recorded. The old messages stay
// in messages and are read from there. After each page the migration
// records the last _id it has settled in meta ({_id: "migration", after}),
// and an interrupted migration is resumed from there by the next Open: a
// large database is migrated across Opens that each stop at their
// deadline (imd's start timeout), never started over. Nodes of format 1
// must not write while it runs: upgrade a cluster's nodes together.

const (
	storeFormat = 2
	formatID    = "format"
	migrationID = "migration"
)

// migrated is called by the migration after each page it settled and
// recorded, with that page's last _id; a hook for the tests.
var migrated = func(after string) error { return nil }

// migratePage is how many entries the migration reads at a time (and so
// holds in memory). A variable for the tests.
var migratePage = 1000

// dedupIndex is the unique (user, d) index on inbox; Open creates it
// after the migration (a fresh model each time: see chatInboxIndexes).
func dedupIndex() mongo.IndexModel {
	return mongo.IndexModel{
		Keys:    bson.D{{Key: "user", Value: 1}, {Key: dedupField, Value: 1}},
		Options: options.Index().SetUnique(true).SetName("user_d"),
	}
}

// readFormat returns the format recorded in meta (1 when none is).
func (s *Store) readFormat(ctx context.Context) (int64, error) {
	raw, err := s.meta.FindOne(ctx, bson.D{{Key: "_id", Value: formatID}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 1, nil
	}
	if err != nil {
		return 0, mapErr(ctx, "open: read format", err)
	}
	v, err := int64Field(raw, "v")
	if err != nil {
		return 0, mapErr(ctx, "open: read format", err)
	}
	return v, nil
}

// migrate brings a format-1 database to format 2 (see above). The indexes
// other than dedupIndex exist already.
func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.backfillDedup(ctx); err != nil {
		return err
	}
	if _, err := s.inbox.Indexes().CreateOne(ctx, dedupIndex()); err != nil {
		if ctx.Err() == nil {
			// Refused, not cut short: on MongoDB, entries without d
			// below the recorded progress (a node of format 1 wrote
			// meanwhile, against the upgrade rule) collide as nulls; the
			// next Open reads every entry again. (FerretDB v1 indexes no
			// missing field and builds the index: there only the rule
			// keeps such entries out.)
			_, _ = s.meta.DeleteOne(ctx, bson.D{{Key: "_id", Value: migrationID}})
		}
		return mapErr(ctx, "open: migrate: create index user_d", err)
	}
	_, err := s.meta.ReplaceOne(ctx, bson.D{{Key: "_id", Value: formatID}},
		bson.D{{Key: "_id", Value: formatID}, {Key: "v", Value: int64(storeFormat)}}, options.Replace().SetUpsert(true))
	if mongo.IsDuplicateKeyError(err) {
		// Another node's Open created the marker at the same moment.
		if v, rerr := s.readFormat(ctx); rerr == nil && v >= storeFormat {
			return nil
		}
	}
	return mapErr(ctx, "open: migrate: record format", err)
}

// oldEntry is an inbox entry the migration gives its d.
type oldEntry struct {
	id    string
	user  string
	msgID uint64
}

// backfillDedup gives every inbox entry without d its d, a page at a time,
// and returns how many it updated.
func (s *Store) backfillDedup(ctx context.Context) (int, error) {
	n := 0
	// Pages in _id order (MongoDB walks its _id index; a filter on the
	// missing d could use no index and would read the whole collection
	// per page), from where an earlier Open stopped.
	after, err := s.migratedUpTo(ctx)
	if err != nil {
		return 0, err
	}
	for done := false; !done; {
		var page []oldEntry
		cur, err := s.inbox.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$gt", Value: after}}}},
			options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetLimit(int64(migratePage)).
				SetProjection(bson.D{{Key: "user", Value: 1}, {Key: "msg", Value: 1}, {Key: "seq", Value: 1}, {Key: dedupField, Value: 1}}))
		if err != nil {
			return n, mapErr(ctx, "open: migrate: read entries", err)
		}
		read := 0
		for cur.Next(ctx) {
			read++
			id, err := lookup(cur.Current, "_id", bson.TypeString)
			if err != nil {
				cur.Close(ctx)
				return n, mapErr(ctx, "open: migrate: read entries", err)
			}
			after = id.StringValue()
			if _, err := cur.Current.LookupErr(dedupField); err == nil {
				continue // written by format 2, or migrated by an earlier Open
			}
			user, msgID, _, err := decodeEntry(cur.Current)
			if err != nil {
				cur.Close(ctx)
				return n, mapErr(ctx, "open: migrate: read entries", err)
			}
			page = append(page, oldEntry{after, user, msgID})
		}
		err = cur.Err()
		cur.Close(ctx)
		if err != nil {
			return n, mapErr(ctx, "open: migrate: read entries", err)
		}
		done = read < migratePage
		if len(page) > 0 {
			if err := s.backfillPage(ctx, page); err != nil {
				return n, err
			}
			n += len(page)
		}
		if read == 0 {
			continue
		}
		// Every entry up to after has its d now: a later Open starts
		// past them.
		_, err = s.meta.UpdateOne(ctx, bson.D{{Key: "_id", Value: migrationID}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "after", Value: after}}}}, options.UpdateOne().SetUpsert(true))
		if err != nil {
			return n, mapErr(ctx, "open: migrate: record progress", err)
		}
		if err := migrated(after); err != nil {
			return n, err
		}
	}
	return n, nil
}

// migratedUpTo returns the last inbox _id an earlier, interrupted
// migration recorded as settled ("" when none did).
func (s *Store) migratedUpTo(ctx context.Context) (string, error) {
	raw, err := s.meta.FindOne(ctx, bson.D{{Key: "_id", Value: migrationID}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return "", nil
	}
	if err != nil {
		return "", mapErr(ctx, "open: migrate: read progress", err)
	}
	v, err := lookup(raw, "after", bson.TypeString)
	if err != nil {
		return "", mapErr(ctx, "open: migrate: read progress", err)
	}
	return v.StringValue(), nil
}

// backfillPage gives each entry of page its d (see backfillDedup).
func (s *Store) backfillPage(ctx context.Context, page []oldEntry) error {
	ids := make([]uint64, 0, len(page))
	seen := map[uint64]bool{}
	for _, o := range page {
		if !seen[o.msgID] {
			seen[o.msgID] = true
			ids = append(ids, o.msgID)
		}
	}
	senders := map[uint64]dedupKey{}
	// Every document, those without mid too: a sender's entry whose
	// message went unfound would get "m" and let a retry of the
	// message through as a new one.
	err := s.findDocuments(ctx, ids, "open: migrate: read messages", func(raw bson.Raw) error {
		id, err := int64Field(raw, "_id")
		if err != nil {
			return err
		}
		var k dedupKey
		if k.from, err = strField(raw, "from"); err != nil {
			return err
		}
		if k.cmid, err = strField(raw, "cmid"); err != nil {
			return err
		}
		senders[idFromDB(id)] = k
		return nil
	}, options.Find().SetProjection(bson.D{{Key: "from", Value: 1}, {Key: "cmid", Value: 1}}))
	if err != nil {
		return err
	}
	models := make([]mongo.WriteModel, len(page))
	for i, o := range page {
		var d any = plainDedup(o.msgID)
		if k, ok := senders[o.msgID]; ok && k.from == o.user {
			d = originDedup(k.cmid)
		}
		models[i] = mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: o.id}}).
			SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: dedupField, Value: d}}}})
	}
	failed, err := s.bulkWrite(s.inbox, models)
	for _, f := range failed {
		if f {
			return mapErr(ctx, "open: migrate: write d", err)
		}
	}
	return nil
}
