// Package registrytest is the conformance suite of membership.Registry: every
// implementation runs Run from its own tests, so that all registries give
// the same guarantees (mesh/registry.go documents them). A failure names
// the guarantee that was broken.
//
// The suite waits for asynchronous effects by polling with a deadline
// (Suite.Timeout), never by sleeping for a fixed time.
package registrytest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/mesh/membership"
)

// Cluster makes registries that share one membership namespace (a memory
// hub, a ZooKeeper root). Registries of different Clusters must not see each
// other.
type Cluster struct {
	// NewRegistry returns a new, unregistered registry of the cluster, or
	// fails t. The suite closes every registry it gets.
	NewRegistry func(t *testing.T) membership.Registry
	// NewWatcher, if set, returns a read-only watcher of the cluster. If the
	// watcher also implements membership.Registry, its write methods must return
	// membership.ErrReadOnly.
	NewWatcher func(t *testing.T) membership.Watcher
}

// Suite configures Run.
type Suite struct {
	// NewCluster returns a fresh, empty cluster. It is called at least
	// once per subtest, possibly from parallel subtests.
	NewCluster func(t *testing.T) Cluster
	// StartRounds is how many times the simultaneous-start test starts 5
	// registries at the same instant (default 5).
	StartRounds int
	// Timeout bounds how long any change may take to become visible
	// everywhere (default 10s).
	Timeout time.Duration
}

// Run runs the conformance suite. Subtests run in parallel.
func Run(t *testing.T, s Suite) {
	if s.NewCluster == nil {
		t.Fatal("registrytest: Suite.NewCluster is nil")
	}
	if s.StartRounds <= 0 {
		s.StartRounds = 5
	}
	if s.Timeout <= 0 {
		s.Timeout = 10 * time.Second
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, s *Suite)
	}{
		{"RegisterVisibleToOthers", testRegisterVisible},
		{"RegisterAgainActsAsUpdate", testRegisterAgain},
		{"UpdateVisible", testUpdateVisible},
		{"DeregisterRemovesAndRegisterAgain", testDeregister},
		{"CloseRemovesAndRejects", testClose},
		{"ManyNodesSorted", testManySorted},
		{"WatchDeliversChanges", testWatch},
		{"WatchSlowReaderNeverBlocks", testWatchSlowReader},
		{"WatchEndsWithContextAndClose", testWatchEnds},
		{"NodesReturnsCopy", testNodesCopy},
		{"Validation", testValidation},
		{"IDConflictOlderEpochWaits", testConflictOlderWaits},
		{"IDConflictNewerEpochTakesOver", testConflictNewerWins},
		{"ReadOnlyWatcher", testWatcher},
		{"ConcurrentUse", testConcurrent},
		{"SimultaneousStart", testSimultaneousStart},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, &s)
		})
	}
}

