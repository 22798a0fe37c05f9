package codec

// The differential oracle: the fast decoders against Unmarshal into the pb
// types. Both must agree on every body both accept; a body only one of them
// accepts, or a field they decode differently, must fall under a rule of
// docs/protocol.md §3 that the generic decoders do not enforce. The rules
// are recognised here independently of the fast decoders (encoding/json,
// vmihailenco/msgpack and protowire parse the body), so a fast decoder bug
// cannot excuse itself.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/imgn/imgn/codec/pb"
	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// fastCase is one request type of the fast decoders.
type fastCase struct {
	name    string
	schema  *schema
	generic func() proto.Message
	// values reads the generic result in schema order.
	values func(proto.Message) fieldValues
	// fast runs the fast decoder.
	fast func(ser SerializerID, body []byte) (fieldValues, error)
}

var fastCases = []fastCase{
	{"send", &sendSchema, func() proto.Message { return &pb.SendRequest{} },
		func(m proto.Message) fieldValues {
			r := m.(*pb.SendRequest)
			return fieldValues{{b: []byte(r.ClientMsgId)}, {b: []byte(r.To)}, {u: uint64(r.Kind)}, {b: r.Body}}
		},
		func(ser SerializerID, body []byte) (fieldValues, error) { return fastSend(ser, body, false) }},
	{"group_send", &groupSendSchema, func() proto.Message { return &pb.GroupSendRequest{} },
		func(m proto.Message) fieldValues {
			r := m.(*pb.GroupSendRequest)
			return fieldValues{{b: []byte(r.ClientMsgId)}, {b: []byte(r.GroupId)}, {u: uint64(r.Kind)}, {b: r.Body}}
		},
		func(ser SerializerID, body []byte) (fieldValues, error) { return fastSend(ser, body, true) }},
	{"push_ack", &pushAckSchema, func() proto.Message { return &pb.PushAck{} },
		func(m proto.Message) fieldValues { return fieldValues{{u: m.(*pb.PushAck).UpToSeq}} },
		func(ser SerializerID, body []byte) (fieldValues, error) {
			u, err := DecodePushAck(ser, body)
			return fieldValues{{u: u}}, err
		}},
	{"sync", &syncSchema, func() proto.Message { return &pb.SyncRequest{} },
		func(m proto.Message) fieldValues {
			r := m.(*pb.SyncRequest)
			return fieldValues{{u: r.AfterSeq}, {u: uint64(r.Limit)}}
		},
		func(ser SerializerID, body []byte) (fieldValues, error) {
			a, l, err := DecodeSync(ser, body)
			return fieldValues{{u: a}, {u: uint64(l)}}, err
		}},
}

// requestCase is a fastCase of DecodeRequest for cmd; values reads both
// the generic result and DecodeRequest's.
func requestCase(name string, cmd Command, s *schema, generic func() proto.Message, values func(proto.Message) fieldValues) fastCase {
	return fastCase{name, s, generic, values, func(ser SerializerID, body []byte) (fieldValues, error) {
		m, err := DecodeRequest(ser, cmd, body)
		if err != nil {
			return fieldValues{}, err
		}
		return values(m), nil
	}}
}

