package engine

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// testCert returns a server certificate for 127.0.0.1 signed by a fresh
// CA, and a pool holding that CA.
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "imgn test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "imd"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}, pool
}

func startTLSServer(t *testing.T) (*Server, *x509.CertPool) {
	t.Helper()
	cert, pool := testCert(t)
	s := startServer(t, func(c *Config) {
		c.Edge.TLSAddr, c.Edge.WSSAddr = "127.0.0.1:0", "127.0.0.1:0"
		c.Edge.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	})
	return s, pool
}

// TestTLSServesTheProtocolAndWebSocket: a raw-protocol client over TLS
// and a WebSocket client over TLS talk to each other and to a plain TCP
// client; the engine sees each TLS client's own address.
func TestTLSServesTheProtocolAndWebSocket(t *testing.T) {
	s, pool := startTLSServer(t)
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.TLSAddr().String(), &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	alice := &rawClient{t: t, nc: tc, r: bufio.NewReader(tc), ser: codec.Protobuf}
	alice.login("tlsalice", "d")
	if got, want := remoteOf(t, s), tc.LocalAddr().String(); got != want {
		t.Fatalf("engine sees %s, want the client's %s", got, want)
	}

	d := ws.Dialer{Timeout: 5 * time.Second, TLSConfig: &tls.Config{RootCAs: pool}}
	wc, br, _, err := d.Dial(context.Background(), "wss://"+s.WSSAddr().String()+"/")
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	t.Cleanup(func() { _ = wc.Close() })
	if br == nil {
		br = bufio.NewReader(wc)
	}
	wcc := &wsClientConn{Conn: wc, br: br}
	bob := &rawClient{t: t, nc: wcc, r: bufio.NewReaderSize(wcc, 64<<10), ser: codec.JSON}
	bob.login("tlsbob", "web")
	carol := dial(t, s, codec.MsgPack)
	carol.login("tlscarol", "pc")

	alice.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "a1", To: "tlsbob", Body: []byte("tls to wss")}, nil)
	if p := bob.waitPushes(1); string(p[0].Body) != "tls to wss" {
		t.Fatalf("bob got %q", p[0].Body)
	}
	bob.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "b1", To: "tlscarol", Body: []byte("wss to tcp")}, nil)
	if p := carol.waitPushes(1); string(p[0].Body) != "wss to tcp" {
		t.Fatalf("carol got %q", p[0].Body)
	}
	carol.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "c1", To: "tlsalice", Body: make([]byte, 40<<10)}, nil)
	if p := alice.waitPushes(1); len(p[0].Body) != 40<<10 {
		t.Fatalf("alice got %d bytes, want %d (a message bigger than the pump's buffer)", len(p[0].Body), 40<<10)
	}
}

// TestTLSRefusesPlaintextAndUntrustedClients: a client that does not
// speak TLS, or does not trust the certificate, never reaches the engine.
func TestTLSRefusesPlaintextAndUntrustedClients(t *testing.T) {
	s, _ := startTLSServer(t)
	nc, err := net.DialTimeout("tcp", s.TLSAddr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write(encodeFrame(t, codec.JSON, codec.CmdHeartbeat, 1, &pb.Heartbeat{})); err != nil {
		t.Fatal(err)
	}
	// At most a TLS alert comes back, then the end of the stream.
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(nc)
	if err != nil && !isReset(err) {
		t.Fatalf("want the connection closed, got %v", err)
	}
	if bytes.HasPrefix(got, []byte("IMGN")) {
		t.Fatalf("plaintext client got an IMGN frame: %q", got)
	}

	_, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.TLSAddr().String(), &tls.Config{RootCAs: x509.NewCertPool()})
	if err == nil {
		t.Fatal("a client without the CA completed the handshake")
	}
	if n := s.conns.len(); n != 0 {
		t.Fatalf("%d connections reached the engine", n)
	}
}

// TestTLSConnectionsEndWithTheServer: Shutdown closes TLS connections
// (GO_AWAY first, like TCP) and waits for their goroutines.
func TestTLSConnectionsEndWithTheServer(t *testing.T) {
	cert, pool := testCert(t)
	s := startServer(t, func(c *Config) {
		c.Edge.TLSAddr = "127.0.0.1:0"
		c.Edge.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	tc, err := tls.Dial("tcp", s.TLSAddr().String(), &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	rc := &rawClient{t: t, nc: tc, r: bufio.NewReader(tc), ser: codec.JSON}
	rc.login("tlsdave", "d")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	rc.expectClosed()
}
