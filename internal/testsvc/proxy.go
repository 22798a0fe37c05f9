package testsvc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP fault injector between clients and a server, for network
// faults that signals cannot produce: it
// listens on a free loopback port and forwards every connection to Target.
// Faults apply to existing and new connections alike:
//
//   - Partition: nothing is forwarded in either direction until Heal (bytes
//     are held, not dropped, like TCP retransmitting across a partition);
//   - SetDelay: each chunk is forwarded after a delay (one-way latency);
//   - Reset: every open connection is closed with a TCP RST;
//   - Refuse: new connections are reset at once.
//
// Methods are safe for concurrent use. The proxy owns one goroutine per
// listener and two per connection; Close stops them all.
type Proxy struct {
	// Addr is the address clients dial, "127.0.0.1:<port>".
	Addr string
	// Target is the server's address.
	Target string

	ln net.Listener
	wg sync.WaitGroup

	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	delay     time.Duration
	refuse    bool
	closed    bool
	partition chan struct{} // non-nil while partitioned; closed by Heal
}

// NewProxy starts a proxy to target on a free loopback port. The caller
// must Close it.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("testsvc: proxy to %s: %w", target, err)
	}
	p := &Proxy{Addr: ln.Addr().String(), Target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// StartProxy starts a proxy to target for the test and closes it in
// t.Cleanup.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		if p.closed || p.refuse {
			p.mu.Unlock()
			reset(c)
			continue
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.Target, 5*time.Second)
	if err != nil {
		p.drop(client)
		reset(client)
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.drop(client)
		reset(client)
		reset(server)
		return
	}
	p.conns[server] = struct{}{}
	p.mu.Unlock()
	errc := make(chan error, 2)
	go func() { errc <- p.pipe(server, client) }()
	go func() { errc <- p.pipe(client, server) }()
	if err := <-errc; err != nil {
		// A direction failed (reset, closed): end the other one too. A
		// clean EOF was passed on as a half-close; the other direction
		// runs until it ends by itself.
		client.Close()
		server.Close()
	}
	<-errc
	client.Close()
	server.Close()
	p.drop(client)
	p.drop(server)
}

func (p *Proxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// pipe copies src to dst, applying the current faults to every chunk. It
// returns nil when src ended cleanly (EOF, passed on to dst as a
// half-close) and the error otherwise.
func (p *Proxy) pipe(dst, src net.Conn) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			part, delay := p.partition, p.delay
			p.mu.Unlock()
			if part != nil {
				<-part // held until Heal (or Close, which heals)
			}
			if delay > 0 {
				time.Sleep(delay)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Partition stops forwarding in both directions until Heal. Connections
// stay open; held bytes are delivered after Heal.
func (p *Proxy) Partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.partition == nil && !p.closed {
		p.partition = make(chan struct{})
	}
}

// Heal ends a partition and removes the delay and Refuse.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.partition != nil {
		close(p.partition)
		p.partition = nil
	}
	p.delay, p.refuse = 0, false
}

// SetDelay delays every forwarded chunk by d (0 removes the delay).
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Refuse makes the proxy reset new connections at once (on) or accept them
// again (off). Open connections are not affected: see Reset.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Reset closes every open connection with a TCP RST, on both sides.
func (p *Proxy) Reset() {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		reset(c)
	}
}

// Conns returns the number of open proxied connections (both sides count).
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops listening, resets every connection and waits for the
// proxy's goroutines. Closing twice is a no-op.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	if p.partition != nil {
		close(p.partition)
		p.partition = nil
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.Reset()
	p.wg.Wait()
	return err
}

// reset closes c with SO_LINGER 0, so the peer gets an RST.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
