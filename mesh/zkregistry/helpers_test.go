package zkregistry

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// testLogger logs to t at Info level (Debug with IMGN_TEST_DEBUG=1).
func testLogger(t *testing.T) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("IMGN_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// sessionSniffer is a Config.Dialer that records the session id and
// password the server hands out in each connect response, so that a test
// can expire a session from a second connection.
type sessionSniffer struct {
	mu      sync.Mutex
	passwds map[int64][]byte
}

func (s *sessionSniffer) Dial(network, address string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout(network, address, timeout)
	if err != nil {
		return nil, err
	}
	return &sniffConn{Conn: c, s: s}, nil
}

// passwd returns the password of session id (nil if not seen).
func (s *sessionSniffer) passwd(id int64) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.passwds[id]
}

type sniffConn struct {
	net.Conn
	s    *sessionSniffer
	buf  []byte
	done bool
}

// Read parses the first frame the server sends: the connect response
// {int32 protocolVersion, int32 timeout, int64 sessionID, buffer passwd}.
func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.done && n > 0 {
		c.buf = append(c.buf, p[:n]...)
		if len(c.buf) >= 4 {
			size := int(binary.BigEndian.Uint32(c.buf))
			if len(c.buf) >= 4+size && size >= 20 {
				frame := c.buf[4 : 4+size]
				id := int64(binary.BigEndian.Uint64(frame[8:16]))
				pwLen := int(int32(binary.BigEndian.Uint32(frame[16:20])))
				if id != 0 && pwLen >= 0 && 20+pwLen <= len(frame) {
					c.s.mu.Lock()
					if c.s.passwds == nil {
						c.s.passwds = make(map[int64][]byte)
					}
					c.s.passwds[id] = append([]byte(nil), frame[20:20+pwLen]...)
					c.s.mu.Unlock()
				}
				c.done, c.buf = true, nil
			}
		}
	}
	return n, err
}

// expireSession closes session id on the server from a second connection
// (the classic technique: attach to the session with its id and password,
// then send closeSession). The server deletes the session's ephemeral
// znodes and drops the original client's connection; that client's next
// reconnect learns that its session has expired.
//
// The connect and closeSession requests are written together: the owning
// client reconnects at once when the server moves its session, and the
// server then drops this connection, possibly before it answers. Callers
// check the effect (a new session) and retry.
func expireSession(addr string, id int64, passwd []byte) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))

	// ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId, passwd.
	req := binary.BigEndian.AppendUint32(nil, 0)
	req = binary.BigEndian.AppendUint64(req, 0)
	req = binary.BigEndian.AppendUint32(req, 30000)
	req = binary.BigEndian.AppendUint64(req, uint64(id))
	req = binary.BigEndian.AppendUint32(req, uint32(len(passwd)))
	req = append(req, passwd...)
	// RequestHeader{xid 1, type closeSession (-11)}.
	closeReq := binary.BigEndian.AppendUint32(nil, 1)
	closeReq = binary.BigEndian.AppendUint32(closeReq, uint32(0xFFFFFFF5))
	if _, err := c.Write(append(frame(req), frame(closeReq)...)); err != nil {
		return err
	}
	resp, err := readFrame(c)
	if err != nil {
		return nil // dropped: the caller checks whether the session went
	}
	if len(resp) >= 16 {
		if got := int64(binary.BigEndian.Uint64(resp[8:16])); got != id {
			return fmt.Errorf("attached to session %#x, want %#x (already expired?)", got, id)
		}
	}
	_, _ = readFrame(c)
	return nil
}

func frame(body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

func readFrame(c net.Conn) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	_, err := io.ReadFull(c, body)
	return body, err
}
