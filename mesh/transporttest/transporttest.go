// Package transporttest is the conformance suite of mesh.Transport: every
// implementation (mesh.Links, redislink.Transport) runs Run from its own
// tests, and Bench from its benchmarks. The suite checks the contract
// documented on mesh.Transport: round trips return the owner's result,
// store sentinels survive the trip, pushes and kicks arrive in order,
// failures turn into cluster.ErrForward within the timeout (never a hang,
// never a false success), bounded queues, healing after a peer restart.
package transporttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/persist"
)

// Params are the limits a test asks of a new transport. The factory maps
// them onto the implementation's configuration.
type Params struct {
	// RequestTimeout is the default timeout of a forwarded Append.
	RequestTimeout time.Duration
	// QueueSize bounds the Appends waiting for a reply per peer.
	QueueSize int
	// MaxInflight bounds the appends a receiver handles at once.
	MaxInflight int
}

// Suite describes the implementation under test.
type Suite struct {
	// New returns an unstarted transport configured with p. The suite
	// starts it (with MeshAddr "127.0.0.1:0", or the previous address of
	// a restarted node) and closes it.
	New func(t testing.TB, p Params) mesh.Transport
}

// Slack is added to every "within the timeout" bound: the suite checks
// that calls do not hang, on machines that may be heavily loaded.
var Slack = 5 * time.Second

// Patience bounds every wait for something that should happen soon (a
// link forming, pushes arriving). It is only spent when a test fails.
var Patience = 20 * time.Second

// DefaultParams are used where a test does not need anything special.
var DefaultParams = Params{RequestTimeout: 10 * time.Second, QueueSize: 1024, MaxInflight: 256}

// Run runs the whole suite as subtests of t.
func Run(t *testing.T, s Suite) {
	tests := []struct {
		name string
		fn   func(*testing.T, Suite)
	}{
		{"AppendRoundTrip", testAppendRoundTrip},
		{"AppendEntriesRoundTrip", testAppendEntriesRoundTrip},
		{"AdminRoundTrip", testAdminRoundTrip},
		{"StoreErrors", testStoreErrors},
		{"PushAndKick", testPushAndKick},
		{"ConcurrentAppends", testConcurrentAppends},
		{"AppendOrder", testAppendOrder},
		{"UnknownNode", testUnknownNode},
		{"CanceledContext", testCanceledContext},
		{"PeerDown", testPeerDown},
		{"HandlerTimeout", testHandlerTimeout},
		{"PeerRestart", testPeerRestart},
		{"BoundedQueue", testBoundedQueue},
		{"ClosedTransport", testClosedTransport},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, s) })
	}
}

// ---- fake handler ----

// AppendCall is one HandleAppend (or HandleAppendEntries, EntriesOnly)
// seen by a Handler.
type AppendCall struct {
	Msg         persist.Message
	Inboxes     []string
	EntriesOnly bool
}

// PushCall is one HandlePush seen by a Handler.
type PushCall struct {
	Msg     persist.Message
	Targets []cluster.PushTarget
}

// KickCall is one HandleKick seen by a Handler.
type KickCall struct {
	User, Device string
	ConnID       uint64
}

// Handler is a recording cluster.Handler. AppendFunc, when set,
// computes the append result; by default it is Echo. Safe for concurrent
// use.
type Handler struct {
	AppendFunc func(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error)
	// Discard stops recording appends (benchmarks).
	Discard bool

	// AdminCount is what HandleAdmin answers.
	AdminCount int

	mu      sync.Mutex
	appends []AppendCall
	pushes  []PushCall
	kicks   []KickCall
	signals []cluster.Signal
	admins  []cluster.AdminRequest
}

var _ cluster.Handler = (*Handler)(nil)

// Echo is the default append result: the message with Timestamp+1, seq
// ID*100+i for inbox i, Duplicate when Kind is 7. Tests compare against
// it to see that the result really is the owner's.
func Echo(_ context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	res := persist.AppendResult{Msg: msg, Duplicate: msg.Kind == 7}
	res.Msg.Timestamp++
	for i := range inboxes {
		res.Seqs = append(res.Seqs, msg.ID*100+uint64(i))
	}
	return res, nil
}

