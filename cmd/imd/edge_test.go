package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/childproc"
	"github.com/imgn/imgn/internal/wstest"
)

// writeTestCert writes a self-signed certificate for 127.0.0.1 and its
// key as PEM files, and returns their paths and a pool trusting it.
func writeTestCert(t testing.TB) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "imd test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// edgeImd is an imd with every kind of client listener.
type edgeImd struct {
	tcp, ws, tls, wss, admin string
	pool                     *x509.CertPool
}

func startEdgeImd(t testing.TB, bin string, withAdmin bool, extra ...string) *edgeImd {
	t.Helper()
	certFile, keyFile, pool := writeTestCert(t)
	e := &edgeImd{tcp: freePort(t), ws: freePort(t), tls: freePort(t), wss: freePort(t), pool: pool}
	admin := ""
	if withAdmin {
		e.admin = freePort(t)
		admin = e.admin
	}
	args := append([]string{"--store", "memory", "--listen", e.tcp, "--ws-listen", e.ws, "--tls-listen", e.tls, "--wss-listen", e.wss,
		"--tls-cert", certFile, "--tls-key", keyFile, "--admin", admin, "--jwt-secret", durSecret, "--log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = childproc.Attr(false)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	addrs := []string{e.tcp, e.ws, e.tls, e.wss}
	if e.admin != "" {
		addrs = append(addrs, e.admin)
	}
	for _, addr := range addrs {
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("imd did not listen on %s: %v", addr, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return e
}

// dialKind connects to e over TCP, WebSocket, TLS or WebSocket over TLS.
func (e *edgeImd) dial(kind string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	switch kind {
	case "tcp":
		return net.DialTimeout("tcp", e.tcp, 5*time.Second)
	case "tls":
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.tls, &tls.Config{RootCAs: e.pool})
	case "ws":
		return wstest.Dial(ctx, "ws://"+e.ws+"/", nil)
	case "wss":
		return wstest.Dial(ctx, "wss://"+e.wss+"/", &tls.Config{RootCAs: e.pool})
	}
	return nil, fmt.Errorf("unknown kind %q", kind)
}

func (e *edgeImd) login(kind, user string) (*syncClient, error) {
	nc, err := e.dial(kind)
	if err != nil {
		return nil, err
	}
	c, err := loginOver(nc, user)
	if err != nil {
		return nil, fmt.Errorf("%s login: %w", kind, err)
	}
	return c, nil
}

var edgeKinds = []string{"tcp", "ws", "tls", "wss"}

// TestBinaryServesWebSocketAndTLS: imd's listener flags work end to end:
// a user on each kind of listener sends to the user on the next one.
func TestBinaryServesWebSocketAndTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs imd")
	}
	e := startEdgeImd(t, buildImd(t), false)
	clients := map[string]*syncClient{}
	for _, k := range edgeKinds {
		c, err := e.login(k, "user"+k)
		if err != nil {
			t.Fatal(err)
		}
		defer c.nc.Close()
		clients[k] = c
	}
	for i, k := range edgeKinds {
		to := edgeKinds[(i+1)%len(edgeKinds)]
		body := "from " + k + " to " + to
		if _, err := clients[k].call(codec.CmdSend, &pb.SendRequest{ClientMsgId: "m" + k, To: "user" + to, Body: []byte(body)}, &pb.SendAck{}); err != nil {
			t.Fatalf("%s send: %v", k, err)
		}
		rc := clients[to]
		_ = rc.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		h, b, err := rc.readFrame()
		if err != nil {
			t.Fatalf("%s receive: %v", to, err)
		}
		var p pb.Push
		if h.Command != codec.CmdPush || codec.Unmarshal(h.Serializer, b, &p) != nil || len(p.Messages) != 1 || string(p.Messages[0].Body) != body {
			t.Fatalf("%s got %s %v, want a push of %q", to, h.Command, &p, body)
		}
	}
}

// BenchmarkIdleConnMemory measures imd's memory per idle logged-in
// connection on each kind of listener: IMD_MEM_CONNS connections (default
// 2000) are opened and logged in, then imd's heap (after a collection,
// through the admin listener's pprof) and RSS are read and compared with
// the figures before. Run it alone:
//
//	go test ./cmd/imd -run '^$' -bench IdleConnMemory -benchtime 1x
func BenchmarkIdleConnMemory(b *testing.B) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("IMD_MEM_CONNS")); err == nil && v > 0 {
		n = v
	}
	bin := buildImd(b)
	for _, k := range edgeKinds {
		b.Run(k, func(b *testing.B) {
			for b.Loop() {
				e := startEdgeImd(b, bin, true, "--heartbeat", "120s", "--idle-timeout", "360s", "--max-conns", strconv.Itoa(n+100))
				heap0, rss0 := e.memory(b)
				conns := make([]*syncClient, 0, n)
				for i := range n {
					c, err := e.login(k, fmt.Sprintf("u%d", i))
					if err != nil {
						b.Fatal(err)
					}
					conns = append(conns, c)
				}
				heap1, rss1 := e.memory(b)
				b.ReportMetric(float64(heap1-heap0)/float64(n), "heap-B/conn")
				b.ReportMetric(float64(rss1-rss0)/float64(n), "rss-B/conn")
				for _, c := range conns {
					c.nc.Close()
				}
			}
		})
	}
}

var memMetric = regexp.MustCompile(`(?m)^(go_memstats_heap_inuse_bytes|process_resident_memory_bytes) (\S+)$`)

// memory returns imd's heap in use after a collection, and its RSS.
func (e *edgeImd) memory(b *testing.B) (heap, rss int64) {
	b.Helper()
	get := func(path string) string {
		resp, err := http.Get("http://" + e.admin + path)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	get("/debug/pprof/heap?gc=1")
	for _, m := range memMetric.FindAllStringSubmatch(get("/metrics"), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		if m[1] == "go_memstats_heap_inuse_bytes" {
			heap = int64(v)
		} else {
			rss = int64(v)
		}
	}
	if heap == 0 || rss == 0 {
		b.Fatal("imd's metrics lack heap or RSS")
	}
	return heap, rss
}

// TestWebApp: --web serves the embedded browser app on the WebSocket
// listeners (plain and TLS), beside the protocol, and needs one of them.
func TestWebApp(t *testing.T) {
	e := startEdgeImd(t, buildImd(t), false, "--web")
	clients := map[string]*http.Client{
		"http://" + e.ws:   {Timeout: 5 * time.Second},
		"https://" + e.wss: {Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool}}},
	}
	for base, hc := range clients {
		for path, want := range map[string]string{"/": "<title>imgn chat</title>", "/app.js": "imgn.v1", "/style.css": ".composer"} {
			resp, err := hc.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !regexp.MustCompile(regexp.QuoteMeta(want)).Match(body) {
				t.Fatalf("GET %s%s: %d, %d bytes without %q", base, path, resp.StatusCode, len(body), want)
			}
		}
	}
	// the protocol still works on the same listener
	c, err := e.login("ws", "webuser")
	if err != nil {
		t.Fatal(err)
	}
	c.nc.Close()

	if _, err := parseOptions([]string{"--store", "memory", "--web"}, envOf(nil), io.Discard); err == nil ||
		!regexp.MustCompile(`--web needs --ws-listen`).MatchString(err.Error()) {
		t.Fatalf("--web without a WebSocket listener: %v", err)
	}
}