// newReg returns a registry of c that is closed when the test ends.
func newReg(t *testing.T, c Cluster) membership.Registry {
	t.Helper()
	r := c.NewRegistry(t)
	if r == nil {
		t.Fatal("NewRegistry returned nil")
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// node returns a fully populated NodeInfo.
func node(id string, epoch int64) membership.NodeInfo {
	return membership.NodeInfo{
		ID:         id,
		ClientAddr: "127.0.0.1:7" + fmt.Sprint(len(id)),
		MeshAddr:   "127.0.0.1:8" + fmt.Sprint(len(id)),
		AdminAddr:  "127.0.0.1:9" + fmt.Sprint(len(id)),
		Weight:     100,
		Conns:      3,
		BootEpoch:  epoch,
	}
}

func (s *Suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls check until it returns nil or the suite's Timeout ends.
func (s *Suite) eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(s.Timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, s.Timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sameView returns nil when got equals want (want sorted by ID).
func sameView(got []membership.NodeInfo, want ...membership.NodeInfo) error {
	want = slices.Clone(want)
	slices.SortFunc(want, func(a, b membership.NodeInfo) int { return strings.Compare(a.ID, b.ID) })
	if len(got) == 0 && len(want) == 0 {
		return nil
	}
	if !slices.Equal(got, want) {
		return fmt.Errorf("view %+v, want %+v", got, want)
	}
	return nil
}

// seesExactly waits until w's Nodes() equals want.
func (s *Suite) seesExactly(t *testing.T, w membership.Watcher, want ...membership.NodeInfo) {
	t.Helper()
	s.eventually(t, "Nodes() converges", func() error { return sameView(w.Nodes(), want...) })
}

// nextView receives views from ch until ok accepts one.
func (s *Suite) nextView(t *testing.T, ch <-chan []membership.NodeInfo, what string, ok func([]membership.NodeInfo) bool) []membership.NodeInfo {
	t.Helper()
	timer := time.NewTimer(s.Timeout)
	defer timer.Stop()
	var last []membership.NodeInfo
	for {
		select {
		case v, open := <-ch:
			if !open {
				t.Fatalf("watch channel closed while waiting for %s (last view %+v)", what, last)
			}
			if ok(v) {
				return v
			}
			last = v
		case <-timer.C:
			t.Fatalf("watch did not deliver %s within %v (last view %+v)", what, s.Timeout, last)
		}
	}
}

// waitClosed waits until ch is closed, draining it.
func (s *Suite) waitClosed(t *testing.T, ch <-chan []membership.NodeInfo, what string) {
	t.Helper()
	timer := time.NewTimer(s.Timeout)
	defer timer.Stop()
	for {
		select {
		case _, open := <-ch:
			if !open {
				return
			}
		case <-timer.C:
			t.Fatalf("watch channel not closed within %v after %s", s.Timeout, what)
		}
	}
}

func testRegisterVisible(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	a, b := newReg(t, c), newReg(t, c)
	n := node("node-a", 1)
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register: %v", err)
	}
	s.seesExactly(t, b, n) // another registry sees it
	s.seesExactly(t, a, n) // and the node sees itself
}

func testRegisterAgain(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	a, b := newReg(t, c), newReg(t, c)
	n := node("node-a", 1)
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register: %v", err)
	}
	n.Conns = 77
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register again with the same ID: %v", err)
	}
	s.seesExactly(t, b, n)
}

func testUpdateVisible(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	a, b := newReg(t, c), newReg(t, c)
	n := node("node-a", 1)
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register: %v", err)
	}
	steps := []func(n *membership.NodeInfo){
		func(n *membership.NodeInfo) { n.Conns = 42 },
		func(n *membership.NodeInfo) { n.Weight = 0 },
		func(n *membership.NodeInfo) { n.Draining = true },
		func(n *membership.NodeInfo) { n.ClientAddr, n.MeshAddr, n.AdminAddr = "10.0.0.1:1", "10.0.0.1:2", "" },
		func(n *membership.NodeInfo) { n.Conns, n.Weight, n.Draining = 0, 250, false },
	}
	for i, step := range steps {
		step(&n)
		if err := a.Update(s.ctx(t), n); err != nil {
			t.Fatalf("Update %d: %v", i, err)
		}
		s.seesExactly(t, b, n)
	}
}

func testDeregister(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	a, b := newReg(t, c), newReg(t, c)
	other := node("node-b", 1)
	if err := b.Register(s.ctx(t), other); err != nil {
		t.Fatalf("Register b: %v", err)
	}
	n := node("node-a", 1)
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register a: %v", err)
	}
	s.seesExactly(t, b, n, other)
	if err := a.Deregister(s.ctx(t)); err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	s.seesExactly(t, b, other)
	s.seesExactly(t, a, other)
	if err := a.Update(s.ctx(t), n); !errors.Is(err, membership.ErrNotRegistered) {
		t.Fatalf("Update after Deregister: %v, want ErrNotRegistered", err)
	}
	if err := a.Deregister(s.ctx(t)); err != nil {
		t.Fatalf("second Deregister: %v, want nil (no-op)", err)
	}
	n.BootEpoch++
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register after Deregister: %v", err)
	}
	s.seesExactly(t, b, n, other)
}

