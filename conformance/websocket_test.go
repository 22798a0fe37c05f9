package conformance

import (
	"context"
	"testing"

	"github.com/imgn/imgn/internal/wstest"
)

// TestOverWebSocket runs the command, error-code and framing scenarios
// again with every connection they dial on the node's WebSocket listener
// (docs/protocol.md §10: inside the binary messages the protocol is the
// same). The scenarios that need a raw socket (SLOW_CONSUMER's unread
// connection) still use TCP.
func TestOverWebSocket(t *testing.T) {
	overWS = true
	t.Cleanup(func() { overWS = false })
	for _, tc := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"EveryCommand", TestEveryCommand},
		{"EveryErrorCode", TestEveryErrorCode},
		{"Section2Examples", TestSection2Examples},
		{"ValidationOrder", TestValidationOrder},
		{"FrameStream", TestFrameStream},
	} {
		t.Run(tc.name, tc.run)
	}
}

// refusedWS checks §10.2: a WebSocket connection the node refuses at
// accept is closed before the handshake completes.
func refusedWS(t *testing.T, n *node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	nc, err := wstest.Dial(ctx, "ws://"+n.ws+"/", nil)
	if err == nil {
		_ = nc.Close()
		t.Fatal("the node completed a WebSocket handshake it should have refused at accept")
	}
}

// tcpOnly makes the rest of the test dial TCP during TestOverWebSocket.
func tcpOnly(t *testing.T) {
	if overWS {
		overWS = false
		t.Cleanup(func() { overWS = true })
	}
}
