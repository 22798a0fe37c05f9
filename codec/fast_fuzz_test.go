package codec

import (
	"bytes"
	"testing"
	"unicode/utf8"

	"github.com/imgn/imgn/codec/pb"
)

// FuzzFastDecode is differential: every body goes through the fast decoders
// and Unmarshal for each request type, and checkAgreement fails on any
// disagreement that no stricter rule of docs/protocol.md §3 explains. It
// also checks that decoding into a reused scratch gives the same view.
func FuzzFastDecode(f *testing.F) {
	for _, ser := range allSerializers {
		s, _ := Lookup(ser)
		for _, m := range sampleMessages() {
			body, _ := s.Append(nil, m)
			f.Add(uint8(ser), body)
		}
	}
	for ser, cases := range map[SerializerID][]sendCase{JSON: jsonSendCases, MsgPack: msgpackSendCases, Protobuf: protoSendCases} {
		for _, c := range cases {
			f.Add(uint8(ser), []byte(c.in))
		}
	}
	f.Add(uint8(JSON), []byte(`{"client_msg_id":"c\u0031","to":"b\/\ud800","kind":1,"body":"aG\nk=","x":[{"y":null}]}`))
	f.Add(uint8(JSON), []byte(`{"To":"a","to":null,"body":[1,2]}`))
	f.Add(uint8(MsgPack), []byte("\x92\xa1c\xa1t"))
	f.Add(uint8(MsgPack), []byte("\x82\xa4kind\xff\xa2to\xc4\x01\xff"))
	f.Add(uint8(Protobuf), []byte("\x13\x14\x18\x80\x80\x80\x80\x10"))
	f.Fuzz(func(t *testing.T, ser uint8, body []byte) {
		id := SerializerID(ser%3 + 1)
		checkAgreement(t, id, body)
		var v1, v2 SendView
		scratch, err1 := DecodeSend(id, body, false, &v1, nil)
		one := sendWant{string(v1.ClientMsgID), string(v1.To), v1.Kind, string(v1.Body), err1 != nil}
		_, err2 := DecodeSend(id, body, false, &v2, scratch[:0])
		two := sendWant{string(v2.ClientMsgID), string(v2.To), v2.Kind, string(v2.Body), err2 != nil}
		if one != two {
			t.Fatalf("decoding into a reused scratch differs: %+v %v / %+v %v", one, err1, two, err2)
		}
		if err1 == nil && (!utf8.Valid(v1.ClientMsgID) || !utf8.Valid(v1.To)) {
			t.Fatalf("accepted invalid UTF-8: %+v", v1)
		}
	})
}

// FuzzFastEncode checks that the fast encoders write the generic encoders'
// bytes for arbitrary field values, and that the spliced PUSH equals the
// generic encoding of pb.Push for several seqs. Strings that are not UTF-8
// are compared in JSON and MessagePack only (the generic Protobuf encoder
// refuses them); the Protobuf fast path must still produce a frame that
// parses.
func FuzzFastEncode(f *testing.F) {
	f.Add("c7f3a9e0-42", "alice", "bob", "", []byte("hey"), uint64(1<<62), uint64(12), int64(1764150000000), uint32(0), false)
	f.Add("\"\\/\x00\x1f\x7f<>&\u2028é😀", "", "g_1", "g_1", []byte{}, uint64(0), uint64(0), int64(-1), uint32(1<<32-1), true)
	f.Add("", "", "", "", []byte(nil), uint64(1<<64-1), uint64(1<<64-1), int64(-1<<63), uint32(7), true)
	f.Add("\xff", "\xed\xa0\x80", "a", "b", []byte{0, 0xff}, uint64(127), uint64(128), int64(1<<63-1), uint32(128), false)
	f.Fuzz(func(t *testing.T, cmid, from, to, group string, body []byte, msgID, seq uint64, timeMs int64, kind uint32, dup bool) {
		sers := allSerializers
		valid := utf8.ValidString(cmid) && utf8.ValidString(from) && utf8.ValidString(to) && utf8.ValidString(group)
		if !valid {
			sers = []SerializerID{JSON, MsgPack}
			for _, b := range [][]byte{
				AppendSendAckFrame(nil, Protobuf, 1, cmid, msgID, seq, timeMs, dup),
				AppendHeartbeatOKFrame(nil, Protobuf, 1, timeMs),
				new(PushTemplate).AppendFrame(nil, Protobuf, seq),
			} {
				if fr, ok, err := (Decoder{MaxBody: 1 << 30}).ParseFrame(b); !ok || err != nil || fr.FrameSize() != len(b) {
					t.Fatalf("protobuf frame does not parse: %v %v", ok, err)
				}
			}
		}
		m := &MessageFields{MsgID: msgID, From: from, To: to, GroupID: group, ClientMsgID: cmid, Kind: kind, Body: body, Time: timeMs}
		checkEncoders(t, sers, &pb.SendAck{ClientMsgId: cmid, MsgId: msgID, Seq: seq, Time: timeMs, Duplicate: dup}, timeMs, m,
			[]uint64{seq, 0, 1, 128, msgID, uint64(timeMs)})
		// The same template, reset to a copy of itself, encodes the same.
		var tmpl PushTemplate
		tmpl.Reset(m)
		a := tmpl.AppendFrame(nil, JSON, seq)
		tmpl.Reset(m)
		if b := tmpl.AppendFrame(nil, JSON, seq); !bytes.Equal(a, b) {
			t.Fatal("Reset to the same message changed the encoding")
		}
	})
}
