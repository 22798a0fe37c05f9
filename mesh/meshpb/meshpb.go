// Package meshpb holds the node-to-node (mesh) protocol shared by the mesh
// transports: the command codes of the mesh range, the protobuf bodies
// generated from mesh.proto, their conversions to and from the persist and
// engine types, and the mapping of errors to codes and back, so that a
// persist sentinel returned by the owner's store is still recognised by
// errors.Is on the requesting node. docs/cluster.md ("Mesh frames") is the
// normative description of the frames.
//
// Everything here is pure and safe for concurrent use.
package meshpb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/persist"
)

// Version is the mesh protocol version carried in Hello.
const Version = 1

// Mesh command codes (codec.MeshCommandMin and up). Every mesh frame uses
// the Protobuf serializer.
const (
	CmdHello        codec.Command = 0xC0 // Hello, both ways, first frame of a TCP link
	CmdPing         codec.Command = 0xC1 // empty; dialer -> acceptor when idle
	CmdPong         codec.Command = 0xC2 // empty; the answer to PING (same seq)
	CmdAuth         codec.Command = 0xC3 // Auth, dialer -> acceptor after HELLO when both have a mesh secret
	CmdAppend       codec.Command = 0xC4 // AppendRequest -> APPEND_RESULT
	CmdAppendResult codec.Command = 0xC5 // AppendResult
	CmdPush         codec.Command = 0xC6 // PushRequest, no reply
	CmdKick         codec.Command = 0xC7 // KickRequest, no reply
	CmdAdmin        codec.Command = 0xC8 // AdminRequest -> ADMIN_RESULT
	CmdAdminResult  codec.Command = 0xC9 // AdminResult
	CmdSignal       codec.Command = 0xCA // SignalRequest, no reply
	CmdError        codec.Command = 0xFF // Error, then the sender closes the link
)

// FromMessage converts a persist.Message. The result aliases m.Body.
func FromMessage(m persist.Message) *Message {
	return &Message{
		Id: m.ID, From: m.From, To: m.To, Group: m.Group, ClientMsgId: m.ClientMsgID,
		Timestamp: m.Timestamp, Kind: m.Kind, Body: m.Body,
		Event: m.Event, Target: m.Target, Recalled: m.Recalled,
	}
}

// ToPersist converts m (nil gives the zero Message). The result aliases
// m.Body.
func (m *Message) ToPersist() persist.Message {
	if m == nil {
		return persist.Message{}
	}
	return persist.Message{
		ID: m.Id, From: m.From, To: m.To, Group: m.Group, ClientMsgID: m.ClientMsgId,
		Timestamp: m.Timestamp, Kind: m.Kind, Body: m.Body,
		Event: m.Event, Target: m.Target, Recalled: m.Recalled,
	}
}

// FromSignal converts a signal. The result aliases sig's slices.
func FromSignal(sig cluster.Signal) *SignalRequest {
	return &SignalRequest{Users: sig.Users, Cmd: uint32(sig.Cmd), Body: sig.Body}
}

// ToSignal converts r back (nil gives the zero Signal). The result aliases
// r's slices.
func (r *SignalRequest) ToSignal() cluster.Signal {
	if r == nil || r.Cmd > 0xFFFF {
		return cluster.Signal{}
	}
	return cluster.Signal{Users: r.Users, Cmd: uint16(r.Cmd), Body: r.Body}
}

// FromTargets converts push targets.
func FromTargets(ts []cluster.PushTarget) []*PushTarget {
	out := make([]*PushTarget, len(ts))
	for i, t := range ts {
		out[i] = &PushTarget{User: t.User, Seq: t.Seq}
	}
	return out
}

// ToTargets converts push targets back, skipping nil entries.
func ToTargets(ts []*PushTarget) []cluster.PushTarget {
	out := make([]cluster.PushTarget, 0, len(ts))
	for _, t := range ts {
		if t != nil {
			out = append(out, cluster.PushTarget{User: t.User, Seq: t.Seq})
		}
	}
	return out
}

// NewAppendResult encodes the outcome of a store append: the error when
// err != nil (res is then ignored), the result otherwise.
func NewAppendResult(res persist.AppendResult, err error) *AppendResult {
	if err != nil {
		return &AppendResult{Error: ErrorOf(err)}
	}
	return &AppendResult{Msg: FromMessage(res.Msg), Seqs: res.Seqs, Duplicate: res.Duplicate}
}

// Result decodes r: the append result, or the owner's error rebuilt by
// Error.Err with node naming the owner. A reply with neither an error nor a
// message is reported as an error (a peer bug), never as success.
func (r *AppendResult) Result(node string) (persist.AppendResult, error) {
	if r == nil {
		return persist.AppendResult{}, &RemoteError{Node: node, Code: ErrorCode_ERROR_CODE_PROTOCOL, Message: "empty append result"}
	}
	if r.Error != nil {
		return persist.AppendResult{}, r.Error.Err(node)
	}
	if r.Msg == nil {
		return persist.AppendResult{}, &RemoteError{Node: node, Code: ErrorCode_ERROR_CODE_PROTOCOL, Message: "append result without a message"}
	}
	return persist.AppendResult{Msg: r.Msg.ToPersist(), Seqs: r.Seqs, Duplicate: r.Duplicate}, nil
}

