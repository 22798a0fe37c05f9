package conformance

import (
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// TestHeartbeatsAndTimeouts checks §6.2 with short flag values: LOGIN_OK
// announces the node's heartbeat interval and idle timeout (the timeout
// derived as 3 x the heartbeat when not given); every complete frame keeps
// a logged-in connection open, HEARTBEAT or not, even one answered with an
// ERROR; silence then ends it with IDLE_TIMEOUT, fatal, seq 0.
func TestHeartbeatsAndTimeouts(t *testing.T) {
	t.Run("derived idle timeout", func(t *testing.T) {
		n := startNode(t, "--heartbeat", "2s")
		c := dial(t, n, codec.MsgPack)
		lo := c.login(uniq("derived"), "d")
		if lo.HeartbeatMs != 2000 || lo.IdleTimeoutMs != 6000 {
			t.Fatalf("--heartbeat 2s: LOGIN_OK heartbeat_ms %d idle_timeout_ms %d, want 2000 and 6000", lo.HeartbeatMs, lo.IdleTimeoutMs)
		}
	})
	t.Run("frames keep the connection", func(t *testing.T) {
		n := startNode(t, "--heartbeat", "1s", "--idle-timeout", "2s")
		c := dial(t, n, codec.JSON)
		lo := c.login(uniq("beater"), "d")
		if lo.HeartbeatMs != 1000 || lo.IdleTimeoutMs != 2000 {
			t.Fatalf("LOGIN_OK heartbeat_ms %d idle_timeout_ms %d, want 1000 and 2000", lo.HeartbeatMs, lo.IdleTimeoutMs)
		}
		// Each kind of frame alone, a frame every half heartbeat for one
		// and a half idle timeouts: HEARTBEAT, a request answered
		// normally, and a request answered with an ERROR all count.
		step := time.Duration(lo.HeartbeatMs) * time.Millisecond / 2
		span := 3 * time.Duration(lo.IdleTimeoutMs) * time.Millisecond / 2
		for _, send := range []func(){
			func() { c.call(codec.CmdHeartbeat, &pb.Heartbeat{}, codec.CmdHeartbeatOK, nil) },
			func() { c.call(codec.CmdSync, &pb.SyncRequest{}, codec.CmdSyncOK, nil) },
			func() {
				c.fails(codec.CmdPresence, &pb.PresenceRequest{Users: []string{"not an id"}}, codec.CodeInvalidArgument)
			},
		} {
			for end := time.Now().Add(span); time.Now().Before(end); {
				time.Sleep(step)
				send()
			}
		}
		frames := c.closed()
		last := frames[len(frames)-1]
		if last.Command != codec.CmdError || last.Seq != 0 {
			t.Fatalf("after silence: %v, want ERROR IDLE_TIMEOUT seq 0", commands(frames))
		}
		if e := errorOf(t, last); codec.ErrorCode(e.Code) != codec.CodeIdleTimeout || !e.Fatal {
			t.Fatalf("after silence: %s fatal=%v, want IDLE_TIMEOUT fatal", codec.ErrorCode(e.Code), e.Fatal)
		}
	})
}
