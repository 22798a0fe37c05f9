package mongostore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/imgn/imgn/persist"
)

// Tests of store format 2: origin entries, their retries, and the
// migration of a format-1 database.

func TestOrigins(t *testing.T) {
	svc, openDB := startServer(t)
	t.Run("OneDocumentPerInbox", func(t *testing.T) { testOneDocumentPerInbox(t, openDB(t)) })
	t.Run("RetryAfterOriginOnly", func(t *testing.T) { testRetryAfterOriginOnly(t, openDB(t)) })
	t.Run("DuplicateOriginInBatch", func(t *testing.T) { testDuplicateOriginInBatch(t, openDB(t)) })
	t.Run("DuplicateOriginAtAChunkStart", func(t *testing.T) { testDuplicateOriginAtChunkStart(t, openDB(t)) })
	t.Run("RepeatsInOneBatch", func(t *testing.T) { testRepeatsInOneBatch(t, openDB(t)) })
	t.Run("DuplicateOriginOnATakenSeq", func(t *testing.T) { testDuplicateOriginOnATakenSeq(t, openDB(t)) })
	t.Run("IDOfAnotherOrigin", func(t *testing.T) { testIDOfAnotherOrigin(t, openDB(t)) })
	t.Run("IDOfAnotherOriginInBatch", func(t *testing.T) { testIDOfAnotherOriginInBatch(t, openDB(t)) })
	t.Run("Broadcast", func(t *testing.T) { testBroadcast(t, openDB(t)) })
	t.Run("RecallOrigin", func(t *testing.T) { testRecallOrigin(t, openDB(t)) })
	t.Run("SenderDeletesOrigin", func(t *testing.T) { testSenderDeletesOrigin(t, openDB(t)) })
	t.Run("MigrateFormat1", func(t *testing.T) { testMigrateFormat1(t, svc.URI()) })
	t.Run("MigrateMessagesWithoutMid", func(t *testing.T) { testMigrateWithoutMid(t, svc.URI()) })
	t.Run("MigrationResumesWhereItStopped", func(t *testing.T) { testMigrationResumes(t, svc.URI()) })
	t.Run("ConcurrentOpens", func(t *testing.T) { testConcurrentOpens(t, svc.URI()) })
}

