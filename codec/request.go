package codec

import (
	"fmt"

	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

// DecodeRequest decodes the body of a client request (a command a client may
// send, docs/protocol.md §4.1) into a new message of the command's type:
// *pb.RegisterRequest, *pb.LoginRequest, *pb.Empty (LOGOUT), *pb.Heartbeat,
// *pb.SendRequest, *pb.GroupSendRequest, *pb.PushAck, *pb.SyncRequest,
// *pb.GroupCreateRequest, *pb.GroupRequest (GROUP_JOIN, GROUP_LEAVE,
// GROUP_MEMBERS), *pb.GroupMembersRequest (GROUP_ADD, GROUP_REMOVE),
// *pb.GroupTransferRequest, *pb.GroupAdminRequest, *pb.GroupsRequest,
// *pb.PresenceRequest, or a chat request:
// *pb.ConversationsRequest, *pb.ReadRequest, *pb.TypingRequest,
// *pb.MessageRequest (RECALL, DELETE), *pb.HistoryRequest or
// *pb.ReadCountRequest.
//
// It applies every rule of docs/protocol.md §3, as DecodeSend does, with the
// same decoders: the body is exactly one object or map (or empty), strings
// and the elements of repeated strings are valid UTF-8, integers fit their
// field, a known Protobuf field has its wire type, a JSON body nests at
// most 64 levels, unknown fields are skipped. A repeated string field is a
// JSON array or MessagePack array of strings (null/nil elements are
// refused; the last occurrence of the key wins, null resets it) or, in
// Protobuf, one element per occurrence of the field.
//
// The returned message owns its strings and bytes (copies): body may be
// reused as soon as DecodeRequest returns. Errors wrap ErrBadBody, except
// for an unknown ser (ErrUnknownSerializer) or a cmd that is not a client
// request. Safe for concurrent use.
func DecodeRequest(ser SerializerID, cmd Command, body []byte) (proto.Message, error) {
	s, build := requestOf(cmd)
	if s == nil {
		return nil, fmt.Errorf("codec: %s is not a client request", cmd)
	}
	var f fieldValues
	if _, err := decodeBody(ser, body, s, &f, nil); err != nil {
		return nil, err
	}
	return build(&f), nil
}

// DecodeHeartbeat decodes a HEARTBEAT body (Heartbeat) by the rules of
// DecodeRequest and returns its time. It never allocates except for the
// error it returns; errors wrap ErrBadBody (ErrUnknownSerializer for an
// unknown ser). Safe for concurrent use.
func DecodeHeartbeat(ser SerializerID, body []byte) (timeMs int64, err error) {
	var f fieldValues
	if _, err := decodeBody(ser, body, &heartbeatSchema, &f, nil); err != nil {
		return 0, err
	}
	return int64(f[0].u), nil
}

// requestOf returns the schema of cmd's request body and the function that
// builds its message from the decoded values, or nil for a command that is
// not a client request.
func requestOf(cmd Command) (*schema, func(*fieldValues) proto.Message) {
	switch cmd {
	case CmdRegister:
		return &registerSchema, func(f *fieldValues) proto.Message {
			return &pb.RegisterRequest{User: string(f[0].b), Password: string(f[1].b)}
		}
	case CmdLogin:
		return &loginSchema, func(f *fieldValues) proto.Message {
			return &pb.LoginRequest{User: string(f[0].b), Password: string(f[1].b), Token: string(f[2].b), Device: string(f[3].b)}
		}
	case CmdLogout:
		return &emptySchema, func(*fieldValues) proto.Message { return &pb.Empty{} }
	case CmdHeartbeat:
		return &heartbeatSchema, func(f *fieldValues) proto.Message { return &pb.Heartbeat{Time: int64(f[0].u)} }
	case CmdSend:
		return &sendSchema, func(f *fieldValues) proto.Message {
			return &pb.SendRequest{ClientMsgId: string(f[0].b), To: string(f[1].b), Kind: uint32(f[2].u), Body: cloneBytes(f[3].b)}
		}
	case CmdGroupSend:
		return &groupSendSchema, func(f *fieldValues) proto.Message {
			return &pb.GroupSendRequest{ClientMsgId: string(f[0].b), GroupId: string(f[1].b), Kind: uint32(f[2].u), Body: cloneBytes(f[3].b)}
		}
	case CmdPushAck:
		return &pushAckSchema, func(f *fieldValues) proto.Message { return &pb.PushAck{UpToSeq: f[0].u} }
	case CmdSync:
		return &syncSchema, func(f *fieldValues) proto.Message {
			return &pb.SyncRequest{AfterSeq: f[0].u, Limit: uint32(f[1].u)}
		}
	case CmdGroupCreate:
		return &groupCreateSchema, func(f *fieldValues) proto.Message {
			return &pb.GroupCreateRequest{Name: string(f[0].b), Members: strs(f[1].list), Open: f[2].u != 0}
		}
	case CmdGroupJoin, CmdGroupLeave, CmdGroupMembers:
		return &groupSchema, func(f *fieldValues) proto.Message { return &pb.GroupRequest{GroupId: string(f[0].b)} }
	case CmdGroupAdd, CmdGroupRemove:
		return &groupMembersSchema, func(f *fieldValues) proto.Message {
			return &pb.GroupMembersRequest{GroupId: string(f[0].b), Users: strs(f[1].list)}
		}
	case CmdGroupTransfer:
		return &groupTransferSchema, func(f *fieldValues) proto.Message {
			return &pb.GroupTransferRequest{GroupId: string(f[0].b), User: string(f[1].b)}
		}
	case CmdGroupAdmin:
		return &groupAdminSchema, func(f *fieldValues) proto.Message {
			return &pb.GroupAdminRequest{GroupId: string(f[0].b), User: string(f[1].b), Admin: f[2].u != 0}
		}
	case CmdGroups:
		return &groupsSchema, func(f *fieldValues) proto.Message {
			return &pb.GroupsRequest{After: string(f[0].b), Limit: uint32(f[1].u)}
		}
	case CmdPresence:
		return &presenceSchema, func(f *fieldValues) proto.Message { return &pb.PresenceRequest{Users: strs(f[0].list)} }
	case CmdConversations:
		return &conversationsSchema, func(f *fieldValues) proto.Message {
			return &pb.ConversationsRequest{BeforeSeq: f[0].u, Limit: uint32(f[1].u)}
		}
	case CmdRead:
		return &readSchema, func(f *fieldValues) proto.Message {
			return &pb.ReadRequest{Peer: string(f[0].b), GroupId: string(f[1].b), UpToSeq: f[2].u}
		}
	case CmdTyping:
		return &typingSchema, func(f *fieldValues) proto.Message {
			return &pb.TypingRequest{Peer: string(f[0].b), GroupId: string(f[1].b), On: f[2].u != 0}
		}
	case CmdRecall, CmdDelete:
		return &messageSchema, func(f *fieldValues) proto.Message { return &pb.MessageRequest{MsgId: f[0].u} }
	case CmdHistory:
		return &historySchema, func(f *fieldValues) proto.Message {
			return &pb.HistoryRequest{Peer: string(f[0].b), GroupId: string(f[1].b), BeforeSeq: f[2].u, BeforeMsgId: f[3].u, Limit: uint32(f[4].u)}
		}
	case CmdReadCount:
		return &readCountSchema, func(f *fieldValues) proto.Message {
			return &pb.ReadCountRequest{Peer: string(f[0].b), GroupId: string(f[1].b), Seq: f[2].u}
		}
	}
	return nil, nil
}

// cloneBytes copies b; nil and empty stay nil, as the generic decoders
// leave an empty bytes field.
func cloneBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// strs copies a decoded repeated string.
func strs(list [][]byte) []string {
	if len(list) == 0 {
		return nil
	}
	out := make([]string, len(list))
	for i, b := range list {
		out[i] = string(b)
	}
	return out
}
