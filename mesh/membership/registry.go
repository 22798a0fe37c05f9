package membership

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors of the registry seam. Implementations wrap them (and the
// underlying cause) with %w; test with errors.Is.
var (
	// ErrClosed: the registry was closed.
	ErrClosed = errors.New("membership: registry closed")
	// ErrInvalidNode: a NodeInfo is malformed (see ValidateNode), or Update
	// tried to change the registered node's ID.
	ErrInvalidNode = errors.New("membership: invalid node info")
	// ErrNotRegistered: Update before Register (or after Deregister).
	ErrNotRegistered = errors.New("membership: node not registered")
	// ErrAlreadyRegistered: Register with a different ID while a node is
	// registered; one registry publishes one node.
	ErrAlreadyRegistered = errors.New("membership: another node is registered by this registry")
	// ErrIDConflict: another live registration holds the node ID with a
	// boot epoch >= ours (a second process with the same ID, or a newer
	// incarnation of this node). The registry keeps trying until the other
	// registration disappears, or until Deregister or Close.
	ErrIDConflict = errors.New("membership: node id held by another registration")
	// ErrReadOnly: Register, Update or Deregister on a read-only watcher.
	ErrReadOnly = errors.New("membership: registry is read-only")
	// ErrUnavailable: the registry backend (ZooKeeper) cannot be reached;
	// the last known view is still served and the operation is retried in
	// the background.
	ErrUnavailable = errors.New("membership: registry backend unavailable")
)

// MaxNodeIDLen is the longest accepted node ID, in bytes.
const MaxNodeIDLen = 128

// NodeInfo is what a node publishes about itself in the registry. It is a
// plain value: comparable with ==, safe to copy.
type NodeInfo struct {
	// ID names the node; it is stable across restarts of the same node.
	// 1..MaxNodeIDLen bytes of [A-Za-z0-9._-], not "." or "..".
	ID string `json:"id"`
	// ClientAddr is the host:port clients dial (the router hands it out).
	ClientAddr string `json:"client_addr"`
	// MeshAddr is the host:port peers dial for node-to-node forwarding.
	MeshAddr string `json:"mesh_addr"`
	// AdminAddr is the host:port of the admin HTTP endpoint (may be empty).
	AdminAddr string `json:"admin_addr,omitempty"`
	// Weight is the node's relative capacity (>= 0); 0 means "no new
	// connections".
	Weight int `json:"weight"`
	// Conns is the node's current number of client connections (>= 0).
	Conns int64 `json:"conns"`
	// BootEpoch identifies one run of the node: it must grow across
	// restarts of the same ID (NewBootEpoch gives one). A session route that
	// names an older epoch is stale. When two registrations claim the same
	// ID, the higher epoch wins.
	BootEpoch int64 `json:"boot_epoch"`
	// Draining marks a node that is shutting down: no new connections.
	Draining bool `json:"draining,omitempty"`
}

// NewBootEpoch returns a boot epoch for a node starting now: the current
// time in Unix nanoseconds, which grows across restarts as long as the
// clock does not step back by more than the restart time.
func NewBootEpoch() int64 { return time.Now().UnixNano() }

// ValidateNode returns nil when n can be published, or an error wrapping
// ErrInvalidNode that names the problem.
func ValidateNode(n NodeInfo) error {
	if err := ValidateID(n.ID); err != nil {
		return err
	}
	if n.Weight < 0 {
		return fmt.Errorf("%w: node %q: negative weight %d", ErrInvalidNode, n.ID, n.Weight)
	}
	if n.Conns < 0 {
		return fmt.Errorf("%w: node %q: negative conns %d", ErrInvalidNode, n.ID, n.Conns)
	}
	return nil
}

// ValidateID checks a node id: 1..MaxNodeIDLen bytes of [A-Za-z0-9._-],
// not "." or ".." (node ids name znodes). Errors wrap ErrInvalidNode.
func ValidateID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty id", ErrInvalidNode)
	case len(id) > MaxNodeIDLen:
		return fmt.Errorf("%w: id longer than %d bytes", ErrInvalidNode, MaxNodeIDLen)
	case id == "." || id == "..":
		return fmt.Errorf("%w: id %q", ErrInvalidNode, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: id %q: character %q not in [A-Za-z0-9._-]", ErrInvalidNode, id, c)
		}
	}
	return nil
}

// Watcher is the read side of the registry: the live members of the
// cluster. A router uses a Watcher alone; a node uses a full Registry.
//
// Implementations are safe for concurrent use by any number of goroutines.
type Watcher interface {
	// Nodes returns the current view of live members, sorted by ID, as a
	// new slice owned by the caller. The view includes this registry's own
	// node once it is published. While the backend is unreachable Nodes
	// returns the last known view; before the first successful read it
	// returns nil. Nodes never blocks on the backend.
	Nodes() []NodeInfo

	// Watch delivers the full member list (sorted by ID, caller-owned)
	// whenever it changes, starting with the current view if one is known.
	// Delivery is level-triggered: the channel has a buffer of one and an
	// undelivered view is replaced by a newer one, so a slow reader sees
	// the latest view and never blocks the registry; intermediate views
	// may be skipped. The channel is closed when ctx ends or the registry
	// is closed.
	Watch(ctx context.Context) <-chan []NodeInfo

	// Close stops the registry: its node (if any) is removed, watch
	// channels are closed and background goroutines have exited when
	// Close returns. Close is idempotent; other methods return ErrClosed
	// afterwards (Nodes keeps returning the last view).
	Close() error
}

// Registry publishes this node and watches the others (docs/cluster.md).
// Membership is level-triggered: implementations re-read the full member
// list on every change notification and on a timer, so nodes that start at
// the same instant always find each other, and a lost notification delays a
// change but never hides it.
//
// Register, Update and Deregister record the desired state first and then
// wait (until ctx ends) for it to be published. When ctx ends before that,
// they return an error wrapping ctx.Err() (and ErrIDConflict or
// ErrUnavailable when that is the reason), but the desired state stays
// recorded and the registry keeps publishing it in the background, latest
// call wins, until Deregister or Close.
//
// Implementations are safe for concurrent use by any number of goroutines.
type Registry interface {
	Watcher

	// Register publishes self (ephemeral: it disappears when this process
	// dies or loses its backend session for good) and keeps it published,
	// re-registering after a session expiry, until Deregister or Close.
	// self is validated with ValidateNode. Registering again with the same
	// ID acts as Update; with another ID it returns ErrAlreadyRegistered.
	// When another live registration holds the ID with an older boot
	// epoch, it is replaced (a restarted node); with a newer or equal one,
	// Register waits for it to go away (ErrIDConflict when ctx ends first).
	Register(ctx context.Context, self NodeInfo) error

	// Update replaces the published load, weight, draining flag and
	// addresses of this node (e.g. every few seconds). self.ID must be the
	// registered ID (ErrInvalidNode otherwise); ErrNotRegistered before
	// Register. While the backend is unreachable the latest update is kept
	// and published on reconnection.
	Update(ctx context.Context, self NodeInfo) error

	// Deregister removes this node now (drain), and stops re-registration.
	// It is a no-op when nothing is registered. Register may be called
	// again afterwards.
	Deregister(ctx context.Context) error
}