func testClose(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	a, b := newReg(t, c), newReg(t, c)
	n := node("node-a", 1)
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register: %v", err)
	}
	s.seesExactly(t, b, n)
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s.seesExactly(t, b)
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v, want nil", err)
	}
	if err := a.Register(s.ctx(t), n); !errors.Is(err, membership.ErrClosed) {
		t.Errorf("Register after Close: %v, want ErrClosed", err)
	}
	if err := a.Update(s.ctx(t), n); !errors.Is(err, membership.ErrClosed) {
		t.Errorf("Update after Close: %v, want ErrClosed", err)
	}
	if err := a.Deregister(s.ctx(t)); !errors.Is(err, membership.ErrClosed) {
		t.Errorf("Deregister after Close: %v, want ErrClosed", err)
	}
	_ = a.Nodes() // must not panic
	s.waitClosed(t, a.Watch(s.ctx(t)), "Watch after Close")
}

func testManySorted(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	ids := []string{"n-3", "n-1", "n-2", "a.b_c-D"}
	var regs []membership.Registry
	var want []membership.NodeInfo
	for i, id := range ids {
		r := newReg(t, c)
		n := node(id, int64(i+1))
		if err := r.Register(s.ctx(t), n); err != nil {
			t.Fatalf("Register %s: %v", id, err)
		}
		regs = append(regs, r)
		want = append(want, n)
	}
	for _, r := range regs {
		s.seesExactly(t, r, want...)
		if v := r.Nodes(); !slices.IsSortedFunc(v, func(a, b membership.NodeInfo) int { return strings.Compare(a.ID, b.ID) }) {
			t.Fatalf("Nodes not sorted by ID: %+v", v)
		}
	}
}

func testWatch(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	a, b := newReg(t, c), newReg(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := b.Watch(ctx)
	s.nextView(t, ch, "the initial (empty) view", func(v []membership.NodeInfo) bool { return len(v) == 0 })

	n := node("node-a", 1)
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register: %v", err)
	}
	s.nextView(t, ch, "the registration", func(v []membership.NodeInfo) bool { return sameView(v, n) == nil })
	n.Conns = 1234
	if err := a.Update(s.ctx(t), n); err != nil {
		t.Fatalf("Update: %v", err)
	}
	s.nextView(t, ch, "the update", func(v []membership.NodeInfo) bool { return sameView(v, n) == nil })
	if err := a.Deregister(s.ctx(t)); err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	s.nextView(t, ch, "the removal", func(v []membership.NodeInfo) bool { return len(v) == 0 })

	// A second watcher starts with the current view.
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register: %v", err)
	}
	s.seesExactly(t, b, n)
	ch2 := b.Watch(ctx)
	s.nextView(t, ch2, "the current view on subscribe", func(v []membership.NodeInfo) bool { return sameView(v, n) == nil })
}

func testWatchSlowReader(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	a, b := newReg(t, c), newReg(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := b.Watch(ctx) // never read until the end
	ownCh := a.Watch(ctx)
	n := node("node-a", 1)
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register: %v", err)
	}
	const updates = 60
	for i := 1; i <= updates; i++ {
		n.Conns = int64(i)
		uctx, ucancel := context.WithTimeout(context.Background(), s.Timeout)
		err := a.Update(uctx, n)
		ucancel()
		if err != nil {
			t.Fatalf("Update %d with unread watch channels: %v", i, err)
		}
	}
	if cap(ch) > 1 {
		t.Errorf("watch channel capacity %d: a slow reader would see stale views", cap(ch))
	}
	for _, w := range []<-chan []membership.NodeInfo{ch, ownCh} {
		s.nextView(t, w, "the latest view", func(v []membership.NodeInfo) bool { return sameView(v, n) == nil })
	}
}

