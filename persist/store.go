// Package persist holds the storage seams of the server and their in-memory
// defaults: MessageStore (messages, inboxes, cursors), UserStore and
// GroupStore, and SessionStore (who is online where). Implementations live
// one per sub-package: memstore (in memory, not durable), pebblestore (the
// embedded single-node store), mongostore (clusters), redisstore (sessions).
// Every implementation passes the conformance suite of its interface
// (persist/storetest, persist/sessiontest). Optional seams: AsyncAppender
// (appends without a waiting goroutine), Retainer (a store that forgets
// old messages by the rules of Retention), ChatStore (conversations, read
// cursors, recall, delete-for-me, history) and StatsReporter.
//
// Rules every store follows: identifiers longer than MaxIDLen are
// ErrInvalid; ReadInbox with limit <= 0 is ErrInvalid; reusing a stored
// message ID for another (From, ClientMsgID) is ErrInvalid; a second Close
// returns ErrClosed; a write abandoned through its context returns the
// context's error and may still be committed, so callers treat it like
// ErrUnavailable and retry with the same ClientMsgID.
//
// The delivery model these interfaces serve (docs/protocol.md section 6):
//   - a message is stored once, identified by a cluster-unique ID, and is
//     unique forever by (From, ClientMsgID);
//   - each user has an inbox: a gap-free, strictly increasing sequence of
//     references to messages, numbered from 1;
//   - a call that returns nil error has made its effect durable (fsynced, or
//     acknowledged by the database with the configured write concern).
package persist

import (
	"context"
	"errors"
)

// Sentinel errors returned by every implementation. Driver errors are mapped
// at the seam: callers test with errors.Is and never see driver types.
var (
	// ErrNotFound: the user, group or message does not exist.
	ErrNotFound = errors.New("persist: not found")
	// ErrUserExists: CreateUser with an ID that is taken.
	ErrUserExists = errors.New("persist: user exists")
	// ErrGroupExists: CreateGroup with an ID that is taken.
	ErrGroupExists = errors.New("persist: group exists")
	// ErrGroupFull: AddMember would exceed the caller's limit.
	ErrGroupFull = errors.New("persist: group full")
	// ErrUnavailable: the backing store cannot be reached or refused the
	// write; the operation may be retried and nothing was acknowledged.
	ErrUnavailable = errors.New("persist: store unavailable")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("persist: store closed")
	// ErrInvalid: the arguments are malformed (empty IDs, no inboxes).
	ErrInvalid = errors.New("persist: invalid argument")
)

// Message is one stored message. It is immutable once stored.
type Message struct {
	// ID is the cluster-unique, time-ordered message id chosen by the
	// server that accepted the send.
	ID uint64
	// From is the sending user id ("" for system messages sent by an admin).
	From string
	// To is the recipient user id for 1:1 messages, the group id for group
	// messages.
	To string
	// Group is true when To names a group.
	Group bool
	// ClientMsgID is the sender's idempotency key; (From, ClientMsgID) is
	// unique forever. System messages use a server-generated key.
	ClientMsgID string
	// Timestamp is the server time of acceptance, Unix milliseconds.
	Timestamp int64
	// Kind is the application-visible content kind (0 = chat text; 1 =
	// system notice). Opaque to the store.
	Kind uint32
	// Body is the opaque payload. Stores copy it on write and return
	// caller-owned slices on read.
	Body []byte

	// The chat fields (ChatStore). Event is EventNone for a message, else
	// the entry is an event about message Target (same From, To and Group
	// as the target, no body). Recalled is set on read when the message
	// was recalled: its Body is then empty. Stores without the ChatStore
	// seam leave them zero.
	Event    uint32
	Target   uint64
	Recalled bool
}

// InboxEntry is one position of a user's inbox.
type InboxEntry struct {
	Seq uint64
	Msg Message
	// Deleted is set when the inbox's owner deleted the message for itself
	// (ChatStore.Delete): Msg.Body is then empty.
	Deleted bool
}

// AppendResult reports what Append did.
type AppendResult struct {
	// Msg is the stored message: on a duplicate it is the original one (its
	// ID and Timestamp, not the caller's).
	Msg Message
	// Seqs holds the inbox seq of Msg for each inbox passed to Append, in the
	// same order.
	Seqs []uint64
	// Duplicate is true when (From, ClientMsgID) was already stored before
	// this call; the inbox seqs are then the existing ones (any inbox that
	// had not received the message yet received it now).
	Duplicate bool
}