func bytesList(ss []string) [][]byte {
	if len(ss) == 0 {
		return nil
	}
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

func init() {
	fastCases = append(fastCases,
		requestCase("register", CmdRegister, &registerSchema, func() proto.Message { return &pb.RegisterRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.RegisterRequest)
				return fieldValues{{b: []byte(r.User)}, {b: []byte(r.Password)}}
			}),
		requestCase("login", CmdLogin, &loginSchema, func() proto.Message { return &pb.LoginRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.LoginRequest)
				return fieldValues{{b: []byte(r.User)}, {b: []byte(r.Password)}, {b: []byte(r.Token)}, {b: []byte(r.Device)}}
			}),
		requestCase("heartbeat", CmdHeartbeat, &heartbeatSchema, func() proto.Message { return &pb.Heartbeat{} },
			func(m proto.Message) fieldValues { return fieldValues{{u: uint64(m.(*pb.Heartbeat).Time)}} }),
		requestCase("logout", CmdLogout, &emptySchema, func() proto.Message { return &pb.Empty{} },
			func(proto.Message) fieldValues { return fieldValues{} }),
		requestCase("group_create", CmdGroupCreate, &groupCreateSchema, func() proto.Message { return &pb.GroupCreateRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.GroupCreateRequest)
				return fieldValues{{b: []byte(r.Name)}, {list: bytesList(r.Members)}, {u: boolValue(r.Open)}}
			}),
		requestCase("group", CmdGroupJoin, &groupSchema, func() proto.Message { return &pb.GroupRequest{} },
			func(m proto.Message) fieldValues { return fieldValues{{b: []byte(m.(*pb.GroupRequest).GroupId)}} }),
		requestCase("group_members", CmdGroupAdd, &groupMembersSchema, func() proto.Message { return &pb.GroupMembersRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.GroupMembersRequest)
				return fieldValues{{b: []byte(r.GroupId)}, {list: bytesList(r.Users)}}
			}),
		requestCase("group_transfer", CmdGroupTransfer, &groupTransferSchema, func() proto.Message { return &pb.GroupTransferRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.GroupTransferRequest)
				return fieldValues{{b: []byte(r.GroupId)}, {b: []byte(r.User)}}
			}),
		requestCase("group_admin", CmdGroupAdmin, &groupAdminSchema, func() proto.Message { return &pb.GroupAdminRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.GroupAdminRequest)
				return fieldValues{{b: []byte(r.GroupId)}, {b: []byte(r.User)}, {u: boolValue(r.Admin)}}
			}),
		requestCase("groups", CmdGroups, &groupsSchema, func() proto.Message { return &pb.GroupsRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.GroupsRequest)
				return fieldValues{{b: []byte(r.After)}, {u: uint64(r.Limit)}}
			}),
		requestCase("presence", CmdPresence, &presenceSchema, func() proto.Message { return &pb.PresenceRequest{} },
			func(m proto.Message) fieldValues {
				return fieldValues{{list: bytesList(m.(*pb.PresenceRequest).Users)}}
			}),
		requestCase("conversations", CmdConversations, &conversationsSchema, func() proto.Message { return &pb.ConversationsRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.ConversationsRequest)
				return fieldValues{{u: r.BeforeSeq}, {u: uint64(r.Limit)}}
			}),
		requestCase("read", CmdRead, &readSchema, func() proto.Message { return &pb.ReadRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.ReadRequest)
				return fieldValues{{b: []byte(r.Peer)}, {b: []byte(r.GroupId)}, {u: r.UpToSeq}}
			}),
		requestCase("typing", CmdTyping, &typingSchema, func() proto.Message { return &pb.TypingRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.TypingRequest)
				return fieldValues{{b: []byte(r.Peer)}, {b: []byte(r.GroupId)}, {u: boolValue(r.On)}}
			}),
		requestCase("recall", CmdRecall, &messageSchema, func() proto.Message { return &pb.MessageRequest{} },
			func(m proto.Message) fieldValues { return fieldValues{{u: m.(*pb.MessageRequest).MsgId}} }),
		requestCase("history", CmdHistory, &historySchema, func() proto.Message { return &pb.HistoryRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.HistoryRequest)
				return fieldValues{{b: []byte(r.Peer)}, {b: []byte(r.GroupId)}, {u: r.BeforeSeq}, {u: r.BeforeMsgId}, {u: uint64(r.Limit)}}
			}),
		requestCase("read_count", CmdReadCount, &readCountSchema, func() proto.Message { return &pb.ReadCountRequest{} },
			func(m proto.Message) fieldValues {
				r := m.(*pb.ReadCountRequest)
				return fieldValues{{b: []byte(r.Peer)}, {b: []byte(r.GroupId)}, {u: r.Seq}}
			}),
	)
}

