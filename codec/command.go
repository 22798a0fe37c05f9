package codec

import "strconv"

// Command is the header's command byte.
//
// Ranges: 0x01-0x7F client requests and server notices, 0x80-0xBF replies
// (a reply is usually its request's code | 0x80), 0xC0-0xFF node-to-node
// (mesh) frames, which a client connection never accepts.
type Command uint8

// Client protocol commands. See docs/protocol.md for bodies and flows.
const (
	CmdRegister     Command = 0x01 // RegisterRequest -> RegisterOK
	CmdLogin        Command = 0x02 // LoginRequest -> LoginOK
	CmdLogout       Command = 0x03 // Empty -> LogoutOK, then close
	CmdHeartbeat    Command = 0x04 // Heartbeat -> HeartbeatOK
	CmdSend         Command = 0x10 // SendRequest -> SendAck
	CmdPush         Command = 0x11 // server -> client Push
	CmdPushAck      Command = 0x12 // PushAck, no reply
	CmdSync         Command = 0x13 // SyncRequest -> SyncOK
	CmdGroupCreate  Command = 0x20 // GroupCreateRequest -> GroupInfo
	CmdGroupJoin    Command = 0x21 // GroupRequest -> GroupInfo
	CmdGroupLeave   Command = 0x22 // GroupRequest -> GroupInfo
	CmdGroupMembers Command = 0x23 // GroupRequest -> GroupInfo
	// Group access control (docs/protocol.md §4.5).
	CmdGroupAdd      Command = 0x24 // GroupMembersRequest -> GroupInfo
	CmdGroupRemove   Command = 0x25 // GroupMembersRequest -> GroupInfo
	CmdGroupTransfer Command = 0x26 // GroupTransferRequest -> GroupInfo
	CmdGroupAdmin    Command = 0x27 // GroupAdminRequest -> GroupInfo
	CmdGroups        Command = 0x29 // GroupsRequest -> GroupsOK
	CmdGroupSend     Command = 0x28 // GroupSendRequest -> SendAck
	CmdPresence      Command = 0x30 // PresenceRequest -> PresenceOK
	// Chat (docs/protocol.md §4.8).
	CmdConversations Command = 0x31 // ConversationsRequest -> ConversationsOK
	CmdRead          Command = 0x32 // ReadRequest -> ReadOK
	CmdTyping        Command = 0x33 // TypingRequest, no reply
	CmdRecall        Command = 0x34 // MessageRequest -> EventOK
	CmdDelete        Command = 0x35 // MessageRequest -> EventOK
	CmdHistory       Command = 0x36 // HistoryRequest -> HistoryOK
	CmdReadCount     Command = 0x37 // ReadCountRequest -> ReadCountOK
	CmdKick          Command = 0x40 // server -> client Kick, then close
	CmdGoAway        Command = 0x41 // server -> client GoAway
	CmdNotice        Command = 0x42 // server -> client Notice (operator broadcast)
	CmdReceipt       Command = 0x43 // server -> client Receipt (a read cursor moved)
	CmdTypingEvent   Command = 0x44 // server -> client TypingEvent
	CmdError         Command = 0x7F // Error

	CmdRegisterOK  Command = 0x81
	CmdLoginOK     Command = 0x82
	CmdLogoutOK    Command = 0x83
	CmdHeartbeatOK Command = 0x84
	CmdSendAck     Command = 0x90
	CmdSyncOK      Command = 0x93
	CmdGroupInfo   Command = 0xA0
	CmdGroupsOK    Command = 0xA9
	CmdPresenceOK  Command = 0xB0

	CmdConversationsOK Command = 0xB1
	CmdReadOK          Command = 0xB2
	CmdRecallOK        Command = 0xB4
	CmdDeleteOK        Command = 0xB5
	CmdHistoryOK       Command = 0xB6
	CmdReadCountOK     Command = 0xB7
)

// MeshCommandMin is the first command code of the node-to-node range; codes
// from here to 0xFF are defined by the mesh package.
const MeshCommandMin Command = 0xC0

// IsMesh reports whether c is in the node-to-node range.
func (c Command) IsMesh() bool { return c >= MeshCommandMin }

var commandNames = [256]string{
	CmdRegister: "register", CmdLogin: "login", CmdLogout: "logout", CmdHeartbeat: "heartbeat",
	CmdSend: "send", CmdPush: "push", CmdPushAck: "push_ack", CmdSync: "sync",
	CmdGroupCreate: "group_create", CmdGroupJoin: "group_join", CmdGroupLeave: "group_leave",
	CmdGroupMembers: "group_members", CmdGroupSend: "group_send", CmdPresence: "presence",
	CmdKick: "kick", CmdGoAway: "go_away", CmdNotice: "notice", CmdError: "error",
	CmdRegisterOK: "register_ok", CmdLoginOK: "login_ok", CmdLogoutOK: "logout_ok",
	CmdHeartbeatOK: "heartbeat_ok", CmdSendAck: "send_ack", CmdSyncOK: "sync_ok",
	CmdGroupInfo: "group_info", CmdPresenceOK: "presence_ok",
	CmdGroupAdd: "group_add", CmdGroupRemove: "group_remove", CmdGroupTransfer: "group_transfer",
	CmdGroupAdmin: "group_admin", CmdGroups: "groups", CmdGroupsOK: "groups_ok",
	CmdConversations: "conversations", CmdRead: "read", CmdTyping: "typing", CmdRecall: "recall",
	CmdDelete: "delete", CmdHistory: "history", CmdReadCount: "read_count",
	CmdReceipt: "receipt", CmdTypingEvent: "typing_event",
	CmdConversationsOK: "conversations_ok", CmdReadOK: "read_ok", CmdRecallOK: "recall_ok",
	CmdDeleteOK: "delete_ok", CmdHistoryOK: "history_ok", CmdReadCountOK: "read_count_ok",
}

// Known reports whether c is a defined client-protocol command.
func (c Command) Known() bool { return commandNames[c] != "" }

// String returns the command's lower-case name (used as a metrics label),
// "mesh_0xNN" for the mesh range and "unknown_0xNN" otherwise. It does not
// allocate for known commands.
func (c Command) String() string {
	if n := commandNames[c]; n != "" {
		return n
	}
	prefix := "unknown_0x"
	if c.IsMesh() {
		prefix = "mesh_0x"
	}
	return prefix + strconv.FormatUint(uint64(c), 16)
}
