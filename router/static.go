package router

import (
	"context"
	"fmt"

	"github.com/imgn/imgn/mesh"
)

// Static is a fixed membership: a mesh.Watcher whose view never changes.
// It serves imrouter's --static mode (development, tests, a cluster without
// ZooKeeper). Safe for concurrent use.
type Static struct {
	feed mesh.ViewFeed
}

var _ mesh.Watcher = (*Static)(nil)

// NewStatic returns a Watcher whose view is nodes. Every node must pass
// mesh.ValidateNode and IDs must be unique.
func NewStatic(nodes []mesh.NodeInfo) (*Static, error) {
	seen := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		if err := mesh.ValidateNode(n); err != nil {
			return nil, err
		}
		if seen[n.ID] {
			return nil, fmt.Errorf("%w: duplicate node id %q", mesh.ErrInvalidNode, n.ID)
		}
		seen[n.ID] = true
	}
	s := &Static{}
	s.feed.Publish(nodes)
	return s, nil
}

// Nodes implements mesh.Watcher.
func (s *Static) Nodes() []mesh.NodeInfo { return s.feed.View() }

// Watch implements mesh.Watcher: the view is delivered once, and the
// channel is closed when ctx ends or s is closed.
func (s *Static) Watch(ctx context.Context) <-chan []mesh.NodeInfo { return s.feed.Subscribe(ctx) }

// Close implements mesh.Watcher. It is idempotent.
func (s *Static) Close() error {
	s.feed.Close()
	return nil
}
