package codec

import (
	"errors"
	"strings"
	"testing"

	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

// requestRow is one body of the DecodeRequest table: want nil means
// BAD_BODY.
type requestRow struct {
	name string
	ser  SerializerID
	cmd  Command
	in   string
	want proto.Message
}

// mp builds a MessagePack fixmap body from alternating keys and raw values.
func mp(kv ...string) string {
	var sb strings.Builder
	sb.WriteByte(byte(0x80 | len(kv)/2))
	for i := 0; i < len(kv); i += 2 {
		sb.WriteString(hdr(kv[i]))
		sb.WriteString(kv[i+1])
	}
	return sb.String()
}

var requestRows = []requestRow{
	// Every request type decodes, in every serializer.
	{"json login", JSON, CmdLogin, `{"user":"alice","password":"secret123","device":"phone","extra":[1,{"a":null}]}`,
		&pb.LoginRequest{User: "alice", Password: "secret123", Device: "phone"}},
	{"protobuf login", Protobuf, CmdLogin, "\x0a\x05alice\x12\x09secret123\x22\x05phone",
		&pb.LoginRequest{User: "alice", Password: "secret123", Device: "phone"}},
	{"msgpack login", MsgPack, CmdLogin, mp("user", "\xa5alice", "token", "\xc4\x03t.k", "device", "\xa5phone"),
		&pb.LoginRequest{User: "alice", Token: "t.k", Device: "phone"}},
	{"json register", JSON, CmdRegister, `{"user":"bob","password":"pässwörd"}`, &pb.RegisterRequest{User: "bob", Password: "pässwörd"}},
	{"empty body", Protobuf, CmdRegister, "", &pb.RegisterRequest{}},
	{"json logout with unknown keys", JSON, CmdLogout, `{"why":"done"}`, &pb.Empty{}},
	{"msgpack empty logout", MsgPack, CmdLogout, "\x80", &pb.Empty{}},
	{"json heartbeat", JSON, CmdHeartbeat, `{"time":1700000000000}`, &pb.Heartbeat{Time: 1700000000000}},
	{"json negative heartbeat", JSON, CmdHeartbeat, `{"time":-9223372036854775808}`, &pb.Heartbeat{Time: -1 << 63}},
	{"protobuf negative heartbeat", Protobuf, CmdHeartbeat, "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", &pb.Heartbeat{Time: -1}},
	{"msgpack negative heartbeat", MsgPack, CmdHeartbeat, mp("time", "\xff"), &pb.Heartbeat{Time: -1}},
	{"json group create", JSON, CmdGroupCreate, `{"name":"team","members":["bob","carol"]}`,
		&pb.GroupCreateRequest{Name: "team", Members: []string{"bob", "carol"}}},
	{"json members: last key wins", JSON, CmdGroupCreate, `{"members":["x"],"members":["bob"]}`,
		&pb.GroupCreateRequest{Members: []string{"bob"}}},
	{"json members: null resets", JSON, CmdGroupCreate, `{"members":["x"],"members":null}`, &pb.GroupCreateRequest{}},
	{"json members escaped", JSON, CmdGroupCreate, `{"members":["b\u006fb", "\u00e9"]}`, &pb.GroupCreateRequest{Members: []string{"bob", "é"}}},
	{"protobuf members append", Protobuf, CmdGroupCreate, "\x12\x03bob\x0a\x01t\x12\x05carol",
		&pb.GroupCreateRequest{Name: "t", Members: []string{"bob", "carol"}}},
	{"msgpack members", MsgPack, CmdGroupCreate, mp("members", "\x92\xa3bob\xc4\x05carol"),
		&pb.GroupCreateRequest{Members: []string{"bob", "carol"}}},
	{"json group", JSON, CmdGroupLeave, `{"group_id":"g1"}`, &pb.GroupRequest{GroupId: "g1"}},
	{"msgpack presence", MsgPack, CmdPresence, mp("users", "\x90"), &pb.PresenceRequest{}},
	{"protobuf presence", Protobuf, CmdPresence, "\x0a\x01a\x0a\x00", &pb.PresenceRequest{Users: []string{"a", ""}}},
	{"json sync", JSON, CmdSync, `{"after_seq":5,"limit":1}`, &pb.SyncRequest{AfterSeq: 5, Limit: 1}},
	{"json send", JSON, CmdSend, `{"client_msg_id":"c1","to":"bob","body":"aGkh"}`,
		&pb.SendRequest{ClientMsgId: "c1", To: "bob", Body: []byte("hi!")}},

	// Invalid UTF-8, per serializer and field kind.
	{"json login device", JSON, CmdLogin, "{\"device\":\"\xff\xfe\"}", nil},
	{"json password", JSON, CmdRegister, "{\"password\":\"secret\xc0\"}", nil},
	{"protobuf token", Protobuf, CmdLogin, "\x1a\x02\xff\xfe", nil},
	{"msgpack bin user", MsgPack, CmdLogin, mp("user", "\xc4\x02\xff\xfe"), nil},
	{"msgpack str group id", MsgPack, CmdGroupJoin, mp("group_id", "\xa2\xed\xa0"), nil},
	{"json member", JSON, CmdGroupCreate, "{\"members\":[\"ok\",\"\xff\"]}", nil},
	{"protobuf member", Protobuf, CmdGroupCreate, "\x12\x01\xff", nil},
	{"msgpack presence user", MsgPack, CmdPresence, mp("users", "\x91\xa1\xff"), nil},
	{"json name", JSON, CmdGroupCreate, "{\"name\":\"\xe2\x82\"}", nil},

	// Shapes.
	{"msgpack array body", MsgPack, CmdLogin, "\x94\xa5alice\xa0\xa0\xa5phone", nil},
	{"msgpack nil body", MsgPack, CmdLogout, "\xc0", nil},
	{"json null body", JSON, CmdHeartbeat, "null", nil},
	{"json array body", JSON, CmdLogout, "[]", nil},
	{"json trailing bytes", JSON, CmdLogout, "{} {}", nil},
	{"json members not an array", JSON, CmdGroupCreate, `{"members":"bob"}`, nil},
	{"json null member", JSON, CmdGroupCreate, `{"members":["bob",null]}`, nil},
	{"json number member", JSON, CmdPresence, `{"users":[1]}`, nil},
	{"json nested member", JSON, CmdPresence, `{"users":[["a"]]}`, nil},
	{"json unclosed list", JSON, CmdPresence, `{"users":["a"`, nil},
	{"msgpack nil member", MsgPack, CmdPresence, mp("users", "\x92\xa1a\xc0"), nil},
	{"msgpack member count beyond the body", MsgPack, CmdPresence, mp("users", "\xdd\xff\xff\xff\xff"), nil},
	{"msgpack truncated list", MsgPack, CmdPresence, "\x81\xa5users", nil},
	{"protobuf members as varint", Protobuf, CmdGroupCreate, "\x10\x01", nil},
	{"protobuf device as varint", Protobuf, CmdLogin, "\x20\x05", nil},
	{"protobuf time as bytes", Protobuf, CmdHeartbeat, "\x0a\x01x", nil},
	{"json deep unknown value", JSON, CmdLogout, `{"x":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`, nil},

	// Integers.
	{"json time as string", JSON, CmdHeartbeat, `{"time":"1"}`, nil},
	{"json time fraction", JSON, CmdHeartbeat, `{"time":1.5}`, nil},
	{"json time beyond int64", JSON, CmdHeartbeat, `{"time":9223372036854775808}`, nil},
	{"json time below int64", JSON, CmdHeartbeat, `{"time":-9223372036854775809}`, nil},
	{"msgpack time beyond int64", MsgPack, CmdHeartbeat, mp("time", "\xcf\x80\x00\x00\x00\x00\x00\x00\x00"), nil},
	{"json negative limit", JSON, CmdSync, `{"limit":-1}`, nil},
	{"json minus zero unsigned", JSON, CmdSync, `{"after_seq":-0}`, nil},
	{"json minus zero signed", JSON, CmdHeartbeat, `{"time":-0}`, &pb.Heartbeat{}},
}

func TestDecodeRequestTable(t *testing.T) {
	for _, r := range requestRows {
		t.Run(r.name, func(t *testing.T) {
			got, err := DecodeRequest(r.ser, r.cmd, []byte(r.in))
			if r.want == nil {
				if !errors.Is(err, ErrBadBody) {
					t.Fatalf("got %v, %v; want BAD_BODY", got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("%q: %v", r.in, err)
			}
			if !proto.Equal(got, r.want) {
				t.Fatalf("%q:\n got %v\nwant %v", r.in, got, r.want)
			}
			if r.cmd == CmdHeartbeat {
				ms, err := DecodeHeartbeat(r.ser, []byte(r.in))
				if err != nil || ms != r.want.(*pb.Heartbeat).Time {
					t.Fatalf("DecodeHeartbeat: %d %v", ms, err)
				}
			}
		})
	}
}

// TestDecodeRequestEveryCommand: every client request has a decoder whose
// result round-trips the generic encoding of a full message, and nothing
// else is a request.
func TestDecodeRequestEveryCommand(t *testing.T) {
	full := map[Command]proto.Message{
		CmdRegister:      &pb.RegisterRequest{User: "u", Password: "p"},
		CmdLogin:         &pb.LoginRequest{User: "u", Password: "p", Token: "t", Device: "d"},
		CmdLogout:        &pb.Empty{},
		CmdHeartbeat:     &pb.Heartbeat{Time: -5},
		CmdSend:          &pb.SendRequest{ClientMsgId: "c", To: "b", Kind: 3, Body: []byte{0, 1}},
		CmdPushAck:       &pb.PushAck{UpToSeq: 9},
		CmdSync:          &pb.SyncRequest{AfterSeq: 1, Limit: 2},
		CmdGroupCreate:   &pb.GroupCreateRequest{Name: "n", Members: []string{"a", "b"}, Open: true},
		CmdGroupAdd:      &pb.GroupMembersRequest{GroupId: "g", Users: []string{"a", "b"}},
		CmdGroupRemove:   &pb.GroupMembersRequest{GroupId: "g", Users: []string{"c"}},
		CmdGroupTransfer: &pb.GroupTransferRequest{GroupId: "g", User: "u"},
		CmdGroupAdmin:    &pb.GroupAdminRequest{GroupId: "g", User: "u", Admin: true},
		CmdGroups:        &pb.GroupsRequest{After: "g1", Limit: 20},
		CmdGroupJoin:     &pb.GroupRequest{GroupId: "g"},
		CmdGroupLeave:    &pb.GroupRequest{GroupId: "g"},
		CmdGroupMembers:  &pb.GroupRequest{GroupId: "g"},
		CmdGroupSend:     &pb.GroupSendRequest{ClientMsgId: "c", GroupId: "g", Kind: 3, Body: []byte{2}},
		CmdPresence:      &pb.PresenceRequest{Users: []string{"a"}},
		CmdConversations: &pb.ConversationsRequest{BeforeSeq: 4, Limit: 5},
		CmdRead:          &pb.ReadRequest{Peer: "p", GroupId: "g", UpToSeq: 6},
		CmdTyping:        &pb.TypingRequest{Peer: "p", GroupId: "g", On: true},
		CmdRecall:        &pb.MessageRequest{MsgId: 1 << 60},
		CmdDelete:        &pb.MessageRequest{MsgId: 7},
		CmdHistory:       &pb.HistoryRequest{Peer: "p", GroupId: "g", BeforeSeq: 8, BeforeMsgId: 9, Limit: 10},
		CmdReadCount:     &pb.ReadCountRequest{Peer: "p", GroupId: "g", Seq: 11},
	}
	for c := range 256 {
		cmd := Command(c)
		m, isReq := full[cmd]
		for _, ser := range allSerializers {
			if !isReq {
				if _, err := DecodeRequest(ser, cmd, nil); err == nil {
					t.Fatalf("%s decoded as a request", cmd)
				}
				continue
			}
			s, _ := Lookup(ser)
			body, err := s.Append(nil, m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeRequest(ser, cmd, body)
			if err != nil || !proto.Equal(got, m) {
				t.Fatalf("%s %s: got %v %v, want %v", ser, cmd, got, err, m)
			}
			// The result owns its bytes.
			for i := range body {
				body[i] = 'X'
			}
			if !proto.Equal(got, m) {
				t.Fatalf("%s %s: result aliases the body", ser, cmd)
			}
		}
	}
}
