package conformance

import (
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
)

// TestConnectionsPerAddress: with --max-conns-per-ip, a connection beyond
// the cap from one source address gets TOO_MANY_CONNECTIONS at accept
// (§5: fatal, retryable, JSON, seq 0) and is closed; closing one of the
// address's connections makes room again.
func TestConnectionsPerAddress(t *testing.T) {
	n := startNode(t, "--max-conns-per-ip", "2")
	first := dial(t, n, codec.JSON)
	first.call(codec.CmdHeartbeat, nil, codec.CmdHeartbeatOK, nil)
	dial(t, n, codec.Protobuf).call(codec.CmdHeartbeat, nil, codec.CmdHeartbeatOK, nil)
	o := fatalOn(t, n, codec.Protobuf, nil)
	if o.f.Command != codec.CmdError || o.f.Serializer != codec.JSON || o.f.Seq != 0 {
		t.Fatalf("third connection: %s in %s seq %d, want ERROR in JSON seq 0", o.f.Command, o.f.Serializer, o.f.Seq)
	}
	if e := errorOf(t, o.f); codec.ErrorCode(e.Code) != codec.CodeTooManyConnections || !e.Fatal || !e.Retryable {
		t.Fatalf("third connection: %s fatal=%v retryable=%v", codec.ErrorCode(e.Code), e.Fatal, e.Retryable)
	}
	_ = first.nc.Close()
	// The server sees the close a moment later; until then a new
	// connection is refused like the third.
	deadline := time.Now().Add(wait)
	for {
		c := dial(t, n, codec.JSON)
		c.write(encode(t, codec.JSON, codec.CmdHeartbeat, 0, 1, nil))
		f, err := c.read(wait)
		if err == nil && f.Command == codec.CmdHeartbeatOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no room after a connection closed: %v %v", f.Command, err)
		}
		_ = c.nc.Close()
		time.Sleep(50 * time.Millisecond)
	}
}