// MessageStore stores messages and the per-user inboxes that reference them.
//
// Implementations are safe for concurrent use by many goroutines. Callers
// must serialise appends to one inbox at the cluster level (the inbox owner
// is the single writer); an implementation must still never assign one seq
// twice or skip one, and reports ErrUnavailable rather than risk it.
type MessageStore interface {
	// Append stores msg (unless (msg.From, msg.ClientMsgID) exists) and
	// appends a reference to it to each of inboxes, assigning each inbox the
	// next seq. Appending is idempotent per (inbox, message): a retry never
	// creates a second entry. Inboxes must be distinct and non-empty.
	// When Append returns nil the message and all its inbox entries are
	// durable. msg.Body is copied; msg is not retained.
	Append(ctx context.Context, msg Message, inboxes []string) (AppendResult, error)

	// Lookup returns the stored message for (from, clientMsgID), or
	// ErrNotFound.
	Lookup(ctx context.Context, from, clientMsgID string) (Message, error)

	// ReadInbox returns up to limit entries of user's inbox with seq >
	// afterSeq, in seq order. An unknown user has an empty inbox.
	ReadInbox(ctx context.Context, user string, afterSeq uint64, limit int) ([]InboxEntry, error)

	// LastSeq returns the highest seq in user's inbox (0 when empty).
	LastSeq(ctx context.Context, user string) (uint64, error)

	// SetCursor records that (user, device) has received everything up to
	// seq. Cursors only move forward: a lower seq is ignored.
	SetCursor(ctx context.Context, user, device string, seq uint64) error

	// Cursor returns the recorded cursor of (user, device), 0 if none.
	Cursor(ctx context.Context, user, device string) (uint64, error)
}

// User is an account.
type User struct {
	ID string
	// PasswordHash is an encoded password hash (argon2id PHC string).
	PasswordHash string
	// Created is Unix milliseconds.
	Created int64
}

// UserStore stores accounts. Safe for concurrent use.
type UserStore interface {
	// CreateUser stores u durably, or returns ErrUserExists.
	CreateUser(ctx context.Context, u User) error
	// GetUser returns the user or ErrNotFound.
	GetUser(ctx context.Context, id string) (User, error)
}

// Group is a chat group and its access control (docs/protocol.md §4.5).
// Members is sorted and has no duplicates; Joined is parallel to it.
type Group struct {
	ID   string
	Name string
	// Owner is a member (unless the group has none). A store that reads a
	// group whose stored owner is not a member (groups stored before
	// ownership carried rights kept the creator as owner after it left)
	// returns the successor instead: see Successor.
	Owner   string
	Members []string
	// Joined[i] orders Members[i] by seniority: a member who joined later
	// has a larger number. Members of a group stored before join order was
	// kept have 0 (and are ordered among themselves by user id).
	Joined []uint64
	// Admins are members other than Owner with the right to add and remove
	// members; sorted, no duplicates.
	Admins []string
	// Open groups take GROUP_JOIN from anyone; the others are invite-only.
	// Groups stored before join policies existed read as open.
	Open    bool
	Created int64
}

// GroupSummary is one group of a user's list (UserGroups).
type GroupSummary struct {
	ID     string
	Name   string
	Owner  string
	Admins []string
	Open   bool
	Size   int // members
}

// GroupStore stores groups and their membership. Safe for concurrent use.
type GroupStore interface {
	// CreateGroup stores g durably (members sorted and deduplicated, Admins
	// reduced to members other than the owner, every member given the same
	// join number: Joined is ignored), or returns ErrGroupExists.
	CreateGroup(ctx context.Context, g Group) error
	// GetGroup returns the group with its members, or ErrNotFound.
	GetGroup(ctx context.Context, id string) (Group, error)
	// UpdateGroup changes group id atomically: it calls fn with a private
	// copy of the group's current state, and stores what fn left in it
	// unless fn returns an error, which UpdateGroup returns (wrapped or
	// not: test with errors.Is). No other change of the group comes between
	// the state fn saw and the write, so a check made by fn (is the caller
	// an admin?) holds when its change is stored. fn may be called more
	// than once (when a concurrent change won a race), so it must depend on
	// nothing but its argument; it changes membership only through
	// Group.Add and Group.Remove, and may set Owner, Admins (normalised by
	// the store like CreateGroup's), Name and Open. A group fn leaves
	// without members is deleted (a later GetGroup is ErrNotFound). It
	// returns the stored state, or ErrNotFound for an unknown group.
	UpdateGroup(ctx context.Context, id string, fn func(g *Group) error) (Group, error)
	// UserGroups returns the groups user is a member of, ascending by
	// group id, those with an id above after (all of them for ""), at most
	// limit (> 0, else ErrInvalid).
	UserGroups(ctx context.Context, user, after string, limit int) ([]GroupSummary, error)
	// AddMember adds user to the group. It returns ErrNotFound for an
	// unknown group and ErrGroupFull when the group already has maxMembers
	// members (maxMembers <= 0 means no limit). Adding a member twice is a
	// no-op.
	AddMember(ctx context.Context, groupID, user string, maxMembers int) error
	// RemoveMember removes user from the group as Group.Remove does (an
	// owner's role passes on; a group left empty is deleted); removing a
	// non-member is a no-op; ErrNotFound for an unknown group.
	RemoveMember(ctx context.Context, groupID, user string) error
}

// Store is everything a node persists. Close flushes pending writes and
// releases resources; calls after Close return ErrClosed.
type Store interface {
	MessageStore
	UserStore
	GroupStore
	Close() error
}
