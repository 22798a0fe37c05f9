package clusterkit

import (
	"context"
	"fmt"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec"
)

// ClientConfig returns a client configuration for user/device that logs
// in with a fresh token signed with Secret on every (re)connect. With a
// non-empty routerURL it resolves nodes through imrouter; otherwise it
// connects to addr. The stream starts at seq 1 (AfterSeq 0).
func ClientConfig(routerURL, addr, user, device string) client.Config {
	zero := uint64(0)
	cfg := client.Config{Addr: addr, Device: device, Serializer: codec.Protobuf, AfterSeq: &zero,
		ReconnectBase: 50 * time.Millisecond, ReconnectMax: time.Second, RequestTimeout: 3 * time.Second,
		TokenSource: func(context.Context) (string, error) { return auth.MintToken([]byte(Secret), user, time.Hour) }}
	if routerURL != "" {
		cfg.Resolver = client.RouterResolver(routerURL, user, nil)
	}
	return cfg
}

// ClientConfigWS is ClientConfig through the cluster's router, except
// that the Client connects to the WebSocket listener of the node the
// router names. The router only knows the nodes' TCP addresses, so the
// resolver maps each answer (a node's Advertise) to that node's WSURL;
// node addresses never change across restarts, so the map is built once.
// The Cluster must have been started with Config.WS and Config.Router.
func (c *Cluster) ClientConfigWS(user, device string) client.Config {
	cfg := ClientConfig(c.RouterURL(), "", user, device)
	urls := make(map[string]string, len(c.Nodes))
	for _, n := range c.Nodes {
		urls[n.Advertise] = n.WSURL()
	}
	route := cfg.Resolver
	cfg.Resolver = func(ctx context.Context, exclude []string) (string, string, error) {
		addr, node, err := route(ctx, exclude)
		if err != nil {
			return "", "", err
		}
		u := urls[addr]
		if u == "" {
			return "", "", fmt.Errorf("clusterkit: router named %s (%s), which has no WebSocket listener", addr, node)
		}
		return u, node, nil
	}
	return cfg
}
