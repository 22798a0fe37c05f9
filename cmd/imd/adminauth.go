package main

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// adminAuth wraps the admin API so that every request carries
// "Authorization: Bearer <token>", except the health probes (GET /healthz
// and GET /readyz), which load balancers and orchestrators call without
// credentials and which reveal nothing. A request without the right token
// gets 401 and is counted in failures. An empty token leaves the API open
// (imd allows that only on a loopback listener, see checkSecret).
func adminAuth(token string, next http.Handler, failures prometheus.Counter) http.Handler {
	if token == "" {
		return next
	}
	// Comparing digests keeps the comparison constant-time whatever the
	// length of what the client sent.
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && (r.URL.Path == "/healthz" || r.URL.Path == "/readyz") {
			next.ServeHTTP(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			failures.Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="imd admin"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte("{\"error\":\"a valid admin token is required (Authorization: Bearer ...)\"}\n"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// adminAuthFailures is the counter of refused admin requests, registered
// on reg (the node's metrics registry).
func adminAuthFailures(reg prometheus.Registerer) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_admin_auth_failures_total",
		Help: "Admin API requests refused for a missing or wrong bearer token."})
	if err := reg.Register(c); err != nil {
		if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
			return are.ExistingCollector.(prometheus.Counter)
		}
	}
	return c
}
