package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/persist/memstore"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestAdminToken: with --admin-token every admin endpoint but the health
// probes needs the bearer token; refusals are 401 and counted.
func TestAdminToken(t *testing.T) {
	store := memstore.New()
	srv, err := engine.New(engine.Config{Store: store, Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	failures := adminAuthFailures(srv.Registry())
	h := httptest.NewServer(adminAuth("0123456789abcdef-token", adminMux(srv, store, engine.AdminHooks{}), failures))
	defer h.Close()
	do := func(method, path, auth string) int {
		req, _ := http.NewRequest(method, h.URL+path, strings.NewReader(`{"text":"hi"}`))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		method, path, auth string
		want               int
	}{
		{"GET", "/healthz", "", 200},
		{"GET", "/readyz", "", 503}, // not started: the probe answers, unauthenticated
		{"GET", "/metrics", "", 401},
		{"GET", "/debug/pprof/", "", 401},
		{"POST", "/admin/broadcast", "", 401},
		{"POST", "/admin/broadcast", "Bearer wrong-token", 401},
		{"POST", "/admin/broadcast", "0123456789abcdef-token", 401},
		{"POST", "/admin/broadcast", "Basic 0123456789abcdef-token", 401},
		{"POST", "/healthz", "", 401},
		{"POST", "/admin/broadcast", "Bearer 0123456789abcdef-token", 200},
		{"GET", "/metrics", "Bearer 0123456789abcdef-token", 200},
	} {
		if got := do(tc.method, tc.path, tc.auth); got != tc.want {
			t.Errorf("%s %s %q: %d, want %d", tc.method, tc.path, tc.auth, got, tc.want)
		}
	}
	if got := testutil.ToFloat64(failures); got != 7 {
		t.Fatalf("counted %v refusals, want 7", got)
	}
}

// TestSecretsRequiredOffLoopback: --admin-token and --mesh-secret are
// required when their listener is reachable from other hosts, and refused
// when too short.
func TestSecretsRequiredOffLoopback(t *testing.T) {
	cluster := []string{"--zk", "z:1", "--redis", "r:1", "--mongo-uri", "mongodb://m"}
	for _, tc := range []struct {
		args []string
		want string // "" = accepted
	}{
		{[]string{"--admin", "127.0.0.1:0"}, ""},
		{[]string{"--admin", "localhost:9091"}, ""},
		{[]string{"--admin", "[::1]:9091"}, ""},
		{[]string{"--admin", ""}, ""},
		{[]string{"--admin", "0.0.0.0:9091"}, "--admin-token is required: --admin 0.0.0.0:9091 is reachable from other hosts"},
		{[]string{"--admin", ":9091"}, "--admin-token is required"},
		{[]string{"--admin", "10.1.2.3:9091"}, "--admin-token is required"},
		{[]string{"--admin", "0.0.0.0:9091", "--admin-token", "0123456789abcdef"}, ""},
		{[]string{"--admin-token", "short"}, "--admin-token must be at least 16 characters"},
		{append([]string{"--mesh-listen", "127.0.0.1:9092"}, cluster...), ""},
		{append([]string{"--mesh-listen", "0.0.0.0:9092"}, cluster...), "--mesh-secret is required: --mesh-listen 0.0.0.0:9092"},
		{append([]string{"--mesh-listen", "0.0.0.0:9092", "--mesh", "redis"}, cluster...), ""},
		{append([]string{"--mesh-listen", "0.0.0.0:9092", "--mesh-secret", "0123456789abcdef"}, cluster...), ""},
		{append([]string{"--mesh-secret", "tiny"}, cluster...), "--mesh-secret must be at least 16 characters"},
	} {
		_, err := parseOptions(append([]string{"--store", "memory"}, tc.args...), envOf(nil), io.Discard)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: got %v, want %q", tc.args, err, tc.want)
		}
	}
}