// boolValue is a decoded bool field's value.
func boolValue(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// sameField compares one decoded field (an empty list equals a nil one).
func sameField(a, b fieldValue) bool {
	if !bytes.Equal(a.b, b.b) || a.u != b.u || len(a.list) != len(b.list) {
		return false
	}
	for i := range a.list {
		if !bytes.Equal(a.list[i], b.list[i]) {
			return false
		}
	}
	return true
}

func fastSend(ser SerializerID, body []byte, group bool) (fieldValues, error) {
	var v SendView
	_, err := DecodeSend(ser, body, group, &v, nil)
	return fieldValues{{b: v.ClientMsgID}, {b: v.To}, {u: uint64(v.Kind)}, {b: v.Body}}, err
}

// leeway is what the spec's stricter rules allow for one body and schema.
type leeway struct {
	mayReject string            // why the fast decoder may reject what the generic accepts
	mayAccept string            // why the fast decoder may accept what the generic rejects
	mayDiffer [maxFields]string // why field i may decode differently
	facts     []string          // what the oracle saw, for failure messages
}

// checkAgreement decodes body with both paths for every request type and
// fails t on a disagreement that no rule explains. It returns how many
// request types both decoders accepted.
func checkAgreement(t testing.TB, ser SerializerID, body []byte) int {
	t.Helper()
	agreed := 0
	for _, c := range fastCases {
		gm := c.generic()
		gerr := Unmarshal(ser, body, gm)
		fv, ferr := c.fast(ser, bytes.Clone(body))
		if ferr != nil && !errors.Is(ferr, ErrBadBody) {
			t.Fatalf("%s %s %q: fast error %v does not wrap ErrBadBody", ser, c.name, body, ferr)
		}
		// The oracle runs only on a disagreement: most bodies have none.
		lw := func() leeway { return leewayFor(ser, body, c.schema) }
		switch {
		case gerr != nil && ferr != nil:
		case gerr == nil && ferr != nil:
			if l := lw(); l.mayReject == "" {
				t.Fatalf("%s %s %q: fast rejects (%v), generic accepts %v; no rule allows it (facts %v)", ser, c.name, body, ferr, gm, l.facts)
			}
		case gerr != nil && ferr == nil:
			if l := lw(); l.mayAccept == "" {
				t.Fatalf("%s %s %q: fast accepts %v, generic rejects (%v); no rule allows it (facts %v)", ser, c.name, body, fv, gerr, l.facts)
			}
		default:
			agreed++
			gv := c.values(gm)
			for i := range c.schema {
				if c.schema[i].num == 0 {
					continue
				}
				if !sameField(gv[i], fv[i]) {
					if l := lw(); l.mayDiffer[i] == "" {
						t.Fatalf("%s %s %q: field %s: fast %q/%d/%q, generic %q/%d/%q (facts %v)", ser, c.name, body,
							c.schema[i].name, fv[i].b, fv[i].u, fv[i].list, gv[i].b, gv[i].u, gv[i].list, l.facts)
					}
				}
			}
		}
	}
	return agreed
}

func leewayFor(ser SerializerID, body []byte, s *schema) leeway {
	switch ser {
	case JSON:
		return jsonLeeway(body, s)
	case MsgPack:
		return msgpackLeeway(body, s)
	}
	return protoLeeway(body, s)
}

// jsonLeeway: the body must be an RFC 8259 object (sonic skips unknown
// values loosely and accepts a top-level null), nested at most
// maxJSONDepth deep; string fields valid UTF-8; bytes a base64 string (sonic
// also takes an array of numbers); keys match exactly (sonic folds case);
// null resets a field (sonic keeps an earlier value of a scalar or string).
func jsonLeeway(body []byte, s *schema) leeway {
	var lw leeway
	if len(body) == 0 {
		return lw
	}
	if !json.Valid(body) {
		lw.mayReject = "not RFC 8259 JSON"
		lw.facts = append(lw.facts, "invalid JSON")
		return lw
	}
	if t := bytes.TrimLeft(body, " \t\r\n"); t[0] != '{' {
		lw.mayReject = "not an object"
		return lw
	}
	if jsonDepth(body) > maxJSONDepth {
		lw.mayReject = "nested too deeply"
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	_, _ = dec.Token() // '{'
	seen := [maxFields]int{}
	for dec.More() {
		tok, _ := dec.Token()
		key, _ := tok.(string)
		var raw json.RawMessage
		_ = dec.Decode(&raw)
		for i := range s {
			if s[i].num == 0 || !strings.EqualFold(key, s[i].name) {
				continue
			}
			if key != s[i].name {
				lw.mayDiffer[i] = "key in another letter case"
				lw.mayAccept = "key in another letter case (sonic decodes its value)"
				lw.facts = append(lw.facts, "case variant "+key)
				continue
			}
			seen[i]++
			if string(raw) == "null" && seen[i] > 1 {
				lw.mayDiffer[i] = "null after a value resets the field"
			}
			if (s[i].kind == kindString || s[i].kind == kindStrings) && !utf8.Valid(raw) {
				lw.mayReject = "invalid UTF-8 in a string field"
			}
			if s[i].kind == kindStrings && string(raw) != "null" {
				var list []*string
				if json.Unmarshal(raw, &list) != nil || slices.Contains(list, nil) {
					lw.mayReject = "a repeated string that is not an array of strings"
				}
			}
			if s[i].kind == kindBool && string(raw) != "true" && string(raw) != "false" && string(raw) != "null" {
				lw.mayReject = "a bool that is not true or false"
			}
			if s[i].kind == kindBytes {
				var text string
				if raw[0] == '[' {
					lw.mayReject = "bytes as an array"
				} else if json.Unmarshal(raw, &text) == nil {
					if _, err := base64.StdEncoding.DecodeString(text); err != nil {
						lw.mayReject = "base64 not padded as RFC 4648 requires (sonic takes \"ab=\")"
					}
				}
			}
		}
	}
	return lw
}

// jsonDepth is the deepest nesting of arrays and objects in valid JSON.
func jsonDepth(b []byte) int {
	depth, deepest, inStr := 0, 0, false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case !inStr && (c == '{' || c == '['):
			depth++
			deepest = max(deepest, depth)
		case !inStr && (c == '}' || c == ']'):
			depth--
		}
	}
	return deepest
}

