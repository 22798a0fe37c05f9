package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/persist"
)

// This file holds what the server API (package api) asks of a node: account
// management, login tokens, groups, reads and presence. Sends are Send, in
// admin.go next to SystemMessage. Every method is safe for concurrent use,
// may wait for the store (call it from a goroutine that may block), and
// works the same on a single node and in a cluster: the store is shared,
// and appends go through the inbox owners.

// Error is a request refused for a reason the protocol has a code for (an
// unknown user, a full group, a bad argument): the same type the protocol
// handlers answer with. Store failures are not Errors: ErrorCode
// classifies them.
type Error = codec.Error

func refuse(code codec.ErrorCode, format string, args ...any) error {
	return codec.Errorf(code, format, args...)
}

// errDisabled is a login or send by a disabled account.
var errDisabled = &Error{Code: codec.CodeAuthFailed, Message: "account disabled"}

// ErrorCode returns the protocol code that describes err: an Error's own
// code, or for a store or cluster failure the retryable code a client would
// get (STORE_UNAVAILABLE, FORWARD_FAILED, SHUTTING_DOWN), INVALID_ARGUMENT
// for persist.ErrInvalid.
func ErrorCode(err error) codec.ErrorCode {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, cluster.ErrForward):
		return codec.CodeForwardFailed
	case errors.Is(err, persist.ErrInvalid):
		return codec.CodeInvalidArgument
	case errors.Is(err, persist.ErrClosed):
		return codec.CodeShuttingDown
	}
	return codec.CodeStoreUnavailable
}

// opError is a store or cluster failure of one step of a request, what
// naming the step: shared by the protocol handlers, whose ERROR message
// starts with what, and the server API's methods, whose error it wraps.
type opError struct {
	what string
	err  error
}

func (e *opError) Error() string { return "engine: " + e.what + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// checkPassword applies REGISTER's password rule.
func checkPassword(password string) error {
	if len(password) < 6 || len(password) > 128 {
		return refuse(codec.CodeInvalidArgument, "password must be 6..128 bytes")
	}
	return nil
}

func checkUserID(what, id string) error {
	if !validID(id) {
		return refuse(codec.CodeInvalidArgument, "%s must be 1..64 bytes of [A-Za-z0-9_.-]", what)
	}
	return nil
}

// CreateUser creates an account. With an empty password the account can
// only log in with a token (as accounts provisioned by a token login).
// Errors: USER_EXISTS, INVALID_ARGUMENT, or the store's.
func (s *Server) CreateUser(ctx context.Context, id, password string) (persist.User, error) {
	if err := checkUserID("user", id); err != nil {
		return persist.User{}, err
	}
	u := persist.User{ID: id, Created: time.Now().UnixMilli()}
	if password != "" {
		if err := checkPassword(password); err != nil {
			return persist.User{}, err
		}
		hash, err := s.hash(ctx, func() (string, error) { return hashPassword(password) })
		if err != nil {
			return persist.User{}, fmt.Errorf("engine: hash password: %w", err)
		}
		u.PasswordHash = hash
	}
	err := s.store.CreateUser(ctx, u)
	if errors.Is(err, persist.ErrUserExists) {
		return persist.User{}, refuse(codec.CodeUserExists, "user %s exists", id)
	}
	if err != nil {
		return persist.User{}, fmt.Errorf("engine: create user: %w", err)
	}
	s.users.Store(id, struct{}{})
	return u, nil
}

// User returns the account id. Errors: UNKNOWN_RECIPIENT for no such
// account, or the store's.
func (s *Server) User(ctx context.Context, id string) (persist.User, error) {
	if err := checkUserID("user", id); err != nil {
		return persist.User{}, err
	}
	u, err := s.store.GetUser(ctx, id)
	if errors.Is(err, persist.ErrNotFound) {
		return u, refuse(codec.CodeUnknownRecipient, "no such user: %s", id)
	}
	if err != nil {
		return u, fmt.Errorf("engine: read user: %w", err)
	}
	return u, nil
}

// updateUser reads account id, lets change edit it, and writes it back.
func (s *Server) updateUser(ctx context.Context, id string, change func(u *persist.User) error) error {
	uu, ok := s.store.(persist.UserUpdater)
	if !ok {
		return refuse(codec.CodeInternal, "this node's store cannot change accounts")
	}
	u, err := s.User(ctx, id)
	if err != nil {
		return err
	}
	if err := change(&u); err != nil {
		return err
	}
	err = uu.UpdateUser(ctx, u)
	if errors.Is(err, persist.ErrNotFound) {
		return refuse(codec.CodeUnknownRecipient, "no such user: %s", id)
	}
	if err != nil {
		return fmt.Errorf("engine: update user: %w", err)
	}
	return nil
}

// SetPassword replaces the password of account id (a disabled account
// stays disabled). Sessions already logged in are not ended.
func (s *Server) SetPassword(ctx context.Context, id, password string) error {
	if err := checkPassword(password); err != nil {
		return err
	}
	hash, err := s.hash(ctx, func() (string, error) { return hashPassword(password) })
	if err != nil {
		return fmt.Errorf("engine: hash password: %w", err)
	}
	return s.updateUser(ctx, id, func(u *persist.User) error {
		disabled := u.Disabled()
		u.PasswordHash = hash
		u.SetDisabled(disabled)
		return nil
	})
}

// SetDisabled disables or enables account id. A disabled account cannot
// log in (password or token) and cannot send through Send; disabling also
// ends its sessions (KickEverywhere), and returns how many were asked to
// close.
func (s *Server) SetDisabled(ctx context.Context, id string, disabled bool) (kicked int, err error) {
	err = s.updateUser(ctx, id, func(u *persist.User) error {
		u.SetDisabled(disabled)
		return nil
	})
	if err != nil || !disabled {
		return 0, err
	}
	return s.KickEverywhere(ctx, id), nil
}

// MintToken returns a login token for account id valid for ttl, signed
// with the node's JWT secret (Config.JWTSecret), and its expiry. The
// account must exist and be enabled.
func (s *Server) MintToken(ctx context.Context, id string, ttl time.Duration) (string, time.Time, error) {
	if len(s.cfg.JWTSecret) == 0 {
		return "", time.Time{}, refuse(codec.CodeInvalidArgument, "token login is not enabled on this node (no JWT secret)")
	}
	if ttl <= 0 || ttl > 366*24*time.Hour {
		return "", time.Time{}, refuse(codec.CodeInvalidArgument, "ttl must be between 1s and 366 days")
	}
	u, err := s.User(ctx, id)
	if err != nil {
		return "", time.Time{}, err
	}
	if u.Disabled() {
		return "", time.Time{}, errDisabled
	}
	now := time.Now()
	tok, err := auth.MintTokenAt(s.cfg.JWTSecret, id, now, ttl)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("engine: mint token: %w", err)
	}
	return tok, now.Add(ttl), nil
}

