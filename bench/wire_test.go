package bench

import (
	"bytes"
	"testing"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

// parseOne decodes the single frame in b into msg and returns its header.
func parseOne(t *testing.T, b []byte, msg proto.Message) codec.Header {
	t.Helper()
	f, ok, err := codec.Decoder{}.ParseFrame(b)
	if err != nil || !ok {
		t.Fatalf("parse frame: ok=%v err=%v", ok, err)
	}
	if f.FrameSize() != len(b) {
		t.Fatalf("frame size %d, buffer %d", f.FrameSize(), len(b))
	}
	if msg != nil {
		if err := codec.Unmarshal(f.Serializer, f.Body, msg); err != nil {
			t.Fatalf("unmarshal: %v", err)
		}
	}
	return f.Header
}

func TestBuildersMatchGeneratedTypes(t *testing.T) {
	var login pb.LoginRequest
	h := parseOne(t, appendLogin(nil, 7, "alice", "tok.en.x", "dev1"), &login)
	if h.Command != codec.CmdLogin || h.Seq != 7 || h.Serializer != codec.Protobuf {
		t.Fatalf("login header %+v", h)
	}
	if login.User != "alice" || login.Token != "tok.en.x" || login.Device != "dev1" || login.Password != "" {
		t.Fatalf("login %+v", &login)
	}

	var hb pb.Heartbeat
	if h := parseOne(t, appendHeartbeat(nil, 3), &hb); h.Command != codec.CmdHeartbeat || h.Seq != 3 || h.Length != 0 {
		t.Fatalf("heartbeat %+v", h)
	}

	body := bytes.Repeat([]byte{0xAB}, 300) // a length needing a 2-byte varint
	var send pb.SendRequest
	parseOne(t, appendSend(nil, 9, []byte("c1"), "bob", body), &send)
	if send.ClientMsgId != "c1" || send.To != "bob" || !bytes.Equal(send.Body, body) {
		t.Fatalf("send %+v", &send)
	}

	var gs pb.GroupSendRequest
	parseOne(t, appendGroupSend(nil, 10, []byte("c2"), "g1", body), &gs)
	if gs.ClientMsgId != "c2" || gs.GroupId != "g1" || !bytes.Equal(gs.Body, body) {
		t.Fatalf("group send %+v", &gs)
	}

	var gc pb.GroupCreateRequest
	parseOne(t, appendGroupCreate(nil, 11, "team", []string{"a", "b", "c"}), &gc)
	if gc.Name != "team" || len(gc.Members) != 3 || gc.Members[2] != "c" {
		t.Fatalf("group create %+v", &gc)
	}

	var ack pb.PushAck
	if h := parseOne(t, appendPushAck(nil, 1<<40), &ack); h.Seq != 0 || ack.UpToSeq != 1<<40 {
		t.Fatalf("push ack %+v %+v", h, &ack)
	}
}

func TestPushParsing(t *testing.T) {
	p1 := make([]byte, 64)
	putPayload(p1, 42, 3, true, 123456789)
	p2 := make([]byte, 24)
	putPayload(p2, 42, 3, false, 5)
	push := &pb.Push{Messages: []*pb.Message{
		{Seq: 5, MsgId: 1 << 60, From: "a", To: "b", ClientMsgId: "x", Body: p1, Time: 1700000000000},
		{Seq: 6, Body: p2, GroupId: "g"},
	}}
	b, err := proto.Marshal(push)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	var pays []payload
	if err := eachPushed(b, func(seq uint64, body []byte) {
		seqs = append(seqs, seq)
		p, ok := readPayload(body)
		if !ok {
			t.Fatalf("payload not recognised")
		}
		pays = append(pays, p)
	}); err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 2 || seqs[0] != 5 || seqs[1] != 6 {
		t.Fatalf("seqs %v", seqs)
	}
	if pays[0] != (payload{run: 42, phase: 3, inWindow: true, intended: 123456789}) || pays[1].inWindow || pays[1].intended != 5 {
		t.Fatalf("payloads %+v", pays)
	}
	if err := eachPushed([]byte{0x0a, 0x10, 0x01}, func(uint64, []byte) {}); err == nil {
		t.Fatal("truncated push accepted")
	}
	if _, ok := readPayload([]byte("not a bench payload at all")); ok {
		t.Fatal("foreign payload accepted")
	}
}

func TestRelayFramesDecode(t *testing.T) {
	body := make([]byte, 200)
	putPayload(body, 1, 2, true, 99)
	for _, seq := range []uint64{1, 300, 1 << 40} {
		var push pb.Push
		h := parseOne(t, appendRelayPush(nil, seq, 1<<50, "alice", []byte("bob"), []byte("cmid-1"), body), &push)
		if h.Command != codec.CmdPush || len(push.Messages) != 1 {
			t.Fatalf("push %+v %+v", h, &push)
		}
		if m := push.Messages[0]; m.Seq != seq {
			t.Fatalf("seq %d, want %d", m.Seq, seq)
		}
	}
	var push pb.Push
	parseOne(t, appendRelayPush(nil, 1, 1<<50, "alice", []byte("bob"), []byte("cmid-1"), body), &push)
	m := push.Messages[0]
	if m.Seq != 1 || m.MsgId != 1<<50 || m.From != "alice" || m.To != "bob" || m.ClientMsgId != "cmid-1" || !bytes.Equal(m.Body, body) {
		t.Fatalf("message %+v", m)
	}
	var ack pb.SendAck
	if h := parseOne(t, appendRelayAck(nil, 77, []byte("cmid-1"), 5), &ack); h.Seq != 77 || ack.ClientMsgId != "cmid-1" || ack.MsgId != 5 {
		t.Fatalf("ack %+v %+v", h, &ack)
	}
}

func TestFieldReaders(t *testing.T) {
	b, _ := proto.Marshal(&pb.Error{Code: uint32(codec.CodeRateLimited), Message: "slow down", RetryAfterMs: 10})
	pbh := codec.Header{Serializer: codec.Protobuf}
	if got := errorCodeName(pbh, b); got != codec.CodeRateLimited.String() {
		t.Fatalf("code name %q", got)
	}
	// Errors before a login come in JSON.
	j, _ := codec.AppendFrame(nil, codec.JSON, codec.CmdError, 0, 0, &pb.Error{Code: uint32(codec.CodeLoginTimeout), Fatal: true})
	if got := errorCodeName(codec.Header{Serializer: codec.JSON}, j[codec.HeaderSize:]); got != codec.CodeLoginTimeout.String() {
		t.Fatalf("JSON code name %q", got)
	}
	if got := errorCodeName(pbh, nil); got == "" || got == "OK" {
		t.Fatalf("name for a missing code: %q", got)
	}
	ok, _ := proto.Marshal(&pb.LoginOK{User: "u", HeartbeatMs: 30000})
	if pbVarint(ok, 7) != 30000 || string(pbBytes(ok, 1)) != "u" {
		t.Fatal("LoginOK fields")
	}
}