func testWatchEnds(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	b := newReg(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	ch := b.Watch(ctx)
	cancel()
	s.waitClosed(t, ch, "ctx cancel")

	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	s.waitClosed(t, b.Watch(done), "Watch with a finished ctx")

	open := b.Watch(context.Background())
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s.waitClosed(t, open, "registry Close")
}

func testNodesCopy(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	a := newReg(t, c)
	n := node("node-a", 1)
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register: %v", err)
	}
	s.seesExactly(t, a, n)
	v := a.Nodes()
	v[0].ID, v[0].Conns = "mutated", -1
	_ = append(v[:0], membership.NodeInfo{ID: "appended"})
	if err := sameView(a.Nodes(), n); err != nil {
		t.Fatalf("mutating a returned view changed the registry: %v", err)
	}
}

func testValidation(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	a := newReg(t, c)
	bad := []membership.NodeInfo{
		{},
		{ID: "a/b", BootEpoch: 1},
		{ID: "..", BootEpoch: 1},
		{ID: "has space", BootEpoch: 1},
		{ID: strings.Repeat("x", membership.MaxNodeIDLen+1), BootEpoch: 1},
		{ID: "ok", Weight: -1, BootEpoch: 1},
		{ID: "ok", Conns: -1, BootEpoch: 1},
	}
	for _, n := range bad {
		if err := a.Register(s.ctx(t), n); !errors.Is(err, membership.ErrInvalidNode) {
			t.Errorf("Register(%+v): %v, want ErrInvalidNode", n, err)
		}
	}
	if err := a.Update(s.ctx(t), node("node-a", 1)); !errors.Is(err, membership.ErrNotRegistered) {
		t.Errorf("Update before Register: %v, want ErrNotRegistered", err)
	}
	if err := a.Deregister(s.ctx(t)); err != nil {
		t.Errorf("Deregister before Register: %v, want nil", err)
	}
	if err := a.Register(s.ctx(t), node("node-a", 1)); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if err := a.Register(s.ctx(t), node("node-b", 1)); !errors.Is(err, membership.ErrAlreadyRegistered) {
		t.Errorf("Register of a second ID: %v, want ErrAlreadyRegistered", err)
	}
	if err := a.Update(s.ctx(t), node("node-b", 1)); !errors.Is(err, membership.ErrInvalidNode) {
		t.Errorf("Update changing the ID: %v, want ErrInvalidNode", err)
	}
	if err := a.Update(s.ctx(t), membership.NodeInfo{ID: "node-a", Weight: -5}); !errors.Is(err, membership.ErrInvalidNode) {
		t.Errorf("Update with a negative weight: %v, want ErrInvalidNode", err)
	}
	s.seesExactly(t, a, node("node-a", 1))
}

func testConflictOlderWaits(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	holder, late, w := newReg(t, c), newReg(t, c), newReg(t, c)
	cur := node("node-x", 10)
	if err := holder.Register(s.ctx(t), cur); err != nil {
		t.Fatalf("Register: %v", err)
	}
	s.seesExactly(t, w, cur)

	old := node("node-x", 5)
	old.ClientAddr = "127.0.0.1:1"
	short, cancel := context.WithTimeout(context.Background(), min(s.Timeout/2, 2*time.Second))
	err := late.Register(short, old)
	cancel()
	if !errors.Is(err, membership.ErrIDConflict) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Register of an ID held with a newer epoch: %v, want ErrIDConflict and DeadlineExceeded", err)
	}
	s.seesExactly(t, w, cur)

	// The losing registration keeps trying: once the holder leaves, it is
	// published.
	if err := holder.Deregister(s.ctx(t)); err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	s.seesExactly(t, w, old)
}

func testConflictNewerWins(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	oldReg, newRegy, w := newReg(t, c), newReg(t, c), newReg(t, c)
	old := node("node-x", 5)
	old.ClientAddr = "127.0.0.1:1"
	if err := oldReg.Register(s.ctx(t), old); err != nil {
		t.Fatalf("Register old: %v", err)
	}
	s.seesExactly(t, w, old)
	cur := node("node-x", 10) // the restarted node
	if err := newRegy.Register(s.ctx(t), cur); err != nil {
		t.Fatalf("Register of a newer epoch: %v, want it to replace the old one", err)
	}
	s.seesExactly(t, w, cur)

	// The superseded registration does not fight back.
	old.Conns = 99
	short, cancel := context.WithTimeout(context.Background(), min(s.Timeout/2, 2*time.Second))
	err := oldReg.Update(short, old)
	cancel()
	if !errors.Is(err, membership.ErrIDConflict) {
		t.Fatalf("Update of a superseded registration: %v, want ErrIDConflict", err)
	}
	s.seesExactly(t, w, cur)

	// ... but it still wants the ID, and gets it back (with its latest
	// update) when the newer one leaves.
	if err := newRegy.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s.seesExactly(t, w, old)
}

