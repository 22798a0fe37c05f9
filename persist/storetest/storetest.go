// Package storetest is the conformance suite of persist.Store: every
// implementation runs Run (and, if it is durable, RunDurable) from its own
// tests, so that all stores provide the same guarantees. Bench holds the
// shared benchmarks.
//
// The suite tests only behaviour documented in package persist (store.go and
// validate.go); a failure names the guarantee that was broken.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/imgn/imgn/persist"
)

// Run runs the conformance suite against the stores made by open. open is
// called once per subtest, possibly from parallel subtests, and must return
// a fresh, empty store or fail t. The suite closes every store it gets (an
// ErrClosed from that Close is ignored), so open need not; open may register
// its own t.Cleanup (for temporary directories, say), which then runs after
// the suite's Close.
func Run(t *testing.T, open func(t *testing.T) persist.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s persist.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"BodyOwnership", testBodyOwnership},
		{"SeqsGapFreePerInbox", testSeqsGapFree},
		{"InboxNamesDoNotCollide", testInboxNames},
		{"MultiInbox", testMultiInbox},
		{"Dedup", testDedup},
		{"PartialThenComplete", testPartialThenComplete},
		{"LargeGroup", testLargeGroup},
		{"IDCollision", testIDCollision},
		{"ReadInboxPaging", testPaging},
		{"LastSeq", testLastSeq},
		{"Cursors", testCursors},
		{"Users", testUsers},
		{"Groups", testGroups},
		{"GroupFull", testGroupFull},
		{"Invalid", testInvalid},
		{"ContextDone", testContextDone},
		{"ConcurrentAppends", testConcurrentAppends},
		{"ConcurrentDuplicates", testConcurrentDuplicates},
		{"Closed", testClosed},
		{"CloseWhileBusy", testCloseWhileBusy},
	}
	tests = append(tests, groupTests...)
	probe := open(t)
	tests = append(tests, optionalTests(probe)...)
	if err := probe.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, openStore(t, func(t *testing.T) persist.Store { return open(t) }))
		})
	}
}

