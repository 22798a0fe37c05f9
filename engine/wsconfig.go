package engine

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"strings"

	"github.com/imgn/imgn/internal/defaults"
)

// EdgeConfig configures the listeners beyond the plain TCP one: WebSocket
// (on the event loops), TLS for the raw protocol and for WebSocket
// (terminated by the standard library, then handed to the event loops),
// and the PROXY protocol on the plain listeners. The zero value serves
// plain TCP only. See docs/protocol.md (WebSocket) and docs/operations.md.
type EdgeConfig struct {
	// WSAddr is the plain WebSocket listener, "host:port"; empty: none.
	WSAddr string
	// WSOrigins lists the Origin values a browser may connect from, e.g.
	// "https://chat.example.com". Empty allows only pages served by the
	// same host (the Origin's host equals the request's Host header); "*"
	// allows any. A handshake without an Origin header (a client that is
	// not a browser) is always allowed: the check protects browsers'
	// users from other sites, and a program can send any Origin it likes.
	WSOrigins []string
	// WebFiles, when set, is served on the WebSocket listeners for plain
	// HTTP GET and HEAD requests (the browser app). "/" serves index.html.
	WebFiles fs.FS
	// TLSAddr is a listener for the raw protocol over TLS; WSSAddr one for
	// WebSocket over TLS. Both need TLS. Empty: none.
	TLSAddr, WSSAddr string
	// TLS holds the certificates of TLSAddr and WSSAddr.
	TLS *tls.Config
	// ProxyProtocol makes the plain listeners (Addr and WSAddr) expect a
	// PROXY protocol header (version 1 or 2) at the start of every
	// connection, from a load balancer in front: the address in it is the
	// client's address for every per-address limit. Connections without
	// one are closed. Enable it only when every connection comes through
	// such a proxy: anyone can claim any address otherwise.
	ProxyProtocol bool
	// MaxTLSHandshakes bounds concurrent TLS handshakes; connections
	// beyond it are closed at once. Default DefaultMaxTLSHandshakes (1024).
	MaxTLSHandshakes int
}

// enabled reports whether any listener beyond plain TCP, or the PROXY
// protocol, is configured.
func (e *EdgeConfig) enabled() bool {
	return e.WSAddr != "" || e.TLSAddr != "" || e.WSSAddr != "" || e.ProxyProtocol
}

// withDefaults returns e with its zero fields filled.
func (e EdgeConfig) withDefaults() EdgeConfig {
	defaults.Set(&e.MaxTLSHandshakes, DefaultMaxTLSHandshakes)
	return e
}

// validate checks the listener addresses, origins and TLS settings.
func (e EdgeConfig) validate(addr string) error {
	var errs []error
	seen := map[string]string{"Addr": addr}
	for _, l := range []struct{ name, addr string }{{"WSAddr", e.WSAddr}, {"TLSAddr", e.TLSAddr}, {"WSSAddr", e.WSSAddr}} {
		if l.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", l.name, l.addr, err))
			continue
		}
		for other, a := range seen {
			if a == l.addr && !strings.HasSuffix(a, ":0") {
				errs = append(errs, fmt.Errorf("%s and %s are both %s", other, l.name, a))
			}
		}
		seen[l.name] = l.addr
	}
	if (e.TLSAddr != "" || e.WSSAddr != "") && (e.TLS == nil || (len(e.TLS.Certificates) == 0 && e.TLS.GetCertificate == nil)) {
		errs = append(errs, errors.New("TLSAddr and WSSAddr need TLS with a certificate"))
	}
	for _, o := range e.WSOrigins {
		if o == "*" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			errs = append(errs, fmt.Errorf("WSOrigins: %q is not an origin like https://chat.example.com", o))
		}
	}
	if e.MaxTLSHandshakes < 1 {
		errs = append(errs, fmt.Errorf("MaxTLSHandshakes must be at least 1, got %d", e.MaxTLSHandshakes))
	}
	return errors.Join(errs...)
}

// originAllowed applies WSOrigins to a handshake. origin is the Origin
// header ("" with present false when there was none), host the Host
// header.
func (e *EdgeConfig) originAllowed(origin string, present bool, host string) bool {
	if !present {
		return true
	}
	if len(e.WSOrigins) == 0 {
		u, err := url.Parse(origin)
		return err == nil && u.Host != "" && strings.EqualFold(u.Host, host)
	}
	origin = strings.TrimSuffix(origin, "/")
	for _, o := range e.WSOrigins {
		if o == "*" || strings.EqualFold(strings.TrimSuffix(o, "/"), origin) {
			return true
		}
	}
	return false
}
