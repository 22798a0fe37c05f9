package storetest

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/imgn/imgn/persist"
)

// optionalTests are the cases of the optional seams a store implements.
func optionalTests(probe persist.Store) []struct {
	name string
	fn   func(t *testing.T, s persist.Store)
} {
	var out []struct {
		name string
		fn   func(t *testing.T, s persist.Store)
	}
	add := func(name string, fn func(t *testing.T, s persist.Store)) {
		out = append(out, struct {
			name string
			fn   func(t *testing.T, s persist.Store)
		}{name, fn})
	}
	if _, ok := probe.(persist.AsyncAppender); ok {
		add("AsyncBurst", testAsyncBurst)
	}
	if _, ok := probe.(persist.AsyncCursorSetter); ok {
		add("AsyncCursors", testAsyncCursors)
	}
	if _, ok := probe.(persist.UserUpdater); ok {
		add("UpdateUser", testUpdateUser)
	}
	if _, ok := probe.(persist.Replayer); ok {
		add("ReplayFrom", testReplayFrom)
	}
	return out
}

// testUpdateUser: an update replaces the hash and keeps Created; disabling
// and enabling round-trip; an unknown account is ErrNotFound.
func testUpdateUser(t *testing.T, s persist.Store) {
	ctx := t.Context()
	uu := s.(persist.UserUpdater)
	u := persist.User{ID: "alice", PasswordHash: "$argon2id$old", Created: 1700000000000}
	if err := s.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	if err := uu.UpdateUser(ctx, persist.User{ID: "alice", PasswordHash: "$argon2id$new", Created: 5}); err != nil {
		t.Fatal(err)
	}
	want := persist.User{ID: "alice", PasswordHash: "$argon2id$new", Created: u.Created}
	if got, err := s.GetUser(ctx, "alice"); err != nil || got != want {
		t.Fatalf("after UpdateUser: GetUser = %+v, %v; want %+v (Created kept)", got, err, want)
	}
	want.SetDisabled(true)
	if err := uu.UpdateUser(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetUser(ctx, "alice")
	if err != nil || !got.Disabled() || got.PasswordHash != "!$argon2id$new" {
		t.Fatalf("disabled account reads back as %+v, %v", got, err)
	}
	got.SetDisabled(false)
	if err := uu.UpdateUser(ctx, got); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetUser(ctx, "alice"); got.Disabled() || got.PasswordHash != "$argon2id$new" {
		t.Fatalf("enabled again: %+v", got)
	}
	// An account without a password (token login) can be disabled too.
	if err := s.CreateUser(ctx, persist.User{ID: "tok", Created: 7}); err != nil {
		t.Fatal(err)
	}
	if err := uu.UpdateUser(ctx, persist.User{ID: "tok", PasswordHash: persist.DisabledMark}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetUser(ctx, "tok"); !got.Disabled() || got.Created != 7 {
		t.Fatalf("disabled token account: %+v", got)
	}
	err = uu.UpdateUser(ctx, persist.User{ID: "nobody", PasswordHash: "x"})
	wantErr(t, "UpdateUser of an unknown account", err, persist.ErrNotFound)
	if _, err := s.GetUser(ctx, "nobody"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("UpdateUser of an unknown account created it: %v", err)
	}
}

type replayed struct {
	msg     persist.Message
	inboxes []string
	seqs    []uint64
}

func replayAll(t *testing.T, s persist.Store, from uint64) []replayed {
	t.Helper()
	var out []replayed
	err := s.(persist.Replayer).ReplayFrom(t.Context(), from, func(m *persist.Message, inboxes []string, seqs []uint64) error {
		out = append(out, replayed{*m, slices.Clone(inboxes), slices.Clone(seqs)})
		return nil
	})
	if err != nil {
		t.Fatalf("ReplayFrom(%d): %v", from, err)
	}
	return out
}

// testReplayFrom: every message from the given ID on, in ID order, with
// the inbox entries it got (a retry that adds an inbox included); fn's
// error stops the replay.
func testReplayFrom(t *testing.T, s persist.Store) {
	m1, m2, m3 := msg(100, "alice", "c1"), msg(200, "bob", "c2"), msg(300, "alice", "c3")
	// Appended out of ID order: the replay is in ID order all the same.
	mustAppend(t, s, m2, "bob", "carol")
	mustAppend(t, s, m1, "alice", "bob")
	mustAppend(t, s, m3, "alice")
	mustAppend(t, s, m3, "alice", "dave") // a retry that adds an inbox
	got := replayAll(t, s, 0)
	if len(got) != 3 {
		t.Fatalf("replay from 0: %d messages, want 3", len(got))
	}
	want := []struct {
		m       persist.Message
		inboxes []string
		seqs    []uint64
	}{
		{m1, []string{"alice", "bob"}, []uint64{1, 2}},
		{m2, []string{"bob", "carol"}, []uint64{1, 1}},
		{m3, []string{"alice", "dave"}, []uint64{2, 1}},
	}
	for i, w := range want {
		if d := sameMsg(got[i].msg, w.m); d != "" {
			t.Errorf("replayed message %d: %s", i, d)
		}
		type pair struct {
			in  string
			seq uint64
		}
		var g, ww []pair
		for j := range got[i].inboxes {
			g = append(g, pair{got[i].inboxes[j], got[i].seqs[j]})
		}
		for j := range w.inboxes {
			ww = append(ww, pair{w.inboxes[j], w.seqs[j]})
		}
		slices.SortFunc(g, func(a, b pair) int { return cmp.Compare(a.in, b.in) })
		if !slices.Equal(g, ww) {
			t.Errorf("message %d replayed with entries %v, want %v", w.m.ID, g, ww)
		}
	}
	if got := replayAll(t, s, 200); len(got) != 2 || got[0].msg.ID != 200 || got[1].msg.ID != 300 {
		t.Fatalf("replay from 200: %+v", got)
	}
	if got := replayAll(t, s, 301); len(got) != 0 {
		t.Fatalf("replay from past the last message: %+v", got)
	}
	stop := errors.New("stop")
	n := 0
	err := s.(persist.Replayer).ReplayFrom(t.Context(), 0, func(*persist.Message, []string, []uint64) error {
		n++
		return stop
	})
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("fn's error: ReplayFrom = %v after %d calls, want stop after 1", err, n)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.(persist.Replayer).ReplayFrom(ctx, 0, func(*persist.Message, []string, []uint64) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReplayFrom with an ended context = %v", err)
	}
}