// SetAppendFunc replaces AppendFunc while the handler is in use.
func (h *Handler) SetAppendFunc(fn func(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.AppendFunc = fn
}

// HandleAppend implements cluster.Handler.
func (h *Handler) HandleAppend(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	return h.handle(ctx, msg, inboxes, false)
}

// HandleAppendEntries implements cluster.Handler: recorded with
// EntriesOnly, answered like HandleAppend.
func (h *Handler) HandleAppendEntries(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	return h.handle(ctx, msg, inboxes, true)
}

// HandleAdmin implements cluster.Handler: recorded, answered with
// AdminCount.
func (h *Handler) HandleAdmin(req cluster.AdminRequest) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.admins = append(h.admins, req)
	return h.AdminCount
}

// Admins returns a copy of the admin requests seen so far.
func (h *Handler) Admins() []cluster.AdminRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.admins)
}

func (h *Handler) handle(ctx context.Context, msg persist.Message, inboxes []string, entriesOnly bool) (persist.AppendResult, error) {
	h.mu.Lock()
	if !h.Discard {
		h.appends = append(h.appends, AppendCall{Msg: msg, Inboxes: slices.Clone(inboxes), EntriesOnly: entriesOnly})
	}
	fn := h.AppendFunc
	h.mu.Unlock()
	if fn == nil {
		fn = Echo
	}
	return fn(ctx, msg, inboxes)
}

// HandlePush implements cluster.Handler.
func (h *Handler) HandlePush(msg persist.Message, targets []cluster.PushTarget) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pushes = append(h.pushes, PushCall{Msg: msg, Targets: slices.Clone(targets)})
}

// HandleKick implements cluster.Handler.
func (h *Handler) HandleKick(user, device string, connID uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.kicks = append(h.kicks, KickCall{user, device, connID})
}

// HandleSignal implements cluster.Handler: recorded (a deep copy, since
// sig's slices are valid only during the call).
func (h *Handler) HandleSignal(sig cluster.Signal) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.signals = append(h.signals, cluster.Signal{Users: slices.Clone(sig.Users), Cmd: sig.Cmd, Body: slices.Clone(sig.Body)})
}

// Signals returns a copy of the signals seen so far.
func (h *Handler) Signals() []cluster.Signal {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.signals)
}

// Appends returns a copy of the appends seen so far.
func (h *Handler) Appends() []AppendCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.appends)
}

// Pushes returns a copy of the pushes seen so far.
func (h *Handler) Pushes() []PushCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.pushes)
}

// Kicks returns a copy of the kicks seen so far.
func (h *Handler) Kicks() []KickCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.kicks)
}

// ---- nodes ----

// Node is one started transport of a test.
type Node struct {
	Info membership.NodeInfo
	T    mesh.Transport
	H    *Handler

	closeOnce sync.Once
}

// Close closes the node's transport (idempotent; also run at cleanup).
func (n *Node) Close(t testing.TB) {
	n.closeOnce.Do(func() {
		if err := n.T.Close(); err != nil {
			t.Errorf("close %s: %v", n.Info.ID, err)
		}
	})
}

var epochs atomic.Int64

// nextEpoch returns strictly increasing boot epochs.
func nextEpoch() int64 {
	for {
		old := epochs.Load()
		e := max(old+1, time.Now().UnixNano())
		if epochs.CompareAndSwap(old, e) {
			return e
		}
	}
}