// KickEverywhere ends every session of user: those on this node with
// KICK_ADMIN, and in a cluster those on other nodes (found in the session
// store) through the node that holds them. It returns how many sessions it
// asked to close.
func (s *Server) KickEverywhere(ctx context.Context, user string) int {
	n := s.Kick(user, "")
	if s.cfg.Sessions == nil {
		return n
	}
	routes, err := s.cfg.Sessions.Lookup(ctx, user)
	if err != nil {
		s.log.Warn("kick: session lookup failed; other nodes' sessions stay", "user", user, "err", err)
		return n
	}
	self := s.cfg.Cluster.NodeID()
	for _, r := range persist.FilterLive(routes, s.cfg.Cluster.Live) {
		if r.NodeID != self {
			s.cfg.Cluster.Kick(r.NodeID, r.User, r.Device, r.ConnID)
			n++
		}
	}
	return n
}

// InboxPage is a page of a user's inbox (see SYNC in docs/protocol.md).
type InboxPage struct {
	Entries []persist.InboxEntry
	// HeadSeq is the inbox's last seq; FirstSeq, when not 0, says that
	// retention removed the seqs after the requested one up to it.
	HeadSeq, FirstSeq uint64
	HasMore           bool
}

// Inbox returns up to limit entries of user's inbox after afterSeq, as a
// SYNC would (limit 0 takes Config.SyncLimit, larger ones are capped at
// SyncMaxLimit).
func (s *Server) Inbox(ctx context.Context, user string, afterSeq uint64, limit int) (InboxPage, error) {
	if err := checkUserID("user", user); err != nil {
		return InboxPage{}, err
	}
	if limit <= 0 {
		limit = s.cfg.SyncLimit
	}
	limit = min(limit, s.cfg.SyncMaxLimit)
	entries, err := s.store.ReadInbox(ctx, user, afterSeq, limit+1)
	if err != nil {
		return InboxPage{}, fmt.Errorf("engine: read inbox: %w", err)
	}
	head, err := s.store.LastSeq(ctx, user)
	if err != nil {
		return InboxPage{}, fmt.Errorf("engine: read inbox head: %w", err)
	}
	p := InboxPage{HeadSeq: head, FirstSeq: s.removedBelow(ctx, user, afterSeq, head, entries)}
	if len(entries) > limit {
		p.HasMore, entries = true, entries[:limit]
	}
	p.Entries = entries
	return p, nil
}

// Presence is one user's presence.
type Presence struct {
	User    string   `json:"user"`
	Online  bool     `json:"online"`
	Devices []string `json:"devices"`
	// Unknown: no account has this id.
	Unknown bool `json:"unknown,omitempty"`
}

// Presence reports the online devices of each of users (cluster-wide in a
// cluster), as the protocol's PRESENCE does.
func (s *Server) Presence(ctx context.Context, users []string) []Presence {
	out := make([]Presence, len(users))
	for i, u := range users {
		p := s.presence(ctx, u)
		out[i] = Presence{User: u, Online: p.Online, Devices: p.Devices}
		if out[i].Devices == nil {
			out[i].Devices = []string{}
		}
		if !p.Online {
			if exists, err := s.userExists(ctx, u); err == nil && !exists {
				out[i].Unknown = true
			}
		}
	}
	return out
}

