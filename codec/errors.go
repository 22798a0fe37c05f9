package codec

import (
	"errors"
	"fmt"
	"strconv"
)

// Sentinel errors of frame decoding. Test with errors.Is: some are wrapped
// with the offending value.
var (
	// ErrShortHeader: fewer than HeaderSize bytes were given to ParseHeader.
	ErrShortHeader = errors.New("codec: short header")
	// ErrBadMagic: the frame does not start with "IMGN".
	ErrBadMagic = errors.New("codec: bad magic")
	// ErrUnsupportedVersion: the version byte is not Version1.
	ErrUnsupportedVersion = errors.New("codec: unsupported version")
	// ErrUnknownSerializer: the serializer byte names no serializer.
	ErrUnknownSerializer = errors.New("codec: unknown serializer")
	// ErrFrameTooLarge: the body length exceeds the configured maximum.
	ErrFrameTooLarge = errors.New("codec: frame too large")
	// ErrBadBody: the body could not be decoded by its serializer.
	ErrBadBody = errors.New("codec: undecodable body")
)

// ErrorCode is the code carried in an ERROR frame (and in KICK frames). The
// table below is the single source for docs/protocol.md; codes are stable.
type ErrorCode uint32

// Error codes. "fatal" codes are followed by the server closing the
// connection; "retryable" codes mean the same request (same idempotency
// key) may be sent again, after RetryAfterMs when given.
const (
	CodeOK                 ErrorCode = 0
	CodeBadMagic           ErrorCode = 1
	CodeUnsupportedVersion ErrorCode = 2
	CodeUnknownSerializer  ErrorCode = 3
	CodeFrameTooLarge      ErrorCode = 4
	CodeBadBody            ErrorCode = 5
	CodeUnknownCommand     ErrorCode = 6
	CodeNotLoggedIn        ErrorCode = 7
	CodeAlreadyLoggedIn    ErrorCode = 8
	CodeInvalidArgument    ErrorCode = 9
	CodeAuthFailed         ErrorCode = 10
	CodeTokenExpired       ErrorCode = 11
	CodeUserExists         ErrorCode = 12
	CodeUnknownRecipient   ErrorCode = 20
	CodeUnknownGroup       ErrorCode = 21
	CodeNotGroupMember     ErrorCode = 22
	CodeGroupFull          ErrorCode = 23
	CodeUnknownMessage     ErrorCode = 24
	CodeNotSender          ErrorCode = 25
	CodeRecallExpired      ErrorCode = 26
	CodeNotGroupAdmin      ErrorCode = 27
	CodeNotGroupOwner      ErrorCode = 28
	CodeGroupInviteOnly    ErrorCode = 29
	CodeRateLimited        ErrorCode = 30
	CodeSlowConsumer       ErrorCode = 31
	CodeTooManyConnections ErrorCode = 32
	CodeLoginTimeout       ErrorCode = 33
	CodeIdleTimeout        ErrorCode = 34
	CodeStoreUnavailable   ErrorCode = 40
	CodeForwardFailed      ErrorCode = 41
	CodeInternal           ErrorCode = 42
	CodeShuttingDown       ErrorCode = 43
	CodeBusy               ErrorCode = 44
	CodeUnsupported        ErrorCode = 45
	CodeKickDuplicateLogin ErrorCode = 50
	CodeKickAdmin          ErrorCode = 51
	CodeKickLogout         ErrorCode = 52
)

// Error is a request refused with an error code: what an ERROR frame
// carries besides its fatal flag, which the code decides (Codes). The
// engine's request handlers return it and the server API reports it, so a
// refusal has one shape wherever it is made. The zero RetryAfterMs means
// no advice on when to retry.
type Error struct {
	Code         ErrorCode
	Message      string
	RetryAfterMs uint32
}

// Error returns the message (the code is in the field, for errors.As).
func (e *Error) Error() string { return e.Message }