// StartNode starts a transport from s as node id (listening on addr, or
// on a free loopback port when addr is ""), serving h (a new Handler when
// nil). It is closed at the end of the test.
func StartNode(t testing.TB, s Suite, p Params, id, addr string, h *Handler) *Node {
	t.Helper()
	n, err := TryStartNode(t, s, p, id, addr, h)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TryStartNode is StartNode returning the start error instead of failing.
func TryStartNode(t testing.TB, s Suite, p Params, id, addr string, h *Handler) (*Node, error) {
	if h == nil {
		h = &Handler{}
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	tr := s.New(t, p)
	info := membership.NodeInfo{ID: id, ClientAddr: "127.0.0.1:1", MeshAddr: addr, Weight: 100, BootEpoch: nextEpoch()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Start(ctx, info, h); err != nil {
		tr.Close()
		return nil, fmt.Errorf("start %s: %w", id, err)
	}
	if a := tr.Addr(); a != "" {
		info.MeshAddr = a
	}
	n := &Node{Info: info, T: tr, H: h}
	t.Cleanup(func() { n.Close(t) })
	return n, nil
}

// Connect tells every node about all the others (SetPeers with the full
// list, as a registry view would).
func Connect(nodes ...*Node) {
	infos := make([]membership.NodeInfo, len(nodes))
	for i, n := range nodes {
		infos[i] = n.Info
	}
	for _, n := range nodes {
		n.T.SetPeers(infos)
	}
}

// msg returns a test message with id.
func msg(id uint64, to string) persist.Message {
	m := persist.Message{
		ID: id, From: "alice", To: to, ClientMsgID: fmt.Sprintf("c-%d", id),
		Timestamp: 1_700_000_000_000 + int64(id), Kind: 0, Body: []byte(fmt.Sprintf("hello %d \x00\xff", id)),
	}
	switch id % 3 { // the chat fields cross too
	case 1:
		m.Event, m.Target, m.Body = persist.EventRecall, id-1, nil
	case 2:
		m.Recalled = true
	}
	return m
}

// WaitLinked polls a's Append to b until it succeeds (a link may still be
// forming right after Connect).
func WaitLinked(t testing.TB, a, b *Node) {
	t.Helper()
	testutil.Eventually(t, Patience, "link up", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := a.T.Append(ctx, b.Info.ID, msg(1, "warmup"), []string{"warmup"})
		return err
	})
}

func pair(t *testing.T, s Suite, p Params) (a, b *Node) {
	a = StartNode(t, s, p, "node-a", "", nil)
	b = StartNode(t, s, p, "node-b", "", nil)
	Connect(a, b)
	WaitLinked(t, a, b)
	return a, b
}

// ---- tests ----

func testAppendEntriesRoundTrip(t *testing.T, s Suite) {
	a, b := pair(t, s, DefaultParams)
	m := msg(43, "bob")
	inboxes := []string{"bob", "carol"}
	res, err := a.T.AppendEntries(context.Background(), b.Info.ID, m, inboxes)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Echo(context.Background(), m, inboxes)
	if !equalMsg(res.Msg, want.Msg) || !slices.Equal(res.Seqs, want.Seqs) {
		t.Fatalf("result %+v, want %+v", res, want)
	}
	calls := b.H.Appends()
	last := calls[len(calls)-1]
	if !last.EntriesOnly || !equalMsg(last.Msg, m) || !slices.Equal(last.Inboxes, inboxes) {
		t.Fatalf("handler saw %+v, want entries only of %+v to %v", last, m, inboxes)
	}
	// A plain Append is not entries only.
	if _, err := a.T.Append(context.Background(), b.Info.ID, m, inboxes); err != nil {
		t.Fatal(err)
	}
	calls = b.H.Appends()
	if calls[len(calls)-1].EntriesOnly {
		t.Fatal("Append arrived as entries only")
	}
	b.H.SetAppendFunc(func(context.Context, persist.Message, []string) (persist.AppendResult, error) {
		return persist.AppendResult{}, fmt.Errorf("owner: %w", persist.ErrUnavailable)
	})
	if _, err := a.T.AppendEntries(context.Background(), b.Info.ID, m, inboxes); !errors.Is(err, persist.ErrUnavailable) {
		t.Fatalf("AppendEntries with a failing owner: %v, want ErrUnavailable", err)
	}
}

func testAdminRoundTrip(t *testing.T, s Suite) {
	a, b := pair(t, s, DefaultParams)
	b.H.mu.Lock()
	b.H.AdminCount = 17
	b.H.mu.Unlock()
	req := cluster.AdminRequest{Kind: cluster.AdminBroadcast, Text: "maintenance \x00 at noon", Time: 1234}
	n, err := a.T.Admin(context.Background(), b.Info.ID, req)
	if err != nil || n != 17 {
		t.Fatalf("Admin broadcast = %d, %v; want 17", n, err)
	}
	kick := cluster.AdminRequest{Kind: cluster.AdminKick, User: "bob", Device: "phone"}
	if _, err := a.T.Admin(context.Background(), b.Info.ID, kick); err != nil {
		t.Fatal(err)
	}
	if got := b.H.Admins(); len(got) != 2 || got[0] != req || got[1] != kick {
		t.Fatalf("handler saw %+v, want %+v then %+v", got, req, kick)
	}
	// A kick without a user is refused by the receiver, not run.
	if _, err := a.T.Admin(context.Background(), b.Info.ID, cluster.AdminRequest{Kind: cluster.AdminKick}); !errors.Is(err, persist.ErrInvalid) {
		t.Fatalf("kick without a user: %v, want ErrInvalid", err)
	}
	if _, err := a.T.Admin(context.Background(), "nobody", req); !errors.Is(err, cluster.ErrForward) {
		t.Fatalf("Admin to an unknown node: %v, want ErrForward", err)
	}
	if len(b.H.Admins()) != 2 {
		t.Fatalf("handler ran %d admin requests, want 2", len(b.H.Admins()))
	}
}

func testAppendRoundTrip(t *testing.T, s Suite) {
	a, b := pair(t, s, DefaultParams)
	m := msg(42, "bob")
	m.Group, m.Kind = true, 7
	inboxes := []string{"bob", "carol", "dave"}
	res, err := a.T.Append(context.Background(), b.Info.ID, m, inboxes)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Echo(context.Background(), m, inboxes)
	if !equalMsg(res.Msg, want.Msg) || !slices.Equal(res.Seqs, want.Seqs) || res.Duplicate != want.Duplicate {
		t.Fatalf("result %+v, want %+v", res, want)
	}
	calls := b.H.Appends()
	last := calls[len(calls)-1]
	if !equalMsg(last.Msg, m) || !slices.Equal(last.Inboxes, inboxes) {
		t.Fatalf("handler saw %+v %v, want %+v %v", last.Msg, last.Inboxes, m, inboxes)
	}
	// The other direction works too.
	if _, err := b.T.Append(context.Background(), a.Info.ID, m, inboxes); err != nil {
		t.Fatalf("b -> a: %v", err)
	}
	// An empty body and no inboxes survive as well.
	m2 := persist.Message{ID: 7}
	if res, err := a.T.Append(context.Background(), b.Info.ID, m2, nil); err != nil || res.Msg.ID != 7 || len(res.Seqs) != 0 {
		t.Fatalf("minimal append: %+v %v", res, err)
	}
}

func equalMsg(a, b persist.Message) bool {
	return a.ID == b.ID && a.From == b.From && a.To == b.To && a.Group == b.Group &&
		a.ClientMsgID == b.ClientMsgID && a.Timestamp == b.Timestamp && a.Kind == b.Kind &&
		string(a.Body) == string(b.Body) && a.Event == b.Event && a.Target == b.Target && a.Recalled == b.Recalled
}

func testStoreErrors(t *testing.T, s Suite) {
	a, b := pair(t, s, DefaultParams)
	sentinels := []error{
		persist.ErrUnavailable, persist.ErrInvalid, persist.ErrClosed, persist.ErrNotFound,
		persist.ErrUserExists, persist.ErrGroupExists, persist.ErrGroupFull,
		context.DeadlineExceeded, context.Canceled,
	}
	var which atomic.Int64
	b.H.SetAppendFunc(func(context.Context, persist.Message, []string) (persist.AppendResult, error) {
		i := which.Load()
		if i < 0 {
			return persist.AppendResult{}, errors.New("disk on fire")
		}
		return persist.AppendResult{Seqs: []uint64{1}}, fmt.Errorf("store said: %w", sentinels[i])
	})
	for i, want := range sentinels {
		which.Store(int64(i))
		_, err := a.T.Append(context.Background(), b.Info.ID, msg(1, "bob"), []string{"bob"})
		if !errors.Is(err, want) {
			t.Errorf("remote %v came back as %v", want, err)
		}
		if errors.Is(err, cluster.ErrForward) {
			t.Errorf("a store error (%v) must not look like a forward failure", err)
		}
	}
	which.Store(-1)
	_, err := a.T.Append(context.Background(), b.Info.ID, msg(1, "bob"), []string{"bob"})
	if err == nil || errors.Is(err, cluster.ErrForward) || errors.Is(err, persist.ErrUnavailable) {
		t.Fatalf("unclassified error came back as %v", err)
	}
	if want := "disk on fire"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error text %q lost %q", err, want)
	}
}

func testPushAndKick(t *testing.T, s Suite) {
	a, b := pair(t, s, DefaultParams)
	const n = 1000
	for i := range n {
		a.T.Push(b.Info.ID, msg(uint64(i+1), "bob"), []cluster.PushTarget{{User: "bob", Seq: uint64(i + 1)}, {User: "carol", Seq: 5}})
	}
	a.T.Kick(b.Info.ID, "bob", "phone", 99)
	sig := cluster.Signal{Users: []string{"bob", "carol"}, Cmd: 0x1234, Body: []byte("\x00body\xff")}
	a.T.Signal(b.Info.ID, sig)
	testutil.Eventually(t, Patience, "pushes, kicks and signals delivered", func() error {
		if got := len(b.H.Pushes()); got < n {
			return fmt.Errorf("%d of %d pushes arrived", got, n)
		}
		if len(b.H.Kicks()) == 0 {
			return errors.New("kick not arrived")
		}
		if len(b.H.Signals()) == 0 {
			return errors.New("signal not arrived")
		}
		return nil
	})
	if got := b.H.Signals()[0]; !slices.Equal(got.Users, sig.Users) || got.Cmd != sig.Cmd || string(got.Body) != string(sig.Body) {
		t.Fatalf("signal %+v, sent %+v", got, sig)
	}
	pushes := b.H.Pushes()
	for i, p := range pushes {
		if p.Targets[0].Seq != uint64(i+1) || !equalMsg(p.Msg, msg(uint64(i+1), "bob")) || len(p.Targets) != 2 || p.Targets[1] != (cluster.PushTarget{User: "carol", Seq: 5}) {
			t.Fatalf("push %d out of order or altered: %+v", i, p)
		}
	}
	if k := b.H.Kicks()[0]; k != (KickCall{"bob", "phone", 99}) {
		t.Fatalf("kick %+v", k)
	}
	// Unknown nodes: dropped silently, no panic, no block.
	a.T.Push("nobody", msg(1, "x"), nil)
	a.T.Kick("nobody", "x", "y", 1)
	a.T.Signal("nobody", sig)
}

func testConcurrentAppends(t *testing.T, s Suite) {
	a, b := pair(t, s, DefaultParams)
	const workers, each = 100, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				id := uint64(w*each + i + 1)
				res, err := a.T.Append(context.Background(), b.Info.ID, msg(id, "bob"), []string{fmt.Sprintf("u%d", w)})
				if err != nil {
					errs <- err
					continue
				}
				if res.Msg.ID != id || len(res.Seqs) != 1 || res.Seqs[0] != id*100 {
					errs <- fmt.Errorf("append %d answered with %+v", id, res)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testAppendOrder(t *testing.T, s Suite) {
	a, b := pair(t, s, DefaultParams)
	before := len(b.H.Appends())
	const n = 1000
	for i := range n {
		if _, err := a.T.Append(context.Background(), b.Info.ID, msg(uint64(i+1), "bob"), []string{"bob"}); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	calls := b.H.Appends()[before:]
	if len(calls) != n {
		t.Fatalf("handler saw %d appends, want %d", len(calls), n)
	}
	for i, c := range calls {
		if c.Msg.ID != uint64(i+1) {
			t.Fatalf("append %d arrived as #%d", c.Msg.ID, i+1)
		}
	}
}

func testUnknownNode(t *testing.T, s Suite) {
	a, _ := pair(t, s, DefaultParams)
	start := time.Now()
	_, err := a.T.Append(context.Background(), "nobody", msg(1, "x"), []string{"x"})
	if !errors.Is(err, cluster.ErrForward) {
		t.Fatalf("append to an unknown node: %v", err)
	}
	if d := time.Since(start); d > Slack {
		t.Fatalf("unknown node took %s to fail", d)
	}
}

func testCanceledContext(t *testing.T, s Suite) {
	a, b := pair(t, s, DefaultParams)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := a.T.Append(ctx, b.Info.ID, msg(1, "x"), []string{"x"})
	if !errors.Is(err, cluster.ErrForward) || !errors.Is(err, context.Canceled) {
		t.Fatalf("append with a canceled context: %v", err)
	}
}

func testPeerDown(t *testing.T, s Suite) {
	p := DefaultParams
	p.RequestTimeout = 500 * time.Millisecond
	a, b := pair(t, s, p)
	b.Close(t)
	// Every call fails with ErrForward within the timeout, whether the
	// loss is noticed by the link or by the deadline; none hangs or
	// succeeds.
	for i := range 5 {
		start := time.Now()
		_, err := a.T.Append(context.Background(), b.Info.ID, msg(uint64(i+1), "bob"), []string{"bob"})
		if !errors.Is(err, cluster.ErrForward) {
			t.Fatalf("append %d to a closed peer: %v", i, err)
		}
		if d := time.Since(start); d > p.RequestTimeout+Slack {
			t.Fatalf("append %d took %s (timeout %s)", i, d, p.RequestTimeout)
		}
	}
	// Pushes to it are dropped without blocking.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 2000 {
			a.T.Push(b.Info.ID, msg(1, "bob"), []cluster.PushTarget{{User: "bob", Seq: 1}})
		}
	}()
	select {
	case <-done:
	case <-time.After(Patience):
		t.Fatal("Push blocked on a dead peer")
	}
}

func testHandlerTimeout(t *testing.T, s Suite) {
	a, b := pair(t, s, DefaultParams)
	release := make(chan struct{})
	defer close(release)
	b.H.SetAppendFunc(func(ctx context.Context, msg persist.Message, in []string) (persist.AppendResult, error) {
		select {
		case <-release:
		case <-ctx.Done():
			// The owner's context ends with the requester's budget.
		}
		return persist.AppendResult{}, ctx.Err()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := a.T.Append(ctx, b.Info.ID, msg(1, "bob"), []string{"bob"})
	d := time.Since(start)
	switch {
	case errors.Is(err, cluster.ErrForward) && errors.Is(err, context.DeadlineExceeded):
	case errors.Is(err, context.DeadlineExceeded):
		// The owner's deadline fired first and it said so: also fine.
	default:
		t.Fatalf("append to a hung owner: %v", err)
	}
	if d > 300*time.Millisecond+Slack {
		t.Fatalf("append to a hung owner returned after %s", d)
	}
	// Without a caller deadline, the transport's default applies.
	p := DefaultParams
	p.RequestTimeout = 300 * time.Millisecond
	c := StartNode(t, s, p, "node-c", "", nil)
	Connect(a, b, c)
	WaitLinked(t, c, a)
	start = time.Now()
	_, err = c.T.Append(context.Background(), b.Info.ID, msg(1, "bob"), []string{"bob"})
	if !errors.Is(err, cluster.ErrForward) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("append without deadline to a hung owner: %v", err)
	}
	if d := time.Since(start); d > p.RequestTimeout+Slack {
		t.Fatalf("default timeout not applied: %s", d)
	}
}

func testPeerRestart(t *testing.T, s Suite) {
	p := DefaultParams
	p.RequestTimeout = 500 * time.Millisecond
	a, b := pair(t, s, p)
	addr := b.Info.MeshAddr
	b.Close(t)
	if _, err := a.T.Append(context.Background(), b.Info.ID, msg(1, "bob"), []string{"bob"}); !errors.Is(err, cluster.ErrForward) {
		t.Fatalf("append to a stopped peer: %v", err)
	}
	h2 := &Handler{}
	var b2 *Node
	testutil.Eventually(t, Patience, "node-b restarted on its port", func() error { // the old port may linger briefly
		var err error
		b2, err = TryStartNode(t, s, p, b.Info.ID, addr, h2)
		return err
	})
	if b2.Info.BootEpoch <= b.Info.BootEpoch {
		t.Fatal("restart did not get a newer epoch")
	}
	a.T.SetPeers([]membership.NodeInfo{a.Info, b2.Info})
	b2.T.SetPeers([]membership.NodeInfo{a.Info, b2.Info})
	testutil.Eventually(t, Patience, "link to the restarted node", func() error {
		_, err := a.T.Append(context.Background(), b2.Info.ID, msg(2, "bob"), []string{"bob"})
		return err
	})
	if len(h2.Appends()) == 0 {
		t.Fatal("the restarted node's handler saw nothing")
	}
	if _, err := b2.T.Append(context.Background(), a.Info.ID, msg(3, "bob"), []string{"bob"}); err != nil {
		t.Fatalf("restarted node -> a: %v", err)
	}
}

func testBoundedQueue(t *testing.T, s Suite) {
	p := DefaultParams
	p.QueueSize = 4
	p.RequestTimeout = 10 * time.Second
	a, b := pair(t, s, p)
	release := make(chan struct{})
	var blocked atomic.Int64
	b.H.SetAppendFunc(func(ctx context.Context, msg persist.Message, in []string) (persist.AppendResult, error) {
		blocked.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return persist.AppendResult{}, ctx.Err()
		}
		return Echo(ctx, msg, in)
	})
	var wg sync.WaitGroup
	errs := make(chan error, p.QueueSize)
	for i := range p.QueueSize {
		wg.Go(func() {
			_, err := a.T.Append(context.Background(), b.Info.ID, msg(uint64(i+1), "bob"), []string{"bob"})
			errs <- err
		})
	}
	testutil.Eventually(t, Patience, "every append answered", func() error {
		if n := blocked.Load(); n < int64(p.QueueSize) {
			return fmt.Errorf("%d of %d appends reached the owner", n, p.QueueSize)
		}
		return nil
	})
	start := time.Now()
	_, err := a.T.Append(context.Background(), b.Info.ID, msg(99, "bob"), []string{"bob"})
	if !errors.Is(err, cluster.ErrForward) {
		close(release)
		wg.Wait()
		t.Fatalf("append beyond the queue bound: %v", err)
	}
	if d := time.Since(start); d > Slack/2 {
		t.Errorf("a full queue took %s to fail (must fail at once)", d)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("queued append: %v", err)
		}
	}
	// The queue drains: new appends succeed again.
	if _, err := a.T.Append(context.Background(), b.Info.ID, msg(100, "bob"), []string{"bob"}); err != nil {
		t.Fatal(err)
	}
}

func testClosedTransport(t *testing.T, s Suite) {
	a, b := pair(t, s, DefaultParams)
	a.Close(t)
	if err := a.T.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err := a.T.Append(context.Background(), b.Info.ID, msg(1, "bob"), []string{"bob"})
	if !errors.Is(err, cluster.ErrForward) {
		t.Fatalf("append on a closed transport: %v", err)
	}
	a.T.Push(b.Info.ID, msg(1, "bob"), nil)
	a.T.Kick(b.Info.ID, "bob", "d", 1)
	a.T.SetPeers([]membership.NodeInfo{a.Info, b.Info})
}
