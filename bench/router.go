package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"
)

// Router mode (--router URL): the generator asks an imrouter where each
// user belongs, as a client library in router mode does, instead of
// spreading connections round-robin over --target. The node list (client
// and admin addresses) comes from the router's /v1/nodes; each user's node
// from /v1/route, once per user, when its connection is dialed.

// routerNodes lists the router's available nodes: client addresses and
// admin base URLs, in the same order.
func routerNodes(routerURL string) (targets, admins []string, err error) {
	var out struct {
		Nodes []struct {
			ID         string `json:"id"`
			ClientAddr string `json:"client_addr"`
			AdminAddr  string `json:"admin_addr"`
			Available  bool   `json:"available"`
		} `json:"nodes"`
	}
	if err := getRouterJSON(routerURL+"/v1/nodes", &out); err != nil {
		return nil, nil, err
	}
	for _, n := range out.Nodes {
		if !n.Available || n.ClientAddr == "" {
			continue
		}
		targets = append(targets, n.ClientAddr)
		admin := ""
		if n.AdminAddr != "" {
			admin = "http://" + n.AdminAddr
		}
		admins = append(admins, admin)
	}
	if len(targets) == 0 {
		return nil, nil, fmt.Errorf("bench: router %s lists no available node", routerURL)
	}
	return targets, admins, nil
}

// routeCache maps users to target indexes through the router. Safe for
// concurrent use; each user is asked for once.
type routeCache struct {
	url     string
	targets []string
	mu      sync.Mutex
	byUser  map[string]int
}

func newRouteCache(routerURL string, targets []string) *routeCache {
	return &routeCache{url: routerURL, targets: targets, byUser: map[string]int{}}
}

// index returns the target of user, or ok=false (the caller falls back to
// its own choice) when the router cannot answer or names an unknown node.
func (r *routeCache) index(user string) (int, bool) {
	r.mu.Lock()
	i, ok := r.byUser[user]
	r.mu.Unlock()
	if ok {
		return i, i >= 0
	}
	var out struct {
		Addr string `json:"addr"`
	}
	i = -1
	if err := getRouterJSON(r.url+"/v1/route?uid="+url.QueryEscape(user), &out); err == nil {
		i = slices.Index(r.targets, out.Addr)
	}
	r.mu.Lock()
	r.byUser[user] = i
	r.mu.Unlock()
	return i, i >= 0
}

var routerHTTP = &http.Client{Timeout: 3 * time.Second}

func getRouterJSON(u string, out any) error {
	resp, err := routerHTTP.Get(u)
	if err != nil {
		return fmt.Errorf("bench: router: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("bench: router %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return errors.Join(fmt.Errorf("bench: router %s: bad JSON", u), err)
	}
	return nil
}