// Errorf returns an Error with code and a formatted message.
func Errorf(code ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeInfo describes one error code.
type CodeInfo struct {
	Code      ErrorCode
	Name      string
	Fatal     bool // the server closes the connection after sending it
	Retryable bool // the request may be retried unchanged
	Meaning   string
}

// Codes is the table of every error code, in code order.
var Codes = []CodeInfo{
	{CodeOK, "OK", false, false, "no error (never sent in an ERROR frame)"},
	{CodeBadMagic, "BAD_MAGIC", true, false, "the frame does not start with the magic \"IMGN\""},
	{CodeUnsupportedVersion, "UNSUPPORTED_VERSION", true, false, "the header's version is not 1"},
	{CodeUnknownSerializer, "UNKNOWN_SERIALIZER", true, false, "the header's serializer is not 1, 2 or 3 (the error is answered in JSON)"},
	{CodeFrameTooLarge, "FRAME_TOO_LARGE", true, false, "the body length exceeds the server's maximum (default 65536); the body is not read"},
	{CodeBadBody, "BAD_BODY", false, false, "the body could not be decoded by its serializer, or decoded to the wrong shape"},
	{CodeUnknownCommand, "UNKNOWN_COMMAND", false, false, "the command code is not defined, or is not one a client may send"},
	{CodeNotLoggedIn, "NOT_LOGGED_IN", true, false, "a command other than REGISTER, LOGIN or HEARTBEAT before a successful LOGIN"},
	{CodeAlreadyLoggedIn, "ALREADY_LOGGED_IN", false, false, "LOGIN or REGISTER on a connection that is already logged in"},
	{CodeInvalidArgument, "INVALID_ARGUMENT", false, false, "a required field is missing or out of range (the message says which)"},
	{CodeAuthFailed, "AUTH_FAILED", false, false, "unknown user, wrong password, or a token that does not verify"},
	{CodeTokenExpired, "TOKEN_EXPIRED", false, false, "the token's exp is in the past, or it has none"},
	{CodeUserExists, "USER_EXISTS", false, false, "REGISTER with a user id that is taken"},
	{CodeUnknownRecipient, "UNKNOWN_RECIPIENT", false, false, "SEND to a user that does not exist"},
	{CodeUnknownGroup, "UNKNOWN_GROUP", false, false, "the group does not exist"},
	{CodeNotGroupMember, "NOT_GROUP_MEMBER", false, false, "GROUP_SEND, GROUP_MEMBERS or a group change by a user who is not a member, or GROUP_TRANSFER or GROUP_ADMIN naming one"},
	{CodeGroupFull, "GROUP_FULL", false, false, "the group has reached the server's maximum size"},
	{CodeUnknownMessage, "UNKNOWN_MESSAGE", false, false, "the message is not in the caller's inbox (never was, or retention removed it), or its seq is not in the named conversation"},
	{CodeNotSender, "NOT_SENDER", false, false, "RECALL of a message the caller did not send"},
	{CodeRecallExpired, "RECALL_EXPIRED", false, false, "RECALL after the server's recall window (default 2 minutes) from the message's time"},
	{CodeNotGroupAdmin, "NOT_GROUP_ADMIN", false, false, "GROUP_ADD or GROUP_REMOVE by a member who is neither the owner nor an admin"},
	{CodeNotGroupOwner, "NOT_GROUP_OWNER", false, false, "GROUP_TRANSFER or GROUP_ADMIN by a member who is not the owner, or GROUP_REMOVE of the owner or an admin by an admin"},
	{CodeGroupInviteOnly, "GROUP_INVITE_ONLY", false, false, "GROUP_JOIN of an invite-only group by a user who is not a member"},
	{CodeRateLimited, "RATE_LIMITED", false, true, "the user's send rate (SEND, GROUP_SEND, GROUP_CREATE and the group changes), or the source address's password-attempt rate, is exceeded; retry after retry_after_ms"},
	{CodeSlowConsumer, "SLOW_CONSUMER", true, false, "the connection's unsent output exceeded the server's bound: it is not reading"},
	{CodeTooManyConnections, "TOO_MANY_CONNECTIONS", true, true, "the node, or the client's source address, is at its connection limit; try later or another node"},
	{CodeLoginTimeout, "LOGIN_TIMEOUT", true, false, "no successful LOGIN within the login deadline"},
	{CodeIdleTimeout, "IDLE_TIMEOUT", true, false, "nothing received for longer than the idle timeout (missed heartbeats)"},
	{CodeStoreUnavailable, "STORE_UNAVAILABLE", false, true, "the message store failed or is unreachable; nothing was stored under this request's acknowledgement"},
	{CodeForwardFailed, "FORWARD_FAILED", false, true, "the node owning the recipient's inbox could not be reached in time"},
	{CodeInternal, "INTERNAL", false, true, "an unexpected server error (a reply the server could not build is answered with it)"},
	{CodeShuttingDown, "SHUTTING_DOWN", false, true, "the node is shutting down or draining; reconnect elsewhere and retry"},
	{CodeBusy, "BUSY", false, true, "the node's bounded work queue (or this connection's request queue) is full; retry after retry_after_ms"},
	{CodeUnsupported, "UNSUPPORTED", false, false, "the node's message store does not keep conversations: CONVERSATIONS, READ, RECALL, DELETE, HISTORY and READ_COUNT are unavailable"},
	{CodeKickDuplicateLogin, "KICK_DUPLICATE_LOGIN", true, false, "(KICK) the same user and device logged in on another connection"},
	{CodeKickAdmin, "KICK_ADMIN", true, false, "(KICK) an operator removed the session"},
	{CodeKickLogout, "KICK_LOGOUT", true, false, "(KICK) reserved: the session was logged out elsewhere"},
}

var codeIndex = func() map[ErrorCode]*CodeInfo {
	m := make(map[ErrorCode]*CodeInfo, len(Codes))
	for i := range Codes {
		m[Codes[i].Code] = &Codes[i]
	}
	return m
}()

// Info returns the table entry of c and whether c is defined.
func (c ErrorCode) Info() (CodeInfo, bool) {
	if ci, ok := codeIndex[c]; ok {
		return *ci, true
	}
	return CodeInfo{Code: c, Name: "CODE_" + strconv.FormatUint(uint64(c), 10)}, false
}

// String returns the code's upper-case name.
func (c ErrorCode) String() string { ci, _ := c.Info(); return ci.Name }

// Fatal reports whether the server closes the connection after this code.
func (c ErrorCode) Fatal() bool { ci, _ := c.Info(); return ci.Fatal }

// Retryable reports whether a request failing with c may be retried as is.
func (c ErrorCode) Retryable() bool { ci, _ := c.Info(); return ci.Retryable }

// CodeOf maps a decoding error of this package to its error code, and
// CodeInternal for anything else.
func CodeOf(err error) ErrorCode {
	switch {
	case err == nil:
		return CodeOK
	case errors.Is(err, ErrBadMagic):
		return CodeBadMagic
	case errors.Is(err, ErrUnsupportedVersion):
		return CodeUnsupportedVersion
	case errors.Is(err, ErrUnknownSerializer):
		return CodeUnknownSerializer
	case errors.Is(err, ErrFrameTooLarge):
		return CodeFrameTooLarge
	case errors.Is(err, ErrBadBody):
		return CodeBadBody
	}
	return CodeInternal
}
