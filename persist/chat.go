package persist

import (
	"context"
	"errors"
)

// This file holds the chat seam: conversations with unread counts, read
// cursors, recall, delete-for-me and history (docs/protocol.md §4.8, §6.12-§6.16).

// Errors of the chat seam, besides the common ones.
var (
	// ErrNotSender: Recall of a message the caller did not send.
	ErrNotSender = errors.New("persist: not the sender")
	// ErrRecallWindow: Recall of a message older than the request allows.
	ErrRecallWindow = errors.New("persist: recall window passed")
)

// Event kinds of an inbox entry (Message.Event).
const (
	EventNone   uint32 = 0 // a message
	EventRecall uint32 = 1 // the sender recalled Target, for everyone
	EventDelete uint32 = 2 // the inbox's owner deleted Target for itself
)

// ConvID names a conversation from one user's side: the peer's user id
// (1:1) or the group id.
type ConvID struct {
	ID    string
	Group bool
}

// ConvOf returns the conversation m (a message or an event) belongs to in
// user's inbox: the group for group messages, else the peer (To when user
// sent it, From otherwise; a message to oneself has user as its peer). A
// system message (From "") to user belongs to no conversation: ID "".
func ConvOf(user string, m *Message) ConvID {
	switch {
	case m.Group:
		return ConvID{ID: m.To, Group: true}
	case m.From == user:
		return ConvID{ID: m.To}
	}
	return ConvID{ID: m.From}
}

// Conversation is one conversation of a user, as ChatStore keeps it.
type Conversation struct {
	Conv ConvID
	// LastSeq is the seq (in the user's inbox) of the conversation's newest
	// message; conversations are ordered by it (newest activity first).
	LastSeq uint64
	// ReadSeq is the user's read cursor; Unread counts the messages of
	// others with a seq above it that the inbox still holds (retention's
	// removals are not unread).
	ReadSeq uint64
	Unread  int
	// Last is the newest message the user has not deleted, when the inbox
	// still holds one (HasLast).
	Last    InboxEntry
	HasLast bool
}

// ReadResult is what MarkRead did.
type ReadResult struct {
	// ReadSeq is the cursor after the call (never lower than before);
	// Moved reports that the call raised it.
	ReadSeq uint64
	Moved   bool
	Unread  int
	// MsgID is the newest message of the conversation at or below ReadSeq
	// that the inbox still holds (0 if none), and PeerSeq its seq in the
	// peer's inbox for a 1:1 conversation with another user (0 otherwise,
	// or when the peer's inbox no longer holds it).
	MsgID   uint64
	PeerSeq uint64
}

// EventRequest asks for a recall or a delete-for-me of message Target by
// User.
type EventRequest struct {
	User   string
	Target uint64
	// ID and Timestamp of the event entry, chosen by the caller like a
	// message's. Unused on a repeat.
	ID        uint64
	Timestamp int64
	// NotBefore (Recall only): the target's Timestamp must not be older
	// (Unix ms); 0 = no limit.
	NotBefore int64
	// Done, when set, is called with the result of a successful call
	// before the call returns. A NonBlocking store calls it under its own
	// lock, as it completes appends, so what Done queues (the event's
	// pushes) is ordered with the pushes of the messages around it. It
	// must not block or call the store.
	Done func(*EventResult)
}

// EventResult is what Recall or Delete did.
type EventResult struct {
	// Event is the event entry (for a repeated Recall the first one;
	// unset for a repeated Delete). Its strings are the caller's.
	Event Message
	// Inboxes received the event at Seqs (same order).
	Inboxes []string
	Seqs    []uint64
	// Duplicate: the target was already recalled (deleted); nothing was
	// appended. A repeated Recall reports the first event's inboxes and
	// seqs, a repeated Delete none.
	Duplicate bool
}

// ChatStore is a MessageStore that keeps each user's conversations up to
// date in the same write as every append, so reading them never scans an
// inbox.
//
// The rules every implementation follows (persist/storetest RunChat):
//
//   - Append adds each new inbox entry of a message to the conversation
//     ConvOf(inbox, msg) of that inbox (system messages excepted), in the
//     same atomic write; a retried append changes nothing it already did.
//     The sender's own message raises the sender's read cursor to its seq.
//   - Read cursors move forward only; a cursor is one seq per (user,
//     conversation), in the user's seq space.
//   - Events (Recall, Delete) take new seqs in inboxes but belong to no
//     conversation's messages: they never change LastSeq, Unread or
//     History.
//   - Retention removes conversation entries with the inbox prefix they
//     belong to; conversations and cursors themselves are kept.
//
// Implementations are safe for concurrent use.
type ChatStore interface {
	MessageStore

	// Conversations returns up to limit of user's conversations with
	// LastSeq < beforeSeq (0: no bound), newest first. limit <= 0 is
	// ErrInvalid. Bodies are caller-owned copies.
	Conversations(ctx context.Context, user string, beforeSeq uint64, limit int) ([]Conversation, error)

	// MarkRead raises user's read cursor in conv to upTo, or to the
	// conversation's LastSeq when upTo is 0 or above it. A lower upTo
	// leaves the cursor (Moved false). ErrNotFound when user has no such
	// conversation.
	MarkRead(ctx context.Context, user string, conv ConvID, upTo uint64) (ReadResult, error)

	// History returns up to limit messages of conv in user's inbox with
	// seq < beforeSeq (0: no bound), the newest ones, in ascending seq
	// order; messages user deleted are skipped, recalled ones come with
	// Recalled and no body. An unknown conversation has no history.
	History(ctx context.Context, user string, conv ConvID, beforeSeq uint64, limit int) ([]InboxEntry, error)

	// SeqOf returns the seq of message msgID in user's inbox, or
	// ErrNotFound when the inbox does not hold it (any more).
	SeqOf(ctx context.Context, user string, msgID uint64) (uint64, error)

	// Recall withdraws message req.Target, sent by req.User, for everyone:
	// an EventRecall entry is appended to every inbox that holds the
	// message, and the message's body is no longer returned by any read.
	// Errors: ErrNotFound (user's inbox does not hold it, or it is an
	// event), ErrNotSender, ErrRecallWindow. Idempotent: a repeat is a
	// Duplicate reporting the first event.
	Recall(ctx context.Context, req EventRequest) (EventResult, error)

	// Delete hides message req.Target from req.User's own views (History,
	// Conversations' Last; ReadInbox returns the entry with Deleted and no
	// body, so seqs stay gap-free) and appends an EventDelete entry to
	// user's inbox only. ErrNotFound when the inbox does not hold it.
	// Idempotent: a repeat is a Duplicate and appends nothing.
	Delete(ctx context.Context, req EventRequest) (EventResult, error)

	// ReadCount reports, for the message at seq of user's inbox (which
	// must belong to conv, else ErrNotFound), how many of the other inboxes
	// holding it (the sender's excepted) have a read cursor covering it,
	// out of how many.
	ReadCount(ctx context.Context, user string, conv ConvID, seq uint64) (read, members int, err error)
}