// The chat reads and writes of the server API: the protocol's
// CONVERSATIONS, HISTORY, READ and RECALL (docs/protocol.md §4.8) done
// for user, with the same pages, limits, receipts and event pushes. A node
// whose store does not keep conversations refuses them with UNSUPPORTED;
// an unknown user is UNKNOWN_RECIPIENT.

// chatUser checks that user exists and returns the node's chat seam.
func (s *Server) chatUser(ctx context.Context, user string) (persist.ChatStore, error) {
	cs, err := s.chatSeam()
	if err != nil {
		return nil, err
	}
	if err := checkUserID("user", user); err != nil {
		return nil, err
	}
	exists, err := s.userExists(ctx, user)
	if err != nil {
		return nil, fmt.Errorf("engine: read user: %w", err)
	}
	if !exists {
		return nil, refuse(codec.CodeUnknownRecipient, "no such user: %s", user)
	}
	return cs, nil
}

// checkConv refuses a malformed conversation id.
func checkConv(id persist.ConvID) error {
	if !validID(id.ID) {
		return refuse(codec.CodeInvalidArgument, "the conversation must name a user or a group: 1..64 bytes of [A-Za-z0-9_.-]")
	}
	return nil
}

// chatLimit converts a page size of the API (0: the default) to the
// protocol's, which pageLimit then caps.
func chatLimit(limit int) uint32 {
	return uint32(min(max(limit, 0), chatPageMax))
}

// ConversationsPage is a page of a user's conversations, newest activity
// first; when HasMore, the next page is below the last one's LastSeq.
type ConversationsPage struct {
	Conversations []persist.Conversation
	HasMore       bool
}

// Conversations returns up to limit of user's conversations whose LastSeq
// is below beforeSeq (0: from the newest), as CONVERSATIONS does: limit 0
// takes the default (50), larger ones are capped (200).
func (s *Server) Conversations(ctx context.Context, user string, beforeSeq uint64, limit int) (ConversationsPage, error) {
	cs, err := s.chatUser(ctx, user)
	if err != nil {
		return ConversationsPage{}, err
	}
	list, more, err := s.conversations(ctx, cs, user, beforeSeq, chatLimit(limit))
	return ConversationsPage{Conversations: list, HasMore: more}, err
}

// HistoryPage is a page of a conversation, in ascending seq order; when
// HasMore, older messages remain below the first one's seq.
type HistoryPage struct {
	Messages []persist.InboxEntry
	HasMore  bool
}

// History returns the newest limit messages of conversation conv in
// user's inbox below beforeSeq, or below message beforeMsgID (at most one
// of the two; both 0: from the newest), as HISTORY does: the user's
// deleted messages and events are left out, recalled messages come with
// Recalled and no body. An unknown conversation has an empty history.
func (s *Server) History(ctx context.Context, user string, conv persist.ConvID, beforeSeq, beforeMsgID uint64, limit int) (HistoryPage, error) {
	cs, err := s.chatUser(ctx, user)
	if err != nil {
		return HistoryPage{}, err
	}
	if err := checkConv(conv); err != nil {
		return HistoryPage{}, err
	}
	msgs, more, err := s.history(ctx, cs, user, conv, beforeSeq, beforeMsgID, chatLimit(limit))
	return HistoryPage{Messages: msgs, HasMore: more}, err
}

// MarkRead raises user's read cursor in conv to upTo (0, or above the
// conversation's last seq: to its last seq), as READ does; a lower upTo
// leaves it. When the cursor moved, every device of user and, in a 1:1
// conversation, of the peer is sent a RECEIPT (cluster-wide, best effort).
// Errors: UNKNOWN_MESSAGE when user has no such conversation.
func (s *Server) MarkRead(ctx context.Context, user string, conv persist.ConvID, upTo uint64) (persist.ReadResult, error) {
	cs, err := s.chatUser(ctx, user)
	if err != nil {
		return persist.ReadResult{}, err
	}
	if err := checkConv(conv); err != nil {
		return persist.ReadResult{}, err
	}
	res, err := s.markRead(ctx, cs, user, conv, upTo)
	if err == nil && res.Moved {
		s.receipts(nil, user, conv, res, nil)
	}
	return res, err
}

// Recall withdraws message msgID for everyone as its sender user, as RECALL
// does: within the recall window (Config.RecallWindow) of the message's
// time, an event is appended to every inbox holding the message and pushed
// to their devices. A repeat is Duplicate, reports the first event and
// pushes it again. Errors: INVALID_ARGUMENT (msgID 0), UNKNOWN_MESSAGE (not
// in user's inbox), NOT_SENDER, RECALL_EXPIRED; store and cluster failures
// are retryable.
func (s *Server) Recall(ctx context.Context, user string, msgID uint64) (persist.EventResult, error) {
	cs, err := s.chatUser(ctx, user)
	if err != nil {
		return persist.EventResult{}, err
	}
	return s.chatEvent(ctx, nil, cs, persist.EventRecall, user, msgID, nil)
}