// testConcurrentOpens: the nodes of a new cluster open one new database
// at the same moment; each creates the indexes and records the format, and
// none fails for another's doing the same.
func testConcurrentOpens(t *testing.T, uri string) {
	const nodes = 3
	errs := make([]error, nodes)
	stores := make([]*Store, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() { stores[i], errs[i] = Open(t.Context(), Options{URI: uri, Database: "concurrent"}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
		defer stores[i].Close()
	}
	if v, err := stores[0].readFormat(t.Context()); err != nil || v != storeFormat {
		t.Fatalf("format = %d, %v", v, err)
	}
}

// count returns how many documents of collection c match filter.
func count(t *testing.T, s *Store, c string, filter bson.D) int64 {
	t.Helper()
	n, err := s.db.Collection(c).CountDocuments(t.Context(), filter)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// checkInbox fails unless user's inbox holds exactly the messages ids at
// seqs 1..len(ids), with no gap and no other entry, each readable.
func checkInbox(t *testing.T, s *Store, user string, ids ...uint64) {
	t.Helper()
	raw := rawInbox(t, s, user)
	want := map[uint64]uint64{}
	for i, id := range ids {
		want[uint64(i+1)] = id
	}
	if !maps.Equal(raw, want) {
		t.Fatalf("inbox %s holds %v (seq: message), want %v", user, raw, want)
	}
	es, err := s.ReadInbox(t.Context(), user, 0, 100)
	if err != nil || len(es) != len(ids) {
		t.Fatalf("ReadInbox(%s) = %+v, %v; want %d entries", user, es, err, len(ids))
	}
	for i, e := range es {
		if e.Msg.ID != ids[i] || e.Msg.From == "" {
			t.Fatalf("ReadInbox(%s)[%d] = %+v, want message %d", user, i, e, ids[i])
		}
	}
}

// submitBatch commits reqs as one group commit, as the committer would
// (the committer is idle: nothing else is queued) and returns their
// outcomes.
func submitBatch(t *testing.T, s *Store, reqs ...*appendReq) {
	t.Helper()
	for _, r := range reqs {
		r.ctx, r.done = t.Context(), make(chan struct{})
		r.msg, r.inboxes = ownMessage(r.msg), ownStrings(r.inboxes)
	}
	s.commit(reqs)
	for _, r := range reqs {
		<-r.done
	}
}

// sentThenRetried appends m from m.From to m.To and returns its retry: m
// with the fresh id retryID.
func sentThenRetried(t *testing.T, s *Store, m persist.Message, retryID uint64) persist.Message {
	t.Helper()
	if _, err := s.Append(t.Context(), m, []string{m.From, m.To}); err != nil {
		t.Fatal(err)
	}
	m.ID = retryID
	return m
}

func p2p(id uint64, from, to, cmid string) persist.Message {
	return persist.Message{ID: id, From: from, To: to, ClientMsgID: cmid, Timestamp: int64(id), Body: []byte(fmt.Sprint("body ", id))}
}

// testOneDocumentPerInbox: a 1:1 message is one document per inbox, in one
// insert: the sender's entry carries it, nothing goes to messages; an
// entries-only append on another owner writes one plain entry.
func testOneDocumentPerInbox(t *testing.T, s *Store) {
	ctx := t.Context()
	if _, err := s.Append(ctx, p2p(1, "alice", "bob", "w"), []string{"alice", "bob"}); err != nil { // warm the seq cache
		t.Fatal(err)
	}
	if err := s.syncUpkeep(ctx); err != nil {
		t.Fatal(err)
	}
	before := s.Stats().Commands
	m := p2p(2, "alice", "bob", "c2")
	res, err := s.Append(ctx, m, []string{"alice", "bob"})
	if err != nil || res.Duplicate || !slices.Equal(res.Seqs, []uint64{2, 2}) {
		t.Fatalf("Append = %+v, %v", res, err)
	}
	if d := OpsSince(before, s.Stats().Commands); d["insert"] != 1 || d["find"] != 0 {
		t.Fatalf("a same-owner 1:1 append sent %v, want one insert and no find", d)
	}
	if n := count(t, s, collMessages, bson.D{}); n != 0 {
		t.Fatalf("messages holds %d documents, want 0", n)
	}
	if n := count(t, s, collInbox, bson.D{{Key: "mid", Value: bson.D{{Key: "$exists", Value: true}}}}); n != 2 {
		t.Fatalf("%d origin entries, want 2", n)
	}
	// The cluster's split: the sender's owner, then the recipient's.
	before = s.Stats().Commands
	m3 := p2p(3, "alice", "carol", "c3")
	first, err := s.Append(ctx, m3, []string{"alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendEntries(ctx, first.Msg, []string{"carol"}); err != nil {
		t.Fatal(err)
	}
	if d := OpsSince(before, s.Stats().Commands); d["insert"] != 2 {
		t.Fatalf("a cross-owner 1:1 append sent %v, want two inserts", d)
	}
	checkInbox(t, s, "alice", 1, 2, 3)
	checkInbox(t, s, "bob", 1, 2)
	checkInbox(t, s, "carol", 3)
	got, err := s.Lookup(ctx, "alice", "c3")
	if err != nil || got.ID != 3 || string(got.Body) != "body 3" || got.To != "carol" {
		t.Fatalf("Lookup = %+v, %v", got, err)
	}
	es, err := s.ReadInbox(ctx, "carol", 0, 10)
	if err != nil || string(es[0].Msg.Body) != "body 3" || es[0].Msg.Timestamp != 3 {
		t.Fatalf("carol reads %+v, %v", es, err)
	}
}

// testRetryAfterOriginOnly: an attempt stored the origin entry and died
// before the recipient's; the retry (a fresh id) is a Duplicate of the
// stored message and writes the missing entry once, as does a retry with
// the same id.
func testRetryAfterOriginOnly(t *testing.T, s *Store) {
	ctx := t.Context()
	m := p2p(7, "alice", "bob", "c7")
	o := &entry{user: "alice", msgID: m.ID, seq: 1, msg: &m, chat: chatRefOf("alice", &m)}
	if _, err := s.inbox.InsertOne(ctx, o.doc(s)); err != nil {
		t.Fatal(err)
	}
	retry := m
	retry.ID = 8
	res, err := s.Append(ctx, retry, []string{"alice", "bob"})
	if err != nil || !res.Duplicate || res.Msg.ID != 7 || string(res.Msg.Body) != "body 7" || !slices.Equal(res.Seqs, []uint64{1, 1}) {
		t.Fatalf("retry = %+v, %v", res, err)
	}
	res, err = s.Append(ctx, m, []string{"alice", "bob"})
	if err != nil || !res.Duplicate || res.Msg.ID != 7 || !slices.Equal(res.Seqs, []uint64{1, 1}) {
		t.Fatalf("retry with the same id = %+v, %v", res, err)
	}
	checkInbox(t, s, "alice", 7)
	checkInbox(t, s, "bob", 7)
	if n := count(t, s, collInbox, bson.D{{Key: "msg", Value: idToDB(8)}}); n != 0 {
		t.Fatalf("%d entries of the retry's id, want 0", n)
	}
}

// testDuplicateOriginInBatch: a retry whose origin entry fails as a
// duplicate in the middle of a batch: the messages before and after it are
// stored, every inbox stays gap-free, the retry gets the original's id and
// seqs, and it costs one conflict.
func testDuplicateOriginInBatch(t *testing.T, s *Store) {
	retry := sentThenRetried(t, s, p2p(1, "alice", "bob", "c1"), 11)
	reqs := []*appendReq{
		{msg: p2p(2, "alice", "carol", "c2"), inboxes: []string{"alice", "carol"}},
		{msg: retry, inboxes: []string{"alice", "bob"}},
		{msg: p2p(3, "alice", "bob", "c3"), inboxes: []string{"alice", "bob"}},
		{msg: p2p(4, "bob", "alice", "c4"), inboxes: []string{"bob", "alice"}},
	}
	before := s.Stats()
	submitBatch(t, s, reqs...)
	after := s.Stats()
	for i, r := range reqs {
		if r.err != nil {
			t.Fatalf("append %d: %v", i, r.err)
		}
	}
	if r := reqs[1].res; !r.Duplicate || r.Msg.ID != 1 || !slices.Equal(r.Seqs, []uint64{1, 1}) || string(r.Msg.Body) != "body 1" {
		t.Fatalf("retry = %+v", r)
	}
	for i, want := range [][]uint64{{2, 1}, nil, {3, 2}, {3, 4}} {
		if r := reqs[i].res; want != nil && (r.Duplicate || !slices.Equal(r.Seqs, want)) {
			t.Fatalf("append %d = %+v, want seqs %v", i, r, want)
		}
	}
	if c := after.Conflicts - before.Conflicts; c != 1 {
		t.Errorf("%d conflicts, want 1", c)
	}
	checkInbox(t, s, "alice", 1, 2, 3, 4)
	checkInbox(t, s, "bob", 1, 3, 4)
	checkInbox(t, s, "carol", 2)
}

// testDuplicateOriginOnATakenSeq: another writer took the sender's next
// seq behind the store's back, and the batch's first entry is a retry's
// origin planned at that seq: the duplicate is resolved (and the sender's
// cached seq kept), the next message of the sender meets the taken seq,
// and lands after it: no gap, no second entry.
func testDuplicateOriginOnATakenSeq(t *testing.T, s *Store) {
	ctx := t.Context()
	m1 := p2p(1, "alice", "bob", "c1")
	if _, err := s.Append(ctx, m1, []string{"alice", "bob"}); err != nil {
		t.Fatal(err)
	}
	foreign := persist.Message{ID: 99, From: "zed", ClientMsgID: "f", Body: []byte("f")}
	if _, err := s.messages.InsertOne(ctx, messageDoc(&foreign)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.inbox.InsertOne(ctx, (&entry{user: "alice", msgID: 99, seq: 2}).doc(s)); err != nil {
		t.Fatal(err)
	}
	retry := m1
	retry.ID = 10
	reqs := []*appendReq{
		{msg: retry, inboxes: []string{"alice", "bob"}},
		{msg: p2p(3, "alice", "carol", "c3"), inboxes: []string{"alice", "carol"}},
	}
	submitBatch(t, s, reqs...)
	if r := reqs[0]; r.err != nil || !r.res.Duplicate || r.res.Msg.ID != 1 || !slices.Equal(r.res.Seqs, []uint64{1, 1}) {
		t.Fatalf("retry = %+v, %v", r.res, r.err)
	}
	if r := reqs[1]; r.err != nil || r.res.Duplicate || !slices.Equal(r.res.Seqs, []uint64{3, 1}) {
		t.Fatalf("next message = %+v, %v; want seqs [3 1]", r.res, r.err)
	}
	checkInbox(t, s, "alice", 1, 99, 3)
	checkInbox(t, s, "bob", 1)
	checkInbox(t, s, "carol", 3)
}

// testRepeatsInOneBatch: two appends of one (From, ClientMsgID) in one
// batch, with one id and with two: one is stored, the others are its
// Duplicates.
func testRepeatsInOneBatch(t *testing.T, s *Store) {
	m := p2p(5, "alice", "bob", "c5")
	other := m
	other.ID = 6
	reqs := []*appendReq{
		{msg: m, inboxes: []string{"alice", "bob"}},
		{msg: m, inboxes: []string{"alice", "bob"}},
		{msg: other, inboxes: []string{"alice", "bob"}},
	}
	submitBatch(t, s, reqs...)
	for i, r := range reqs {
		if r.err != nil || r.res.Msg.ID != 5 || r.res.Duplicate != (i > 0) || !slices.Equal(r.res.Seqs, []uint64{1, 1}) {
			t.Fatalf("append %d = %+v, %v", i, r.res, r.err)
		}
	}
	checkInbox(t, s, "alice", 5)
	checkInbox(t, s, "bob", 5)
}

// testIDOfAnotherOrigin: an origin append reusing the id of another message
// of the same inbox is refused with ErrInvalid; nothing of it is stored.
func testIDOfAnotherOrigin(t *testing.T, s *Store) {
	ctx := t.Context()
	if _, err := s.Append(ctx, p2p(9, "alice", "bob", "a"), []string{"alice", "bob"}); err != nil {
		t.Fatal(err)
	}
	_, err := s.Append(ctx, p2p(9, "alice", "carol", "b"), []string{"alice", "carol"})
	if !errors.Is(err, persist.ErrInvalid) {
		t.Fatalf("append reusing an id: %v, want ErrInvalid", err)
	}
	checkInbox(t, s, "alice", 9)
	checkInbox(t, s, "carol")
	if _, err := s.Lookup(ctx, "alice", "b"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Lookup of the refused message: %v", err)
	}
}

// testBroadcast: a message whose sender has no inbox among its inboxes is
// a messages document, read, deduplicated and looked up as before.
func testBroadcast(t *testing.T, s *Store) {
	ctx := t.Context()
	m := persist.Message{ID: 20, From: "system", ClientMsgID: "b1", Body: []byte("hello all")}
	if _, err := s.Append(ctx, m, []string{"u1", "u2"}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, collMessages, bson.D{}); n != 1 {
		t.Fatalf("messages holds %d documents, want 1", n)
	}
	retry := m
	retry.ID = 21
	res, err := s.Append(ctx, retry, []string{"u1", "u2"})
	if err != nil || !res.Duplicate || res.Msg.ID != 20 || !slices.Equal(res.Seqs, []uint64{1, 1}) {
		t.Fatalf("retry = %+v, %v", res, err)
	}
	checkInbox(t, s, "u1", 20)
	checkInbox(t, s, "u2", 20)
	if got, err := s.Lookup(ctx, "system", "b1"); err != nil || string(got.Body) != "hello all" {
		t.Fatalf("Lookup = %+v, %v", got, err)
	}
}

// testRecallOrigin: recalling a message stored in its origin entry empties
// the one copy of its body: every holder reads it recalled.
func testRecallOrigin(t *testing.T, s *Store) {
	ctx := t.Context()
	m := p2p(30, "alice", "bob", "r")
	if _, err := s.Append(ctx, m, []string{"alice", "bob"}); err != nil {
		t.Fatal(err)
	}
	res, err := s.Recall(ctx, persist.EventRequest{User: "alice", Target: 30, ID: 31, Timestamp: 40})
	if err != nil || res.Duplicate {
		t.Fatalf("Recall = %+v, %v", res, err)
	}
	for _, u := range []string{"alice", "bob"} {
		es, err := s.ReadInbox(ctx, u, 0, 10)
		if err != nil || len(es) != 2 || !es[0].Msg.Recalled || es[0].Msg.Body != nil || es[1].Msg.Event != persist.EventRecall || es[1].Msg.Target != 30 {
			t.Fatalf("%s reads %+v, %v", u, es, err)
		}
	}
	if n := count(t, s, collMessages, bson.D{}); n != 0 {
		t.Fatalf("messages holds %d documents, want 0 (the event is alice's origin entry too)", n)
	}
	again, err := s.Recall(ctx, persist.EventRequest{User: "alice", Target: 30, ID: 32, Timestamp: 41})
	if err != nil || !again.Duplicate {
		t.Fatalf("second Recall = %+v, %v", again, err)
	}
}

// rawDB returns database db of the server at uri, through a client of its
// own (disconnected when t ends), for writing format-1 data.
func rawDB(t *testing.T, uri, db string) *mongo.Database {
	t.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Disconnect(context.Background()) })
	return client.Database(db)
}

// putOldEntry writes a format-1 inbox entry (no d) of message msg at
// (user, seq).
func putOldEntry(t *testing.T, raw *mongo.Database, user string, seq, msg uint64) {
	t.Helper()
	_, err := raw.Collection(collInbox).InsertOne(t.Context(), bson.D{
		{Key: "_id", Value: inboxKey(user, seq)}, {Key: "user", Value: user},
		{Key: "seq", Value: int64(seq)}, {Key: "msg", Value: idToDB(msg)},
	})
	if err != nil {
		t.Fatal(err)
	}
}

// testMigrateFormat1: a database written in format 1 (messages documents,
// entries without d; one migrated by an interrupted earlier Open) is
// migrated by Open, a few entries at a time: its messages are read where they
// are, a retry of one of them is still a Duplicate, new messages go into
// origin entries; a second Open finds format 2 and a newer format is
// refused.
func testMigrateFormat1(t *testing.T, uri string) {
	ctx := t.Context()
	const db = "format1"
	raw := rawDB(t, uri, db)
	m1 := p2p(1, "alice", "bob", "c1")
	bc := persist.Message{ID: 2, From: "system", ClientMsgID: "b", Body: []byte("to all")}
	for _, m := range []*persist.Message{&m1, &bc} {
		if _, err := raw.Collection(collMessages).InsertOne(ctx, messageDoc(m)); err != nil {
			t.Fatal(err)
		}
	}
	type oldEntry struct {
		user     string
		seq, msg uint64
	}
	old := []oldEntry{{"alice", 1, 1}, {"bob", 1, 1}, {"alice", 2, 2}, {"bob", 2, 2}}
	for i := range uint64(6) { // more pages of the migration
		m := p2p(100+i, "carol", "dave", fmt.Sprint("k", i))
		if _, err := raw.Collection(collMessages).InsertOne(ctx, messageDoc(&m)); err != nil {
			t.Fatal(err)
		}
		old = append(old, oldEntry{"carol", i + 1, m.ID}, oldEntry{"dave", i + 1, m.ID})
	}
	defer func(n int) { migratePage = n }(migratePage)
	migratePage = 4
	for _, e := range old {
		putOldEntry(t, raw, e.user, e.seq, e.msg)
	}
	// An earlier Open was interrupted after migrating one entry.
	if _, err := raw.Collection(collInbox).UpdateOne(ctx, bson.D{{Key: "_id", Value: inboxKey("carol", 1)}},
		bson.D{{Key: "$set", Value: bson.D{{Key: dedupField, Value: "ck0"}}}}); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, Options{URI: uri, Database: db})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.readFormat(ctx); err != nil || v != storeFormat {
		t.Fatalf("format after Open = %d, %v", v, err)
	}
	if n := count(t, s, collInbox, bson.D{{Key: dedupField, Value: bson.D{{Key: "$exists", Value: false}}}}); n != 0 {
		t.Fatalf("%d entries without d after the migration", n)
	}
	if n := count(t, s, collInbox, bson.D{{Key: "user", Value: "alice"}, {Key: dedupField, Value: "c" + "c1"}}); n != 1 {
		t.Fatalf("alice's entry of her old message has no origin dedup (%d)", n)
	}
	for _, e := range old[4:] {
		want := plainDedup(e.msg)
		if e.user == "carol" {
			want = fmt.Sprint("ck", e.msg-100)
		}
		if n := count(t, s, collInbox, bson.D{{Key: "_id", Value: inboxKey(e.user, e.seq)}, {Key: dedupField, Value: want}}); n != 1 {
			t.Fatalf("entry %+v: no d %q after the migration", e, want)
		}
	}
	retry := m1
	retry.ID = 10
	res, err := s.Append(ctx, retry, []string{"alice", "bob"})
	if err != nil || !res.Duplicate || res.Msg.ID != 1 || string(res.Msg.Body) != "body 1" || !slices.Equal(res.Seqs, []uint64{1, 1}) {
		t.Fatalf("retry of a format-1 message = %+v, %v", res, err)
	}
	if _, err := s.Append(ctx, p2p(3, "bob", "alice", "c3"), []string{"bob", "alice"}); err != nil {
		t.Fatal(err)
	}
	checkInbox(t, s, "alice", 1, 2, 3)
	checkInbox(t, s, "bob", 1, 2, 3)
	if got, err := s.Lookup(ctx, "alice", "c1"); err != nil || got.ID != 1 {
		t.Fatalf("Lookup of a format-1 message = %+v, %v", got, err)
	}
	if got, err := s.Lookup(ctx, "bob", "c3"); err != nil || got.ID != 3 {
		t.Fatalf("Lookup of a new message = %+v, %v", got, err)
	}

	again, err := Open(ctx, Options{URI: uri, Database: db})
	if err != nil {
		t.Fatal(err)
	}
	again.Close()
	if _, err := raw.Collection(collMeta).UpdateOne(ctx, bson.D{{Key: "_id", Value: formatID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: int64(storeFormat + 1)}}}}); err != nil {
		t.Fatal(err)
	}
	if newer, err := Open(ctx, Options{URI: uri, Database: db}); !errors.Is(err, persist.ErrInvalid) {
		if err == nil {
			newer.Close()
		}
		t.Fatalf("Open of a newer format: %v, want ErrInvalid", err)
	}
}

