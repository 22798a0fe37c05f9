package main

import (
	"fmt"
	"log/slog"

	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/redislink"
)

// newRedisTransport builds the Redis pub/sub mesh (--mesh redis): one
// channel per node on the --redis servers.
func newRedisTransport(o *options, log *slog.Logger) (mesh.Transport, error) {
	t, err := redislink.New(redislink.Config{Addrs: splitList(o.cluster.redis), Logger: log})
	if err != nil {
		return nil, fmt.Errorf("redis mesh: %w", err)
	}
	return t, nil
}
