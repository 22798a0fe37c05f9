// Package api is the server API for application backends: an HTTP API,
// JSON in and out, authenticated with API keys, through which the
// application creates and disables users, sets passwords, mints login
// tokens, manages groups, sends messages as a user or as the system, ends a
// user's sessions, reads inboxes, conversations, histories and presence,
// moves read cursors, recalls and deletes messages and counts who read
// a group message. docs/api.md documents
// every endpoint with curl examples.
//
// It is served on its own listener (imd --api-listen), apart from the
// operators' admin API, and only when at least one key is configured. The
// handlers call a Backend (engine.Server satisfies it), so a send takes the
// protocol's store-then-ack path with its idempotency key, and in a cluster
// any node answers: the store is shared and appends go to the inbox owners.
package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/persist"
)

// Backend is what the API needs from a node; *engine.Server implements it.
// Refusals are *engine.Error values (their code picks the HTTP status);
// any other error is a store or cluster failure (503, retryable).
type Backend interface {
	CreateUser(ctx context.Context, id, password string) (persist.User, error)
	User(ctx context.Context, id string) (persist.User, error)
	SetPassword(ctx context.Context, id, password string) error
	SetDisabled(ctx context.Context, id string, disabled bool) (kicked int, err error)
	MintToken(ctx context.Context, id string, ttl time.Duration) (string, time.Time, error)
	KickEverywhere(ctx context.Context, user string) int
	Send(ctx context.Context, m engine.Outgoing) (engine.Sent, error)
	Inbox(ctx context.Context, user string, afterSeq uint64, limit int) (engine.InboxPage, error)
	Presence(ctx context.Context, users []string) []engine.Presence
	Conversations(ctx context.Context, user string, beforeSeq uint64, limit int) (engine.ConversationsPage, error)
	History(ctx context.Context, user string, conv persist.ConvID, beforeSeq, beforeMsgID uint64, limit int) (engine.HistoryPage, error)
	MarkRead(ctx context.Context, user string, conv persist.ConvID, upTo uint64) (persist.ReadResult, error)
	Recall(ctx context.Context, user string, msgID uint64) (persist.EventResult, error)
	DeleteForMe(ctx context.Context, user string, msgID uint64) (persist.EventResult, error)
	ReadCount(ctx context.Context, user string, conv persist.ConvID, seq uint64) (read, members int, err error)
	CreateGroup(ctx context.Context, owner, name string, members []string, open bool) (persist.Group, error)
	Group(ctx context.Context, id string) (persist.Group, error)
	AddGroupMember(ctx context.Context, id, user string) (persist.Group, error)
	RemoveGroupMember(ctx context.Context, id, user string) (persist.Group, error)
}

var _ Backend = (*engine.Server)(nil)

// Limits of the API.
const (
	// MinKeyLen is the shortest API key accepted.
	MinKeyLen = 16
	// maxBody bounds a request body.
	maxBody = 1 << 20
	// maxPresence bounds the users of one presence request (as PRESENCE).
	maxPresence = 500
	// DefaultTokenTTL is the lifetime of a minted token when none is given.
	DefaultTokenTTL = 24 * time.Hour
	// DefaultRequestTimeout bounds the work of one request.
	DefaultRequestTimeout = 15 * time.Second
)

// Config configures an API.
type Config struct {
	Backend Backend
	// Keys are the accepted API keys (at least one, each MinKeyLen or
	// longer, without commas or white space).
	Keys []string
	// RequestTimeout bounds each request's work (default
	// DefaultRequestTimeout).
	RequestTimeout time.Duration
	// Registry receives the metrics (nil: not registered).
	Registry prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// CheckKeys reports the first unusable key: the API refuses to start
// rather than accept a guessable one.
func CheckKeys(keys []string) error {
	if len(keys) == 0 {
		return errors.New("api: no API key configured")
	}
	for i, k := range keys {
		switch {
		case len(k) < MinKeyLen:
			return fmt.Errorf("api: API key %d is %d characters long; use at least %d (e.g. openssl rand -hex 24)", i+1, len(k), MinKeyLen)
		case strings.ContainsAny(k, ", \t\r\n"):
			return fmt.Errorf("api: API key %d contains a comma or white space", i+1)
		}
	}
	return nil
}

// API is the server API's HTTP handler. It is safe for concurrent use.
type API struct {
	b       Backend
	keys    [][sha256.Size]byte // SHA-256 of each key: compared in constant time, whatever their lengths
	timeout time.Duration
	log     *slog.Logger
	mux     *http.ServeMux

	requests     *prometheus.CounterVec
	authFailures prometheus.Counter
}

// New returns the API over cfg.Backend.
func New(cfg Config) (*API, error) {
	if cfg.Backend == nil {
		return nil, errors.New("api: a Backend is required")
	}
	if err := CheckKeys(cfg.Keys); err != nil {
		return nil, err
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &API{b: cfg.Backend, timeout: cfg.RequestTimeout, log: cfg.Logger.With("component", "api"), mux: http.NewServeMux(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imgn_api_requests_total",
			Help: "Server API requests by route and HTTP status."}, []string{"route", "status"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_api_auth_failures_total",
			Help: "Server API requests refused for a missing or unknown API key."}),
	}
	for _, k := range cfg.Keys {
		a.keys = append(a.keys, sha256.Sum256([]byte(k)))
	}
	if cfg.Registry != nil {
		for _, c := range []prometheus.Collector{a.requests, a.authFailures} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("api: register metrics: %w", err)
			}
		}
	}
	a.routes()
	return a, nil
}