// sentinels maps codes to the errors they stand for, in the order ErrorOf
// tests them.
var sentinels = []struct {
	code ErrorCode
	err  error
}{
	{ErrorCode_ERROR_CODE_UNAVAILABLE, persist.ErrUnavailable},
	{ErrorCode_ERROR_CODE_INVALID, persist.ErrInvalid},
	{ErrorCode_ERROR_CODE_CLOSED, persist.ErrClosed},
	{ErrorCode_ERROR_CODE_NOT_FOUND, persist.ErrNotFound},
	{ErrorCode_ERROR_CODE_USER_EXISTS, persist.ErrUserExists},
	{ErrorCode_ERROR_CODE_GROUP_EXISTS, persist.ErrGroupExists},
	{ErrorCode_ERROR_CODE_GROUP_FULL, persist.ErrGroupFull},
	{ErrorCode_ERROR_CODE_CANCELED, context.Canceled},
	{ErrorCode_ERROR_CODE_DEADLINE, context.DeadlineExceeded},
	{ErrorCode_ERROR_CODE_FORWARD, cluster.ErrForward},
}

// ErrorOf classifies err for the wire: the code of the first sentinel err
// wraps (persist sentinels first, then context errors, then
// cluster.ErrForward), ERROR_CODE_UNKNOWN otherwise, and err's text. A
// RemoteError keeps its code. nil gives nil.
func ErrorOf(err error) *Error {
	if err == nil {
		return nil
	}
	if re, ok := errors.AsType[*RemoteError](err); ok {
		return &Error{Code: re.Code, Message: err.Error()}
	}
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			return &Error{Code: s.code, Message: err.Error()}
		}
	}
	return &Error{Code: ErrorCode_ERROR_CODE_UNKNOWN, Message: err.Error()}
}

// Err rebuilds the error e describes as seen from the requesting node: a
// *RemoteError whose Unwrap gives the sentinel of e.Code (nil for
// ERROR_CODE_UNKNOWN and codes with no sentinel). A nil e gives nil.
func (e *Error) Err(node string) error {
	if e == nil {
		return nil
	}
	return &RemoteError{Node: node, Code: e.Code, Message: e.Message}
}

// RemoteError is an error reported by a peer node. errors.Is(err, s) holds
// for the sentinel s its code stands for (persist.ErrUnavailable for
// ERROR_CODE_UNAVAILABLE, and so on).
type RemoteError struct {
	Node    string    // the node that reported it
	Code    ErrorCode // its classification
	Message string    // its text as the node saw it
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("mesh: node %s: %s", e.Node, e.Message)
}

// Unwrap returns the sentinel error of e.Code, or nil.
func (e *RemoteError) Unwrap() error {
	for _, s := range sentinels {
		if s.code == e.Code {
			return s.err
		}
	}
	return nil
}

// ServeAppend runs a forwarded append on the owner: h.HandleAppend (or
// h.HandleAppendEntries for an entries-only request) under parent, bounded
// by the request's announced budget (def when it announces none), and
// returns the reply body. The handler's error, if any, is classified by
// ErrorOf.
func ServeAppend(parent context.Context, h cluster.Handler, def time.Duration, req *AppendRequest) *AppendResult {
	budget := def
	if req.TimeoutMs > 0 {
		budget = time.Duration(req.TimeoutMs) * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(parent, budget)
	defer cancel()
	var res persist.AppendResult
	var err error
	if req.EntriesOnly {
		res, err = h.HandleAppendEntries(ctx, req.Msg.ToPersist(), req.Inboxes)
	} else {
		res, err = h.HandleAppend(ctx, req.Msg.ToPersist(), req.Inboxes)
	}
	return NewAppendResult(res, err)
}

// FromAdmin converts an engine admin request (reply_to and reply_epoch are
// left for the transport).
func FromAdmin(r cluster.AdminRequest) *AdminRequest {
	out := &AdminRequest{Text: r.Text, Time: r.Time, User: r.User, Device: r.Device}
	switch r.Kind {
	case cluster.AdminBroadcast:
		out.Kind = AdminKind_ADMIN_KIND_BROADCAST
	case cluster.AdminKick:
		out.Kind = AdminKind_ADMIN_KIND_KICK
	}
	return out
}

// ServeAdmin runs a received admin request on h and returns the reply body.
// An unknown kind, or a kick without a user, is answered with
// ERROR_CODE_INVALID.
func ServeAdmin(h cluster.Handler, req *AdminRequest) *AdminResult {
	r := cluster.AdminRequest{Text: req.Text, Time: req.Time, User: req.User, Device: req.Device}
	switch req.Kind {
	case AdminKind_ADMIN_KIND_BROADCAST:
		r.Kind = cluster.AdminBroadcast
	case AdminKind_ADMIN_KIND_KICK:
		if req.User == "" {
			return &AdminResult{Error: &Error{Code: ErrorCode_ERROR_CODE_INVALID, Message: "kick without a user"}}
		}
		r.Kind = cluster.AdminKick
	default:
		return &AdminResult{Error: &Error{Code: ErrorCode_ERROR_CODE_INVALID, Message: fmt.Sprintf("unknown admin kind %d", req.Kind)}}
	}
	return &AdminResult{Count: uint32(min(max(h.HandleAdmin(r), 0), 1<<31))}
}

// Result decodes r: the count, or the receiver's error rebuilt with node
// naming it.
func (r *AdminResult) Result(node string) (int, error) {
	if r == nil {
		return 0, &RemoteError{Node: node, Code: ErrorCode_ERROR_CODE_PROTOCOL, Message: "empty admin result"}
	}
	if r.Error != nil {
		return 0, r.Error.Err(node)
	}
	return int(r.Count), nil
}
