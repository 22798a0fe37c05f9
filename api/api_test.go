package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaktest.Gnet()...) }

const (
	key1 = "test-key-0123456789abcdef"
	key2 = "second-key-0123456789abcd"
)

var jwtSecret = []byte("api-test-jwt-secret")

type fixture struct {
	t   *testing.T
	srv *engine.Server
	st  persist.Store
	api *API
	url string
}

// start runs a node (memory store) and the API over real HTTP on loopback.
func start(t *testing.T) *fixture {
	t.Helper()
	return startWith(t, memstore.New())
}

// startWith is start on store st, which it closes at the end of the test.
func startWith(t *testing.T, st persist.Store) *fixture {
	t.Helper()
	srv, err := engine.New(engine.Config{Addr: "127.0.0.1:0", Store: st, JWTSecret: jwtSecret, EventLoops: 1, Workers: 8,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Backend: srv, Keys: []string{key1, key2}, Registry: prometheus.NewRegistry(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(a)
	t.Cleanup(func() {
		hs.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = st.Close()
	})
	return &fixture{t: t, srv: srv, st: st, api: a, url: hs.URL}
}

// do sends a request with key (none when empty) and decodes the JSON
// answer.
func (f *fixture) do(method, path, key string, body any) (int, map[string]any) {
	f.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			f.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, f.url+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		f.t.Fatalf("%s %s: content type %q", method, path, ct)
	}
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		f.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp.StatusCode, out
}

// must is do with key1, failing unless the status is want.
func (f *fixture) must(want int, method, path string, body any) map[string]any {
	f.t.Helper()
	status, out := f.do(method, path, key1, body)
	if status != want {
		f.t.Fatalf("%s %s: status %d, want %d: %v", method, path, status, want, out)
	}
	return out
}

// wantError checks a failed request's status and code.
func (f *fixture) wantError(status int, code, method, path string, body any) {
	f.t.Helper()
	out := f.must(status, method, path, body)
	if out["code"] != code || out["error"] == "" {
		f.t.Fatalf("%s %s: %v, want code %s", method, path, out, code)
	}
}

func (f *fixture) dial(user string, cfg client.Config) (*client.Client, error) {
	cfg.Addr, cfg.ReconnectBase, cfg.ReconnectMax = f.srv.Addr().String(), 10*time.Millisecond, 50*time.Millisecond
	if cfg.Device == "" {
		cfg.Device = "d1"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err == nil {
		f.t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

func TestAuthentication(t *testing.T) {
	f := start(t)
	for _, tc := range []struct {
		name, header string
	}{
		{"missing", ""},
		{"wrong scheme", "Basic " + key1},
		{"empty bearer", "Bearer "},
		{"wrong key", "Bearer " + strings.Repeat("x", len(key1))},
		{"prefix of a key", "Bearer " + key1[:len(key1)-1]},
		{"key and more", "Bearer " + key1 + "x"},
	} {
		req, _ := http.NewRequest("GET", f.url+"/v1/presence?user=a", nil)
		if tc.header != "" {
			req.Header.Set("Authorization", tc.header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || out["code"] != "UNAUTHENTICATED" || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: %d %v", tc.name, resp.StatusCode, out)
		}
	}
	if got := testutil.ToFloat64(f.api.authFailures); got != 6 {
		t.Errorf("auth failures counted %v, want 6", got)
	}
	for _, k := range []string{key1, key2} {
		if status, out := f.do("GET", "/v1/presence?user=a", k, nil); status != 200 {
			t.Errorf("key %q refused: %d %v", k, status, out)
		}
	}
	if status, out := f.do("GET", "/v1/nothing", key1, nil); status != 404 || out["code"] != "NOT_FOUND" {
		t.Errorf("unknown path: %d %v", status, out)
	}
	// An unknown path without a key is still refused first.
	if status, _ := f.do("GET", "/v1/nothing", "", nil); status != 401 {
		t.Errorf("unknown path without a key: %d", status)
	}
	for _, keys := range [][]string{nil, {"short"}, {key1, "has,comma-0123456789"}, {"has space 0123456789"}} {
		if _, err := New(Config{Backend: f.srv, Keys: keys}); err == nil {
			t.Errorf("New with keys %q succeeded", keys)
		}
	}
}

func TestUsersTokensAndSessions(t *testing.T) {
	f := start(t)
	if out := f.must(201, "POST", "/v1/users", map[string]string{"user": "alice", "password": "secret-1"}); out["user"] != "alice" || out["disabled"] != false {
		t.Fatalf("create: %v", out)
	}
	f.must(201, "POST", "/v1/users", map[string]string{"user": "bob"}) // token-only account
	f.wantError(409, "USER_EXISTS", "POST", "/v1/users", map[string]string{"user": "alice", "password": "secret-2"})
	f.wantError(400, "INVALID_ARGUMENT", "POST", "/v1/users", map[string]string{"user": "bad id"})
	f.wantError(400, "INVALID_ARGUMENT", "POST", "/v1/users", map[string]string{"user": "carol", "password": "short"})
	f.wantError(400, "BAD_REQUEST", "POST", "/v1/users", map[string]any{"user": "carol", "pasword": "typo-1234"})
	f.wantError(400, "BAD_REQUEST", "POST", "/v1/users", "{not json")
	f.wantError(404, "UNKNOWN_RECIPIENT", "GET", "/v1/users/nobody", nil)
	if out := f.must(200, "GET", "/v1/users/alice", nil); out["online"] != false {
		t.Fatalf("get: %v", out)
	}

	// A minted token logs in over the protocol.
	tok := f.must(200, "POST", "/v1/users/bob/tokens", map[string]string{"ttl": "1h"})
	if exp := int64(tok["expires_at"].(float64)); exp < time.Now().Add(59*time.Minute).UnixMilli() {
		t.Fatalf("token expiry %d", exp)
	}
	bob, err := f.dial("bob", client.Config{Token: tok["token"].(string), Device: "phone"})
	if err != nil {
		t.Fatalf("login with the minted token: %v", err)
	}
	if out := f.must(200, "GET", "/v1/users/bob", nil); out["online"] != true || fmt.Sprint(out["devices"]) != "[phone]" {
		t.Fatalf("bob online: %v", out)
	}
	f.wantError(400, "BAD_REQUEST", "POST", "/v1/users/bob/tokens", map[string]string{"ttl": "forever"})
	f.wantError(404, "UNKNOWN_RECIPIENT", "POST", "/v1/users/nobody/tokens", nil)
	f.must(200, "POST", "/v1/users/alice/tokens", nil) // no body: the default lifetime

	// A new password replaces the old one.
	f.must(200, "PUT", "/v1/users/alice/password", map[string]string{"password": "secret-2"})
	if _, err := f.dial("alice", client.Config{User: "alice", Password: "secret-1"}); err == nil {
		t.Fatal("the old password still logs in")
	}
	if _, err := f.dial("alice", client.Config{User: "alice", Password: "secret-2", Device: "pc"}); err != nil {
		t.Fatalf("the new password: %v", err)
	}

	// Disabling ends the sessions and refuses logins and tokens.
	if out := f.must(200, "POST", "/v1/users/bob/disable", nil); out["disabled"] != true || out["kicked"] != float64(1) {
		t.Fatalf("disable: %v", out)
	}
	select {
	case <-bob.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("bob's session survived disabling")
	}
	if _, err := f.dial("bob", client.Config{Token: tok["token"].(string)}); err == nil {
		t.Fatal("a disabled account logged in with its token")
	}
	f.wantError(403, "AUTH_FAILED", "POST", "/v1/users/bob/tokens", nil)
	if out := f.must(200, "GET", "/v1/users/bob", nil); out["disabled"] != true {
		t.Fatalf("bob: %v", out)
	}
	f.must(200, "POST", "/v1/users/bob/enable", nil)
	if _, err := f.dial("bob", client.Config{Token: tok["token"].(string)}); err != nil {
		t.Fatalf("enabled again: %v", err)
	}

	// Kick ends every session, which the client library then does not
	// resume on its own.
	if out := f.must(200, "POST", "/v1/users/alice/kick", nil); out["kicked"] != float64(1) {
		t.Fatalf("kick: %v", out)
	}
	f.wantError(404, "UNKNOWN_RECIPIENT", "POST", "/v1/users/nobody/kick", nil)
}

func TestSendInboxGroupsPresence(t *testing.T) {
	f := start(t)
	for _, u := range []string{"alice", "bob", "carol"} {
		f.must(201, "POST", "/v1/users", map[string]string{"user": u})
	}
	first := f.must(200, "POST", "/v1/messages", map[string]any{"from": "alice", "to": "bob", "client_msg_id": "m1", "text": "hello"})
	if first["duplicate"] != false || fmt.Sprint(first["inboxes"]) != "[map[seq:1 user:alice] map[seq:1 user:bob]]" {
		t.Fatalf("send: %v", first)
	}
	again := f.must(200, "POST", "/v1/messages", map[string]any{"from": "alice", "to": "bob", "client_msg_id": "m1", "text": "hello"})
	if again["duplicate"] != true || again["msg_id"] != first["msg_id"] {
		t.Fatalf("retry: %v (first %v)", again, first)
	}
	sys := f.must(200, "POST", "/v1/messages", map[string]any{"to": "bob", "kind": 1, "body": "AAEC"})
	if !strings.HasPrefix(sys["client_msg_id"].(string), "sys-") {
		t.Fatalf("system send: %v", sys)
	}
	f.wantError(404, "UNKNOWN_RECIPIENT", "POST", "/v1/messages", map[string]any{"to": "nobody", "text": "x"})
	f.wantError(404, "UNKNOWN_RECIPIENT", "POST", "/v1/messages", map[string]any{"from": "ghost", "to": "bob", "text": "x"})
	f.wantError(400, "BAD_REQUEST", "POST", "/v1/messages", map[string]any{"to": "bob", "group_id": "g", "text": "x"})
	f.wantError(400, "BAD_REQUEST", "POST", "/v1/messages", map[string]any{"to": "bob", "text": "x", "body": "eA=="})
	f.wantError(400, "BAD_REQUEST", "POST", "/v1/messages", map[string]any{"to": "bob", "body": "not base64!"})

	inbox := f.must(200, "GET", "/v1/users/bob/inbox", nil)
	msgs := inbox["messages"].([]any)
	if len(msgs) != 2 || inbox["head_seq"] != float64(2) || inbox["has_more"] != false {
		t.Fatalf("inbox: %v", inbox)
	}
	m0, m1 := msgs[0].(map[string]any), msgs[1].(map[string]any)
	if m0["body"] != "aGVsbG8=" || m0["from"] != "alice" || m0["msg_id"] != first["msg_id"] || m1["from"] != "" || m1["kind"] != float64(1) || m1["body"] != "AAEC" {
		t.Fatalf("inbox messages: %v", msgs)
	}
	page := f.must(200, "GET", "/v1/users/bob/inbox?after_seq=0&limit=1", nil)
	if len(page["messages"].([]any)) != 1 || page["has_more"] != true {
		t.Fatalf("page: %v", page)
	}
	f.wantError(400, "BAD_REQUEST", "GET", "/v1/users/bob/inbox?after_seq=-1", nil)

	// Groups: create, members, a group send, membership enforced.
	g := f.must(201, "POST", "/v1/groups", map[string]any{"owner": "alice", "name": "team", "members": []string{"bob"}})
	gid := g["group_id"].(string)
	if fmt.Sprint(g["members"]) != "[alice bob]" || g["owner"] != "alice" {
		t.Fatalf("group: %v", g)
	}
	f.wantError(404, "UNKNOWN_RECIPIENT", "POST", "/v1/groups", map[string]any{"owner": "alice", "members": []string{"nobody"}})
	f.wantError(403, "NOT_GROUP_MEMBER", "POST", "/v1/messages", map[string]any{"from": "carol", "group_id": gid, "text": "x"})
	if out := f.must(200, "PUT", "/v1/groups/"+gid+"/members/carol", nil); fmt.Sprint(out["members"]) != "[alice bob carol]" {
		t.Fatalf("add: %v", out)
	}
	gs := f.must(200, "POST", "/v1/messages", map[string]any{"from": "carol", "group_id": gid, "text": "hi team"})
	if len(gs["inboxes"].([]any)) != 3 {
		t.Fatalf("group send: %v", gs)
	}
	if out := f.must(200, "DELETE", "/v1/groups/"+gid+"/members/bob", nil); fmt.Sprint(out["members"]) != "[alice carol]" {
		t.Fatalf("remove: %v", out)
	}
	if out := f.must(200, "GET", "/v1/groups/"+gid, nil); out["name"] != "team" {
		t.Fatalf("get group: %v", out)
	}
	f.wantError(404, "UNKNOWN_GROUP", "GET", "/v1/groups/gnone", nil)
	f.wantError(404, "UNKNOWN_GROUP", "PUT", "/v1/groups/gnone/members/bob", nil)
	f.wantError(404, "UNKNOWN_RECIPIENT", "PUT", "/v1/groups/"+gid+"/members/nobody", nil)

	// Presence: online, offline, unknown.
	tok := f.must(200, "POST", "/v1/users/carol/tokens", nil)
	if _, err := f.dial("carol", client.Config{Token: tok["token"].(string), Device: "web"}); err != nil {
		t.Fatal(err)
	}
	p := f.must(200, "GET", "/v1/presence?user=carol,bob&user=nobody", nil)
	want := "[map[devices:[web] online:true user:carol] map[devices:[] online:false user:bob] map[devices:[] online:false unknown:true user:nobody]]"
	if fmt.Sprint(p["users"]) != want {
		t.Fatalf("presence: %v", p["users"])
	}
	f.wantError(400, "BAD_REQUEST", "GET", "/v1/presence", nil)
}