func testWatcher(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	if c.NewWatcher == nil {
		t.Skip("the implementation has no separate read-only watcher")
	}
	w := c.NewWatcher(t)
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("watcher Close: %v", err)
		}
	})
	a := newReg(t, c)
	n := node("node-a", 1)
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register: %v", err)
	}
	s.seesExactly(t, w, n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.nextView(t, w.Watch(ctx), "the view", func(v []membership.NodeInfo) bool { return sameView(v, n) == nil })
	if r, ok := w.(membership.Registry); ok {
		if err := r.Register(s.ctx(t), node("node-w", 1)); !errors.Is(err, membership.ErrReadOnly) {
			t.Errorf("watcher Register: %v, want ErrReadOnly", err)
		}
		if err := r.Update(s.ctx(t), node("node-w", 1)); !errors.Is(err, membership.ErrReadOnly) {
			t.Errorf("watcher Update: %v, want ErrReadOnly", err)
		}
		if err := r.Deregister(s.ctx(t)); !errors.Is(err, membership.ErrReadOnly) {
			t.Errorf("watcher Deregister: %v, want ErrReadOnly", err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s.seesExactly(t, w)
}

func testConcurrent(t *testing.T, s *Suite) {
	c := s.NewCluster(t)
	a, b := newReg(t, c), newReg(t, c)
	n := node("node-a", 1)
	if err := a.Register(s.ctx(t), n); err != nil {
		t.Fatalf("Register: %v", err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, r := range []membership.Registry{a, b} {
		for range 2 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					_ = r.Nodes()
					ctx, cancel := context.WithCancel(context.Background())
					ch := r.Watch(ctx)
					select {
					case <-ch:
					case <-stop:
					}
					cancel()
					time.Sleep(time.Millisecond) // contend, without starving the backend
				}
			})
		}
	}
	const updates = 40
	for i := 1; i <= updates; i++ {
		n.Conns = int64(i)
		if err := a.Update(s.ctx(t), n); err != nil {
			t.Errorf("Update %d: %v", i, err)
			break
		}
	}
	close(stop)
	wg.Wait()
	s.seesExactly(t, b, n)
}

func testSimultaneousStart(t *testing.T, s *Suite) {
	const nodes = 5
	for round := range s.StartRounds {
		c := s.NewCluster(t)
		regs := make([]membership.Registry, nodes)
		want := make([]membership.NodeInfo, nodes)
		for i := range regs {
			regs[i] = newReg(t, c) // closed below; Close is idempotent
			want[i] = node(fmt.Sprintf("node-%d", i), int64(round+1))
		}
		start := make(chan struct{})
		errs := make([]error, nodes)
		var wg sync.WaitGroup
		for i, r := range regs {
			wg.Go(func() {
				<-start
				ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
				defer cancel()
				errs[i] = r.Register(ctx, want[i])
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: Register %s: %v", round, want[i].ID, err)
			}
		}
		for i, r := range regs {
			s.eventually(t, fmt.Sprintf("round %d: node-%d sees all %d nodes", round, i, nodes), func() error {
				return sameView(r.Nodes(), want...)
			})
		}
		var w membership.Watcher = newReg(t, c)
		if c.NewWatcher != nil {
			w = c.NewWatcher(t)
			t.Cleanup(func() { _ = w.Close() })
		}
		s.seesExactly(t, w, want...)
		for i, r := range regs {
			wg.Go(func() { errs[i] = r.Close() })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: Close node-%d: %v", round, i, err)
			}
		}
		s.seesExactly(t, w)
	}
}
