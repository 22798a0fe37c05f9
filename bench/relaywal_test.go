package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"hash/crc32"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
)

// relayClient is a blocking client of the relay for tests.
type relayClient struct {
	t  *testing.T
	c  net.Conn
	fr codec.FrameReader
}

func dialRelay(t *testing.T, r *Relay, user string) *relayClient {
	t.Helper()
	c, err := net.Dial("tcp", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	rc := &relayClient{t: t, c: c, fr: codec.FrameReader{R: bufio.NewReader(c)}}
	b, st := beginFrame(nil, codec.CmdLogin, 1)
	rc.write(endFrame(appendStringField(b, 1, user), st))
	if f := rc.next(); f.Command != codec.CmdLoginOK {
		t.Fatalf("login %s: got %v", user, f.Command)
	}
	return rc
}

func (rc *relayClient) write(b []byte) {
	rc.t.Helper()
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *relayClient) send(seq uint32, to, body string) {
	rc.t.Helper()
	b, st := beginFrame(nil, codec.CmdSend, seq)
	b = appendStringField(b, 1, "cm"+to+body)
	b = appendStringField(b, 2, to)
	b = appendStringField(b, 4, body)
	rc.write(endFrame(b, st))
}

// next reads one frame within 10 s; its body is copied.
func (rc *relayClient) next() codec.Frame {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := rc.fr.Next()
	if err != nil {
		rc.t.Fatal(err)
	}
	f.Body = append([]byte(nil), f.Body...)
	return f
}

// quiet asserts that nothing arrives for d.
func (rc *relayClient) quiet(d time.Duration, what string) {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(d))
	if f, err := rc.fr.Next(); err == nil {
		rc.t.Fatalf("%s: got %v before the log was synced", what, f.Command)
	}
	// The deadline broke the reader's stream only if bytes were half read;
	// none were (nothing arrived), so the reader is still usable.
	rc.fr = codec.FrameReader{R: bufio.NewReader(rc.c)}
}

func TestDurableRelayAnswersAfterTheSync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.wal")
	r := NewDurableRelay("127.0.0.1:0", 2, path)
	// Hold the syncer between its write and its sync.
	held, hold := make(chan struct{}, 1), make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	r.walBeforeSync = func() {
		select {
		case held <- struct{}{}:
		default:
		}
		<-hold
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		release() // a failed test must not leave the syncer held
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	alice, bob := dialRelay(t, r, "alice"), dialRelay(t, r, "bob")
	alice.send(2, "bob", "hello")
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the syncer never wrote the message")
	}
	alice.quiet(200*time.Millisecond, "the sender")
	bob.quiet(10*time.Millisecond, "the recipient")
	release()
	if f := alice.next(); f.Command != codec.CmdSendAck || f.Seq != 2 || pbVarint(f.Body, 2) == 0 {
		t.Fatalf("sender got %v seq %d", f.Command, f.Seq)
	}
	f := bob.next()
	if f.Command != codec.CmdPush {
		t.Fatalf("recipient got %v", f.Command)
	}
	if m := pbBytes(f.Body, 1); string(pbBytes(m, 8)) != "hello" || string(pbBytes(m, 3)) != "alice" || pbVarint(m, 1) != 1 {
		t.Fatalf("push %q", m)
	}
	// Later messages, in order, each acked and pushed once.
	for i := range 20 {
		alice.send(uint32(3+i), "bob", string(rune('a'+i)))
	}
	for i := range 20 {
		if f := alice.next(); f.Command != codec.CmdSendAck || f.Seq != uint32(3+i) {
			t.Fatalf("ack %d: %v seq %d", i, f.Command, f.Seq)
		}
		if m := pbBytes(bob.next().Body, 1); string(pbBytes(m, 8)) != string(rune('a'+i)) || pbVarint(m, 1) != uint64(2+i) {
			t.Fatalf("push %d: %q", i, m)
		}
	}
	if n := r.wal.syncs.Load(); n == 0 || n > 21 {
		t.Fatalf("%d syncs for 21 messages", n)
	}
	// The log holds the first request's body, with its length and CRC.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != relayWALSize {
		t.Fatalf("log is %d bytes, want %d (written in place)", len(data), relayWALSize)
	}
	n := binary.LittleEndian.Uint32(data)
	body := data[relayWALHeader : relayWALHeader+n]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(data[4:]) || string(pbBytes(body, 4)) != "hello" {
		t.Fatalf("first record %q", data[:relayWALHeader+n])
	}
}
