package main

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/imgn/imgn/codec/pb"
)

// jsonMessage is the JSON line printed for a received message (recv,
// chat --json). body is the payload when it is valid UTF-8; otherwise
// body_b64 holds it base64-encoded and body is absent.
type jsonMessage struct {
	Seq         uint64 `json:"seq"`
	MsgID       uint64 `json:"msg_id"`
	From        string `json:"from"`
	To          string `json:"to"`
	GroupID     string `json:"group_id,omitempty"`
	ClientMsgID string `json:"client_msg_id,omitempty"`
	Kind        uint32 `json:"kind"`
	Body        string `json:"body,omitempty"`
	BodyB64     []byte `json:"body_b64,omitempty"`
	Time        int64  `json:"time"`
}

func toJSONMessage(m *pb.Message) jsonMessage {
	j := jsonMessage{
		Seq: m.GetSeq(), MsgID: m.GetMsgId(), From: m.GetFrom(), To: m.GetTo(), GroupID: m.GetGroupId(),
		ClientMsgID: m.GetClientMsgId(), Kind: m.GetKind(), Time: m.GetTime(),
	}
	if utf8.Valid(m.GetBody()) {
		j.Body = string(m.GetBody())
	} else {
		j.BodyB64 = m.GetBody()
	}
	return j
}

// chatLine formats a message for the interactive chat:
//
//	[12:03:01] alice: hello            (to me)
//	[12:03:01] alice #g1: hello        (in group g1)
//	[12:03:01] me -> bob: hello        (sent by me, from any device)
//	[12:03:01] me #g1: hello
//	[12:03:01] system: hello           (system message, no sender)
func chatLine(m *pb.Message, self string, loc *time.Location) string {
	ts := time.UnixMilli(m.GetTime()).In(loc).Format("15:04:05")
	body := printable(m.GetBody())
	from := m.GetFrom()
	switch {
	case from == "":
		from = "system"
	case from == self:
		from = "me"
	}
	switch {
	case m.GetGroupId() != "":
		return fmt.Sprintf("[%s] %s #%s: %s", ts, from, m.GetGroupId(), body)
	case from == "me":
		return fmt.Sprintf("[%s] me -> %s: %s", ts, m.GetTo(), body)
	default:
		return fmt.Sprintf("[%s] %s: %s", ts, from, body)
	}
}

// printable renders a body for a terminal: text as is (control characters
// escaped), binary as a size.
func printable(b []byte) string {
	if !utf8.Valid(b) {
		return fmt.Sprintf("<%d bytes of binary>", len(b))
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return '?'
		}
		return r
	}, string(b))
}
