package engine

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
)

// Chat in cluster mode. Conversations, cursors, history and read counts
// live in the shared store (persist.EventPreparer: the store all nodes
// share), so any node answers CONVERSATIONS, READ, HISTORY and READ_COUNT
// from it; read cursors are raised with $max there, never moved back by a
// node that saw an older state. What is not stored crosses the mesh as a
// SIGNAL (RECEIPT, TYPING_EVENT) to the nodes where the receivers' devices
// are. A RECALL or DELETE event is prepared by the store (checks, target
// marked) and then appended like a message: each inbox through its owner,
// the requester's inbox first, then pushed like a message.

// signal sends msg (a frame that is never stored) as cmd to every device
// of users but skip: this node's from the session map, other nodes'
// through the cluster. Best effort, like a push. The cross-node part does
// I/O: in cluster mode callers are workers.
func (s *Server) signal(src *loop, users []string, skip *conn, cmd codec.Command, msg proto.Message) {
	for _, u := range users {
		s.fanout(src, u, skip, cmd, msg)
	}
	remote := s.remoteNodes(users)
	if len(remote) == 0 {
		return
	}
	body, err := proto.Marshal(msg)
	if err != nil {
		s.log.Error("encode signal", "cmd", cmd, "err", err)
		return
	}
	for node, idx := range remote {
		us := make([]string, len(idx))
		for j, i := range idx {
			us[j] = users[i]
		}
		s.metrics.remotePushes.Inc()
		s.cfg.Cluster.Signal(node, cluster.Signal{Users: us, Cmd: uint16(cmd), Body: body})
	}
}

// HandleSignal implements cluster.Handler: a RECEIPT or TYPING_EVENT for
// this node's devices of sig.Users. Other commands are dropped: a peer
// cannot make this node send arbitrary frames.
func (s *Server) HandleSignal(sig cluster.Signal) {
	cmd := codec.Command(sig.Cmd)
	var msg proto.Message
	switch cmd {
	case codec.CmdReceipt:
		msg = new(pb.Receipt)
	case codec.CmdTypingEvent:
		msg = new(pb.TypingEvent)
	default:
		s.log.Debug("mesh signal of an unknown command dropped", "cmd", cmd)
		return
	}
	if err := proto.Unmarshal(sig.Body, msg); err != nil {
		s.log.Debug("undecodable mesh signal dropped", "cmd", cmd, "err", err)
		return
	}
	for _, u := range sig.Users {
		s.fanout(nil, u, nil, cmd, msg)
	}
}

// clusterEvent runs a RECALL or DELETE in cluster mode: the store checks
// it and marks the target, then the event is appended through the owners
// of its inboxes, so each inbox keeps a single writer.
func (s *Server) clusterEvent(ctx context.Context, ep persist.EventPreparer, kind uint32, req persist.EventRequest) (persist.EventResult, error) {
	p, err := ep.PrepareEvent(ctx, kind, req)
	if err != nil {
		return persist.EventResult{}, err
	}
	res, err := s.appendInboxes(ctx, p.Event, p.Inboxes)
	if err != nil {
		return persist.EventResult{}, err
	}
	return p.Result(res)
}

// pushEvent pushes a chat event (or a message carrying chat fields, which
// the PUSH template does not encode) stored at seq of user's inbox to
// user's devices on this node.
func (s *Server) pushEvent(src *loop, user string, seq uint64, m *persist.Message) {
	s.fanout(src, user, nil, codec.CmdPush, &pb.Push{Messages: []*pb.Message{toPB(seq, m)}})
}

// deliverEvent pushes a stored event to every device of its inboxes, on
// this node and (through the cluster) on others.
func (s *Server) deliverEvent(src *loop, res *persist.EventResult) {
	for i, u := range res.Inboxes {
		s.pushEvent(src, u, res.Seqs[i], &res.Event)
	}
	s.pushRemote(&res.Event, res.Inboxes, res.Seqs)
}
