// Package ports hands out free loopback TCP ports for listeners started by
// tests, tools and benchmarks.
//
// Ports come from below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), so a listener never collides with the
// source port of some outgoing connection, which is what makes "bind :0,
// close, reuse the number later" flaky when other processes run. A port is
// probed by binding it and is not handed out twice by one process; another
// process can still take it before it is used, but only one that picks
// ports the same way, at random from thousands.
package ports

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

var (
	mu   sync.Mutex
	used = map[int]bool{}
)

// Free returns a loopback port that was free a moment ago.
func Free() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	lo, hi := 20000, 32000
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v-1 < hi {
				hi = v - 1
				lo = min(lo, hi-2000)
			}
		}
	}
	for range 2000 {
		port := lo + rand.IntN(hi-lo)
		if used[port] {
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		_ = ln.Close()
		used[port] = true
		return port, nil
	}
	return 0, errors.New("ports: no free loopback port below the ephemeral range")
}
