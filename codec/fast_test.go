package codec

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

var allSerializers = []SerializerID{JSON, Protobuf, MsgPack}

// ---- value generators ----

// textPieces are the classes of text an encoder must get right: every JSON
// escape class, all control characters, HTML characters (which sonic does
// not escape), DEL, multi-byte runes, U+2028/2029 and the replacement rune.
var textPieces = func() []string {
	p := []string{"a", "Z9_.-", "\"", "\\", "/", "<", ">", "&", "\x7f", "é", "世界", "😀", "\u2028", "\u2029", "\ufffd", "\ufeff", " "}
	for c := 0; c < 0x20; c++ {
		p = append(p, string(rune(c)))
	}
	return p
}()

// randText returns valid UTF-8 of a random length class: empty, short,
// around the format boundaries of MessagePack (31/32, 255/256, 65535/65536)
// and of Protobuf varint lengths (127/128, 16383/16384).
func randText(r *rand.Rand) string {
	var target int
	switch k := r.IntN(64); {
	case k < 8:
		return ""
	case k < 40:
		target = r.IntN(24)
	case k < 52:
		target = []int{30, 31, 32, 33, 126, 127, 128, 129}[r.IntN(8)]
	case k < 60:
		target = []int{254, 255, 256, 257}[r.IntN(4)]
	case k < 62:
		target = []int{16382, 16383, 16384, 16385}[r.IntN(4)]
	default:
		target = []int{65534, 65535, 65536, 65537}[r.IntN(4)]
	}
	var sb strings.Builder
	for sb.Len() < target {
		sb.WriteString(textPieces[r.IntN(len(textPieces))])
	}
	// Cut to the exact length on a rune boundary, filling with ASCII.
	s := sb.String()
	for len(s) > target || !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + strings.Repeat("x", target-len(s))
}

// randTexts returns a list of 0 to 5 (sometimes 40) random texts.
func randTexts(r *rand.Rand) []string {
	n := r.IntN(6)
	if r.IntN(8) == 0 {
		n = 40
	}
	var out []string
	for range n {
		out = append(out, randText(r))
	}
	return out
}

