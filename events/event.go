package events

import (
	"strconv"
	"strings"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/persist"
)

// SchemaVersion is the value of Event.V. Fields are only ever added within
// a version; consumers ignore fields they do not know.
const SchemaVersion = 1

// Event types (Event.Type).
const (
	TypeMessage            = "message"
	TypeDelivered          = "delivered"
	TypeGroupCreated       = string(engine.GroupCreated)
	TypeGroupMemberAdded   = string(engine.GroupMemberAdded)
	TypeGroupMemberRemoved = string(engine.GroupMemberRemoved)
	TypeGroupOwnerChanged  = string(engine.GroupOwnerChanged)
	TypeGroupAdminAdded    = string(engine.GroupAdminAdded)
	TypeGroupAdminRemoved  = string(engine.GroupAdminRemoved)
)

// Event is one entry of the stream, as JSON in its "data" field (the
// schema is documented in docs/events.md). Fields that do not apply to a
// type are left out.
type Event struct {
	V    int    `json:"v"`
	Type string `json:"type"`
	// Node is the node that stored what the event describes.
	Node string `json:"node"`
	// Time is when the node recorded the event, Unix milliseconds.
	Time int64 `json:"time"`

	// message: a stored message and the inboxes (of this node) it is in.
	MsgID       string     `json:"msg_id,omitempty"` // decimal: 64-bit ids exceed JSON's exact integers
	From        string     `json:"from,omitempty"`   // absent for a system message
	To          string     `json:"to,omitempty"`
	GroupID     string     `json:"group_id,omitempty"`
	ClientMsgID string     `json:"client_msg_id,omitempty"`
	Kind        uint32     `json:"kind,omitempty"`
	Body        []byte     `json:"body,omitempty"`    // standard base64
	SentAt      int64      `json:"sent_at,omitempty"` // the message's server time of acceptance
	Duplicate   bool       `json:"duplicate,omitempty"`
	Replayed    bool       `json:"replayed,omitempty"`
	Inboxes     []InboxRef `json:"inboxes,omitempty"`

	// delivered: Device of User acknowledged its inbox up to Seq.
	// group.*: User is the member added or removed (the owner for
	// group.created).
	User   string `json:"user,omitempty"`
	Device string `json:"device,omitempty"`
	Seq    uint64 `json:"seq,omitempty"`

	// group.*
	Group   string   `json:"group,omitempty"`
	By      string   `json:"by,omitempty"` // absent for the server API
	Name    string   `json:"name,omitempty"`
	Owner   string   `json:"owner,omitempty"`
	Members []string `json:"members,omitempty"`

	enq int64 // when it was queued (Unix ms): the checkpoint it moves to
}

// InboxRef is one inbox a message was stored in.
type InboxRef struct {
	User string `json:"user"`
	Seq  uint64 `json:"seq"`
	// Conversation is the peer of a 1:1 message as User sees it, or the
	// group id; absent for a system message.
	Conversation string `json:"conversation,omitempty"`
}

// messageEvent copies a stored message into a new Event (the arguments
// may point into memory reused after the observer call returns).
func messageEvent(node string, now int64, m *persist.Message, inboxes []string, seqs []uint64, duplicate bool) *Event {
	e := &Event{V: SchemaVersion, Type: TypeMessage, Node: node, Time: now, enq: now,
		MsgID: strconv.FormatUint(m.ID, 10), From: strings.Clone(m.From), To: strings.Clone(m.To),
		ClientMsgID: strings.Clone(m.ClientMsgID), Kind: m.Kind, SentAt: m.Timestamp, Duplicate: duplicate,
		Inboxes: make([]InboxRef, len(inboxes))}
	if len(m.Body) > 0 {
		e.Body = append([]byte(nil), m.Body...)
	}
	if m.Group {
		e.GroupID = e.To
	}
	for i, in := range inboxes {
		e.Inboxes[i] = InboxRef{User: strings.Clone(in), Seq: seqs[i], Conversation: strings.Clone(engine.Conversation(m, in))}
	}
	return e
}