// openStore calls open and registers the suite's Close.
func openStore(t *testing.T, open func(t *testing.T) persist.Store) persist.Store {
	t.Helper()
	s := open(t)
	if s == nil {
		t.Fatal("open returned a nil store")
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, persist.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// msg returns a distinct, fully populated message.
func msg(id uint64, from, cmid string) persist.Message {
	return persist.Message{
		ID:          id,
		From:        from,
		To:          "to-" + from,
		ClientMsgID: cmid,
		Timestamp:   1_700_000_000_000 + int64(id),
		Kind:        uint32(id % 3),
		Body:        fmt.Appendf(nil, "body of %d from %s/%s", id, from, cmid),
	}
}

// sameMsg reports how got differs from want, or "" if equal (nil and empty
// bodies are equal).
func sameMsg(got, want persist.Message) string {
	if got.ID != want.ID || got.From != want.From || got.To != want.To || got.Group != want.Group ||
		got.ClientMsgID != want.ClientMsgID || got.Timestamp != want.Timestamp || got.Kind != want.Kind {
		g, w := got, want
		g.Body, w.Body = nil, nil
		return fmt.Sprintf("got %+v, want %+v", g, w)
	}
	if !bytes.Equal(got.Body, want.Body) {
		return fmt.Sprintf("body %q, want %q", got.Body, want.Body)
	}
	return ""
}

func mustAppend(t *testing.T, s persist.Store, m persist.Message, inboxes ...string) persist.AppendResult {
	t.Helper()
	res, err := s.Append(t.Context(), m, inboxes)
	if err != nil {
		t.Fatalf("Append(%d %q/%q, %q): %v", m.ID, m.From, m.ClientMsgID, inboxes, err)
	}
	if len(res.Seqs) != len(inboxes) {
		t.Fatalf("Append(%q): %d seqs for %d inboxes", inboxes, len(res.Seqs), len(inboxes))
	}
	return res
}

func mustRead(t *testing.T, s persist.Store, user string, after uint64, limit int) []persist.InboxEntry {
	t.Helper()
	es, err := s.ReadInbox(t.Context(), user, after, limit)
	if err != nil {
		t.Fatalf("ReadInbox(%q, %d, %d): %v", user, after, limit, err)
	}
	return es
}

func mustLastSeq(t *testing.T, s persist.Store, user string) uint64 {
	t.Helper()
	seq, err := s.LastSeq(t.Context(), user)
	if err != nil {
		t.Fatalf("LastSeq(%q): %v", user, err)
	}
	return seq
}

// checkInbox asserts that user's inbox holds exactly the message IDs ids at
// seqs 1..len(ids), and that LastSeq agrees.
func checkInbox(t *testing.T, s persist.Store, user string, ids ...uint64) {
	t.Helper()
	es := mustRead(t, s, user, 0, len(ids)+10)
	got := make([]uint64, len(es))
	for i, e := range es {
		if e.Seq != uint64(i+1) {
			t.Fatalf("inbox %q: entry %d has seq %d, want %d (gap or disorder)", user, i, e.Seq, i+1)
		}
		got[i] = e.Msg.ID
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("inbox %q holds ids %v, want %v", user, got, ids)
	}
	if last := mustLastSeq(t, s, user); last != uint64(len(ids)) {
		t.Fatalf("LastSeq(%q) = %d, want %d", user, last, len(ids))
	}
}

// ReadGapFree reads inbox whole and fails t unless it holds seqs 1 ..
// LastSeq, each once, with no message twice. It returns the entries.
func ReadGapFree(t *testing.T, s persist.MessageStore, inbox string) []persist.InboxEntry {
	t.Helper()
	last, err := s.LastSeq(t.Context(), inbox)
	if err != nil {
		t.Fatalf("LastSeq(%q): %v", inbox, err)
	}
	es, err := s.ReadInbox(t.Context(), inbox, 0, int(last)+10)
	if err != nil {
		t.Fatalf("ReadInbox(%q): %v", inbox, err)
	}
	if uint64(len(es)) != last {
		t.Fatalf("inbox %s: %d entries, LastSeq %d", inbox, len(es), last)
	}
	seen := map[uint64]bool{}
	for i, e := range es {
		if e.Seq != uint64(i+1) {
			t.Fatalf("inbox %s: entry %d has seq %d (gap)", inbox, i, e.Seq)
		}
		if seen[e.Msg.ID] {
			t.Fatalf("inbox %s: message %d twice", inbox, e.Msg.ID)
		}
		seen[e.Msg.ID] = true
	}
	return es
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v, want %v", what, err, target)
	}
}

func testRoundTrip(t *testing.T, s persist.Store) {
	big := bytes.Repeat([]byte{0, 1, 2, 0xff}, 16<<10) // 64 KiB
	cases := []struct {
		name string
		m    persist.Message
	}{
		{"chat", msg(1, "alice", "c1")},
		{"group", persist.Message{ID: 2, From: "alice", To: "g1", Group: true, ClientMsgID: "c2", Timestamp: 5, Kind: 0, Body: []byte("hi all")}},
		{"system", persist.Message{ID: 3, From: "", To: "bob", ClientMsgID: "sys-1", Timestamp: 6, Kind: 1, Body: []byte("notice")}},
		{"nil body", persist.Message{ID: 4, From: "alice", To: "bob", ClientMsgID: "c4"}},
		{"binary ids", persist.Message{ID: 5, From: "a\x00b", To: "\x00", ClientMsgID: "\x00\xff\x01", Timestamp: -1, Body: []byte{0}}},
		{"extreme values", persist.Message{ID: math.MaxUint64, From: strings.Repeat("f", persist.MaxIDLen), To: strings.Repeat("t", 5000),
			ClientMsgID: strings.Repeat("c", persist.MaxIDLen), Timestamp: math.MinInt64, Kind: math.MaxUint32, Body: []byte("x")}},
		{"big body", persist.Message{ID: 7, From: "alice", To: "bob", ClientMsgID: "c7", Timestamp: math.MaxInt64, Body: big}},
	}
	for i, tc := range cases {
		res := mustAppend(t, s, tc.m, "bob")
		if res.Duplicate {
			t.Errorf("%s: fresh append reported Duplicate", tc.name)
		}
		if d := sameMsg(res.Msg, tc.m); d != "" {
			t.Errorf("%s: AppendResult.Msg: %s", tc.name, d)
		}
		if want := []uint64{uint64(i + 1)}; !slices.Equal(res.Seqs, want) {
			t.Errorf("%s: seqs %v, want %v", tc.name, res.Seqs, want)
		}
		got, err := s.Lookup(t.Context(), tc.m.From, tc.m.ClientMsgID)
		if err != nil {
			t.Fatalf("%s: Lookup: %v", tc.name, err)
		}
		if d := sameMsg(got, tc.m); d != "" {
			t.Errorf("%s: Lookup: %s", tc.name, d)
		}
		es := mustRead(t, s, "bob", uint64(i), 1)
		if len(es) != 1 || es[0].Seq != uint64(i+1) {
			t.Fatalf("%s: ReadInbox = %+v, want seq %d", tc.name, es, i+1)
		}
		if d := sameMsg(es[0].Msg, tc.m); d != "" {
			t.Errorf("%s: ReadInbox: %s", tc.name, d)
		}
	}
	if _, err := s.Lookup(t.Context(), "alice", "nope"); !errors.Is(err, persist.ErrNotFound) {
		t.Errorf("Lookup of unknown key: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Lookup(t.Context(), "bob", "c1"); !errors.Is(err, persist.ErrNotFound) {
		t.Errorf("Lookup with another sender's key: err = %v, want ErrNotFound", err)
	}
}

// testBodyOwnership: the store copies Body on write and hands out slices the
// caller owns.
func testBodyOwnership(t *testing.T, s persist.Store) {
	body := []byte("hello")
	m := persist.Message{ID: 1, From: "alice", To: "bob", ClientMsgID: "c1", Body: body}
	want := m
	want.Body = []byte("hello")

	res := mustAppend(t, s, m, "bob", "alice")
	copy(body, "XXXXX") // the caller reuses its buffer
	for i := range res.Msg.Body {
		res.Msg.Body[i] = 'R'
	}
	got, err := s.Lookup(t.Context(), "alice", "c1")
	if err != nil {
		t.Fatal(err)
	}
	if d := sameMsg(got, want); d != "" {
		t.Fatalf("after the caller mutated its buffers: %s", d)
	}
	copy(got.Body, "LLLLL")
	es := mustRead(t, s, "bob", 0, 10)
	if d := sameMsg(es[0].Msg, want); d != "" {
		t.Fatalf("after mutating a Lookup result: %s", d)
	}
	copy(es[0].Msg.Body, "IIIII")
	es2 := mustRead(t, s, "alice", 0, 10)
	if d := sameMsg(es2[0].Msg, want); d != "" {
		t.Fatalf("after mutating a ReadInbox result: %s", d)
	}
	// A duplicate's Msg is the stored message: mutating it must not leak in.
	dup := mustAppend(t, s, m, "bob")
	copy(dup.Msg.Body, "DDDDD")
	got, err = s.Lookup(t.Context(), "alice", "c1")
	if err != nil {
		t.Fatal(err)
	}
	if d := sameMsg(got, want); d != "" {
		t.Fatalf("after mutating a duplicate's AppendResult.Msg: %s", d)
	}
	// Mutating the returned seqs must not matter either.
	dup.Seqs[0] = 99
	if again := mustAppend(t, s, m, "bob"); again.Seqs[0] != 1 {
		t.Fatalf("after mutating AppendResult.Seqs: seq %d, want 1", again.Seqs[0])
	}
}

func testSeqsGapFree(t *testing.T, s persist.Store) {
	var aIDs, bIDs []uint64
	for i := 1; i <= 30; i++ {
		id := uint64(i)
		inboxes := []string{"a"}
		if i%2 == 0 {
			inboxes = append(inboxes, "b")
		}
		res := mustAppend(t, s, msg(id, "sender", fmt.Sprint("m", i)), inboxes...)
		aIDs = append(aIDs, id)
		if res.Seqs[0] != uint64(len(aIDs)) {
			t.Fatalf("msg %d: inbox a seq %d, want %d", i, res.Seqs[0], len(aIDs))
		}
		if i%2 == 0 {
			bIDs = append(bIDs, id)
			if res.Seqs[1] != uint64(len(bIDs)) {
				t.Fatalf("msg %d: inbox b seq %d, want %d", i, res.Seqs[1], len(bIDs))
			}
		}
	}
	checkInbox(t, s, "a", aIDs...)
	checkInbox(t, s, "b", bIDs...)
	checkInbox(t, s, "c")
}

// testInboxNames: names that are prefixes of each other, or contain NUL and
// seq-like bytes, are distinct inboxes.
func testInboxNames(t *testing.T, s persist.Store) {
	names := []string{"u", "u1", "u\x00", "u\x00\x00\x00\x00\x00\x00\x00\x01", "\x01u", "U", "u "}
	for i, n := range names {
		for j := 0; j <= i; j++ {
			mustAppend(t, s, msg(uint64(100*i+j+1), "x", fmt.Sprint(i, "-", j)), n)
		}
	}
	for i, n := range names {
		ids := make([]uint64, i+1)
		for j := range ids {
			ids[j] = uint64(100*i + j + 1)
		}
		checkInbox(t, s, n, ids...)
	}
	// Cursors and groups keyed by the same names stay apart too.
	for i, n := range names {
		if err := s.SetCursor(t.Context(), n, "d", uint64(i+1)); err != nil {
			t.Fatal(err)
		}
		if err := s.SetCursor(t.Context(), "d", n, uint64(i+100)); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range names {
		if c, err := s.Cursor(t.Context(), n, "d"); err != nil || c != uint64(i+1) {
			t.Fatalf("Cursor(%q, d) = %d, %v; want %d", n, c, err, i+1)
		}
		if c, err := s.Cursor(t.Context(), "d", n); err != nil || c != uint64(i+100) {
			t.Fatalf("Cursor(d, %q) = %d, %v; want %d", n, c, err, i+100)
		}
	}
	for _, n := range names {
		if err := s.CreateGroup(t.Context(), persist.Group{ID: n, Members: []string{n}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		g, err := s.GetGroup(t.Context(), n)
		if err != nil || !slices.Equal(g.Members, []string{n}) {
			t.Fatalf("GetGroup(%q) = %+v, %v; want members [%q]", n, g, err, n)
		}
	}
}

func testMultiInbox(t *testing.T, s persist.Store) {
	mustAppend(t, s, msg(1, "x", "1"), "a")
	mustAppend(t, s, msg(2, "x", "2"), "a", "b")
	gm := msg(10, "a", "g1")
	gm.To, gm.Group = "grp", true
	res := mustAppend(t, s, gm, "a", "b", "c")
	if want := []uint64{3, 2, 1}; !slices.Equal(res.Seqs, want) {
		t.Fatalf("group append seqs %v, want %v (each member's own next seq)", res.Seqs, want)
	}
	checkInbox(t, s, "a", 1, 2, 10)
	checkInbox(t, s, "b", 2, 10)
	checkInbox(t, s, "c", 10)
	for _, in := range []string{"a", "b", "c"} {
		es := mustRead(t, s, in, mustLastSeq(t, s, in)-1, 1)
		if d := sameMsg(es[0].Msg, gm); d != "" {
			t.Fatalf("inbox %s: %s", in, d)
		}
	}
	if got, err := s.Lookup(t.Context(), "a", "g1"); err != nil || got.ID != 10 {
		t.Fatalf("Lookup = %+v, %v", got, err)
	}
}

func testDedup(t *testing.T, s persist.Store) {
	orig := msg(1, "alice", "c1")
	first := mustAppend(t, s, orig, "bob", "alice")

	retry := orig
	retry.ID, retry.Timestamp, retry.Kind, retry.Body = 99, 12345, 7, []byte("other")
	res := mustAppend(t, s, retry, "bob", "alice")
	if !res.Duplicate {
		t.Fatal("retry with the same (From, ClientMsgID): Duplicate = false")
	}
	if d := sameMsg(res.Msg, orig); d != "" {
		t.Fatalf("duplicate must return the original message: %s", d)
	}
	if !slices.Equal(res.Seqs, first.Seqs) {
		t.Fatalf("duplicate seqs %v, want original %v", res.Seqs, first.Seqs)
	}
	checkInbox(t, s, "bob", 1)
	checkInbox(t, s, "alice", 1)
	if got, err := s.Lookup(t.Context(), "alice", "c1"); err != nil || sameMsg(got, orig) != "" {
		t.Fatalf("Lookup after duplicate = %+v, %v; want the original", got, err)
	}
	// Nothing of the retry was stored: its ID is still free.
	mustAppend(t, s, msg(99, "alice", "c99"), "bob")
	checkInbox(t, s, "bob", 1, 99)

	// The key is the pair: another sender may use the same ClientMsgID.
	if r := mustAppend(t, s, msg(2, "carol", "c1"), "bob"); r.Duplicate || r.Msg.ID != 2 {
		t.Fatalf("same ClientMsgID from another sender: %+v, want a fresh message", r)
	}
	// System messages (From "") are deduplicated too.
	sys := persist.Message{ID: 3, ClientMsgID: "sys", Kind: 1, Body: []byte("n")}
	mustAppend(t, s, sys, "bob")
	sys.ID = 4
	if r := mustAppend(t, s, sys, "bob"); !r.Duplicate || r.Msg.ID != 3 || r.Seqs[0] != 4 {
		t.Fatalf("system message retry: %+v, want Duplicate of id 3 at seq 4", r)
	}
	checkInbox(t, s, "bob", 1, 99, 2, 3)
}

func testPartialThenComplete(t *testing.T, s persist.Store) {
	mustAppend(t, s, msg(1, "x", "other"), "b")
	m := msg(5, "a", "m")
	if r := mustAppend(t, s, m, "a"); r.Duplicate || !slices.Equal(r.Seqs, []uint64{1}) {
		t.Fatalf("first append: %+v", r)
	}
	r := mustAppend(t, s, m, "a", "b")
	if !r.Duplicate || !slices.Equal(r.Seqs, []uint64{1, 2}) {
		t.Fatalf("completing append: Duplicate=%v seqs %v, want true [1 2]", r.Duplicate, r.Seqs)
	}
	// Order of inboxes is the caller's; seqs follow it.
	r = mustAppend(t, s, m, "b", "a")
	if !r.Duplicate || !slices.Equal(r.Seqs, []uint64{2, 1}) {
		t.Fatalf("repeat append: Duplicate=%v seqs %v, want true [2 1]", r.Duplicate, r.Seqs)
	}
	// A retry with a new ID still references the original message.
	m2 := m
	m2.ID = 77
	r = mustAppend(t, s, m2, "c", "a")
	if !r.Duplicate || r.Msg.ID != 5 || !slices.Equal(r.Seqs, []uint64{1, 1}) {
		t.Fatalf("retry with new id: %+v", r)
	}
	checkInbox(t, s, "a", 5)
	checkInbox(t, s, "b", 1, 5)
	checkInbox(t, s, "c", 5)
}

// testLargeGroup: a message to 2,000 inboxes, retried with part of them and
// then with more, keeps one entry per inbox.
func testLargeGroup(t *testing.T, s persist.Store) {
	const n = 2000
	members := make([]string, n)
	for i := range members {
		members[i] = fmt.Sprintf("member-%04d", i)
	}
	mustAppend(t, s, msg(1, "x", "before"), members[7])
	gm := msg(2, "owner", "big")
	gm.Group = true
	r := mustAppend(t, s, gm, members[:n/2]...)
	for i, seq := range r.Seqs {
		if want := uint64(1) + uint64(b2i(i == 7)); seq != want {
			t.Fatalf("member %d: seq %d, want %d", i, seq, want)
		}
	}
	rev := slices.Clone(members)
	slices.Reverse(rev)
	r = mustAppend(t, s, gm, rev...)
	if !r.Duplicate {
		t.Fatal("retry to all members: Duplicate = false")
	}
	for i, seq := range r.Seqs {
		if want := uint64(1) + uint64(b2i(rev[i] == members[7])); seq != want {
			t.Fatalf("%s: seq %d, want %d", rev[i], seq, want)
		}
	}
	checkInbox(t, s, members[7], 1, 2)
	checkInbox(t, s, members[n-1], 2)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// testIDCollision: a message ID already used by another (From, ClientMsgID)
// is rejected with ErrInvalid and does not disturb the stored message.
func testIDCollision(t *testing.T, s persist.Store) {
	orig := msg(1, "a", "x")
	mustAppend(t, s, orig, "u")
	_, err := s.Append(t.Context(), msg(1, "b", "y"), []string{"u", "v"})
	wantErr(t, "Append reusing a stored ID", err, persist.ErrInvalid)
	checkInbox(t, s, "u", 1)
	checkInbox(t, s, "v")
	if _, err := s.Lookup(t.Context(), "b", "y"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("rejected message is visible: %v", err)
	}
	if got, err := s.Lookup(t.Context(), "a", "x"); err != nil || sameMsg(got, orig) != "" {
		t.Fatalf("original disturbed: %+v, %v", got, err)
	}
}

func testPaging(t *testing.T, s persist.Store) {
	for i := 1; i <= 10; i++ {
		mustAppend(t, s, msg(uint64(i), "x", fmt.Sprint(i)), "u")
	}
	cases := []struct {
		after    uint64
		limit    int
		from, to uint64 // expected seqs from..to inclusive; from > to means empty
	}{
		{0, 3, 1, 3},
		{3, 3, 4, 6},
		{6, 3, 7, 9},
		{9, 3, 10, 10},
		{10, 3, 1, 0},
		{0, 100, 1, 10},
		{5, 1, 6, 6},
		{1000, 5, 1, 0},
		{math.MaxUint64, 5, 1, 0},
		{0, math.MaxInt, 1, 10},
	}
	for _, tc := range cases {
		es := mustRead(t, s, "u", tc.after, tc.limit)
		var got []uint64
		for _, e := range es {
			got = append(got, e.Seq)
			if e.Msg.ID != e.Seq {
				t.Errorf("after %d: entry seq %d holds message %d", tc.after, e.Seq, e.Msg.ID)
			}
		}
		var want []uint64
		for q := tc.from; q <= tc.to; q++ {
			want = append(want, q)
		}
		if !slices.Equal(got, want) {
			t.Errorf("ReadInbox(u, %d, %d) seqs %v, want %v", tc.after, tc.limit, got, want)
		}
	}
	if es := mustRead(t, s, "nobody", 0, 10); len(es) != 0 {
		t.Errorf("unknown user: %d entries, want 0", len(es))
	}
}

func testLastSeq(t *testing.T, s persist.Store) {
	if got := mustLastSeq(t, s, "u"); got != 0 {
		t.Fatalf("empty inbox LastSeq = %d", got)
	}
	for i := 1; i <= 5; i++ {
		mustAppend(t, s, msg(uint64(i), "x", fmt.Sprint(i)), "u")
		if got := mustLastSeq(t, s, "u"); got != uint64(i) {
			t.Fatalf("LastSeq = %d, want %d", got, i)
		}
	}
	if got := mustLastSeq(t, s, "u2"); got != 0 {
		t.Fatalf("other inbox LastSeq = %d", got)
	}
}

func testCursors(t *testing.T, s persist.Store) {
	ctx := t.Context()
	cur := func(user, dev string) uint64 {
		t.Helper()
		c, err := s.Cursor(ctx, user, dev)
		if err != nil {
			t.Fatalf("Cursor(%s, %s): %v", user, dev, err)
		}
		return c
	}
	set := func(user, dev string, seq uint64) {
		t.Helper()
		if err := s.SetCursor(ctx, user, dev, seq); err != nil {
			t.Fatalf("SetCursor(%s, %s, %d): %v", user, dev, seq, err)
		}
	}
	if c := cur("u", "phone"); c != 0 {
		t.Fatalf("unset cursor = %d", c)
	}
	steps := []struct {
		seq, want uint64
	}{{5, 5}, {3, 5}, {5, 5}, {7, 7}, {0, 7}, {math.MaxUint64, math.MaxUint64}, {8, math.MaxUint64}}
	for _, st := range steps {
		set("u", "phone", st.seq)
		if c := cur("u", "phone"); c != st.want {
			t.Fatalf("after SetCursor(%d): cursor %d, want %d (forward only)", st.seq, c, st.want)
		}
	}
	set("u", "laptop", 2)
	set("v", "phone", 9)
	if c := cur("u", "laptop"); c != 2 {
		t.Fatalf("other device cursor = %d, want 2", c)
	}
	if c := cur("v", "phone"); c != 9 {
		t.Fatalf("other user cursor = %d, want 9", c)
	}
	if c := cur("w", "phone"); c != 0 {
		t.Fatalf("unknown user cursor = %d, want 0", c)
	}
}

func testUsers(t *testing.T, s persist.Store) {
	ctx := t.Context()
	u := persist.User{ID: "alice", PasswordHash: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", Created: 1700000000000}
	if err := s.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetUser(ctx, "alice"); err != nil || got != u {
		t.Fatalf("GetUser = %+v, %v; want %+v", got, err, u)
	}
	err := s.CreateUser(ctx, persist.User{ID: "alice", PasswordHash: "other"})
	wantErr(t, "CreateUser of a taken id", err, persist.ErrUserExists)
	if got, _ := s.GetUser(ctx, "alice"); got != u {
		t.Fatalf("failed CreateUser changed the user: %+v", got)
	}
	_, err = s.GetUser(ctx, "bob")
	wantErr(t, "GetUser of unknown user", err, persist.ErrNotFound)
	empty := persist.User{ID: "bob"}
	if err := s.CreateUser(ctx, empty); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetUser(ctx, "bob"); err != nil || got != empty {
		t.Fatalf("GetUser(bob) = %+v, %v", got, err)
	}
}

func getGroup(t *testing.T, s persist.Store, id string) persist.Group {
	t.Helper()
	g, err := s.GetGroup(t.Context(), id)
	if err != nil {
		t.Fatalf("GetGroup(%s): %v", id, err)
	}
	return g
}

func testGroups(t *testing.T, s persist.Store) {
	ctx := t.Context()
	members := []string{"carol", "alice", "bob", "alice"}
	g := persist.Group{ID: "g1", Name: "friends", Owner: "alice", Members: members, Created: 42}
	if err := s.CreateGroup(ctx, g); err != nil {
		t.Fatal(err)
	}
	members[0] = "mallory" // the caller's slice is not retained
	got := getGroup(t, s, "g1")
	want := persist.Group{ID: "g1", Name: "friends", Owner: "alice", Members: []string{"alice", "bob", "carol"}, Created: 42}
	if got.ID != want.ID || got.Name != want.Name || got.Owner != want.Owner || got.Created != want.Created ||
		!slices.Equal(got.Members, want.Members) {
		t.Fatalf("GetGroup = %+v, want %+v (members sorted, deduplicated)", got, want)
	}
	got.Members[0] = "zed" // the returned slice is the caller's
	if m := getGroup(t, s, "g1").Members; !slices.Equal(m, want.Members) {
		t.Fatalf("mutating GetGroup's Members changed the store: %v", m)
	}
	wantErr(t, "CreateGroup of a taken id", s.CreateGroup(ctx, persist.Group{ID: "g1"}), persist.ErrGroupExists)
	_, err := s.GetGroup(ctx, "nope")
	wantErr(t, "GetGroup of unknown group", err, persist.ErrNotFound)

	steps := []struct {
		op     string
		user   string
		max    int
		err    error
		result []string
	}{
		{"add", "dave", 0, nil, []string{"alice", "bob", "carol", "dave"}},
		{"add", "aaron", 10, nil, []string{"aaron", "alice", "bob", "carol", "dave"}},
		{"add", "bob", 0, nil, []string{"aaron", "alice", "bob", "carol", "dave"}},
		{"remove", "carol", 0, nil, []string{"aaron", "alice", "bob", "dave"}},
		{"remove", "carol", 0, nil, []string{"aaron", "alice", "bob", "dave"}},
		{"remove", "nobody", 0, nil, []string{"aaron", "alice", "bob", "dave"}},
		{"add", "carol", -1, nil, []string{"aaron", "alice", "bob", "carol", "dave"}},
	}
	for _, st := range steps {
		var err error
		if st.op == "add" {
			err = s.AddMember(ctx, "g1", st.user, st.max)
		} else {
			err = s.RemoveMember(ctx, "g1", st.user)
		}
		if !errors.Is(err, st.err) {
			t.Fatalf("%s %s: err = %v, want %v", st.op, st.user, err, st.err)
		}
		if m := getGroup(t, s, "g1").Members; !slices.Equal(m, st.result) {
			t.Fatalf("after %s %s: members %v, want %v", st.op, st.user, m, st.result)
		}
	}
	wantErr(t, "AddMember to unknown group", s.AddMember(ctx, "nope", "a", 0), persist.ErrNotFound)
	wantErr(t, "RemoveMember from unknown group", s.RemoveMember(ctx, "nope", "a"), persist.ErrNotFound)

	if err := s.CreateGroup(ctx, persist.Group{ID: "empty"}); err != nil {
		t.Fatal(err)
	}
	if g := getGroup(t, s, "empty"); len(g.Members) != 0 {
		t.Fatalf("empty group has members %v", g.Members)
	}
}

func testGroupFull(t *testing.T, s persist.Store) {
	ctx := t.Context()
	if err := s.CreateGroup(ctx, persist.Group{ID: "g", Members: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddMember(ctx, "g", "c", 3); err != nil {
		t.Fatalf("AddMember under the limit: %v", err)
	}
	wantErr(t, "AddMember at the limit", s.AddMember(ctx, "g", "d", 3), persist.ErrGroupFull)
	if err := s.AddMember(ctx, "g", "b", 3); err != nil {
		t.Fatalf("re-adding a member of a full group must be a no-op: %v", err)
	}
	wantErr(t, "AddMember with a limit below the size", s.AddMember(ctx, "g", "d", 1), persist.ErrGroupFull)
	if m := getGroup(t, s, "g").Members; !slices.Equal(m, []string{"a", "b", "c"}) {
		t.Fatalf("members %v after ErrGroupFull", m)
	}
	if err := s.RemoveMember(ctx, "g", "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddMember(ctx, "g", "d", 3); err != nil {
		t.Fatalf("AddMember after a removal freed a place: %v", err)
	}
	if m := getGroup(t, s, "g").Members; !slices.Equal(m, []string{"b", "c", "d"}) {
		t.Fatalf("members %v", m)
	}
}

func testInvalid(t *testing.T, s persist.Store) {
	ctx := t.Context()
	long := strings.Repeat("x", persist.MaxIDLen+1)
	many := make([]string, 20)
	for i := range many {
		many[i] = fmt.Sprint("u", i)
	}
	many[19] = "u3"
	ok := msg(1, "a", "c")
	withID := func(id uint64) persist.Message { m := ok; m.ID = id; return m }
	withCMID := func(c string) persist.Message { m := ok; m.ClientMsgID = c; return m }
	withFrom := func(f string) persist.Message { m := ok; m.From = f; return m }
	appends := []struct {
		name    string
		m       persist.Message
		inboxes []string
	}{
		{"zero id", withID(0), []string{"u"}},
		{"empty client msg id", withCMID(""), []string{"u"}},
		{"long client msg id", withCMID(long), []string{"u"}},
		{"long from", withFrom(long), []string{"u"}},
		{"nil inboxes", ok, nil},
		{"no inboxes", ok, []string{}},
		{"empty inbox", ok, []string{"u", ""}},
		{"long inbox", ok, []string{long}},
		{"duplicate inbox", ok, []string{"u", "v", "u"}},
		{"duplicate among many", ok, many},
	}
	for _, tc := range appends {
		_, err := s.Append(ctx, tc.m, tc.inboxes)
		wantErr(t, "Append "+tc.name, err, persist.ErrInvalid)
	}
	checkInbox(t, s, "u")
	if _, err := s.Lookup(ctx, "a", "c"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("an invalid Append stored something: Lookup err = %v", err)
	}

	calls := []struct {
		name string
		err  error
	}{
		{"Lookup empty client msg id", second(s.Lookup(ctx, "a", ""))},
		{"Lookup long from", second(s.Lookup(ctx, long, "c"))},
		{"Lookup long client msg id", second(s.Lookup(ctx, "a", long))},
		{"ReadInbox empty user", second(s.ReadInbox(ctx, "", 0, 10))},
		{"ReadInbox long user", second(s.ReadInbox(ctx, long, 0, 10))},
		{"ReadInbox zero limit", second(s.ReadInbox(ctx, "u", 0, 0))},
		{"ReadInbox negative limit", second(s.ReadInbox(ctx, "u", 0, -1))},
		{"LastSeq empty user", second(s.LastSeq(ctx, ""))},
		{"SetCursor empty user", s.SetCursor(ctx, "", "d", 1)},
		{"SetCursor empty device", s.SetCursor(ctx, "u", "", 1)},
		{"Cursor empty user", second(s.Cursor(ctx, "", "d"))},
		{"Cursor empty device", second(s.Cursor(ctx, "u", ""))},
		{"CreateUser empty id", s.CreateUser(ctx, persist.User{})},
		{"CreateUser long id", s.CreateUser(ctx, persist.User{ID: long})},
		{"GetUser empty id", second(s.GetUser(ctx, ""))},
		{"CreateGroup empty id", s.CreateGroup(ctx, persist.Group{Members: []string{"a"}})},
		{"CreateGroup empty member", s.CreateGroup(ctx, persist.Group{ID: "g", Members: []string{"a", ""}})},
		{"GetGroup empty id", second(s.GetGroup(ctx, ""))},
		{"AddMember empty group", s.AddMember(ctx, "", "u", 0)},
		{"AddMember empty user", s.AddMember(ctx, "g", "", 0)},
		{"RemoveMember empty group", s.RemoveMember(ctx, "", "u")},
		{"RemoveMember empty user", s.RemoveMember(ctx, "g", "")},
	}
	for _, c := range calls {
		wantErr(t, c.name, c.err, persist.ErrInvalid)
	}
	if _, err := s.GetGroup(ctx, "g"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("an invalid CreateGroup stored the group: %v", err)
	}
}

func second[T any](_ T, err error) error { return err }

// testContextDone: a call whose context has already ended returns the
// context's error.
func testContextDone(t *testing.T, s persist.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	calls := []struct {
		name string
		err  error
	}{
		{"Append", second(s.Append(ctx, msg(1, "a", "c"), []string{"u"}))},
		{"Lookup", second(s.Lookup(ctx, "a", "c"))},
		{"ReadInbox", second(s.ReadInbox(ctx, "u", 0, 1))},
		{"LastSeq", second(s.LastSeq(ctx, "u"))},
		{"SetCursor", s.SetCursor(ctx, "u", "d", 1)},
		{"Cursor", second(s.Cursor(ctx, "u", "d"))},
		{"CreateUser", s.CreateUser(ctx, persist.User{ID: "u"})},
		{"GetUser", second(s.GetUser(ctx, "u"))},
		{"CreateGroup", s.CreateGroup(ctx, persist.Group{ID: "g"})},
		{"GetGroup", second(s.GetGroup(ctx, "g"))},
		{"AddMember", s.AddMember(ctx, "g", "u", 0)},
		{"RemoveMember", s.RemoveMember(ctx, "g", "u")},
	}
	for _, c := range calls {
		wantErr(t, c.name+" with a canceled context", c.err, context.Canceled)
	}
}

// testConcurrentAppends: 50 goroutines append to one shared inbox, to their
// own inbox and to a few inboxes shared by pairs; no seq is duplicated or
// skipped anywhere, and each goroutine's own inbox is in its append order.
func testConcurrentAppends(t *testing.T, s persist.Store) {
	const workers, perWorker = 50, 20
	type ack struct {
		inbox string
		seq   uint64
		id    uint64
	}
	acks := make([][]ack, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			own := fmt.Sprint("own-", w)
			for i := range perWorker {
				id := uint64(w*perWorker + i + 1)
				inboxes := []string{"hot", own}
				if i%3 == 0 {
					inboxes = append(inboxes, fmt.Sprint("pair-", w%5))
				}
				res, err := s.Append(t.Context(), msg(id, fmt.Sprint("w", w), fmt.Sprint(i)), inboxes)
				if err != nil {
					t.Errorf("worker %d: Append: %v", w, err)
					return
				}
				for j, in := range inboxes {
					acks[w] = append(acks[w], ack{in, res.Seqs[j], id})
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	byInbox := map[string]map[uint64]uint64{} // inbox -> seq -> id
	for w, as := range acks {
		var ownSeqs []uint64
		for _, a := range as {
			m := byInbox[a.inbox]
			if m == nil {
				m = map[uint64]uint64{}
				byInbox[a.inbox] = m
			}
			if prev, dup := m[a.seq]; dup {
				t.Fatalf("inbox %s: seq %d assigned to messages %d and %d", a.inbox, a.seq, prev, a.id)
			}
			m[a.seq] = a.id
			if a.inbox == fmt.Sprint("own-", w) {
				ownSeqs = append(ownSeqs, a.seq)
			}
		}
		if len(ownSeqs) != perWorker || !slices.IsSorted(ownSeqs) {
			t.Fatalf("worker %d: own inbox seqs %v not in append order", w, ownSeqs)
		}
	}
	if len(byInbox["hot"]) != workers*perWorker {
		t.Fatalf("hot inbox: %d acks", len(byInbox["hot"]))
	}
	for in, m := range byInbox {
		es := mustRead(t, s, in, 0, len(m)+10)
		if len(es) != len(m) {
			t.Fatalf("inbox %s: %d entries, %d acked", in, len(es), len(m))
		}
		for i, e := range es {
			if e.Seq != uint64(i+1) {
				t.Fatalf("inbox %s: entry %d has seq %d (gap)", in, i, e.Seq)
			}
			if m[e.Seq] != e.Msg.ID {
				t.Fatalf("inbox %s: seq %d holds message %d, acked %d", in, e.Seq, e.Msg.ID, m[e.Seq])
			}
		}
	}
}

// testConcurrentDuplicates: racing retries of one (From, ClientMsgID) behave
// as if serialised: one stores, the others are duplicates of it.
func testConcurrentDuplicates(t *testing.T, s persist.Store) {
	const n = 20
	results := make([]persist.AppendResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			m := msg(uint64(i+1), "alice", "same")
			m.Body = fmt.Appendf(nil, "attempt %d", i)
			res, err := s.Append(t.Context(), m, []string{"bob", "alice"})
			if err != nil {
				t.Errorf("Append attempt %d: %v", i, err)
			}
			results[i] = res
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	fresh := 0
	var winner persist.Message
	for _, r := range results {
		if !r.Duplicate {
			fresh++
			winner = r.Msg
		}
	}
	if fresh != 1 {
		t.Fatalf("%d appends reported a fresh message, want exactly 1", fresh)
	}
	for i, r := range results {
		if d := sameMsg(r.Msg, winner); d != "" {
			t.Fatalf("attempt %d: %s", i, d)
		}
		if !slices.Equal(r.Seqs, []uint64{1, 1}) {
			t.Fatalf("attempt %d: seqs %v, want [1 1]", i, r.Seqs)
		}
	}
	checkInbox(t, s, "bob", winner.ID)
	checkInbox(t, s, "alice", winner.ID)
}

func testClosed(t *testing.T, s persist.Store) {
	ctx := t.Context()
	mustAppend(t, s, msg(1, "a", "c"), "u")
	if err := s.CreateGroup(ctx, persist.Group{ID: "g"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	calls := []struct {
		name string
		err  error
	}{
		{"Append", second(s.Append(ctx, msg(2, "a", "d"), []string{"u"}))},
		{"Append duplicate", second(s.Append(ctx, msg(1, "a", "c"), []string{"u"}))},
		{"Lookup", second(s.Lookup(ctx, "a", "c"))},
		{"ReadInbox", second(s.ReadInbox(ctx, "u", 0, 1))},
		{"LastSeq", second(s.LastSeq(ctx, "u"))},
		{"SetCursor", s.SetCursor(ctx, "u", "d", 1)},
		{"Cursor", second(s.Cursor(ctx, "u", "d"))},
		{"CreateUser", s.CreateUser(ctx, persist.User{ID: "u"})},
		{"GetUser", second(s.GetUser(ctx, "u"))},
		{"CreateGroup", s.CreateGroup(ctx, persist.Group{ID: "g2"})},
		{"GetGroup", second(s.GetGroup(ctx, "g"))},
		{"AddMember", s.AddMember(ctx, "g", "u", 0)},
		{"RemoveMember", s.RemoveMember(ctx, "g", "u")},
		{"Close", s.Close()},
	}
	for _, c := range calls {
		wantErr(t, c.name+" after Close", c.err, persist.ErrClosed)
	}
}

// testCloseWhileBusy: Close concurrent with writes and reads neither hangs
// nor panics; every call either succeeds or reports ErrClosed.
func testCloseWhileBusy(t *testing.T, s persist.Store) {
	const workers = 8
	var wg sync.WaitGroup
	started := make(chan struct{}, workers)
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				_, err := s.Append(t.Context(), msg(uint64(w*1_000_000+i+1), fmt.Sprint(w), fmt.Sprint(i)), []string{"u", fmt.Sprint("own", w)})
				if i == 0 {
					started <- struct{}{}
				}
				if err == nil {
					_, err = s.ReadInbox(t.Context(), "u", 0, 5)
				}
				if errors.Is(err, persist.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("worker %d: %v, want nil or ErrClosed", w, err)
					return
				}
			}
		})
	}
	for range workers {
		<-started
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	wg.Wait()
}
