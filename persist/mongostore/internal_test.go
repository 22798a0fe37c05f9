package mongostore

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/persist"
)

func TestEncoding(t *testing.T) {
	for _, s := range []string{"", "alice", "ünïcode", "a\x00b", "\xff", "\x00", strings1024()} {
		v := enc(s)
		_, isStr := v.(string)
		if isStr != plain(s) {
			t.Errorf("enc(%q) = %T", s, v)
		}
		typ, data, err := bson.MarshalValue(v)
		if err != nil {
			t.Fatal(err)
		}
		got, err := dec(bson.RawValue{Type: typ, Value: data})
		if err != nil || got != s {
			t.Errorf("dec(enc(%q)) = %q, %v", s, got, err)
		}
	}
	if _, err := dec(bson.RawValue{Type: bson.TypeInt32, Value: []byte{1, 0, 0, 0}}); err == nil {
		t.Error("dec of an int32 succeeded")
	}

	// Composite keys are injective: random pairs over an alphabet that
	// includes the separators, digits, 'x' and non-plain bytes.
	alphabet := []string{"", "1", ":", "x", "0", "a", "1:", "x0", "\x00", "\xff", "é"}
	rng := rand.New(rand.NewPCG(1, 2))
	word := func() string {
		var b []byte
		for range rng.IntN(4) {
			b = append(b, alphabet[rng.IntN(len(alphabet))]...)
		}
		return string(b)
	}
	seen := map[string][2]string{}
	for range 20000 {
		u, d := word(), word()
		k := cursorKey(u, d)
		if prev, ok := seen[k]; ok && prev != [2]string{u, d} {
			t.Fatalf("cursorKey(%q, %q) = cursorKey(%q, %q) = %q", u, d, prev[0], prev[1], k)
		}
		seen[k] = [2]string{u, d}
	}
	seenInbox := map[string]string{}
	for range 20000 {
		u := word()
		seq := rng.Uint64N(40)
		k := inboxKey(u, seq)
		id := fmt.Sprintf("%q/%d", u, seq)
		if prev, ok := seenInbox[k]; ok && prev != id {
			t.Fatalf("inboxKey collision: %s and %s -> %q", prev, id, k)
		}
		seenInbox[k] = id
	}
	if got := inboxKey("u", 0x1f); got != "1:u000000000000001f" {
		t.Errorf("inboxKey = %q", got)
	}

	// Cursor encoding preserves uint64 order as int64 order.
	vals := []uint64{0, 1, 2, math.MaxInt64 - 1, math.MaxInt64, math.MaxInt64 + 1, math.MaxUint64 - 1, math.MaxUint64}
	for i := 1; i < len(vals); i++ {
		if cursorToDB(vals[i-1]) >= cursorToDB(vals[i]) {
			t.Errorf("cursorToDB not monotone at %d", vals[i])
		}
		if cursorFromDB(cursorToDB(vals[i])) != vals[i] {
			t.Errorf("cursor round trip of %d", vals[i])
		}
	}
}

func strings1024() string { return string(slices.Repeat([]byte("z"), persist.MaxIDLen)) }

