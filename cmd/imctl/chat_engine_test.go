package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/persist/memstore"
)

var engineSecret = []byte("imctl-test-secret-0123456789")

// startEngine runs a real node (memory store) for the chat commands, which
// the fake server does not speak.
func startEngine(t *testing.T) string {
	t.Helper()
	store := memstore.New()
	s, err := engine.New(engine.Config{Addr: "127.0.0.1:0", Store: store, JWTSecret: engineSecret, EventLoops: 1, Workers: 4,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		_ = store.Close()
	})
	return s.Addr().String()
}

// userEnv is the environment of imctl logged in as user by token.
func userEnv(t *testing.T, addr, user string) map[string]string {
	t.Helper()
	tok, err := auth.MintToken(engineSecret, user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"IM_SERVER": addr, "IM_TOKEN": tok, "XDG_CONFIG_HOME": t.TempDir()}
}

func TestConversationsHistoryRead(t *testing.T) {
	addr := startEngine(t)
	alice, bob := userEnv(t, addr, "alice"), userEnv(t, addr, "bob")
	if r := invoke(t, alice, "", "send", "--to", "alice", "--text", "note to self"); r.code != exitOK {
		t.Fatalf("send: %+v", r)
	}
	for _, text := range []string{"one", "two", "three"} {
		if r := invoke(t, bob, "", "send", "--to", "alice", "--text", text); r.code != exitOK {
			t.Fatalf("send: %+v", r)
		}
	}
	r := invoke(t, alice, "", "conversations")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != exitOK || len(lines) != 2 || !strings.HasPrefix(lines[0], "@bob") || !strings.Contains(lines[0], "3 unread") ||
		!strings.Contains(lines[0], "bob: three") || !strings.HasPrefix(lines[1], "@alice") || strings.Contains(lines[1], "unread") {
		t.Fatalf("conversations: %+v", r)
	}
	r = invoke(t, alice, "", "conversations", "--limit", "1", "--json")
	var page struct {
		OK            bool       `json:"ok"`
		HasMore       bool       `json:"has_more"`
		Conversations []jsonConv `json:"conversations"`
	}
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &page) != nil || !page.HasMore || len(page.Conversations) != 1 ||
		page.Conversations[0].Peer != "bob" || page.Conversations[0].Unread != 3 || page.Conversations[0].Last.Body != "three" {
		t.Fatalf("conversations --json: %+v", r)
	}

	r = invoke(t, alice, "", "history", "--peer", "bob", "--limit", "2")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "(older: --before 3)\n") || !strings.Contains(r.stdout, "bob: two\n") ||
		!strings.Contains(r.stdout, "bob: three\n") || strings.Contains(r.stdout, "one") {
		t.Fatalf("history: %+v", r)
	}
	r = invoke(t, alice, "", "history", "--peer", "bob", "--before", "3", "--json")
	var hist struct {
		Messages []jsonMessage `json:"messages"`
		HasMore  bool          `json:"has_more"`
	}
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &hist) != nil || len(hist.Messages) != 1 || hist.Messages[0].Body != "one" || hist.HasMore {
		t.Fatalf("history --before: %+v", r)
	}
	if r := invoke(t, alice, "", "history"); r.code != exitUsage {
		t.Fatalf("history without a conversation: %+v", r)
	}

	r = invoke(t, alice, "", "read", "--peer", "bob", "--seq", "3")
	if r.code != exitOK || r.stdout != "@bob read up to seq 3; 1 unread\n" {
		t.Fatalf("read: %+v", r)
	}
	r = invoke(t, alice, "", "read", "--peer", "bob", "--seq", "2", "--json")
	var read struct {
		ReadSeq uint64 `json:"read_seq"`
		Unread  uint32 `json:"unread"`
	}
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &read) != nil || read.ReadSeq != 3 || read.Unread != 1 {
		t.Fatalf("read backwards: %+v", r)
	}
	if r := invoke(t, alice, "", "read", "--peer", "nobody"); r.code != exitFail || !strings.Contains(r.stderr, "UNKNOWN_MESSAGE") {
		t.Fatalf("read of an unknown conversation: %+v", r)
	}
}

// TestChatViewShowsUnreadReceiptsAndTyping: the chat lists unread counts
// when it starts and shows receipts, typing and recalls as they come.
func TestChatViewShowsUnreadReceiptsAndTyping(t *testing.T) {
	addr := startEngine(t)
	bobEnv, aliceEnv := userEnv(t, addr, "bob"), userEnv(t, addr, "alice")
	if r := invoke(t, aliceEnv, "", "conversations"); r.code != exitOK || r.stdout != "" { // logs alice in once: the account exists
		t.Fatalf("conversations of a new user: %+v", r)
	}
	for _, text := range []string{"one", "two"} {
		if r := invoke(t, bobEnv, "", "send", "--to", "alice", "--text", text); r.code != exitOK {
			t.Fatalf("send: %+v", r)
		}
	}
	stdinR, stdinW := io.Pipe()
	var out, errb testutil.Buffer
	e := newEnv(func(k string) string { return aliceEnv[k] }, stdinR, &out, &errb)
	e.loc = time.UTC
	done := make(chan int, 1)
	go func() { done <- run(context.Background(), []string{"chat", "--to", "bob", "--after", "0"}, e) }()
	waitIn := func(b *testutil.Buffer, what string) {
		t.Helper()
		testutil.Until(t, 5*time.Second, what, func() bool { return strings.Contains(b.String(), what) })
	}
	waitIn(&errb, "unread: @bob 2")
	waitIn(&out, "bob: two")

	tok, err := auth.MintToken(engineSecret, "bob", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := client.Dial(t.Context(), client.Config{Addr: addr, Token: tok, Device: "pc", SendOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	if err := bob.Typing(client.Peer("alice"), true); err != nil {
		t.Fatal(err)
	}
	waitIn(&out, "(bob is typing...)")
	ack, err := bob.Send(t.Context(), "alice", []byte("oops"))
	if err != nil {
		t.Fatal(err)
	}
	waitIn(&out, "bob: oops")
	if _, err := bob.Recall(t.Context(), ack.MsgId); err != nil {
		t.Fatal(err)
	}
	waitIn(&out, "bob recalled message")
	// alice's inbox: one, two, oops, the recall event, then her reply.
	io.WriteString(stdinW, "hi bob\n")
	waitIn(&out, "me -> bob: hi bob")
	if _, err := bob.Read(t.Context(), client.Peer("alice"), 0); err != nil {
		t.Fatal(err)
	}
	waitIn(&out, "(bob read up to seq 5)")
	io.WriteString(stdinW, "/read\n/unread\n")
	waitIn(&errb, "(@bob read up to seq 5)")
	waitIn(&errb, "unread: none")
	stdinW.Close()
	if code := <-done; code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, errb.String())
	}
}
