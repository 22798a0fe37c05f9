// Package cluster is the contract between a node's engine and its peers:
// what the engine asks of the cluster (Cluster: who owns an inbox,
// forwarding appends, pushes and kicks to other nodes) and what a node
// offers its peers (Handler). The engine depends on this package only,
// never on the implementation; package mesh implements it over the
// membership registry, the consistent-hash ring and node-to-node links.
// It imports nothing from the project but persist.
package cluster

import (
	"context"
	"errors"

	"github.com/imgn/imgn/persist"
)

// Cluster connects a node to its peers. A nil Cluster (the engine's
// Config.Cluster) means a single node that owns every inbox.
//
// Implementations are safe for concurrent use.
type Cluster interface {
	// NodeID is this node's id in the cluster.
	NodeID() string
	// Owner names the node that owns user's inbox: the single writer of its
	// appends. local reports whether that is this node.
	Owner(user string) (node string, local bool)
	// Live reports whether node is a current member with this boot epoch;
	// session routes to anything else are stale.
	Live(node string, bootEpoch int64) bool
	// BootEpoch is this node's boot epoch (recorded in its session routes).
	BootEpoch() int64
	// Append asks node to run MessageStore.Append(msg, inboxes) as the
	// owner of those inboxes, and waits for the result. Failures to reach
	// the node or to hear back in time wrap ErrForward; store errors come
	// back wrapped as the owner saw them (persist sentinels survive).
	Append(ctx context.Context, node string, msg persist.Message, inboxes []string) (persist.AppendResult, error)
	// Push asks node to push msg to the devices of the given users that
	// are connected there. Best effort: no reply, dropped if the link is
	// down (receivers recover by sync).
	Push(node string, msg persist.Message, targets []PushTarget)
	// Kick asks node to close (user, device)'s connection connID with
	// KICK_DUPLICATE_LOGIN. Best effort.
	Kick(node, user, device string, connID uint64)
}

// PushTarget is one receiving inbox of a pushed message.
type PushTarget struct {
	User string
	Seq  uint64
}

// ErrForward marks a failure to reach the owner node of an inbox. The
// engine maps it to the retryable FORWARD_FAILED error code.
var ErrForward = errors.New("cluster: forward to owner node failed")

// Handler is what a node offers its peers: the mesh calls these when a
// request arrives from another node. The engine's Server implements it.
type Handler interface {
	// HandleAppend runs an append forwarded by a peer: this node owns the
	// inboxes. It only stores; pushing is the job of the node that took
	// the send, which knows every inbox's seq.
	HandleAppend(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error)
	// HandlePush pushes msg to local devices of targets.
	HandlePush(msg persist.Message, targets []PushTarget)
	// HandleKick closes the local connection connID of (user, device) if it
	// is still live.
	HandleKick(user, device string, connID uint64)
}