func randBytes(r *rand.Rand) []byte {
	if r.IntN(4) == 0 {
		return nil
	}
	b := make([]byte, len(randText(r)))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// randUint returns zero, small, boundary or large values.
func randUint(r *rand.Rand) uint64 {
	switch r.IntN(4) {
	case 0:
		return 0
	case 1:
		return uint64(r.IntN(300))
	case 2:
		return []uint64{127, 128, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32, 1<<53 + 1, 1<<63 - 1, 1 << 63, math.MaxUint64}[r.IntN(12)]
	}
	return r.Uint64() >> r.IntN(64)
}

func randInt(r *rand.Rand) int64 {
	v := int64(randUint(r))
	if r.IntN(2) == 0 {
		v = -v
	}
	if r.IntN(16) == 0 {
		v = []int64{-32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64}[r.IntN(9)]
	}
	return v
}

// runs is how many random cases a property test tries (fewer with -short).
func runs(full, short int) int {
	if testing.Short() {
		return short
	}
	return full
}

// ---- encoders ----

func genericFrame(t testing.TB, ser SerializerID, cmd Command, seq uint32, m proto.Message) []byte {
	t.Helper()
	b, err := AppendFrame([]byte("prefix"), ser, cmd, 0, seq, m)
	if err != nil {
		t.Fatalf("generic %s %s: %v", ser, cmd, err)
	}
	return b
}

// checkEncoders compares every fast encoder with AppendFrame for one set of
// values, valid UTF-8 assumed, and the spliced PUSH for each of seqs.
func checkEncoders(t testing.TB, sers []SerializerID, ack *pb.SendAck, hbTime int64, m *MessageFields, seqs []uint64) {
	t.Helper()
	var tmpl PushTemplate
	tmpl.Reset(m)
	for _, ser := range sers {
		got := AppendSendAckFrame([]byte("prefix"), ser, 77, ack.ClientMsgId, ack.MsgId, ack.Seq, ack.Time, ack.Duplicate)
		if want := genericFrame(t, ser, CmdSendAck, 77, ack); !bytes.Equal(got, want) {
			t.Fatalf("%s SEND_ACK %v:\n got %q\nwant %q", ser, ack, got, want)
		}
		got = AppendHeartbeatOKFrame([]byte("prefix"), ser, 78, hbTime)
		if want := genericFrame(t, ser, CmdHeartbeatOK, 78, &pb.Heartbeat{Time: hbTime}); !bytes.Equal(got, want) {
			t.Fatalf("%s HEARTBEAT_OK %d:\n got %q\nwant %q", ser, hbTime, got, want)
		}
		for _, seq := range seqs {
			got = tmpl.AppendFrame([]byte("prefix"), ser, seq)
			want := genericFrame(t, ser, CmdPush, 0, &pb.Push{Messages: []*pb.Message{pbMessage(m, seq)}})
			if !bytes.Equal(got, want) {
				t.Fatalf("%s PUSH seq %d of %+v:\n got %q\nwant %q", ser, seq, m, got, want)
			}
		}
	}
}

func pbMessage(m *MessageFields, seq uint64) *pb.Message {
	return &pb.Message{Seq: seq, MsgId: m.MsgID, From: m.From, To: m.To, GroupId: m.GroupID,
		ClientMsgId: m.ClientMsgID, Kind: m.Kind, Body: m.Body, Time: m.Time}
}

// spliceSeqs are the seqs every template is checked with: zero (omitted),
// and each change of varint, MessagePack int and decimal length.
var spliceSeqs = []uint64{0, 1, 9, 10, 127, 128, 255, 256, 16383, 16384, 65535, 65536, 1<<32 - 1, 1 << 32, 1<<56 - 1, 1 << 56, 1 << 63, math.MaxUint64}

func TestFastEncodersMatchGeneric(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for range runs(400, 60) {
		ack := &pb.SendAck{ClientMsgId: randText(r), MsgId: randUint(r), Seq: randUint(r), Time: randInt(r), Duplicate: r.IntN(2) == 0}
		m := &MessageFields{MsgID: randUint(r), From: randText(r), To: randText(r), GroupID: randText(r),
			ClientMsgID: randText(r), Kind: uint32(randUint(r)), Body: randBytes(r), Time: randInt(r)}
		checkEncoders(t, allSerializers, ack, randInt(r), m, append(spliceSeqs, randUint(r)))
	}
	// All zero, and everything set to its maximum.
	checkEncoders(t, allSerializers, &pb.SendAck{}, 0, &MessageFields{}, spliceSeqs)
	long := strings.Repeat("é", 1<<16)
	checkEncoders(t, allSerializers, &pb.SendAck{ClientMsgId: long, MsgId: math.MaxUint64, Seq: math.MaxUint64, Time: math.MinInt64, Duplicate: true},
		math.MaxInt64, &MessageFields{MsgID: math.MaxUint64, From: long, To: long, GroupID: long, ClientMsgID: long,
			Kind: math.MaxUint32, Body: bytes.Repeat([]byte{0xff}, 1<<16+1), Time: math.MaxInt64}, spliceSeqs)
}

// TestFastEncodersInvalidUTF8 pins what the encoders do with strings that
// are not UTF-8 (callers validate first): JSON and MessagePack write them as
// the generic encoders do, Protobuf writes the bytes as is where the
// generic encoder refuses; nothing panics.
func TestFastEncodersInvalidUTF8(t *testing.T) {
	bad := "a\xffb\xed\xa0\x80"
	checkEncoders(t, []SerializerID{JSON, MsgPack}, &pb.SendAck{ClientMsgId: bad, Seq: 1}, 0, &MessageFields{From: bad, To: bad}, []uint64{1})
	got := AppendSendAckFrame(nil, Protobuf, 1, bad, 0, 0, 0, false)
	if want := append([]byte{0x0a, byte(len(bad))}, bad...); !bytes.Equal(got[HeaderSize:], want) {
		t.Fatalf("protobuf body %x, want %x", got[HeaderSize:], want)
	}
	if _, err := AppendFrame(nil, Protobuf, CmdSendAck, 0, 1, &pb.SendAck{ClientMsgId: bad}); err == nil {
		t.Fatal("the generic Protobuf encoder accepted invalid UTF-8; update the doc comments")
	}
}

func TestPushTemplateCopiesAndResets(t *testing.T) {
	src := []byte("alice-bob-hello")
	m := &MessageFields{MsgID: 5, From: string(src[:5]), To: string(src[6:9]), Body: src[10:], Time: 9}
	var tmpl PushTemplate
	tmpl.Reset(m)
	want := genericFrame(t, JSON, CmdPush, 0, &pb.Push{Messages: []*pb.Message{pbMessage(m, 3)}})
	copy(src, "XXXXXXXXXXXXXXX") // the caller reuses its buffer
	m.From = "changed"
	if got := tmpl.AppendFrame([]byte("prefix"), JSON, 3); !bytes.Equal(got, want) {
		t.Fatalf("template depends on the caller's memory:\n got %q\nwant %q", got, want)
	}
	// A smaller message after a larger one, with encodings already built.
	small := &MessageFields{To: "z"}
	tmpl.Reset(small)
	for _, ser := range allSerializers {
		got := tmpl.AppendFrame([]byte("prefix"), ser, 1)
		if want := genericFrame(t, ser, CmdPush, 0, &pb.Push{Messages: []*pb.Message{pbMessage(small, 1)}}); !bytes.Equal(got, want) {
			t.Fatalf("%s after Reset:\n got %q\nwant %q", ser, got, want)
		}
	}
	var zero PushTemplate
	if got, want := zero.AppendFrame(nil, Protobuf, 0), genericFrame(t, Protobuf, CmdPush, 0, &pb.Push{Messages: []*pb.Message{{}}}); !bytes.Equal(got, want[len("prefix"):]) {
		t.Fatalf("zero template: %x, want %x", got, want)
	}
}

// TestPushTemplateConcurrentAfterPrepare runs AppendFrame from many
// goroutines on a prepared template (run with -race).
func TestPushTemplateConcurrentAfterPrepare(t *testing.T) {
	m := &MessageFields{MsgID: 1, From: "a", To: "g", GroupID: "g", Body: []byte("hi"), Time: 2}
	var tmpl PushTemplate
	tmpl.Reset(m)
	for _, ser := range allSerializers {
		tmpl.Prepare(ser)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Go(func() {
			ser := allSerializers[g%3]
			var buf []byte
			for seq := uint64(1); seq < 200; seq++ {
				buf = tmpl.AppendFrame(buf[:0], ser, seq)
				want, _ := AppendFrame(nil, ser, CmdPush, 0, 0, &pb.Push{Messages: []*pb.Message{pbMessage(m, seq)}})
				if !bytes.Equal(buf, want) {
					errs <- ser.String()
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for s := range errs {
		t.Errorf("%s: concurrent AppendFrame produced wrong bytes", s)
	}
}

func TestFastUnknownSerializer(t *testing.T) {
	dst := []byte("x")
	var tmpl PushTemplate
	if got := AppendSendAckFrame(dst, 0, 1, "c", 1, 1, 1, true); len(got) != 1 {
		t.Fatal("SEND_ACK with serializer 0 appended bytes")
	}
	if got := AppendHeartbeatOKFrame(dst, 4, 1, 1); len(got) != 1 {
		t.Fatal("HEARTBEAT_OK with serializer 4 appended bytes")
	}
	if got := tmpl.AppendFrame(dst, 200, 1); len(got) != 1 {
		t.Fatal("PUSH with serializer 200 appended bytes")
	}
	tmpl.Prepare(0)
	var v SendView
	if _, err := DecodeSend(9, []byte("{}"), false, &v, nil); !errors.Is(err, ErrUnknownSerializer) {
		t.Fatalf("DecodeSend: %v", err)
	}
	if _, err := DecodePushAck(0, nil); !errors.Is(err, ErrUnknownSerializer) {
		t.Fatalf("DecodePushAck: %v", err)
	}
	if _, _, err := DecodeSync(4, nil); !errors.Is(err, ErrUnknownSerializer) {
		t.Fatalf("DecodeSync: %v", err)
	}
}

// ---- decoders ----

// TestFastDecodeValidBodies encodes random requests with the generic
// encoders (and JSON also with encoding/json, whose escaping differs, and
// indented) and checks the fast decoders return the same values.
func TestFastDecodeValidBodies(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for range runs(300, 50) {
		msgs := []proto.Message{
			&pb.SendRequest{ClientMsgId: randText(r), To: randText(r), Kind: uint32(randUint(r)), Body: randBytes(r)},
			&pb.GroupSendRequest{ClientMsgId: randText(r), GroupId: randText(r), Kind: uint32(randUint(r)), Body: randBytes(r)},
			&pb.PushAck{UpToSeq: randUint(r)},
			&pb.SyncRequest{AfterSeq: randUint(r), Limit: uint32(randUint(r))},
			&pb.RegisterRequest{User: randText(r), Password: randText(r)},
			&pb.LoginRequest{User: randText(r), Password: randText(r), Token: randText(r), Device: randText(r)},
			&pb.Heartbeat{Time: randInt(r)},
			&pb.Empty{},
			&pb.GroupCreateRequest{Name: randText(r), Members: randTexts(r), Open: r.IntN(2) == 1},
			&pb.GroupRequest{GroupId: randText(r)},
			&pb.GroupMembersRequest{GroupId: randText(r), Users: randTexts(r)},
			&pb.GroupTransferRequest{GroupId: randText(r), User: randText(r)},
			&pb.GroupAdminRequest{GroupId: randText(r), User: randText(r), Admin: r.IntN(2) == 1},
			&pb.GroupsRequest{After: randText(r), Limit: uint32(randUint(r))},
			&pb.PresenceRequest{Users: randTexts(r)},
			&pb.ConversationsRequest{BeforeSeq: randUint(r), Limit: uint32(randUint(r))},
			&pb.ReadRequest{Peer: randText(r), GroupId: randText(r), UpToSeq: randUint(r)},
			&pb.TypingRequest{Peer: randText(r), GroupId: randText(r), On: r.IntN(2) == 1},
			&pb.MessageRequest{MsgId: randUint(r)},
			&pb.HistoryRequest{Peer: randText(r), GroupId: randText(r), BeforeSeq: randUint(r), BeforeMsgId: randUint(r), Limit: uint32(randUint(r))},
			&pb.ReadCountRequest{Peer: randText(r), GroupId: randText(r), Seq: randUint(r)},
		}
		for i, m := range msgs {
			var bodies [][]byte
			sers := []SerializerID{JSON, Protobuf, MsgPack, JSON, JSON}
			for _, ser := range allSerializers {
				s, _ := Lookup(ser)
				b, err := s.Append(nil, m)
				if err != nil {
					t.Fatal(err)
				}
				bodies = append(bodies, b)
			}
			std, _ := json.Marshal(m)
			indented, _ := json.MarshalIndent(m, " ", "\t")
			bodies = append(bodies, std, indented)
			for j, body := range bodies {
				ser := sers[j]
				got, err := fastCases[i].fast(ser, body)
				if err != nil {
					t.Fatalf("%s %s %q: %v", ser, fastCases[i].name, body, err)
				}
				if want := fastCases[i].values(m); !sameValues(got, want) {
					t.Fatalf("%s %s %q:\n got %v\nwant %v", ser, fastCases[i].name, body, got, want)
				}
				if checkAgreement(t, ser, body) == 0 {
					t.Fatalf("%s %q: no request type decoded it", ser, body)
				}
			}
		}
	}
}

func sameValues(a, b fieldValues) bool {
	for i := range a {
		if !sameField(a[i], b[i]) {
			return false
		}
	}
	return true
}

// sendWant is an expected SEND decode; bad marks BAD_BODY.
type sendWant struct {
	cmid, to string
	kind     uint32
	body     string
	bad      bool
}

var badBody = sendWant{bad: true}

// sendCase is one row of the SEND decoding tables (also fuzz seeds).
type sendCase struct {
	name string
	in   string
	want sendWant
}

func runSendTable(t *testing.T, ser SerializerID, cases []sendCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(ser.String()+"/"+tc.name, func(t *testing.T) {
			checkAgreement(t, ser, []byte(tc.in))
			var v SendView
			_, err := DecodeSend(ser, []byte(tc.in), false, &v, nil)
			if tc.want.bad {
				if !errors.Is(err, ErrBadBody) {
					t.Fatalf("%q: err = %v, want BAD_BODY (view %+v)", tc.in, err, v)
				}
				if v.To != nil || v.Body != nil || v.Kind != 0 || v.ClientMsgID != nil {
					t.Fatalf("view not cleared on error: %+v", v)
				}
				return
			}
			if err != nil {
				t.Fatalf("%q: %v", tc.in, err)
			}
			got := sendWant{string(v.ClientMsgID), string(v.To), v.Kind, string(v.Body), false}
			if got != tc.want {
				t.Fatalf("%q:\n got %+v\nwant %+v", tc.in, got, tc.want)
			}
		})
	}
}

var jsonSendCases = []sendCase{
	{"empty body", ``, sendWant{}},
	{"empty object", ` { } `, sendWant{}},
	{"all fields", `{"client_msg_id":"c1","to":"bob","kind":7,"body":"aGkh"}`, sendWant{"c1", "bob", 7, "hi!", false}},
	{"white space", "{\t\"to\" :\r\n\"bob\" , \"kind\" : 0 }\n", sendWant{to: "bob"}},
	{"escapes", `{"to":"a\"\\\/\b\f\n\r\t\u00e9\u4E16\ud83d\ude00"}`, sendWant{to: "a\"\\/\b\f\n\r\té世😀"}},
	{"lone surrogates become U+FFFD", `{"to":"\ud800x\udc00\ud800\ud800\udc00"}`, sendWant{to: "\ufffdx\ufffd\ufffd\U00010000"}},
	{"escaped key", `{"t\u006f":"bob"}`, sendWant{to: "bob"}},
	{"non-ASCII", `{"to":"世界 ☃"}`, sendWant{to: "世界 ☃"}},
	{"base64 with escaped newlines", `{"body":"aG\nk=\r\n"}`, sendWant{body: "hi"}},
	{"base64 written with escapes", `{"body":"aG\u006b\u003d"}`, sendWant{body: "hi"}},
	{"base64 slash escaped", `{"body":"\/w=="}`, sendWant{body: "\xff"}},
	{"empty base64", `{"body":""}`, sendWant{}},
	{"unknown values skipped", `{"a":{"b":[1,-2.5e+3,true,false,null,{"c":"\u0041"}]},"to":"x","z":[],"y":{}}`, sendWant{to: "x"}},
	{"nesting at the limit", `{"x":` + strings.Repeat("[", maxJSONDepth-1) + strings.Repeat("]", maxJSONDepth-1) + `,"to":"b"}`, sendWant{to: "b"}},
	{"null is the default", `{"client_msg_id":null,"to":null,"kind":null,"body":null}`, sendWant{}},
	{"last occurrence wins", `{"to":"a","kind":1,"to":"b","kind":2}`, sendWant{to: "b", kind: 2}},
	{"null after a value resets", `{"to":"a","to":null,"kind":5,"kind":null}`, sendWant{}},
	{"other letter case is unknown", `{"To":"a","KIND":3}`, sendWant{}},
	{"invalid UTF-8 in an unknown string", "{\"x\":\"\xff\"}", sendWant{}},
	{"kind max", `{"kind":4294967295}`, sendWant{kind: math.MaxUint32}},

	{"array", `[]`, badBody},
	{"null body", `null`, badBody},
	{"string body", `"x"`, badBody},
	{"white space only", ` `, badBody},
	{"two objects", `{}{}`, badBody},
	{"trailing bytes", `{"to":"a"} x`, badBody},
	{"unterminated", `{"to":"a"`, badBody},
	{"trailing comma", `{"to":"a",}`, badBody},
	{"missing colon", `{"to" "a"}`, badBody},
	{"invalid UTF-8 in a string field", "{\"to\":\"a\xffb\"}", badBody},
	{"invalid UTF-8 in client_msg_id", "{\"client_msg_id\":\"\xed\xa0\x80\"}", badBody},
	{"invalid UTF-8 in an earlier occurrence", "{\"to\":\"\xfe\",\"to\":\"ok\"}", badBody},
	{"raw control character", "{\"to\":\"a\x01b\"}", badBody},
	{"raw control character in an unknown string", "{\"x\":\"\x1f\"}", badBody},
	{"bad escape in an unknown string", `{"x":"\q"}`, badBody},
	{"short \\u escape", `{"x":"\u00"}`, badBody},
	{"bad literal", `{"x":tru}`, badBody},
	{"bad number", `{"x":01}`, badBody},
	{"nested too deeply", `{"x":` + strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth) + `}`, badBody},
	{"string for kind", `{"kind":"1"}`, badBody},
	{"negative kind", `{"kind":-1}`, badBody},
	{"minus zero kind", `{"kind":-0}`, badBody},
	{"fraction kind", `{"kind":1.0}`, badBody},
	{"exponent kind", `{"kind":1e2}`, badBody},
	{"kind out of range", `{"kind":4294967296}`, badBody},
	{"kind beyond uint64", `{"kind":18446744073709551616}`, badBody},
	{"bool kind", `{"kind":true}`, badBody},
	{"number for to", `{"to":5}`, badBody},
	{"object for to", `{"to":{}}`, badBody},
	{"array for body", `{"body":[104,105]}`, badBody},
	{"base64 without padding", `{"body":"aGk"}`, badBody},
	{"URL-safe base64", `{"body":"-_8="}`, badBody},
	{"space in base64", `{"body":"aGk= "}`, badBody},
	{"non-ASCII in base64", `{"body":"\u00e9"}`, badBody},
}

func TestFastDecodeJSONTable(t *testing.T) { runSendTable(t, JSON, jsonSendCases) }

// hdr is a MessagePack fixstr key, fix a fixmap header of n entries.
func hdr(key string) string { return string([]byte{byte(0xa0 | len(key))}) + key }
func fix(n int) string      { return string([]byte{byte(0x80 | n)}) }

var msgpackSendCases = []sendCase{
	{"empty body", "", sendWant{}},
	{"empty map", "\x80", sendWant{}},
	{"all fields", fix(4) + hdr("client_msg_id") + "\xa2c1" + hdr("to") + "\xa3bob" + hdr("kind") + "\x07" + hdr("body") + "\xc4\x02hi", sendWant{"c1", "bob", 7, "hi", false}},
	{"map16", "\xde\x00\x01" + hdr("to") + "\xd9\x01z", sendWant{to: "z"}},
	{"map32", "\xdf\x00\x00\x00\x01" + hdr("to") + "\xda\x00\x01z", sendWant{to: "z"}},
	{"bin for a string field", fix(1) + hdr("to") + "\xc4\x01z", sendWant{to: "z"}},
	{"str for the body", fix(1) + hdr("body") + "\xa2hi", sendWant{body: "hi"}},
	{"bin key matches", "\x81\xc4\x02to\xa1z", sendWant{to: "z"}},
	{"nil key is unknown", "\x81\xc0\xa1q", sendWant{}},
	{"kind as uint8", fix(1) + hdr("kind") + "\xcc\xff", sendWant{kind: 255}},
	{"kind as int8", fix(1) + hdr("kind") + "\xd0\x05", sendWant{kind: 5}},
	{"kind as uint64", fix(1) + hdr("kind") + "\xcf\x00\x00\x00\x00\xff\xff\xff\xff", sendWant{kind: math.MaxUint32}},
	{"kind as int64", fix(1) + hdr("kind") + "\xd3\x00\x00\x00\x00\x00\x00\x00\x09", sendWant{kind: 9}},
	{"nil is the default", fix(4) + hdr("client_msg_id") + "\xc0" + hdr("to") + "\xc0" + hdr("kind") + "\xc0" + hdr("body") + "\xc0", sendWant{}},
	{"last occurrence wins", fix(3) + hdr("to") + "\xa1a" + hdr("to") + "\xa1b" + hdr("kind") + "\x01", sendWant{to: "b", kind: 1}},
	{"nil after a value resets", fix(2) + hdr("to") + "\xa1a" + hdr("to") + "\xc0", sendWant{}},
	{"other letter case is unknown", fix(1) + hdr("To") + "\xa1a", sendWant{}},
	{"unknown values skipped", fix(7) + hdr("a") + "\x92\x81\xa1b\xc3\xcb\x01\x02\x03\x04\x05\x06\x07\x08" + hdr("e") + "\xd4\x01\x02" +
		hdr("f") + "\xc7\x02\x05ab" + hdr("g") + "\xdc\x00\x01\xca\x00\x00\x00\x00" + hdr("h") + "\xde\x00\x01\xc0\xc2" +
		hdr("i") + "\xc4\x01\xff" + hdr("to") + "\xa1x", sendWant{to: "x"}},
	{"invalid UTF-8 in an unknown value", fix(1) + hdr("x") + "\xa1\xff", sendWant{}},
	{"deeply nested unknown value", fix(1) + hdr("x") + strings.Repeat("\x91", 5000) + "\xc0", sendWant{}},

	{"array of fields", "\x94\xa1c\xa1t\x01\xc4\x00", badBody},
	{"nil body", "\xc0", badBody},
	{"string body", "\xa1x", badBody},
	{"trailing bytes", "\x80\x00", badBody},
	{"truncated map", "\x81" + hdr("to"), badBody},
	{"map32 longer than the body", "\xdf\xff\xff\xff\xff", badBody},
	{"truncated string", fix(1) + hdr("to") + "\xa5ab", badBody},
	{"int key", "\x81\x01\xa1q", badBody},
	{"invalid UTF-8 in a str field", fix(1) + hdr("to") + "\xa2a\xff", badBody},
	{"invalid UTF-8 in a bin for a string field", fix(1) + hdr("client_msg_id") + "\xc4\x02\xfe\xff", badBody},
	{"negative kind", fix(1) + hdr("kind") + "\xff", badBody},
	{"negative int8 kind", fix(1) + hdr("kind") + "\xd0\x80", badBody},
	{"kind out of range", fix(1) + hdr("kind") + "\xcf\x00\x00\x00\x01\x00\x00\x00\x00", badBody},
	{"float kind", fix(1) + hdr("kind") + "\xca\x00\x00\x00\x00", badBody},
	{"bool kind", fix(1) + hdr("kind") + "\xc3", badBody},
	{"string kind", fix(1) + hdr("kind") + "\xa15", badBody},
	{"int for to", fix(1) + hdr("to") + "\x05", badBody},
	{"array for body", fix(1) + hdr("body") + "\x91\x01", badBody},
	{"ext for body", fix(1) + hdr("body") + "\xd4\x01\x01", badBody},
	{"reserved byte 0xc1", fix(1) + hdr("x") + "\xc1", badBody},
	{"truncated unknown array", fix(1) + hdr("x") + "\xdd\xff\xff\xff\xff", badBody},
}

func TestFastDecodeMsgpackTable(t *testing.T) { runSendTable(t, MsgPack, msgpackSendCases) }

var protoSendCases = []sendCase{
	{"empty body", "", sendWant{}},
	{"all fields", "\x0a\x02c1\x12\x03bob\x18\x07\x22\x02hi", sendWant{"c1", "bob", 7, "hi", false}},
	{"fields out of order", "\x22\x02hi\x12\x03bob", sendWant{to: "bob", body: "hi"}},
	{"last occurrence wins", "\x12\x01a\x12\x01b\x18\x01\x18\x02\x22\x01x\x22\x00", sendWant{to: "b", kind: 2}},
	{"non-minimal varint", "\x18\x85\x80\x00", sendWant{kind: 5}},
	{"kind max", "\x18\xff\xff\xff\xff\x0f", sendWant{kind: math.MaxUint32}},
	{"unknown fields of every wire type", "\x28\x01\x31\x01\x02\x03\x04\x05\x06\x07\x08\x3a\x01z\x45\x01\x02\x03\x04\x4b\x08\x01\x4c\x12\x01t", sendWant{to: "t"}},
	{"highest field number", "\xf8\xff\xff\xff\x0f\x01", sendWant{}},

	{"field number 0", "\x00", badBody},
	{"field number too large", "\x80\x80\x80\x80\x10\x01", badBody},
	{"wire type 6", "\x0e", badBody},
	{"end group at the top", "\x2c", badBody},
	{"mismatched end group", "\x2b\x34", badBody},
	{"truncated string", "\x12\x05ab", badBody},
	{"truncated varint", "\x18\x80", badBody},
	{"varint over 10 bytes", "\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02", badBody},
	{"invalid UTF-8 in to", "\x12\x01\xff", badBody},
	{"invalid UTF-8 in client_msg_id", "\x0a\x03\xed\xa0\x80", badBody},
	{"kind out of range", "\x18\x80\x80\x80\x80\x10", badBody},
	{"kind as fixed32", "\x1d\x01\x00\x00\x00", badBody},
	{"kind length-delimited", "\x1a\x01\x05", badBody},
	{"to as varint", "\x10\x05", badBody},
	{"body as fixed64", "\x21\x01\x02\x03\x04\x05\x06\x07\x08", badBody},
	{"to as group", "\x13\x14", badBody},
}

func TestFastDecodeProtobufTable(t *testing.T) { runSendTable(t, Protobuf, protoSendCases) }

func TestFastDecodePushAckSync(t *testing.T) {
	for _, tc := range []struct {
		ser             SerializerID
		in              string
		upTo, after     uint64
		limit           uint32
		badAck, badSync bool
	}{
		{JSON, `{"up_to_seq":18446744073709551615,"after_seq":7,"limit":500}`, math.MaxUint64, 7, 500, false, false},
		{JSON, `{"up_to_seq":18446744073709551616}`, 0, 0, 0, true, false},
		{JSON, `{"limit":4294967296}`, 0, 0, 0, false, true},
		{JSON, `{"after_seq":-1}`, 0, 0, 0, false, true},
		{JSON, `[1]`, 0, 0, 0, true, true},
		{MsgPack, "\x82\xa9after_seq\x07\xa5limit\xcd\x01\xf4", 0, 7, 500, false, false},
		{MsgPack, "\x81\xa9up_to_seq\xcf\xff\xff\xff\xff\xff\xff\xff\xff", math.MaxUint64, 0, 0, false, false},
		{MsgPack, "\x81\xa9up_to_seq\xd3\xff\xff\xff\xff\xff\xff\xff\xff", 0, 0, 0, true, false},
		{MsgPack, "\x92\x07\x01", 0, 0, 0, true, true}, // the positional SYNC the generic decoder accepted
		{Protobuf, "\x08\x07\x10\xf4\x03", 7, 7, 500, false, false},
		{Protobuf, "\x10\x80\x80\x80\x80\x10", 0, 0, 0, false, true},
		{Protobuf, "\x09\x01\x02\x03\x04\x05\x06\x07\x08", 0, 0, 0, true, true},
	} {
		upTo, err := DecodePushAck(tc.ser, []byte(tc.in))
		if tc.badAck != (err != nil) || (err != nil && !errors.Is(err, ErrBadBody)) || upTo != tc.upTo {
			t.Errorf("%s PushAck %q: %d, %v", tc.ser, tc.in, upTo, err)
		}
		after, limit, err := DecodeSync(tc.ser, []byte(tc.in))
		if tc.badSync != (err != nil) || (err != nil && !errors.Is(err, ErrBadBody)) || after != tc.after || limit != tc.limit {
			t.Errorf("%s Sync %q: %d %d, %v", tc.ser, tc.in, after, limit, err)
		}
		checkAgreement(t, tc.ser, []byte(tc.in))
	}
}

// TestDecodeSendScratch checks where views point: into the body when no
// unescaping is needed, into scratch otherwise, and that appending to a
// returned scratch keeps earlier views intact.
func TestDecodeSendScratch(t *testing.T) {
	body := []byte(`{"client_msg_id":"c1","to":"b\u006fb","body":"aGk="}`)
	var v SendView
	scratch, err := DecodeSend(JSON, body, false, &v, make([]byte, 0, 8))
	if err != nil {
		t.Fatal(err)
	}
	if &v.ClientMsgID[0] != &body[18] {
		t.Fatal("client_msg_id without escapes does not alias the body")
	}
	if string(v.To) != "bob" || string(v.Body) != "hi" || string(scratch) != "bobhi" {
		t.Fatalf("to %q body %q scratch %q", v.To, v.Body, scratch)
	}
	var v2 SendView
	if _, err := DecodeSend(JSON, []byte(`{"to":"\u0041"}`), false, &v2, scratch); err != nil {
		t.Fatal(err)
	}
	if string(v.To) != "bob" || string(v2.To) != "A" {
		t.Fatalf("views after a second decode: %q %q", v.To, v2.To)
	}
	// Views into the body are capped: appending to one cannot overwrite it.
	_ = append(v.ClientMsgID, 'X')
	if string(body[18:22]) != `c1",` {
		t.Fatalf("append through a view changed the body: %q", body)
	}
}

// ---- allocations ----

func TestFastPathsAllocateNothing(t *testing.T) {
	bodies := map[SerializerID][]byte{}
	req := &pb.SendRequest{ClientMsgId: "c7f3a9e0-42", To: "bob_2048", Kind: 1, Body: []byte("hey, are we still on for lunch tomorrow at noon? :)")}
	for _, ser := range allSerializers {
		s, _ := Lookup(ser)
		bodies[ser], _ = s.Append(nil, req)
	}
	escaped := []byte(`{"client_msg_id":"c\u0037f3","t\u006f":"b\u00f6b \ud83d\ude00","kind":1,"body":"\/\/4BaGk=\n"}`)
	scratch := make([]byte, 0, 2*len(escaped))
	ack, sync, mpAck := []byte(`{"up_to_seq":12345}`), []byte{0x08, 0x07, 0x10, 0x64}, []byte("\x81\xa9up_to_seq\xcd\x01\x00")
	jsHB, mpHB := []byte(`{"time":-1764150000000}`), []byte("\x81\xa4time\xd3\xff\xff\xfe\x65\x43\x21\x0f\xee")
	var v SendView
	for name, run := range map[string]func(){
		"json send":         func() { scratch, _ = DecodeSend(JSON, bodies[JSON], false, &v, scratch[:0]) },
		"json escapes":      func() { scratch, _ = DecodeSend(JSON, escaped, false, &v, scratch[:0]) },
		"protobuf send":     func() { scratch, _ = DecodeSend(Protobuf, bodies[Protobuf], false, &v, scratch[:0]) },
		"msgpack send":      func() { scratch, _ = DecodeSend(MsgPack, bodies[MsgPack], true, &v, scratch[:0]) },
		"json push ack":     func() { _, _ = DecodePushAck(JSON, ack) },
		"protobuf sync":     func() { _, _, _ = DecodeSync(Protobuf, sync) },
		"msgpack push ack":  func() { _, _ = DecodePushAck(MsgPack, mpAck) },
		"json heartbeat":    func() { _, _ = DecodeHeartbeat(JSON, jsHB) },
		"msgpack heartbeat": func() { _, _ = DecodeHeartbeat(MsgPack, mpHB) },
	} {
		if n := testing.AllocsPerRun(200, run); n != 0 {
			t.Errorf("%s: %v allocations per run", name, n)
		}
	}
	if _, err := DecodeSend(JSON, escaped, false, &v, nil); err != nil || string(v.To) != "böb 😀" || string(v.Body) != "\xff\xfe\x01hi" {
		t.Fatalf("escaped body: %q %v", v.To, err)
	}

	dst := make([]byte, 0, 512)
	var tmpl PushTemplate
	m := &MessageFields{MsgID: 7390000000000001234, From: "alice_1024", To: "bob_2048", ClientMsgID: "c7f3a9e0-42",
		Body: []byte("hey, are we still on for lunch tomorrow at noon? :)"), Time: 1764150000000}
	tmpl.Reset(m)
	for _, ser := range allSerializers {
		tmpl.Prepare(ser)
	}
	for _, ser := range allSerializers {
		seq := uint64(0)
		for name, run := range map[string]func(){
			"send ack":  func() { dst = AppendSendAckFrame(dst[:0], ser, 9, "c7f3a9e0-42", 1<<62, 12, 1764150000000, false) },
			"heartbeat": func() { dst = AppendHeartbeatOKFrame(dst[:0], ser, 9, 1764150000000) },
			"push":      func() { seq++; dst = tmpl.AppendFrame(dst[:0], ser, seq) },
			"reset":     func() { tmpl.Reset(m); dst = tmpl.AppendFrame(dst[:0], ser, 5) },
		} {
			if n := testing.AllocsPerRun(200, run); n != 0 {
				t.Errorf("%s %s: %v allocations per run", ser, name, n)
			}
		}
	}
}

// TestSwarSpecial checks the eight-byte string scan against the byte table:
// every byte value at every position, over plain and over random words.
func TestSwarSpecial(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	check := func(w uint64) {
		want := false
		for k := range 8 {
			want = want || !jsonPlain[byte(w>>(8*k))]
		}
		if got := swarSpecial(w); got != want {
			t.Fatalf("swarSpecial(%#016x) = %v, want %v", w, got, want)
		}
	}
	for c := range 256 {
		for pos := range 8 {
			for _, fill := range []uint64{0x6161616161616161, 0xffffffffffffffff, 0x2020202020202020, 0x8080808080808080} {
				check(fill&^(0xff<<(8*pos)) | uint64(c)<<(8*pos))
			}
		}
	}
	for range 1 << 16 {
		check(r.Uint64())
	}
}

// TestMsgpackUnmarshalDeclaredLengths: a tiny body that declares a huge
// string, array or ext in an unknown value gets BAD_BODY from the generic
// MessagePack decoder without the decoder sizing a buffer from the
// declaration (it used to allocate a megabyte or more per such frame, and
// its pooled buffer grew with every one).
func TestMsgpackUnmarshalDeclaredLengths(t *testing.T) {
	for _, body := range [][]byte{
		[]byte("\x81\xa1x\xdb\xff\xff\xff\xff"),         // str 32
		[]byte("\x81\xa1x\xc6\xff\xff\xff\x00abc"),      // bin 32
		[]byte("\x81\xa1x\xc9\xff\xff\xff\x00\x01"),     // ext 32
		[]byte("\x81\xa1x\x91\x91\xda\xff\xff"),         // str 16 inside arrays
		[]byte("\x81\xa1x\xdd\xff\xff\xff\xff\xa1y"),    // array 32
		[]byte("\x81\xa2to\xdb\x00\x10\x00\x00toolong"), // a known field
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range 100 {
			if err := Unmarshal(MsgPack, body, &pb.SendRequest{}); !errors.Is(err, ErrBadBody) {
				t.Fatalf("%q: err = %v, want BAD_BODY", body, err)
			}
		}
		runtime.ReadMemStats(&after)
		if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
			t.Errorf("%q: 100 decodes allocated %d bytes", body, n)
		}
	}
}
