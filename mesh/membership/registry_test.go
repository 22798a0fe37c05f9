package membership_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/registrytest"
)

func TestMemoryRegistryConformance(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	t.Run("suite", func(t *testing.T) {
		registrytest.Run(t, registrytest.Suite{
			NewCluster: func(t *testing.T) registrytest.Cluster {
				hub := membership.NewMemoryHub()
				return registrytest.Cluster{
					NewRegistry: func(t *testing.T) membership.Registry { return hub.NewRegistry() },
					NewWatcher:  func(t *testing.T) membership.Watcher { return hub.NewWatcher() },
				}
			},
			StartRounds: 20,
			Timeout:     5 * time.Second,
		})
	})
}

func TestMemoryRegistrySingleNode(t *testing.T) {
	r := membership.NewMemoryRegistry()
	defer r.Close()
	if v := r.Nodes(); len(v) != 0 {
		t.Fatalf("fresh registry sees %+v", v)
	}
	n := membership.NodeInfo{ID: "solo", ClientAddr: "127.0.0.1:1", Weight: 100, BootEpoch: membership.NewBootEpoch()}
	if err := r.Register(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	// Publication is synchronous in memory.
	if v := r.Nodes(); !slices.Equal(v, []membership.NodeInfo{n}) {
		t.Fatalf("Nodes = %+v", v)
	}
	other := membership.NewMemoryRegistry()
	defer other.Close()
	if v := other.Nodes(); len(v) != 0 {
		t.Fatalf("a registry on another hub sees %+v", v)
	}
}

func TestValidateNode(t *testing.T) {
	tests := []struct {
		n  membership.NodeInfo
		ok bool
	}{
		{membership.NodeInfo{ID: "a"}, true},
		{membership.NodeInfo{ID: "node-1.eu_west"}, true},
		{membership.NodeInfo{ID: strings.Repeat("x", membership.MaxNodeIDLen)}, true},
		{membership.NodeInfo{ID: "a", Weight: 0, Conns: 0, Draining: true}, true},
		{membership.NodeInfo{}, false},
		{membership.NodeInfo{ID: strings.Repeat("x", membership.MaxNodeIDLen+1)}, false},
		{membership.NodeInfo{ID: "."}, false},
		{membership.NodeInfo{ID: ".."}, false},
		{membership.NodeInfo{ID: "a/b"}, false},
		{membership.NodeInfo{ID: "a b"}, false},
		{membership.NodeInfo{ID: "é"}, false},
		{membership.NodeInfo{ID: "a\x00"}, false},
		{membership.NodeInfo{ID: "a", Weight: -1}, false},
		{membership.NodeInfo{ID: "a", Conns: -1}, false},
	}
	for _, tc := range tests {
		err := membership.ValidateNode(tc.n)
		if tc.ok && err != nil {
			t.Errorf("ValidateNode(%+v) = %v, want nil", tc.n, err)
		}
		if !tc.ok && !errors.Is(err, membership.ErrInvalidNode) {
			t.Errorf("ValidateNode(%+v) = %v, want ErrInvalidNode", tc.n, err)
		}
	}
}

func TestViewFeed(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var f membership.ViewFeed
	if f.Known() || f.View() != nil {
		t.Fatal("zero feed knows a view")
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := f.Subscribe(ctx)
	select {
	case v := <-ch:
		t.Fatalf("delivered %+v before any Publish", v)
	default:
	}
	if !f.Publish(nil) {
		t.Fatal("the first Publish (empty) did not count as a change")
	}
	if v := <-ch; len(v) != 0 {
		t.Fatalf("got %+v, want empty", v)
	}
	if f.Publish([]membership.NodeInfo{}) {
		t.Fatal("publishing an equal view counted as a change")
	}
	a, b := membership.NodeInfo{ID: "a"}, membership.NodeInfo{ID: "b"}
	in := []membership.NodeInfo{b, a}
	f.Publish(in)
	if in[0] != b {
		t.Fatal("Publish reordered its argument")
	}
	if f.Publish([]membership.NodeInfo{a, b}) {
		t.Fatal("the same set in another order counted as a change")
	}
	// Coalescing: many changes, one buffered view, the latest.
	for i := range 100 {
		f.Publish([]membership.NodeInfo{a, {ID: "b", Conns: int64(i)}})
	}
	if len(ch) != 1 {
		t.Fatalf("%d views buffered, want 1", len(ch))
	}
	v := <-ch
	if want := []membership.NodeInfo{a, {ID: "b", Conns: 99}}; !slices.Equal(v, want) {
		t.Fatalf("got %+v, want the latest %+v", v, want)
	}
	// Each subscriber owns its copy.
	ch2 := f.Subscribe(context.Background())
	v2 := <-ch2
	v2[0].ID = "mutated"
	if f.View()[0].ID != "a" {
		t.Fatal("a subscriber's copy aliases the feed's view")
	}
	cancel()
	if _, open := <-ch; open {
		// A view may have been pending; the next receive must see the close.
		if _, open := <-ch; open {
			t.Fatal("channel still open after ctx cancel")
		}
	}
	f.Close()
	if _, open := <-ch2; open {
		t.Fatal("channel still open after Close")
	}
	if f.Publish([]membership.NodeInfo{b}) {
		t.Fatal("Publish after Close counted as a change")
	}
	if _, open := <-f.Subscribe(context.Background()); open {
		t.Fatal("Subscribe after Close returned an open channel")
	}
	f.Close()
}
