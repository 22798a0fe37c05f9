package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

func rawHeader(magic [4]byte, ver, ser, cmd, flags byte, seq, length uint32) []byte {
	b := append([]byte{}, magic[:]...)
	b = append(b, ver, ser, cmd, flags)
	b = binary.BigEndian.AppendUint32(b, seq)
	return binary.BigEndian.AppendUint32(b, length)
}

func TestParseHeaderFields(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    Header
		wantErr error
	}{
		{"login json", rawHeader(Magic, 1, 1, 0x02, 0, 7, 12), Header{1, JSON, CmdLogin, 0, 7, 12}, nil},
		{"protobuf resent", rawHeader(Magic, 1, 2, 0x10, 1, 0xFFFFFFFF, 0), Header{1, Protobuf, CmdSend, FlagResent, 0xFFFFFFFF, 0}, nil},
		{"msgpack unknown flags kept", rawHeader(Magic, 1, 3, 0x04, 0xFE, 1, 65536), Header{1, MsgPack, CmdHeartbeat, 0xFE, 1, 65536}, nil},
		{"max length field", rawHeader(Magic, 1, 1, 0x04, 0, 0, 0xFFFFFFFF), Header{1, JSON, CmdHeartbeat, 0, 0, 0xFFFFFFFF}, nil},
		{"unknown command parses", rawHeader(Magic, 1, 1, 0x66, 0, 3, 0), Header{1, JSON, 0x66, 0, 3, 0}, nil},
		{"bad magic", rawHeader([4]byte{'I', 'M', 'G', 'X'}, 1, 1, 2, 0, 9, 0), Header{1, JSON, CmdLogin, 0, 9, 0}, ErrBadMagic},
		{"http request", []byte("GET / HTTP/1.1\r\nHo"), Header{}, ErrBadMagic},
		{"version 0", rawHeader(Magic, 0, 1, 2, 0, 5, 0), Header{0, JSON, CmdLogin, 0, 5, 0}, ErrUnsupportedVersion},
		{"version 2", rawHeader(Magic, 2, 1, 2, 0, 5, 0), Header{2, JSON, CmdLogin, 0, 5, 0}, ErrUnsupportedVersion},
		{"serializer 0", rawHeader(Magic, 1, 0, 2, 0, 5, 0), Header{1, 0, CmdLogin, 0, 5, 0}, ErrUnknownSerializer},
		{"serializer 4", rawHeader(Magic, 1, 4, 2, 0, 5, 0), Header{1, 4, CmdLogin, 0, 5, 0}, ErrUnknownSerializer},
		{"serializer 255", rawHeader(Magic, 1, 255, 2, 0, 5, 0), Header{1, 255, CmdLogin, 0, 5, 0}, ErrUnknownSerializer},
		{"short", rawHeader(Magic, 1, 1, 2, 0, 5, 0)[:15], Header{}, ErrShortHeader},
		{"empty", nil, Header{}, ErrShortHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseHeader(tc.in)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.name == "http request" {
				return // fields of a non-IMGN stream are meaningless
			}
			if got != tc.want {
				t.Fatalf("header = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestAppendHeaderRoundTrip(t *testing.T) {
	h := Header{Version: 1, Serializer: MsgPack, Command: CmdGroupSend, Flags: FlagResent, Seq: 0xDEADBEEF, Length: 1234}
	b := AppendHeader([]byte{0xAA}, h)
	if len(b) != 1+HeaderSize {
		t.Fatalf("len = %d", len(b))
	}
	want := rawHeader(Magic, 1, 3, 0x28, 1, 0xDEADBEEF, 1234)
	if !bytes.Equal(b[1:], want) {
		t.Fatalf("bytes = %x, want %x", b[1:], want)
	}
	got, err := ParseHeader(b[1:])
	if err != nil || got != h {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
}

func TestCodeOf(t *testing.T) {
	_, _, errBig := Decoder{MaxBody: 1}.ParseFrame(rawHeader(Magic, 1, 1, 4, 0, 1, 2))
	for _, tc := range []struct {
		err  error
		want ErrorCode
	}{
		{nil, CodeOK},
		{ErrBadMagic, CodeBadMagic},
		{errWrap(ErrUnsupportedVersion), CodeUnsupportedVersion},
		{errWrap(ErrUnknownSerializer), CodeUnknownSerializer},
		{errBig, CodeFrameTooLarge},
		{errWrap(ErrBadBody), CodeBadBody},
		{errors.New("other"), CodeInternal},
	} {
		if got := CodeOf(tc.err); got != tc.want {
			t.Errorf("CodeOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func errWrap(err error) error { return errors.Join(errors.New("ctx"), err) }

// TestErrorIsFoundThroughWrapping: a refusal keeps its code, message and
// wait through fmt.Errorf's %w, as the engine and the server API wrap it.
func TestErrorIsFoundThroughWrapping(t *testing.T) {
	err := fmt.Errorf("step: %w", Errorf(CodeUnknownGroup, "no such group: %s", "g1"))
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeUnknownGroup || e.Message != "no such group: g1" || e.RetryAfterMs != 0 {
		t.Fatalf("errors.As found %+v", e)
	}
	if e.Error() != e.Message {
		t.Errorf("Error() = %q, want the message", e.Error())
	}
}

func TestCodesTable(t *testing.T) {
	seen := map[ErrorCode]bool{}
	names := map[string]bool{}
	for i, ci := range Codes {
		if seen[ci.Code] || names[ci.Name] {
			t.Fatalf("duplicate code or name at %d: %+v", i, ci)
		}
		if i > 0 && ci.Code <= Codes[i-1].Code {
			t.Fatalf("table not in code order at %d", i)
		}
		if ci.Meaning == "" {
			t.Fatalf("code %d has no meaning", ci.Code)
		}
		seen[ci.Code], names[ci.Name] = true, true
		if got := ci.Code.String(); got != ci.Name {
			t.Fatalf("String() = %q, want %q", got, ci.Name)
		}
	}
	if CodeFrameTooLarge.Retryable() || !CodeFrameTooLarge.Fatal() || !CodeStoreUnavailable.Retryable() {
		t.Fatal("fatal/retryable flags wrong")
	}
	if got := ErrorCode(999).String(); got != "CODE_999" {
		t.Fatalf("unknown code name %q", got)
	}
}

func TestCommandNames(t *testing.T) {
	if CmdSend.String() != "send" || CmdPresenceOK.String() != "presence_ok" {
		t.Fatal("names")
	}
	if Command(0xC3).String() != "mesh_0xc3" || !Command(0xC3).IsMesh() || Command(0xC3).Known() {
		t.Fatal("mesh range")
	}
	if Command(0x66).String() != "unknown_0x66" || Command(0x66).Known() {
		t.Fatal("unknown")
	}
	for c := 0; c < 256; c++ {
		if Command(c).Known() && Command(c).IsMesh() {
			t.Fatalf("client command %#x in mesh range", c)
		}
	}
}

func TestParseSerializer(t *testing.T) {
	for name, want := range map[string]SerializerID{"json": JSON, "protobuf": Protobuf, "pb": Protobuf, "msgpack": MsgPack} {
		if got, err := ParseSerializer(name); err != nil || got != want {
			t.Fatalf("%s: %v %v", name, got, err)
		}
		if want.String() == "" {
			t.Fatal("empty name")
		}
	}
	if _, err := ParseSerializer("xml"); !errors.Is(err, ErrUnknownSerializer) {
		t.Fatalf("xml: %v", err)
	}
	if _, err := Lookup(0); !errors.Is(err, ErrUnknownSerializer) {
		t.Fatal("lookup 0")
	}
	if _, err := Lookup(200); !errors.Is(err, ErrUnknownSerializer) {
		t.Fatal("lookup 200")
	}
	if _, err := AppendFrame(nil, 9, CmdLogin, 0, 1, &pb.Empty{}); !errors.Is(err, ErrUnknownSerializer) {
		t.Fatal("AppendFrame with unknown serializer")
	}
	if err := Unmarshal(0, nil, &pb.Empty{}); !errors.Is(err, ErrUnknownSerializer) {
		t.Fatal("Unmarshal with unknown serializer")
	}
}

// sampleMessages is one filled-in value of every body type.
func sampleMessages() []proto.Message {
	msg := &pb.Message{Seq: 42, MsgId: 1<<62 + 5, From: "alice", To: "bob", ClientMsgId: "c-1", Kind: 1, Body: []byte("hello \x00\xff 世界"), Time: 1764000000000}
	gmsg := &pb.Message{Seq: 7, MsgId: 99, From: "carol", To: "g_1", GroupId: "g_1", ClientMsgId: "c-2", Body: []byte("hi all"), Time: -1}
	return []proto.Message{
		&pb.RegisterRequest{User: "alice", Password: "s3cret!"},
		&pb.RegisterOK{User: "alice"},
		&pb.LoginRequest{User: "alice", Password: "pw", Token: "a.b.c", Device: "phone"},
		&pb.LoginOK{User: "alice", Device: "phone", NodeId: "n1", SessionId: 1 << 40, HeadSeq: 10, Cursor: 9, HeartbeatMs: 30000, ServerTime: 1764000000000},
		&pb.Heartbeat{Time: 123},
		&pb.Empty{},
		&pb.SendRequest{ClientMsgId: "c-1", To: "bob", Kind: 2, Body: []byte{0, 1, 2, 255}},
		&pb.GroupSendRequest{ClientMsgId: "c-2", GroupId: "g_1", Body: []byte("x")},
		&pb.SendAck{ClientMsgId: "c-1", MsgId: 1<<63 + 1, Seq: 5, Time: 1, Duplicate: true},
		msg,
		&pb.Push{Messages: []*pb.Message{msg, gmsg}},
		&pb.PushAck{UpToSeq: 1<<64 - 1},
		&pb.SyncRequest{AfterSeq: 3, Limit: 100},
		&pb.SyncOK{Messages: []*pb.Message{gmsg}, HasMore: true, HeadSeq: 8},
		&pb.GroupCreateRequest{Name: "team", Members: []string{"bob", "carol"}},
		&pb.GroupRequest{GroupId: "g_1"},
		&pb.GroupInfo{GroupId: "g_1", Name: "team", Owner: "alice", Members: []string{"alice", "bob"}},
		&pb.PresenceRequest{Users: []string{"bob", "zed"}},
		&pb.PresenceOK{Users: []*pb.UserPresence{{User: "bob", Online: true, Devices: []string{"pc", "phone"}}, {User: "zed"}}},
		&pb.Kick{Code: uint32(CodeKickDuplicateLogin), Reason: "logged in elsewhere"},
		&pb.GoAway{Reason: "drain", DelayMs: 1500, NodeId: "n2"},
		&pb.Notice{Text: "maintenance at 10:00", Time: 5},
		&pb.Error{Code: uint32(CodeRateLimited), Message: "slow down", Retryable: true, RetryAfterMs: 250, Fatal: false},
	}
}

func TestSerializersRoundTripEveryMessage(t *testing.T) {
	for _, id := range []SerializerID{JSON, Protobuf, MsgPack} {
		s, _ := Lookup(id)
		for _, m := range sampleMessages() {
			name := id.String() + "/" + string(m.ProtoReflect().Descriptor().Name())
			t.Run(name, func(t *testing.T) {
				frame, err := AppendFrame([]byte("prefix"), id, CmdSend, 0, 77, m)
				if err != nil {
					t.Fatal(err)
				}
				f, ok, err := Decoder{}.ParseFrame(frame[len("prefix"):])
				if err != nil || !ok {
					t.Fatalf("parse: ok=%v err=%v", ok, err)
				}
				if f.Serializer != id || f.Seq != 77 || f.Command != CmdSend || f.FrameSize() != len(frame)-len("prefix") {
					t.Fatalf("header %+v", f.Header)
				}
				got := m.ProtoReflect().New().Interface()
				if err := s.Unmarshal(f.Body, got); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(got, m) {
					t.Fatalf("round trip mismatch:\n got %v\nwant %v", got, m)
				}
				// The decoded value must not alias the frame: scribble over it.
				for i := range f.Body {
					f.Body[i] = 'Z'
				}
				if !proto.Equal(got, m) {
					t.Fatalf("decoded value aliases the body buffer: %v", got)
				}
			})
		}
	}
}

func TestJSONUsesSnakeCaseNames(t *testing.T) {
	b, err := (jsonSerializer{}).Append(nil, &pb.SendRequest{ClientMsgId: "c1", To: "bob", Body: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"client_msg_id":"c1","to":"bob","body":"aGk="}` {
		t.Fatalf("json = %s", b)
	}
	var m pb.SendRequest
	if err := (jsonSerializer{}).Unmarshal([]byte(`{"to":"bob","client_msg_id":"x","unknown_field":[1,2]}`), &m); err != nil || m.To != "bob" || m.ClientMsgId != "x" {
		t.Fatalf("decode with unknown field: %v %v", &m, err)
	}
}

func TestUnmarshalBadBodies(t *testing.T) {
	bad := map[SerializerID][][]byte{
		JSON:     {[]byte("{"), []byte(`{"to":5}`), []byte("[]"), []byte("\xff\xfe")},
		Protobuf: {{0xFF}, {0x0A, 0x10, 'a'}, {0x12, 0x80}},
		MsgPack:  {{0xC1}, {0x81, 0xA2, 't', 'o', 0x05}, {0x81}, {0x80, 0x00}},
	}
	for id, bodies := range bad {
		for _, body := range bodies {
			var m pb.SendRequest
			if err := Unmarshal(id, body, &m); !errors.Is(err, ErrBadBody) {
				t.Errorf("%s %x: err = %v, want ErrBadBody", id, body, err)
			}
		}
	}
	for _, id := range []SerializerID{JSON, Protobuf, MsgPack} {
		m := &pb.SendRequest{To: "stale"}
		if err := Unmarshal(id, nil, m); err != nil || m.To != "" {
			t.Errorf("%s: empty body must decode to the zero message: %v %v", id, m, err)
		}
	}
}

func TestEncodeFramePooled(t *testing.T) {
	b, err := EncodeFrame(Protobuf, CmdPushAck, 0, 3, &pb.PushAck{UpToSeq: 9})
	if err != nil {
		t.Fatal(err)
	}
	defer PutBuffer(b)
	f, ok, err := Decoder{}.ParseFrame(b.B)
	if !ok || err != nil || f.Command != CmdPushAck {
		t.Fatalf("%v %v %+v", ok, err, f.Header)
	}
	var m pb.PushAck
	if err := Unmarshal(f.Serializer, f.Body, &m); err != nil || m.UpToSeq != 9 {
		t.Fatal(err)
	}
	if _, err := EncodeFrame(0, CmdPushAck, 0, 3, nil); err == nil {
		t.Fatal("want error")
	}
}
