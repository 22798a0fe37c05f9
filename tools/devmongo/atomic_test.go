package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"
)

// opMsgOf builds an OP_MSG with body and, when seqID is not empty, one
// document sequence section.
func opMsgOf(body bsoncore.Document, seqID string, seq ...bsoncore.Document) []byte {
	msg := make([]byte, headerLen, 64)
	binary.LittleEndian.PutUint32(msg[12:], opMsg)
	msg = binary.LittleEndian.AppendUint32(msg, 0)
	msg = append(msg, 0)
	msg = append(msg, body...)
	if seqID != "" {
		msg = append(msg, 1)
		start := len(msg)
		msg = binary.LittleEndian.AppendUint32(msg, 0)
		msg = append(append(msg, seqID...), 0)
		for _, d := range seq {
			msg = append(msg, d...)
		}
		binary.LittleEndian.PutUint32(msg[start:], uint32(len(msg)-start))
	}
	binary.LittleEndian.PutUint32(msg, uint32(len(msg)))
	return msg
}

func doc(t *testing.T, v any) bsoncore.Document {
	t.Helper()
	b, err := bson.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWriteTarget: the write commands are locked per document when every
// statement's filter pins one by _id, per collection otherwise; other
// commands are not locked.
func TestWriteTarget(t *testing.T) {
	byID := func(id any) bson.D {
		return bson.D{{Key: "q", Value: bson.D{{Key: "_id", Value: id}}}, {Key: "u", Value: bson.D{}}}
	}
	cases := []struct {
		name      string
		msg       []byte
		ok, whole bool
		ids       int
		wantNS    string
	}{
		{"update in a sequence, by _id", opMsgOf(doc(t, bson.D{{Key: "update", Value: "convs"}, {Key: "$db", Value: "imgn"}}), "updates",
			doc(t, byID("a")), doc(t, byID("b"))), true, false, 2, "imgn.convs"},
		{"update in the body, by _id and version", opMsgOf(doc(t, bson.D{{Key: "update", Value: "groups"}, {Key: "updates", Value: bson.A{
			bson.D{{Key: "q", Value: bson.D{{Key: "_id", Value: 7}, {Key: "v", Value: 3}}}}}}, {Key: "$db", Value: "imgn"}}), ""), true, false, 1, "imgn.groups"},
		{"update by another field", opMsgOf(doc(t, bson.D{{Key: "update", Value: "inbox"}, {Key: "$db", Value: "imgn"}}), "updates",
			doc(t, byID("a")), doc(t, bson.D{{Key: "q", Value: bson.D{{Key: "user", Value: "u"}}}})), true, true, 0, "imgn.inbox"},
		{"update by an _id operator", opMsgOf(doc(t, bson.D{{Key: "update", Value: "c"}, {Key: "$db", Value: "d"}}), "updates",
			doc(t, byID(bson.D{{Key: "$in", Value: bson.A{1, 2}}}))), true, true, 0, "d.c"},
		{"findAndModify by _id", opMsgOf(doc(t, bson.D{{Key: "findAndModify", Value: "convs"}, {Key: "query", Value: bson.D{{Key: "_id", Value: "x"}}}, {Key: "$db", Value: "imgn"}}), ""),
			true, false, 1, "imgn.convs"},
		{"delete without a filter", opMsgOf(doc(t, bson.D{{Key: "delete", Value: "c"}, {Key: "$db", Value: "d"}}), "deletes", doc(t, bson.D{{Key: "limit", Value: 1}})),
			true, true, 0, "d.c"},
		{"insert", opMsgOf(doc(t, bson.D{{Key: "insert", Value: "c"}, {Key: "$db", Value: "d"}}), "documents", doc(t, bson.D{{Key: "_id", Value: 1}})), false, false, 0, ""},
		{"find", opMsgOf(doc(t, bson.D{{Key: "find", Value: "c"}, {Key: "filter", Value: bson.D{}}, {Key: "$db", Value: "d"}}), ""), false, false, 0, ""},
		{"truncated", opMsgOf(doc(t, bson.D{{Key: "update", Value: "c"}}), "")[:25], false, false, 0, ""},
	}
	for _, tc := range cases {
		ns, ids, whole, ok := writeTarget(tc.msg)
		if ok != tc.ok || whole != tc.whole || len(ids) != tc.ids || ns != tc.wantNS {
			t.Errorf("%s: ns %q, %d ids, whole %v, ok %v; want %q, %d, %v, %v", tc.name, ns, len(ids), whole, ok, tc.wantNS, tc.ids, tc.whole, tc.ok)
		}
	}
}

// TestPinnedIDNumbers: numbers that MongoDB matches across types share a
// lock; other values keep their type.
func TestPinnedIDNumbers(t *testing.T) {
	key := func(id any) string {
		k, ok := pinnedID(doc(t, bson.D{{Key: "_id", Value: id}}))
		if !ok {
			t.Fatalf("_id %v not pinned", id)
		}
		return string(k)
	}
	if a, b, c := key(int32(5)), key(int64(5)), key(5.0); a != b || b != c {
		t.Error("int32, int64 and double 5 have different locks")
	}
	if key(5.5) == key(int64(5)) || key("5") == key(int64(5)) {
		t.Error("5.5 or \"5\" shares the lock of 5")
	}
}

// TestUpdatesAreAtomic runs concurrent updates of one document through a
// real devmongo (FerretDB on PostgreSQL) and checks that none is lost, as
// on MongoDB: $max upserts of different fields, a version check, and $inc
// through a filter that does not name the _id. Without the relay's locks
// FerretDB loses some of each.
func TestUpdatesAreAtomic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, []string{"--dir", t.TempDir(), "--listen", "127.0.0.1:0", "--log-level", "warn"}, func(a string) { addrc <- a })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("devmongo did not start")
	}
	cl, err := mongo.Connect(ctx, options.Client().ApplyURI("mongodb://"+addr+"/").SetTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Disconnect(context.Background())
	c := cl.Database("atomic").Collection("c")
	if _, err := c.InsertMany(ctx, []any{bson.D{{Key: "_id", Value: "v"}, {Key: "v", Value: 0}}, bson.D{{Key: "_id", Value: "n"}, {Key: "name", Value: "n"}, {Key: "n", Value: 0}}}); err != nil {
		t.Fatal(err)
	}

	const writers, each = 6, 30
	var wg sync.WaitGroup
	var mu sync.Mutex
	versions := 0 // version checks that matched
	errs := make(chan error, 3*writers)
	for w := range writers {
		wg.Add(3)
		go func() { // $max upserts of field f<w> of document m
			defer wg.Done()
			for i := 1; i <= each; i++ {
				_, err := c.UpdateOne(ctx, bson.D{{Key: "_id", Value: "m"}}, bson.D{{Key: "$max", Value: bson.D{{Key: fmt.Sprint("f", w), Value: i}}}},
					options.Update().SetUpsert(true))
				if err != nil && !mongo.IsDuplicateKeyError(err) { // the first upserts may race, as on MongoDB
					errs <- err
					return
				}
			}
		}()
		go func() { // read the version, then raise it only if unchanged
			defer wg.Done()
			for range each {
				var d struct{ V int }
				if err := c.FindOne(ctx, bson.D{{Key: "_id", Value: "v"}}).Decode(&d); err != nil {
					errs <- err
					return
				}
				res, err := c.UpdateOne(ctx, bson.D{{Key: "_id", Value: "v"}, {Key: "v", Value: d.V}}, bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: d.V + 1}}}})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				versions += int(res.ModifiedCount)
				mu.Unlock()
			}
		}()
		go func() { // $inc through a filter on another field
			defer wg.Done()
			for range each {
				if _, err := c.UpdateOne(ctx, bson.D{{Key: "name", Value: "n"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var m bson.M
	if err := c.FindOne(ctx, bson.D{{Key: "_id", Value: "m"}}).Decode(&m); err != nil {
		t.Fatal(err)
	}
	for w := range writers {
		if got := m[fmt.Sprint("f", w)]; got != int32(each) {
			t.Errorf("field f%d = %v after %d $max upserts up to %d: an update was lost", w, got, each, each)
		}
	}
	var v, n struct{ V, N int }
	if err := c.FindOne(ctx, bson.D{{Key: "_id", Value: "v"}}).Decode(&v); err != nil {
		t.Fatal(err)
	}
	if v.V != versions {
		t.Errorf("version %d after %d updates that matched their version check: two matched the same version", v.V, versions)
	}
	if err := c.FindOne(ctx, bson.D{{Key: "_id", Value: "n"}}).Decode(&n); err != nil {
		t.Fatal(err)
	}
	if n.N != writers*each {
		t.Errorf("n = %d after %d $inc: an update was lost", n.N, writers*each)
	}
}
