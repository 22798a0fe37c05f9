package router

import (
	"context"
	"fmt"

	"github.com/imgn/imgn/mesh/membership"
)

// Static is a fixed membership: a membership.Watcher whose view never changes.
// It serves imrouter's --static mode (development, tests, a cluster without
// ZooKeeper). Safe for concurrent use.
type Static struct {
	feed membership.ViewFeed
}

var _ membership.Watcher = (*Static)(nil)

// NewStatic returns a Watcher whose view is nodes. Every node must pass
// membership.ValidateNode and IDs must be unique.
func NewStatic(nodes []membership.NodeInfo) (*Static, error) {
	seen := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		if err := membership.ValidateNode(n); err != nil {
			return nil, err
		}
		if seen[n.ID] {
			return nil, fmt.Errorf("%w: duplicate node id %q", membership.ErrInvalidNode, n.ID)
		}
		seen[n.ID] = true
	}
	s := &Static{}
	s.feed.Publish(nodes)
	return s, nil
}

// Nodes implements membership.Watcher.
func (s *Static) Nodes() []membership.NodeInfo { return s.feed.View() }

// Watch implements membership.Watcher: the view is delivered once, and the
// channel is closed when ctx ends or s is closed.
func (s *Static) Watch(ctx context.Context) <-chan []membership.NodeInfo {
	return s.feed.Subscribe(ctx)
}

// Close implements membership.Watcher. It is idempotent.
func (s *Static) Close() error {
	s.feed.Close()
	return nil
}
