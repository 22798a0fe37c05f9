package pebblestore

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/storetest"
)

// The shared suites again with every message's refs in a refs record (the
// first layout, and what a group message gets): both ways of keeping refs
// pass the same contract.
func TestConformanceRefsRecords(t *testing.T) {
	open := func(t *testing.T) persist.Store {
		s, err := Open(Options{Dir: t.TempDir(), inlineRefs: -1})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	t.Run("Run", func(t *testing.T) { storetest.Run(t, open) })
	t.Run("Chat", func(t *testing.T) { storetest.RunChat(t, open) })
	t.Run("Retention", func(t *testing.T) {
		storetest.RunRetention(t, func(t *testing.T, r persist.Retention) persist.Store {
			s, err := Open(Options{Dir: t.TempDir(), inlineRefs: -1, Retention: r})
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
	})
}

func TestInlineRefsEncoding(t *testing.T) {
	m := persist.Message{ID: 3, From: "al", To: "bo", ClientMsgID: "c", Timestamp: 9, Body: []byte("body")}
	refs := []ref{{"al", 1}, {"bo", 1 << 40}, {"cy\x00", 7}}
	rec := appendMessageRec(nil, &m, 0, refs)
	var got []ref
	dm, ev, inline, err := decodeMessageRefs(3, rec, &got, true)
	if err != nil || !inline || ev != 0 || string(dm.Body) != "body" || dm.From != "al" || !slices.Equal(got, refs) {
		t.Fatalf("round trip: %+v %v %v %v", dm, got, inline, err)
	}
	// The tags name the sender and recipient without their bytes: a 1:1
	// message's two refs take 2 bytes each plus the seqs.
	if n := len(appendMessageRec(nil, &m, 0, refs[:2])) - len(appendMessage(nil, &m)); n != 1+(1+1)+(1+6) {
		t.Fatalf("two inline refs take %d bytes", n)
	}
	// Readers of the message alone skip the refs.
	if dm, err := decodeMessage(3, rec); err != nil || string(dm.Body) != "body" {
		t.Fatalf("decodeMessage: %+v %v", dm, err)
	}
	// Recalled: refs and no body.
	rc := appendMessageRec(nil, &m, 77, refs[:1])
	if dm, ev, inline, err := decodeMessageRefs(3, rc, &got, true); err != nil || ev != 77 || !inline || dm.Body != nil || !slices.Equal(got, refs[:1]) {
		t.Fatalf("recalled round trip: %+v %d %v %v %v", dm, ev, inline, got, err)
	}
	if _, err := decodeMessage(3, append(rc, 'x')); !errors.Is(err, errCorrupt) {
		t.Fatalf("recalled record with a body: %v", err)
	}
	// A record without refs says so: its refs are in the refs table.
	if _, _, inline, err := decodeMessageRefs(3, appendMessage(nil, &m), &got, true); err != nil || inline {
		t.Fatalf("record without refs: inline %v, %v", inline, err)
	}
	// Damage: no entries, an unknown tag, a truncated entry.
	base := len(appendMessageRec(nil, &persist.Message{From: "al", To: "bo", ClientMsgID: "c", Timestamp: 9}, 0, nil))
	for _, bad := range [][]byte{
		append(appendMessageRec(nil, &m, 0, nil)[:base:base], 0),
		append(appendMessageRec(nil, &m, 0, nil)[:base:base], 1, 3, 1),
		append(appendMessageRec(nil, &m, 0, nil)[:base:base], 1, 2, 5, 'a'),
	} {
		bad[7] |= flagRefs // the flags byte: after the version, lp("al") and lp("bo")
		if _, err := decodeMessage(3, bad); !errors.Is(err, errCorrupt) {
			t.Errorf("damaged refs %x: %v, want errCorrupt", bad, err)
		}
	}
}

// TestFormat1StoreOpens: a store written in the first layout (every
// message with a refs record, format marker 1) opens, reads, dedups,
// replays and is trimmed by retention as before; it is marked format 2, and
// a message it rewrites loses its refs record. A marker from a newer
// version is refused with what to do.
func TestFormat1StoreOpens(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const ts = 1_000_000
	m1 := persist.Message{ID: 10, From: "al", To: "bo", ClientMsgID: "c1", Timestamp: ts, Body: []byte("one")}
	m2 := persist.Message{ID: 11, From: "al", To: "g", Group: true, ClientMsgID: "c2", Timestamp: ts, Body: []byte("two")}
	g := []string{"al", "bo", "cy", "di", "ed", "fa"}

	s, err := Open(Options{Dir: dir, inlineRefs: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, m1, []string{"al", "bo"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, m2, g); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	setFormat(t, dir, 1)

	s, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("open of a format 1 store: %v", err)
	}
	if v := rawGet(t, s, metaFormatKey); string(v) != string([]byte{formatVersion}) {
		t.Fatalf("format marker %v after Open, want %d", v, formatVersion)
	}
	if !hasKey(t, s, keyID(nil, tRefs, m1.ID)) || !hasKey(t, s, keyID(nil, tRefs, m2.ID)) {
		t.Fatal("the refs records of the old messages are gone")
	}
	page, err := s.ReadInbox(ctx, "bo", 0, 10)
	if err != nil || len(page) != 2 || page[0].Msg.ID != m1.ID || string(page[0].Msg.Body) != "one" || page[1].Msg.ID != m2.ID {
		t.Fatalf("ReadInbox: %+v, %v", page, err)
	}
	// A retry of m1 with one more inbox: the old seqs, a new one, and the
	// refs now in the message record (three fit).
	res, err := s.Append(ctx, m1, []string{"al", "bo", "cy"})
	if err != nil || !res.Duplicate || !slices.Equal(res.Seqs, []uint64{1, 1, 2}) {
		t.Fatalf("retry of an old message: %+v, %v", res, err)
	}
	if hasKey(t, s, keyID(nil, tRefs, m1.ID)) {
		t.Fatal("the refs record of a message rewritten with its refs is still there")
	}
	if _, _, inline, err := decodeMessageRefs(m1.ID, rawGet(t, s, keyID(nil, tMessage, m1.ID)), nil, false); err != nil || !inline {
		t.Fatalf("rewritten record: inline %v, %v", inline, err)
	}
	// A retry of the group message (too many refs to inline) finds it.
	if res, err := s.Append(ctx, m2, g); err != nil || !res.Duplicate || !slices.Equal(res.Seqs, []uint64{2, 2, 1, 1, 1, 1}) {
		t.Fatalf("retry of an old group message: %+v, %v", res, err)
	}
	// A fresh 1:1 message has no refs record.
	m3 := persist.Message{ID: 12, From: "bo", To: "al", ClientMsgID: "c3", Timestamp: ts, Body: []byte("three")}
	if _, err := s.Append(ctx, m3, []string{"bo", "al"}); err != nil {
		t.Fatal(err)
	}
	if hasKey(t, s, keyID(nil, tRefs, m3.ID)) {
		t.Fatal("a fresh 1:1 message got a refs record")
	}
	var replayed []string
	err = s.ReplayFrom(ctx, 0, func(msg *persist.Message, inboxes []string, seqs []uint64) error {
		replayed = append(replayed, msg.ClientMsgID+":"+strings.Join(inboxes, ","))
		return nil
	})
	want := []string{"c1:al,bo,cy", "c2:" + strings.Join(g, ","), "c3:bo,al"}
	if err != nil || !slices.Equal(replayed, want) {
		t.Fatalf("ReplayFrom: %q, %v; want %q", replayed, err, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Retention by age removes old and new messages alike, refs records
	// included.
	s, err = Open(Options{Dir: dir, Retention: persist.Retention{MaxAge: time.Hour, Interval: time.Hour},
		Now: func() time.Time { return time.UnixMilli(ts).Add(2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.EnforceRetention(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tab := range []byte{tMessage, tRefs, tDedup} {
		if n := countTable(t, s, tab); n != 0 {
			t.Errorf("table %q holds %d keys after retention removed every message", tab, n)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	setFormat(t, dir, formatVersion+1)
	if s, err := Open(Options{Dir: dir}); err == nil {
		s.Close()
		t.Fatal("a store of a newer format opened")
	} else if !strings.Contains(err.Error(), "newer version") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("refusal does not say what to do: %v", err)
	}
}

// setFormat writes the store's format marker with Pebble directly.
func setFormat(t *testing.T, dir string, v byte) {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{FormatMajorVersion: pebble.FormatNewest})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set(metaFormatKey, []byte{v}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// rawGet reads key from the database (synced writes only: every call
// above waited for its commit); nil when absent.
func rawGet(t *testing.T, s *Store, key []byte) []byte {
	t.Helper()
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	return append([]byte(nil), v...)
}

func hasKey(t *testing.T, s *Store, key []byte) bool { return rawGet(t, s, key) != nil }

func countTable(t *testing.T, s *Store, tab byte) int {
	t.Helper()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tab}, UpperBound: []byte{tab + 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	return n
}
