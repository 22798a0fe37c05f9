package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/imgn/imgn/auth"
)

// Errors of RouterResolver. Test with errors.Is.
var (
	// ErrNoNodeAvailable: every router that answered said no node can take
	// the connection (HTTP 503: the cluster is empty, draining, or every
	// node is excluded). The Client's reconnect loop retries with backoff.
	ErrNoNodeAvailable = errors.New("client: router: no available node")
	// ErrRouterConfig: RouterResolver was given no usable router URL or an
	// invalid user id. Every call of the Resolver returns it.
	ErrRouterConfig = errors.New("client: router: invalid configuration")
)

// DefaultRouterTimeout bounds one router request when RouterResolver is
// given no *http.Client.
const DefaultRouterTimeout = 3 * time.Second

// maxRouterBody bounds a router answer read by RouterResolver.
const maxRouterBody = 64 << 10

// RouterResolver returns a Resolver for router mode: on every (re)connect it
// asks imrouter where uid should connect (GET <router>/v1/route?uid=uid,
// with &exclude=n1,n2 listing the nodes the Client wants to avoid: the one
// that sent GO_AWAY, ...), and returns that node's client address and id.
//
//	cfg.Resolver = client.RouterResolver("http://127.0.0.1:9080", "alice", nil)
//
// routerURL is one base URL or several separated by commas
// ("http://r1:9080,http://r2:9080"); a URL without a scheme gets
// "http://". Routers are tried in turn, starting with the last one that
// answered, until one names a node. A router that answers 503 (no available
// node in its view) or cannot be reached sends the Resolver to the next
// one; when all fail, the error (ErrNoNodeAvailable if any router answered
// 503) goes back to the Client, whose reconnect loop retries with capped
// backoff and jitter. Dial itself does not retry: its first resolve must
// succeed.
//
// uid must be the user the Client logs in as (with a token login, the
// token's subject): the consistent-hash strategy routes a user to the node
// owning their inbox. hc nil means an http.Client with a
// DefaultRouterTimeout timeout; a given hc should have a Timeout, or one
// hung router holds the Resolver until the caller's context ends.
//
// The Resolver is safe for concurrent use; it may be shared by Clients of
// the same user.
func RouterResolver(routerURL, uid string, hc *http.Client) Resolver {
	if hc == nil {
		hc = &http.Client{Timeout: DefaultRouterTimeout}
	}
	bases, cfgErr := parseRouterURLs(routerURL)
	if cfgErr == nil && !auth.ValidID(uid) {
		cfgErr = fmt.Errorf("%w: user id %q: want 1..64 of [A-Za-z0-9_.-]", ErrRouterConfig, uid)
	}
	var next atomic.Uint32 // index of the router to try first
	return func(ctx context.Context, exclude []string) (string, string, error) {
		if cfgErr != nil {
			return "", "", cfgErr
		}
		q := url.Values{"uid": {uid}}
		if len(exclude) > 0 {
			q.Set("exclude", strings.Join(exclude, ","))
		}
		query := q.Encode()
		first := int(next.Load()) % len(bases)
		var errs []error
		for i := range bases {
			k := (first + i) % len(bases)
			addr, node, err := askRouter(ctx, hc, bases[k]+"/v1/route?"+query)
			if err == nil {
				next.Store(uint32(k))
				return addr, node, nil
			}
			if ctx.Err() != nil {
				return "", "", fmt.Errorf("client: router %s: %w", bases[k], ctx.Err())
			}
			errs = append(errs, fmt.Errorf("router %s: %w", bases[k], err))
		}
		next.Store(uint32(first+1) % uint32(len(bases))) // spread retries over the routers
		// errors.Is(err, ErrNoNodeAvailable) holds if any router said 503.
		return "", "", errors.Join(errs...)
	}
}

// parseRouterURLs splits a comma-separated list of router base URLs.
func parseRouterURLs(s string) ([]string, error) {
	var out []string
	for _, raw := range strings.Split(s, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		if !strings.Contains(raw, "://") {
			raw = "http://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
			return nil, fmt.Errorf("%w: router URL %q: want http(s)://host:port", ErrRouterConfig, raw)
		}
		out = append(out, strings.TrimRight(u.String(), "/"))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no router URL", ErrRouterConfig)
	}
	return out, nil
}

// routeAnswer is the router's JSON: a route on 200, an error otherwise.
type routeAnswer struct {
	NodeID string `json:"node_id"`
	Addr   string `json:"addr"`
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

// askRouter performs one GET /v1/route.
func askRouter(ctx context.Context, hc *http.Client, u string) (addr, node string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxRouterBody))
	if err != nil {
		return "", "", fmt.Errorf("read answer: %w", err)
	}
	var a routeAnswer
	jerr := json.Unmarshal(body, &a)
	switch {
	case resp.StatusCode == http.StatusOK && jerr == nil && a.Addr != "":
		return a.Addr, a.NodeID, nil
	case resp.StatusCode == http.StatusOK:
		return "", "", fmt.Errorf("malformed answer %.200q", body)
	case resp.StatusCode == http.StatusServiceUnavailable && jerr == nil && a.Error != "":
		return "", "", fmt.Errorf("%w: %s", ErrNoNodeAvailable, a.Reason)
	case jerr == nil && a.Error != "":
		return "", "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, a.Error)
	default:
		return "", "", fmt.Errorf("HTTP %d: %.200q", resp.StatusCode, body)
	}
}