// testMigrateWithoutMid: a format-1 message document from before mid
// existed (FerretDB finds messages by mid) still gives its sender's entry
// the origin dedup, so a retry of it after the migration is a Duplicate
// and the recipient does not get it twice.
func testMigrateWithoutMid(t *testing.T, uri string) {
	ctx := t.Context()
	const db = "format1nomid"
	raw := rawDB(t, uri, db)
	m := p2p(1<<62+5, "alice", "bob", "old")
	doc := slices.DeleteFunc(messageDoc(&m), func(e bson.E) bool { return e.Key == "mid" })
	if _, err := raw.Collection(collMessages).InsertOne(ctx, doc); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob"} {
		putOldEntry(t, raw, u, 1, m.ID)
	}
	s, err := Open(ctx, Options{URI: uri, Database: db})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := count(t, s, collInbox, bson.D{{Key: "_id", Value: inboxKey("alice", 1)}, {Key: dedupField, Value: "c" + "old"}}); n != 1 {
		t.Fatal("alice's entry of her message without mid has no origin dedup after the migration")
	}
	retry := m
	retry.ID = 7
	res, err := s.Append(ctx, retry, []string{"alice", "bob"})
	if err != nil || !res.Duplicate || res.Msg.ID != m.ID || !slices.Equal(res.Seqs, []uint64{1, 1}) {
		t.Fatalf("retry of a format-1 message without mid = %+v, %v", res, err)
	}
	checkInbox(t, s, "alice", m.ID)
	checkInbox(t, s, "bob", m.ID)
}

