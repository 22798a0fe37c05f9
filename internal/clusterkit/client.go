package clusterkit

import (
	"context"
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