func TestParseWriteConcern(t *testing.T) {
	good := map[string]string{
		"majority":           "majority/<nil>",
		"majority,journaled": "majority/true",
		"journaled":          "1/true",
		"1":                  "1/<nil>",
		"3,journaled":        "3/true",
	}
	for in, want := range good {
		wc, err := parseWriteConcern(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		j := "<nil>"
		if wc.Journal != nil {
			j = fmt.Sprint(*wc.Journal)
		}
		if got := fmt.Sprintf("%v/%s", wc.W, j); got != want {
			t.Errorf("%q = %s, want %s", in, got, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "x", "majority,", "journaled,journaled", "1,j"} {
		if _, err := parseWriteConcern(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// TestWithServer holds the internal tests that need a server; they share
// one FerretDB and use a database each.
// startServer starts a FerretDB dev server for t and returns it with a
// function that opens a store on a new database of it (closed when the
// subtest ends).
func startServer(t *testing.T) (*testsvc.Service, func(*testing.T) *Store) {
	svc := testsvc.StartMongo(t)
	n := 0
	return svc, func(t *testing.T) *Store {
		n++
		s, err := Open(t.Context(), Options{URI: svc.URI(), Database: fmt.Sprintf("internal%d", n)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

func TestWithServer(t *testing.T) {
	_, openDB := startServer(t)
	t.Run("DetectsFerretDB", func(t *testing.T) {
		if s := openDB(t); !s.FerretDB() {
			t.Fatal("FerretDB not detected")
		}
	})
	t.Run("LastSeqSearch", func(t *testing.T) { testLastSeqSearch(t, openDB(t)) })
	t.Run("PartialAppendConverges", func(t *testing.T) { testPartialAppend(t, openDB(t)) })
	t.Run("ConflictInChunkedGroupInsert", func(t *testing.T) { testChunkedConflict(t, openDB(t)) })
	t.Run("HeadsHint", func(t *testing.T) { testHeadsHint(t, openDB(t)) })
	t.Run("EqualityQueriesUseIndexes", func(t *testing.T) { testEqualityUsesIndexes(t, openDB(t)) })
	t.Run("ReadsMessagesWithoutMid", func(t *testing.T) { testReadsMessagesWithoutMid(t, openDB(t)) })
}

// testReadsMessagesWithoutMid: a message document from before mid existed
// is still read (by _id) when FerretDB finds none by mid.
func testReadsMessagesWithoutMid(t *testing.T, s *Store) {
	ctx := t.Context()
	m := persist.Message{ID: 1<<62 + 9, From: "a", ClientMsgID: "old", Body: []byte("from before mid")}
	doc := slices.DeleteFunc(messageDoc(&m), func(e bson.E) bool { return e.Key == "mid" })
	if _, err := s.messages.InsertOne(ctx, doc); err != nil {
		t.Fatal(err)
	}
	putEntry(t, s, "b", 1, m.ID)
	if _, err := s.Append(ctx, persist.Message{ID: 3, From: "a", ClientMsgID: "new", Body: []byte("new")}, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	es, err := s.ReadInbox(ctx, "b", 0, 10)
	if err != nil || len(es) != 2 || string(es[0].Msg.Body) != "from before mid" || string(es[1].Msg.Body) != "new" {
		t.Fatalf("ReadInbox = %+v, %v", es, err)
	}
}

// testEqualityUsesIndexes: on the dev server's PostgreSQL backend, the
// equality queries the store sends to FerretDB are answered from an index
// (devmongo's GIN twins of FerretDB's indexes), not by scanning the table,
// and a message is found by its mid (its int64 _id beyond 2^53 is not an
// equality FerretDB can hand to the database), in messages and in the
// origin entries, as is an origin by its dedup key.
func testEqualityUsesIndexes(t *testing.T, s *Store) {
	ctx := t.Context()
	m := persist.Message{ID: 1<<62 + 5, From: "a", ClientMsgID: "c", Body: []byte("x")}
	if _, err := s.Append(ctx, m, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	o := persist.Message{ID: 1<<62 + 6, From: "a", ClientMsgID: "o", Body: []byte("y")}
	if _, err := s.Append(ctx, o, []string{"a", "b"}); err != nil { // an origin entry
		t.Fatal(err)
	}
	setHead(t, s, "b", 1)
	if err := s.SetCursor(ctx, "b", "d", 1); err != nil {
		t.Fatal(err)
	}
	s.writeCursors(0)
	for _, q := range []struct {
		coll   string
		filter bson.D
	}{
		{collInbox, bson.D{{Key: "_id", Value: inboxKey("b", 1)}}},
		{collInbox, bson.D{{Key: "user", Value: "b"}, {Key: "msg", Value: idToDB(m.ID)}}},
		{collMessages, bson.D{{Key: "mid", Value: midKey(m.ID)}}},
		{collInbox, bson.D{{Key: "mid", Value: midKey(o.ID)}}},
		{collInbox, bson.D{{Key: "user", Value: "a"}, {Key: dedupField, Value: originDedup("o")}}},
		{collMessages, bson.D{{Key: "from", Value: "a"}, {Key: "cmid", Value: "c"}}},
		{collHeads, bson.D{{Key: "_id", Value: keyPart("b")}}},
		{collCursors, bson.D{{Key: "_id", Value: cursorKey("b", "d")}}},
	} {
		var out bson.M
		cmd := bson.D{{Key: "explain", Value: bson.D{{Key: "find", Value: q.coll}, {Key: "filter", Value: q.filter}}}}
		if err := s.db.RunCommand(ctx, cmd).Decode(&out); err != nil {
			t.Fatal(err)
		}
		plan := fmt.Sprint(out["queryPlanner"])
		if !strings.Contains(plan, "Node Type") {
			t.Skipf("find %s: not FerretDB's PostgreSQL backend: %.200s", q.coll, plan)
		}
		if !strings.Contains(plan, "Index Scan") {
			t.Errorf("find %s %v scans: %s", q.coll, q.filter, plan)
		}
	}
}

// putEntry writes an inbox entry directly, as another writer would.
func putEntry(t *testing.T, s *Store, user string, seq, msgID uint64) {
	t.Helper()
	_, err := s.inbox.InsertOne(t.Context(), bson.D{
		{Key: "_id", Value: inboxKey(user, seq)},
		{Key: "user", Value: enc(user)},
		{Key: "seq", Value: int64(seq)},
		{Key: "msg", Value: idToDB(msgID)},
	})
	if err != nil {
		t.Fatal(err)
	}
}

func setHead(t *testing.T, s *Store, user string, seq uint64) {
	t.Helper()
	_, err := s.heads.ReplaceOne(t.Context(), bson.D{{Key: "_id", Value: keyPart(user)}},
		bson.D{{Key: "_id", Value: keyPart(user)}, {Key: "seq", Value: int64(seq)}}, optUpsert())
	if err != nil {
		t.Fatal(err)
	}
}

func testLastSeqSearch(t *testing.T, s *Store) {
	ctx := t.Context()
	sizes := map[string]uint64{"empty": 0, "one": 1, "two": 2, "seventeen": 17, "hundred": 100, "odd\x00name": 33}
	for u, n := range sizes {
		for seq := uint64(1); seq <= n; seq++ {
			putEntry(t, s, u, seq, 1000+seq)
		}
	}
	users := make([]string, 0, len(sizes))
	for u := range sizes {
		users = append(users, u)
	}
	check := func(what string, floors map[string]uint64) {
		t.Helper()
		got, err := s.lastSeqs(ctx, users, floors)
		if err != nil {
			t.Fatal(err)
		}
		for u, n := range sizes {
			if got[u] != n {
				t.Errorf("%s: lastSeqs[%q] = %d, want %d", what, u, got[u], n)
			}
			one, err := s.LastSeq(ctx, u)
			if err != nil || one != n {
				t.Errorf("%s: LastSeq(%q) = %d, %v; want %d", what, u, one, err, n)
			}
		}
	}
	check("no heads", nil)
	for u, n := range sizes {
		setHead(t, s, u, n/2) // lagging hints
	}
	check("lagging heads", nil)
	for u, n := range sizes {
		setHead(t, s, u, n) // exact hints
	}
	check("exact heads", map[string]uint64{"hundred": 99, "seventeen": 1})
}

func testPartialAppend(t *testing.T, s *Store) {
	ctx := t.Context()
	m := persist.Message{ID: 7, From: "alice", ClientMsgID: "c7", Body: []byte("hi")}
	if _, err := s.Append(ctx, persist.Message{ID: 1, From: "x", ClientMsgID: "1"}, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	// An earlier attempt stored the message and b's entry, then crashed.
	if _, err := s.messages.InsertOne(ctx, messageDoc(&m)); err != nil {
		t.Fatal(err)
	}
	putEntry(t, s, "b", 2, m.ID)
	// The retry completes a and c, keeps b's seq, and says Duplicate.
	res, err := s.Append(ctx, m, []string{"a", "b", "c"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Duplicate || !slices.Equal(res.Seqs, []uint64{1, 2, 1}) || string(res.Msg.Body) != "hi" {
		t.Fatalf("retry after a partial append = %+v", res)
	}
	// A message stored with no entry at all: same story.
	m2 := persist.Message{ID: 8, From: "alice", ClientMsgID: "c8"}
	if _, err := s.messages.InsertOne(ctx, messageDoc(&m2)); err != nil {
		t.Fatal(err)
	}
	res, err = s.Append(ctx, m2, []string{"b"})
	if err != nil || !res.Duplicate || !slices.Equal(res.Seqs, []uint64{3}) {
		t.Fatalf("retry of a message without entries = %+v, %v", res, err)
	}
	for u, want := range map[string]int{"a": 1, "b": 3, "c": 1} {
		es, err := s.ReadInbox(ctx, u, 0, 10)
		if err != nil || len(es) != want {
			t.Fatalf("inbox %s = %+v, %v", u, es, err)
		}
	}
}

// testChunkedConflict: a group append to 250 inboxes (3 chunks on FerretDB)
// meets an entry written by another writer in the middle; the prefix stays,
// the conflicting inbox moves on, the rest is replanned; no gaps anywhere.
func testChunkedConflict(t *testing.T, s *Store) {
	ctx := t.Context()
	const n = 250
	members := make([]string, n)
	for i := range members {
		members[i] = fmt.Sprintf("m%03d", i)
	}
	if _, err := s.Append(ctx, persist.Message{ID: 1, From: "o", ClientMsgID: "1", Group: true}, members); err != nil {
		t.Fatal(err)
	}
	// Another writer appends to m150 behind this store's back.
	foreign := persist.Message{ID: 99, From: "f", ClientMsgID: "f"}
	if _, err := s.messages.InsertOne(ctx, messageDoc(&foreign)); err != nil {
		t.Fatal(err)
	}
	putEntry(t, s, "m150", 2, 99)
	before := s.Stats()
	res, err := s.Append(ctx, persist.Message{ID: 2, From: "o", ClientMsgID: "2", Group: true}, members)
	if err != nil {
		t.Fatal(err)
	}
	after := s.Stats()
	if after.Conflicts-before.Conflicts != 1 {
		t.Errorf("conflicts %d, want 1 (stats %+v)", after.Conflicts-before.Conflicts, after)
	}
	for i, seq := range res.Seqs {
		want := uint64(2)
		if i == 150 {
			want = 3
		}
		if seq != want {
			t.Fatalf("member %d: seq %d, want %d", i, seq, want)
		}
	}
	for _, u := range []string{"m000", "m099", "m100", "m149", "m150", "m151", "m249"} {
		es, err := s.ReadInbox(ctx, u, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		for _, e := range es {
			ids = append(ids, e.Msg.ID)
		}
		want := []uint64{1, 2}
		if u == "m150" {
			want = []uint64{1, 99, 2}
		}
		if !slices.Equal(ids, want) {
			t.Fatalf("inbox %s holds %v, want %v", u, ids, want)
		}
	}
}

func testHeadsHint(t *testing.T, s *Store) {
	ctx := t.Context()
	for i := 1; i <= 40; i++ {
		if _, err := s.Append(ctx, persist.Message{ID: uint64(i), From: "a", ClientMsgID: fmt.Sprint(i)}, []string{"u"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.syncUpkeep(ctx); err != nil { // the hint is written after the commit
		t.Fatal(err)
	}
	raw, err := s.heads.FindOne(ctx, bson.D{{Key: "_id", Value: keyPart("u")}}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	if v, err := int64Field(raw, "seq"); err != nil || v < 32 || v > 40 {
		t.Fatalf("heads hint = %d, %v; want 32..40", v, err)
	}
	// A store with a cold cache continues at 41.
	s2, err := Open(ctx, Options{URI: s.opts.URI, Database: s.opts.Database})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	res, err := s2.Append(context.Background(), persist.Message{ID: 41, From: "a", ClientMsgID: "41"}, []string{"u"})
	if err != nil || res.Seqs[0] != 41 {
		t.Fatalf("cold append = %+v, %v", res, err)
	}
}

func optUpsert() *options.ReplaceOptionsBuilder { return options.Replace().SetUpsert(true) }
