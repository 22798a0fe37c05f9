package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/mesh/meshpb"
)

// ErrBadRequest marks a received mesh frame that Inbound.Dispatch refuses:
// a body that does not decode, or a command that is not a request a peer
// may send (a reply, HELLO, PING, an unassigned code). The handler is not
// called for it. Every transport treats it as a protocol violation by the
// sender, in the way its channel allows: a direct link answers ERROR
// PROTOCOL and closes the link (the stream cannot be trusted any longer);
// Redis pub/sub, which has no connection to close, logs and drops the
// message (a requester waiting for a reply times out into
// cluster.ErrForward). docs/cluster.md §3 describes the commands.
var ErrBadRequest = errors.New("mesh: bad request")

// Inbound is the one dispatcher of received mesh requests: every transport
// hands it the command and body of each frame a peer sent, after its own
// framing, and keeps only the framing, the routing of replies and its
// concurrency bounds. The one-way commands (PUSH, KICK, SIGNAL) run on the
// handler inside Dispatch; the request commands (APPEND, including
// entries_only, and ADMIN) come back as a Request that the transport
// serves, on a goroutine of its own if it likes, and whose reply it sends
// its own way.
//
// An Inbound holds no mutable state: it is safe for concurrent use, and a
// value built per link or per transport costs nothing.
type Inbound struct {
	// Handler receives the requests. It must not be nil.
	Handler cluster.Handler
	// RequestTimeout is the budget of a forwarded append that announces
	// none (AppendRequest.timeout_ms 0).
	RequestTimeout time.Duration
	// Logger receives replies that could not be encoded (nil: not logged).
	Logger *slog.Logger
}

// Request is a received APPEND or ADMIN, decoded, waiting to be served.
// It does not refer to the body it was decoded from. An append is held in
// place, so that the common request costs one allocation; a Request must
// not be copied.
type Request struct {
	in     *Inbound
	cmd    codec.Command
	append meshpb.AppendRequest // when cmd is CmdAppend
	admin  *meshpb.AdminRequest // when cmd is CmdAdmin
}

// Dispatch decodes body (a Protobuf mesh body; read only, not retained
// after Dispatch returns) as the body of cmd. A one-way command runs on the
// handler before Dispatch returns, which then returns (nil, nil): a
// transport that dispatches one frame at a time keeps its peer's order of
// pushes, kicks and signals. A request command returns its Request without
// running it. An undecodable body or a command that is not a request
// returns an error wrapping ErrBadRequest, and nothing runs.
func (in *Inbound) Dispatch(cmd codec.Command, body []byte) (*Request, error) {
	switch cmd {
	case meshpb.CmdAppend:
		req := &Request{in: in, cmd: cmd}
		if err := decode(cmd, body, &req.append); err != nil {
			return nil, err
		}
		return req, nil
	case meshpb.CmdAdmin:
		req := &Request{in: in, cmd: cmd, admin: new(meshpb.AdminRequest)}
		if err := decode(cmd, body, req.admin); err != nil {
			return nil, err
		}
		return req, nil
	case meshpb.CmdPush:
		var req meshpb.PushRequest
		if err := decode(cmd, body, &req); err != nil {
			return nil, err
		}
		in.Handler.HandlePush(req.Msg.ToPersist(), meshpb.ToTargets(req.Targets))
	case meshpb.CmdKick:
		var req meshpb.KickRequest
		if err := decode(cmd, body, &req); err != nil {
			return nil, err
		}
		in.Handler.HandleKick(req.User, req.Device, req.ConnId)
	case meshpb.CmdSignal:
		var req meshpb.SignalRequest
		if err := decode(cmd, body, &req); err != nil {
			return nil, err
		}
		in.Handler.HandleSignal(req.ToSignal())
	default:
		return nil, fmt.Errorf("%w: %s is not a request", ErrBadRequest, cmd)
	}
	return nil, nil
}

func decode(cmd codec.Command, body []byte, m proto.Message) error {
	if err := proto.Unmarshal(body, m); err != nil {
		return fmt.Errorf("%w: undecodable %s body: %v", ErrBadRequest, cmd, err)
	}
	return nil
}

// Command is the request's command: meshpb.CmdAppend or meshpb.CmdAdmin.
func (r *Request) Command() codec.Command { return r.cmd }

// ReplyTo is the requester's node id and boot epoch, as the request
// announced them (set over Redis pub/sub only; empty and 0 on a link).
func (r *Request) ReplyTo() (node string, epoch int64) {
	if r.cmd == meshpb.CmdAppend {
		return r.append.ReplyTo, r.append.ReplyEpoch
	}
	return r.admin.ReplyTo, r.admin.ReplyEpoch
}

// Serve runs the request on the handler (an append under ctx, bounded by
// its announced budget) and hands the reply (APPEND_RESULT or
// ADMIN_RESULT, to_epoch echoing the request's reply_epoch) to encode. If
// encode fails, Serve logs it and encodes in its place a reply of the same
// command carrying that error, so the requester learns of the failure
// instead of timing out; it returns an error only when that fails too,
// and then nothing is to be sent. encode is called on Serve's goroutine,
// and its proto.Message is not used after encode returns.
func (r *Request) Serve(ctx context.Context, encode func(cmd codec.Command, reply proto.Message) error) error {
	// The failure path is a function of its own to keep this frame small:
	// Serve is among the first frames of a fresh goroutine, with the
	// handler and the encoder stacked on it, and a larger frame made the
	// goroutine grow its stack (a copy) on every request.
	var cmd codec.Command
	var res proto.Message
	if r.cmd == meshpb.CmdAppend {
		a := meshpb.ServeAppend(ctx, r.in.Handler, r.in.RequestTimeout, &r.append)
		a.ToEpoch = r.append.ReplyEpoch
		cmd, res = meshpb.CmdAppendResult, a
	} else {
		a := meshpb.ServeAdmin(r.in.Handler, r.admin)
		a.ToEpoch = r.admin.ReplyEpoch
		cmd, res = meshpb.CmdAdminResult, a
	}
	if err := encode(cmd, res); err != nil {
		return r.encodeFailed(cmd, err, encode)
	}
	return nil
}

// encodeFailed answers with the error a reply that did not encode.
func (r *Request) encodeFailed(cmd codec.Command, err error, encode func(codec.Command, proto.Message) error) error {
	if r.in.Logger != nil {
		r.in.Logger.Error("mesh: encode reply; answering with the error", "cmd", cmd, "err", err)
	}
	var res proto.Message
	if r.cmd == meshpb.CmdAppend {
		res = &meshpb.AppendResult{Error: meshpb.ErrorOf(err), ToEpoch: r.append.ReplyEpoch}
	} else {
		res = &meshpb.AdminResult{Error: meshpb.ErrorOf(err), ToEpoch: r.admin.ReplyEpoch}
	}
	if err2 := encode(cmd, res); err2 != nil {
		return fmt.Errorf("mesh: encode %s: %w", cmd, errors.Join(err, err2))
	}
	return nil
}