// ServeHTTP implements http.Handler: it authenticates, then routes.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if msg := a.authenticate(r); msg != "" {
		a.authFailures.Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="imgn"`)
		writeJSON(w, http.StatusUnauthorized, errorBody{Error: msg, Code: "UNAUTHENTICATED"})
		a.requests.WithLabelValues("auth", "401").Inc()
		return
	}
	if _, pattern := a.mux.Handler(r); pattern == "" {
		writeJSON(w, http.StatusNotFound, errorBody{Error: "no such endpoint for " + r.Method + " " + r.URL.Path + " (see docs/api.md)", Code: "NOT_FOUND"})
		a.requests.WithLabelValues("none", "404").Inc()
		return
	}
	a.mux.ServeHTTP(w, r)
}

// authenticate returns "" for a request with a known key, else why not.
// Every key is compared, in constant time, so the time taken says nothing
// about which key or how much of one matched.
func (a *API) authenticate(r *http.Request) string {
	h := r.Header.Get("Authorization")
	scheme, key, ok := strings.Cut(h, " ")
	if h == "" || !ok || !strings.EqualFold(scheme, "Bearer") || key == "" {
		return "missing API key: send Authorization: Bearer <key>"
	}
	sum := sha256.Sum256([]byte(key))
	match := 0
	for i := range a.keys {
		match |= subtle.ConstantTimeCompare(sum[:], a.keys[i][:])
	}
	if match != 1 {
		return "invalid API key"
	}
	return ""
}

// handler is one route's work: it returns the status and the JSON answer,
// or an error (mapped by fail).
type handler func(ctx context.Context, r *http.Request) (int, any, error)

// handle registers h for pattern, with the request timeout, the body
// limit, the error mapping and the metrics.
func (a *API) handle(pattern string, h handler) {
	route := pattern
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
		defer cancel()
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		status, out, err := h(ctx, r)
		if err != nil {
			status, out = a.fail(w, r, err)
		}
		writeJSON(w, status, out)
		a.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	})
}

// errorBody is the answer to every failed request.
type errorBody struct {
	Error string `json:"error"`
	// Code is the protocol's error name (docs/protocol.md), or
	// UNAUTHENTICATED, NOT_FOUND, BAD_REQUEST.
	Code string `json:"code"`
}

// badRequest is a malformed request (its JSON, a query parameter).
type badRequest string

func (b badRequest) Error() string { return string(b) }

// fail maps err to a status and an errorBody.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) (int, errorBody) {
	var bad badRequest
	if errors.As(err, &bad) {
		return http.StatusBadRequest, errorBody{Error: bad.Error(), Code: "BAD_REQUEST"}
	}
	code := engine.ErrorCode(err)
	var e *engine.Error
	msg := err.Error()
	if errors.As(err, &e) {
		msg = e.Message
	}
	status := http.StatusServiceUnavailable
	switch code {
	case codec.CodeInvalidArgument:
		status = http.StatusBadRequest
	case codec.CodeUnknownRecipient, codec.CodeUnknownGroup, codec.CodeUnknownMessage:
		status = http.StatusNotFound
	case codec.CodeUserExists, codec.CodeGroupFull, codec.CodeRecallExpired:
		status = http.StatusConflict
	case codec.CodeNotGroupMember, codec.CodeAuthFailed, codec.CodeNotSender:
		status = http.StatusForbidden
	case codec.CodeInternal:
		status = http.StatusInternalServerError
	case codec.CodeUnsupported:
		// This node's store cannot do it (no chat seam): not a passing
		// failure, so no Retry-After.
		status = http.StatusNotImplemented
	default:
		// Store or cluster trouble: retry (a send with the same
		// client_msg_id is stored once).
		w.Header().Set("Retry-After", "1")
		a.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	return status, errorBody{Error: msg, Code: code.String()}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads the JSON body into v; unknown fields are refused (a typo
// must not silently change a request).
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return badRequest("a JSON body is required")
		}
		return badRequest("bad JSON body: " + err.Error())
	}
	if dec.More() {
		return badRequest("bad JSON body: more than one value")
	}
	return nil
}

// queryUints returns the unsigned integer query parameters names, in
// order, 0 for an absent one.
func queryUints(r *http.Request, names ...string) ([]uint64, error) {
	q := r.URL.Query()
	out := make([]uint64, len(names))
	for i, name := range names {
		s := q.Get(name)
		if s == "" {
			continue
		}
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, badRequest(name + " must be a non-negative integer")
		}
		out[i] = v
	}
	return out, nil
}

// limitArg is a limit query parameter as the Backend takes it (the
// Backend caps it far lower).
func limitArg(v uint64) int { return int(min(v, 1<<20)) }
