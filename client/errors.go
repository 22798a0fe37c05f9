package client

import (
	"errors"
	"fmt"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// Sentinel errors of the client. Test with errors.Is: most are wrapped with
// context.
var (
	// ErrClosed: the Client was closed (Close or Logout) before or while the
	// call ran. Err returns it after a Close.
	ErrClosed = errors.New("client: closed")
	// ErrKicked matches (errors.Is) the *Error of a KICK frame: codes 50
	// KICK_DUPLICATE_LOGIN, 51 KICK_ADMIN and 52 KICK_LOGOUT. A kicked
	// Client does not reconnect; Err returns the *Error.
	ErrKicked = errors.New("client: kicked")
	// ErrConnectionLost: the connection closed before the reply arrived. A
	// request that is not idempotent (CreateGroup) fails with it because
	// its outcome is unknown; with Config.DisableReconnect it is also the
	// Client's final error.
	ErrConnectionLost = errors.New("client: connection lost")
	// ErrTimeout: no reply within Config.RequestTimeout. Idempotent calls
	// (Send, SendGroup, joins, reads) retry instead of returning it.
	ErrTimeout = errors.New("client: request timed out")
	// ErrProtocol: the server sent something this client cannot
	// interpret (an undecodable body, a reply of the wrong type).
	ErrProtocol = errors.New("client: protocol violation")
	// errNotConnected is returned internally by calls that must not wait
	// for a reconnect (sync, push acks).
	errNotConnected = errors.New("client: not connected")
)

// Error is a failure reported by the server in an ERROR frame (or a KICK).
// Branch on Code, never on Message (its text is not stable).
//
// errors.Is(err, target) is true when target is an *Error with the same
// Code, so callers can write errors.Is(err, &client.Error{Code:
// codec.CodeUserExists}); it is also true for ErrKicked when Code is a kick
// code.
type Error struct {
	Code    codec.ErrorCode
	Message string
	// Retryable: the same request may be sent again unchanged. The client
	// library already retries retryable errors of Send and the idempotent
	// calls until their context ends; a caller sees one only from a
	// non-idempotent call or when its context ended.
	Retryable bool
	// Fatal: the server closed the connection after this error.
	Fatal bool
	// RetryAfter is the server's hint (retry_after_ms); 0 = none.
	RetryAfter time.Duration
}

// Error implements error: "imgn: USER_EXISTS (12): message".
func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("imgn: %s (%d)", e.Code, uint32(e.Code))
	}
	return fmt.Sprintf("imgn: %s (%d): %s", e.Code, uint32(e.Code), e.Message)
}

// Is matches another *Error by code, and ErrKicked by the kick codes.
func (e *Error) Is(target error) bool {
	if target == ErrKicked {
		return isKickCode(e.Code)
	}
	t, ok := target.(*Error)
	return ok && t != nil && t.Code == e.Code
}

func isKickCode(c codec.ErrorCode) bool {
	return c == codec.CodeKickDuplicateLogin || c == codec.CodeKickAdmin || c == codec.CodeKickLogout
}

// errorFromPB maps an ERROR body. Retryable and Fatal follow the frame's
// fields, or the code table for codes this build knows (the protocol asks
// clients to act on the frame's fields so codes added later work too).
func errorFromPB(p *pb.Error) *Error {
	code := codec.ErrorCode(p.GetCode())
	return &Error{
		Code:       code,
		Message:    p.GetMessage(),
		Retryable:  p.GetRetryable() || code.Retryable(),
		Fatal:      p.GetFatal(),
		RetryAfter: time.Duration(p.GetRetryAfterMs()) * time.Millisecond,
	}
}

// errorFromKick maps a KICK body.
func errorFromKick(k *pb.Kick) *Error {
	return &Error{Code: codec.ErrorCode(k.GetCode()), Message: k.GetReason(), Fatal: true}
}

// invalidArg builds the error of a request this client refuses to send.
func invalidArg(format string, args ...any) *Error {
	return &Error{Code: codec.CodeInvalidArgument, Message: fmt.Sprintf(format, args...)}
}

// connLostError wraps ErrConnectionLost with the reason the connection
// ended.
type connLostError struct{ cause error }

func (e *connLostError) Error() string {
	if e.cause == nil {
		return ErrConnectionLost.Error()
	}
	return ErrConnectionLost.Error() + ": " + e.cause.Error()
}

func (e *connLostError) Is(target error) bool { return target == ErrConnectionLost }

func (e *connLostError) Unwrap() error { return e.cause }
