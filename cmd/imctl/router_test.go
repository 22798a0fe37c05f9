package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/imgn/imgn/client/clienttest"
)

// TestRouterFlag: with --router (or IM_ROUTER) imctl asks the router where
// to connect, for the --user or the token's subject, and ignores --server.
func TestRouterFlag(t *testing.T) {
	s := clienttest.Start(t)
	s.AddUser("alice", "secret123")
	s.AddUser("bob", "secret123")
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "bob"}).SignedString([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	s.AddToken(tok, "bob")
	var mu sync.Mutex
	var asked []string
	unavailable := false
	router := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Path+"?"+r.URL.RawQuery)
		down := unavailable
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if down {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "no available node", "reason": "1 live node(s), none usable: 1 draining"})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"node_id": "n1", "addr": s.Addr, "strategy": "consistent-hash"})
	}))
	defer router.Close()
	lastAsked := func() string { mu.Lock(); defer mu.Unlock(); return asked[len(asked)-1] }

	env := map[string]string{"IM_SERVER": "127.0.0.1:1", "IM_PASSWORD": "secret123"}
	r := invoke(t, env, "", "send", "--router", router.URL, "--user", "alice", "--to", "bob", "hi")
	if r.code != exitOK || lastAsked() != "/v1/route?uid=alice" {
		t.Fatalf("send via --router: %+v, router asked %q", r, lastAsked())
	}
	env = map[string]string{"IM_SERVER": "127.0.0.1:1", "IM_ROUTER": "127.0.0.1:1," + router.URL, "IM_TOKEN": tok}
	r = invoke(t, env, "", "recv", "--count", "1", "--after", "0")
	if r.code != exitOK || !strings.Contains(r.stdout, `"hi"`) || lastAsked() != "/v1/route?uid=bob" {
		t.Fatalf("recv via IM_ROUTER with a token: %+v, router asked %q", r, lastAsked())
	}

	mu.Lock()
	unavailable = true
	mu.Unlock()
	r = invoke(t, env, "", "send", "--to", "alice", "x")
	if r.code != exitFail || !strings.Contains(r.stderr, "no available node") || !strings.Contains(r.stderr, "draining") {
		t.Fatalf("router 503: %+v", r)
	}
	r = invoke(t, nil, "", "send", "--router", router.URL, "--token", "not-a-jwt", "--to", "x", "y")
	if r.code != exitUsage || !strings.Contains(r.stderr, "--router needs --user") {
		t.Fatalf("no user id for the router: %+v", r)
	}
}