// msgpackLeeway: the body must be a map (the generic decoder also takes an
// array of the fields in order, or nil), string fields valid UTF-8 and
// integers within their type (the generic decoder wraps them).
func msgpackLeeway(body []byte, s *schema) leeway {
	var lw leeway
	if len(body) == 0 {
		return lw
	}
	if c := body[0]; !msgpcode.IsFixedMap(c) && c != msgpcode.Map16 && c != msgpcode.Map32 {
		lw.mayReject = "not a map"
		lw.facts = append(lw.facts, fmt.Sprintf("top-level code %#x", c))
		return lw
	}
	dec := msgpack.NewDecoder(bytes.NewReader(body))
	n, err := dec.DecodeMapLen()
	if err != nil {
		return lw
	}
	for range n {
		key, err := dec.DecodeString()
		if err != nil {
			return lw
		}
		raw, err := dec.DecodeRaw()
		if err != nil {
			return lw
		}
		i := s.byName([]byte(key))
		if i < 0 || raw[0] == msgpcode.Nil {
			continue
		}
		switch s[i].kind {
		case kindString:
			v, err := msgpack.NewDecoder(bytes.NewReader(raw)).DecodeBytes()
			if err == nil && !utf8.Valid(v) {
				lw.mayReject = "invalid UTF-8 in a string field"
			}
		case kindStrings:
			var list []any
			if err := msgpack.Unmarshal(raw, &list); err != nil {
				continue
			}
			for _, e := range list {
				switch v := e.(type) {
				case string:
					if !utf8.ValidString(v) {
						lw.mayReject = "invalid UTF-8 in a repeated string"
					}
				case []byte:
					if !utf8.Valid(v) {
						lw.mayReject = "invalid UTF-8 in a repeated string"
					}
				default:
					lw.mayReject = "a repeated string element that is not a str or bin"
				}
			}
		case kindBool:
			if raw[0] != msgpcode.False && raw[0] != msgpcode.True {
				lw.mayReject = "a bool that is not true or false"
			}
		case kindUint32, kindUint64, kindInt64:
			v, err := msgpack.NewDecoder(bytes.NewReader(raw)).DecodeInterface()
			if err != nil {
				continue
			}
			var neg bool
			var u uint64
			switch x := v.(type) {
			case int8:
				neg, u = x < 0, uint64(int64(x))
			case int16:
				neg, u = x < 0, uint64(int64(x))
			case int32:
				neg, u = x < 0, uint64(int64(x))
			case int64:
				neg, u = x < 0, uint64(x)
			case uint8:
				u = uint64(x)
			case uint16:
				u = uint64(x)
			case uint32:
				u = uint64(x)
			case uint64:
				u = x
			}
			if s[i].kind == kindInt64 {
				if !neg && u > 1<<63-1 {
					lw.mayReject = "integer out of range"
				}
			} else if neg || u > maxOf(s[i].kind) {
				lw.mayReject = "integer out of range"
			}
			lw.facts = append(lw.facts, fmt.Sprintf("%s = %T %v", key, v, v))
		}
	}
	return lw
}

// protoLeeway: a known field with another wire type (proto.Unmarshal keeps
// it as an unknown field) and a uint32 varint beyond 2^32-1 (proto.Unmarshal
// truncates it) are BAD_BODY.
func protoLeeway(body []byte, s *schema) leeway {
	var lw leeway
	for b := body; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return lw
		}
		b = b[n:]
		if i := s.byNum(uint64(num)); i >= 0 {
			want := protowire.VarintType
			if !s[i].kind.isInt() && s[i].kind != kindBool {
				want = protowire.BytesType
			}
			if typ != want {
				lw.mayReject = "wrong wire type"
			} else if typ == protowire.VarintType {
				if v, m := protowire.ConsumeVarint(b); m > 0 && v > maxOf(s[i].kind) {
					lw.mayReject = "integer out of range"
				}
			}
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return lw
		}
		b = b[n:]
	}
	return lw
}
