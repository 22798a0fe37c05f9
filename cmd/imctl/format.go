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
	// Chat: an event about message target_msg_id (event 1 recall, 2
	// delete), a recalled message, a message deleted for you.
	Event       uint32 `json:"event,omitempty"`
	TargetMsgID uint64 `json:"target_msg_id,omitempty"`
	Recalled    bool   `json:"recalled,omitempty"`
	Deleted     bool   `json:"deleted,omitempty"`
}

func toJSONMessage(m *pb.Message) jsonMessage {
	j := jsonMessage{
		Seq: m.GetSeq(), MsgID: m.GetMsgId(), From: m.GetFrom(), To: m.GetTo(), GroupID: m.GetGroupId(),
		ClientMsgID: m.GetClientMsgId(), Kind: m.GetKind(), Time: m.GetTime(),
		Event: m.GetEvent(), TargetMsgID: m.GetTargetMsgId(), Recalled: m.GetRecalled(), Deleted: m.GetDeleted(),
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
//	[12:03:01] alice: (recalled)       (a message its sender recalled)
//	[12:03:05] alice recalled message 1152921504606846977
//	[12:03:09] (you deleted message 1152921504606846977)
func chatLine(m *pb.Message, self string, loc *time.Location) string {
	ts := time.UnixMilli(m.GetTime()).In(loc).Format("15:04:05")
	body := printable(m.GetBody())
	switch {
	case m.GetRecalled():
		body = "(recalled)"
	case m.GetDeleted():
		body = "(deleted)"
	}
	from := m.GetFrom()
	switch {
	case from == "":
		from = "system"
	case from == self:
		from = "me"
	}
	switch m.GetEvent() {
	case 1:
		return fmt.Sprintf("[%s] %s recalled message %d", ts, from, m.GetTargetMsgId())
	case 2:
		return fmt.Sprintf("[%s] (you deleted message %d)", ts, m.GetTargetMsgId())
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