// testSenderDeletesOrigin: the sender's delete-for-me hides the message
// from the sender only, although its one copy is the sender's entry: the
// recipient still reads it whole (inbox, history, conversation list,
// replay), and a retry of it is still a Duplicate.
func testSenderDeletesOrigin(t *testing.T, s *Store) {
	ctx := t.Context()
	m := p2p(40, "alice", "bob", "d")
	m.To = "bob"
	if _, err := s.Append(ctx, m, []string{"alice", "bob"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, persist.EventRequest{User: "alice", Target: 40, ID: 41, Timestamp: 50}); err != nil {
		t.Fatal(err)
	}
	es, err := s.ReadInbox(ctx, "alice", 0, 10)
	if err != nil || len(es) != 2 || !es[0].Deleted || es[0].Msg.Body != nil || es[1].Msg.Event != persist.EventDelete {
		t.Fatalf("alice reads %+v, %v", es, err)
	}
	whole := func(where string, e persist.InboxEntry) {
		t.Helper()
		if e.Deleted || e.Msg.ID != 40 || e.Msg.From != "alice" || string(e.Msg.Body) != "body 40" {
			t.Fatalf("bob's %s after alice's delete: %+v", where, e)
		}
	}
	es, err = s.ReadInbox(ctx, "bob", 0, 10)
	if err != nil || len(es) != 1 {
		t.Fatalf("bob reads %+v, %v", es, err)
	}
	whole("inbox", es[0])
	hist, err := s.History(ctx, "bob", persist.ConvOf("bob", &m), 0, 10)
	if err != nil || len(hist) != 1 {
		t.Fatalf("bob's history = %+v, %v", hist, err)
	}
	whole("history", hist[0])
	convs, err := s.Conversations(ctx, "bob", 0, 10)
	if err != nil || len(convs) != 1 || !convs[0].HasLast {
		t.Fatalf("bob's conversations = %+v, %v", convs, err)
	}
	whole("conversation list", convs[0].Last)
	var replayed []persist.Message
	err = s.ReplayFrom(ctx, 0, func(msg *persist.Message, _ []string, _ []uint64) error {
		replayed = append(replayed, *msg)
		return nil
	})
	if err != nil || !slices.ContainsFunc(replayed, func(r persist.Message) bool { return r.ID == 40 && string(r.Body) == "body 40" }) {
		t.Fatalf("replay = %+v, %v", replayed, err)
	}
	retry := m
	retry.ID = 42
	res, err := s.Append(ctx, retry, []string{"alice", "bob"})
	if err != nil || !res.Duplicate || res.Msg.ID != 40 || !slices.Equal(res.Seqs, []uint64{1, 1}) {
		t.Fatalf("retry after the sender's delete = %+v, %v", res, err)
	}
	if last, err := s.LastSeq(ctx, "bob"); err != nil || last != 1 {
		t.Fatalf("bob's last seq = %d, %v", last, err)
	}
}

// testIDOfAnotherOriginInBatch: two origin appends of one batch with one
// id and different (From, ClientMsgID): the first is stored, the second
// refused with ErrInvalid, as across batches; neither takes the other's
// entry (the second's message must not replace the first's).
func testIDOfAnotherOriginInBatch(t *testing.T, s *Store) {
	ctx := t.Context()
	reqs := []*appendReq{
		{msg: p2p(9, "alice", "bob", "a"), inboxes: []string{"alice", "bob"}},
		{msg: p2p(9, "alice", "carol", "b"), inboxes: []string{"alice", "carol"}},
	}
	reqs[1].msg.Body = []byte("the other")
	submitBatch(t, s, reqs...)
	if r := reqs[0]; r.err != nil || r.res.Duplicate || !slices.Equal(r.res.Seqs, []uint64{1, 1}) {
		t.Fatalf("first append = %+v, %v", r.res, r.err)
	}
	if r := reqs[1]; !errors.Is(r.err, persist.ErrInvalid) {
		t.Fatalf("second append with the same id = %+v, %v; want ErrInvalid", r.res, r.err)
	}
	checkInbox(t, s, "alice", 9)
	checkInbox(t, s, "bob", 9)
	checkInbox(t, s, "carol")
	es, err := s.ReadInbox(ctx, "bob", 0, 10)
	if err != nil || len(es) != 1 || es[0].Msg.ClientMsgID != "a" || string(es[0].Msg.Body) != "body 9" {
		t.Fatalf("bob reads %+v, %v", es, err)
	}
	if _, err := s.Lookup(ctx, "alice", "b"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Lookup of the refused message: %v", err)
	}
}

// testDuplicateOriginAtChunkStart: a batch larger than one FerretDB insert
// chunk (ferretBatch) whose second chunk starts with a retry's origin
// entry: the first chunk is stored, the retry resolves to its original,
// and every later message of the batch lands once, at the next seqs.
func testDuplicateOriginAtChunkStart(t *testing.T, s *Store) {
	retry := sentThenRetried(t, s, p2p(1, "alice", "bob", "c0"), 1000)
	var reqs []*appendReq
	want := []uint64{1} // alice's inbox
	for i := range uint64(ferretBatch/2 + 10) {
		if i == ferretBatch/2 {
			reqs = append(reqs, &appendReq{msg: retry, inboxes: []string{"alice", "bob"}})
		}
		id := 10 + i
		reqs = append(reqs, &appendReq{msg: p2p(id, "alice", fmt.Sprint("r", i), fmt.Sprint("c", id)), inboxes: []string{"alice", fmt.Sprint("r", i)}})
		want = append(want, id)
	}
	submitBatch(t, s, reqs...)
	seq := uint64(2)
	for i, r := range reqs {
		if r.err != nil {
			t.Fatalf("append %d: %v", i, r.err)
		}
		if r.msg.ID == retry.ID {
			if !r.res.Duplicate || r.res.Msg.ID != 1 || !slices.Equal(r.res.Seqs, []uint64{1, 1}) {
				t.Fatalf("retry = %+v", r.res)
			}
			continue
		}
		if r.res.Duplicate || !slices.Equal(r.res.Seqs, []uint64{seq, 1}) {
			t.Fatalf("append %d = %+v, want seqs [%d 1]", i, r.res, seq)
		}
		seq++
	}
	checkInbox(t, s, "alice", want...)
	checkInbox(t, s, "bob", 1)
	checkInbox(t, s, "r0", 10)
	checkInbox(t, s, fmt.Sprint("r", ferretBatch/2+9), 10+ferretBatch/2+9)
}

// testMigrationResumes: an Open that stops in the middle of a migration
// (its deadline) leaves its progress recorded, and the next Open continues
// from there instead of reading every entry again, so a database too large
// to migrate within one start timeout is migrated across restarts.
func testMigrationResumes(t *testing.T, uri string) {
	ctx := t.Context()
	const db = "format1resume"
	raw := rawDB(t, uri, db)
	const n = 24
	for i := range uint64(n) {
		m := p2p(100+i, "carol", "dave", fmt.Sprint("k", i))
		if _, err := raw.Collection(collMessages).InsertOne(ctx, messageDoc(&m)); err != nil {
			t.Fatal(err)
		}
		putOldEntry(t, raw, "carol", i+1, m.ID)
	}
	defer func(n int, hook func(string) error) { migratePage, migrated = n, hook }(migratePage, migrated)
	migratePage = 4
	stop := errors.New("start timeout")
	pages := 0
	migrated = func(string) error {
		if pages++; pages == 3 {
			return stop
		}
		return nil
	}
	if s, err := Open(ctx, Options{URI: uri, Database: db}); !errors.Is(err, stop) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("interrupted Open: %v", err)
	}
	pages = 0
	migrated = func(string) error { pages++; return nil }
	s, err := Open(ctx, Options{URI: uri, Database: db})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if want := n/4 - 3; pages != want {
		t.Fatalf("the resumed migration read %d pages, want the %d left", pages, want)
	}
	if c := count(t, s, collInbox, bson.D{{Key: dedupField, Value: bson.D{{Key: "$exists", Value: false}}}}); c != 0 {
		t.Fatalf("%d entries without d after the migration", c)
	}
	retry := p2p(1000, "carol", "dave", "k0")
	if res, err := s.Append(ctx, retry, []string{"carol"}); err != nil || !res.Duplicate || res.Msg.ID != 100 {
		t.Fatalf("retry of a message migrated before the interruption = %+v, %v", res, err)
	}
}
