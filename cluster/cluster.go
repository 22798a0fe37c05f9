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
	// AppendEntries is Append for a message that is stored already (msg
	// is the stored original, as an earlier Append returned it): the
	// owner writes only its inboxes' entries, not the message. Errors as
	// for Append.
	AppendEntries(ctx context.Context, node string, msg persist.Message, inboxes []string) (persist.AppendResult, error)
	// Push asks node to push msg to the devices of the given users that
	// are connected there. Best effort: no reply, dropped if the link is
	// down (receivers recover by sync).
	Push(node string, msg persist.Message, targets []PushTarget)
	// Kick asks node to close (user, device)'s connection connID with
	// KICK_DUPLICATE_LOGIN. Best effort.
	Kick(node, user, device string, connID uint64)
	// Signal asks node to send sig to the devices of sig.Users that are
	// connected there. Best effort, like Push.
	Signal(node string, sig Signal)
	// Admin runs req on every member of the cluster (this node included)
	// and returns each member's answer, sorted by node. A member that
	// cannot be reached or does not answer before ctx ends reports an
	// error wrapping ErrForward.
	Admin(ctx context.Context, req AdminRequest) []NodeCount
}

// AdminKind says what an AdminRequest does.
type AdminKind uint8

// Admin request kinds.
const (
	// AdminBroadcast sends a NOTICE to every logged-in connection.
	AdminBroadcast AdminKind = iota + 1
	// AdminKick ends the sessions of a user (or of one of its devices)
	// with KICK_ADMIN.
	AdminKick
)

// AdminRequest is an operator action that every node runs on its own
// connections.
type AdminRequest struct {
	Kind AdminKind
	// Text and Time (Unix ms) are the notice of AdminBroadcast; every node
	// sends the same time.
	Text string
	Time int64
	// User and Device select the sessions of AdminKick (Device "" means
	// every device of User).
	User, Device string
}

// NodeCount is one node's answer to an AdminRequest: how many connections
// it acted on, or why it could not be asked.
type NodeCount struct {
	Node  string
	Count int
	Err   error
}

// PushTarget is one receiving inbox of a pushed message.
type PushTarget struct {
	User string
	Seq  uint64
}

// Signal is a client frame that is never stored (a read receipt, a typing
// indicator) for the devices of Users: Cmd is its client command code and
// Body its body encoded with Protobuf. Receivers may drop a Cmd they do
// not know.
type Signal struct {
	Users []string
	Cmd   uint16
	Body  []byte
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
	// HandleAppendEntries runs a forwarded AppendEntries: msg is stored
	// already; this node writes the entries of the inboxes it owns.
	HandleAppendEntries(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error)
	// HandlePush pushes msg to local devices of targets.
	HandlePush(msg persist.Message, targets []PushTarget)
	// HandleKick closes the local connection connID of (user, device) if it
	// is still live.
	HandleKick(user, device string, connID uint64)
	// HandleSignal sends sig to the local devices of sig.Users. It must not
	// block; sig's slices are valid only during the call.
	HandleSignal(sig Signal)
	// HandleAdmin runs an operator action on this node's connections and
	// returns how many it acted on. It must not block.
	HandleAdmin(req AdminRequest) int
}
