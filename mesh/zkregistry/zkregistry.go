// Package zkregistry is the ZooKeeper implementation of membership.Registry, on
// github.com/go-zookeeper/zk.
//
// Layout: one ephemeral znode per node, <Root>/<node id>, holding the JSON
// of membership.NodeInfo plus an "instance" field that identifies the Registry
// value (the process) that wrote it. Root (default /im/nodes) and its
// parents are persistent and created on demand.
//
// Guarantees and behaviour:
//
//   - Membership is level-triggered. One supervisor goroutine re-reads the
//     full child list with a child watch, keeps a data watch on every
//     member, and also re-reads everything every ResyncInterval. A change
//     notification only says "look again", so nodes started at the same
//     instant always find each other, and a lost notification delays a
//     change by at most ResyncInterval.
//   - Registration is supervised: on every resync, on every new session and
//     whenever its znode changes, the supervisor checks that this node's
//     znode exists, belongs to the current session and holds the latest
//     data, and re-creates it otherwise. After a session expiry the client
//     library opens a new session and the node re-registers within one
//     resync. A znode left by an expired session of the same instance is
//     deleted and re-created; one left by an older boot epoch (a crashed
//     and restarted node) is replaced at once; one with a newer or equal
//     epoch from another instance is never touched (ErrIDConflict: the
//     registry waits for it to go away).
//   - While ZooKeeper is unreachable, Nodes and Watch keep the last known
//     view, Register/Update/Deregister record the desired state and wait for
//     it (until their ctx ends), and everything is published on reconnection.
//   - A node uses two ZooKeeper sessions: one owns the ephemeral znode and
//     is kept across reconnections; the other only reads with watches and is
//     replaced by a fresh session whenever its connection drops (see
//     Registry). A watcher (NewWatcher) uses one session.
//   - Close closes the sessions, which removes the node's znode at once
//     when ZooKeeper is reachable (otherwise after SessionTimeout).
package zkregistry

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/imgn/imgn/internal/defaults"
	"github.com/imgn/imgn/mesh/membership"
)

// Defaults of Config.
const (
	DefaultRoot = "/im/nodes"
	// DefaultSessionTimeout bounds how long a crashed node keeps owning
	// inboxes nobody can write (sends to them fail with FORWARD_FAILED
	// meanwhile). 4 s is the least a stock ZooKeeper grants (2 x its
	// default tickTime of 2 s); the cost of a short timeout is that a node
	// whose heartbeats stall that long (a GC or VM pause, a network cut
	// to ZooKeeper) loses its registration and its inboxes move away and
	// back when it resumes.
	DefaultSessionTimeout = 4 * time.Second
	DefaultResyncInterval = 2 * time.Second
)

// fullResyncEvery: every this many resync ticks, member data is re-read even
// when a data watch is armed (a safety net against a watch that was lost).
const fullResyncEvery = 5

// closeWait bounds how long Close waits for the client library's goroutines.
const closeWait = 5 * time.Second

// Config configures a Registry. The zero value of every field but Servers
// means its default.
type Config struct {
	// Servers are the ZooKeeper servers, "host:port" (required).
	Servers []string
	// Root is the znode under which nodes register (default DefaultRoot). It
	// must be an absolute path other than "/", without a trailing slash.
	Root string
	// SessionTimeout is the requested ZooKeeper session timeout (default
	// DefaultSessionTimeout). The server clamps it to [2, 20] x its
	// tickTime. A crashed node disappears from the view after about this
	// long; a node whose process is paused longer loses its session and
	// re-registers when it resumes.
	SessionTimeout time.Duration
	// ResyncInterval is the period of the full membership re-read and of
	// the registration check (default DefaultResyncInterval).
	ResyncInterval time.Duration
	// Logger receives state transitions (Info/Warn) and the client
	// library's messages (Debug). Default slog.Default().
	Logger *slog.Logger
	// Dialer, if set, opens connections to ZooKeeper (tests, proxies).
	// Default net.DialTimeout.
	Dialer func(network, address string, timeout time.Duration) (net.Conn, error)
}

// minSessionTimeout is the shortest SessionTimeout Validate accepts.
const minSessionTimeout = 100 * time.Millisecond

// WithDefaults returns c with every zero field set to its default (the
// Default... constants above; slog.Default(); net.DialTimeout). It judges
// nothing: New and NewWatcher call WithDefaults, then Validate.
func (c Config) WithDefaults() Config {
	defaults.Set(&c.Root, DefaultRoot)
	defaults.Set(&c.SessionTimeout, DefaultSessionTimeout)
	defaults.Set(&c.ResyncInterval, DefaultResyncInterval)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Dialer == nil {
		c.Dialer = net.DialTimeout
	}
	return c
}

// Validate judges every field as given (call WithDefaults first: a zero
// that WithDefaults would fill is an error here) and reports every
// problem, naming the field and what it accepts. It changes nothing.
func (c Config) Validate() error {
	var errs []error
	if len(c.Servers) == 0 {
		errs = append(errs, errors.New("no Servers given (the ZooKeeper servers, host:port)"))
	}
	if slices.Contains(c.Servers, "") {
		errs = append(errs, errors.New("an empty address in Servers"))
	}
	if !strings.HasPrefix(c.Root, "/") || c.Root == "/" || strings.HasSuffix(c.Root, "/") ||
		path.Clean(c.Root) != c.Root {
		errs = append(errs, fmt.Errorf("the Root must be an absolute, clean path other than /, got %q", c.Root))
	}
	if c.SessionTimeout < minSessionTimeout {
		errs = append(errs, fmt.Errorf("SessionTimeout must be at least %s, got %s", minSessionTimeout, c.SessionTimeout))
	}
	if c.ResyncInterval <= 0 {
		errs = append(errs, fmt.Errorf("ResyncInterval must be positive, got %s", c.ResyncInterval))
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("a Logger is required (WithDefaults sets slog.Default())"))
	}
	if c.Dialer == nil {
		errs = append(errs, errors.New("a Dialer is required (WithDefaults sets net.DialTimeout)"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("zkregistry: config: %w", err)
	}
	return nil
}

// Status is a snapshot of a Registry's connection and registration state,
// for health checks and admin pages.
type Status struct {
	// Connected is true while a ZooKeeper session is established.
	Connected bool
	// SessionID is the current (or last) ZooKeeper session id, 0 if none.
	SessionID int64
	// Registered is true when this node's znode is known to exist in the
	// current session with the latest data.
	Registered bool
	// LastSync is when the member list was last read successfully (zero if
	// never): the age of the view while ZooKeeper is unreachable.
	LastSync time.Time
	// Err says why the node is not (yet) published: it wraps
	// membership.ErrIDConflict or membership.ErrUnavailable; nil when published or not
	// registering.
	Err error
}

// Registry is the ZooKeeper membership.Registry. Create it with New (a node) or
// NewWatcher (read-only, e.g. the router). It is safe for concurrent use.
//
// A node's Registry holds two ZooKeeper sessions: the registration session,
// which owns the ephemeral znode and is kept (reconnected) as long as
// ZooKeeper allows, and a watch session used only for reading the members
// with watches, which is replaced by a fresh one whenever it loses its
// connection (all watches are then re-armed by a full re-read). Watches are
// never carried across a reconnection: that path of the client library
// (re-sending watches, SetWatches) fails silently when it fails, and races
// with its receive loop (go-zookeeper/zk v1.0.4: a data race on
// Conn.lastZxid between recvLoop and sendSetWatches, upstream PR #35 still
// open). A watcher has only the watch session.
type Registry struct {
	cfg      Config
	log      *slog.Logger
	readOnly bool
	instance string // identifies this Registry's znodes across sessions
	root     string
	sess     *zkConn // registration session; nil for a watcher
	feed     membership.ViewFeed

	kick       chan struct{}  // wakes the supervisor (buffer 1)
	sessKick   chan struct{}  // a session state changed (buffer 1)
	sawExpired atomic.Bool    // the registration session expired
	wgen       atomic.Uint64  // generation of the current watch session
	wHad       atomic.Bool    // the current watch session was established
	wLost      atomic.Bool    // ... and then lost its connection
	fired      chan watchKey  // armed watches that fired
	done       chan struct{}  // closed by Close
	supDone    chan struct{}  // closed when the supervisor exits
	wg         sync.WaitGroup // watch forwarders and background closers

	wmu     sync.Mutex
	watch   *zkConn // current watch session; written by the supervisor under wmu
	wclosed bool    // Close has taken the watch session

	mu         sync.Mutex
	closed     bool
	desired    *membership.NodeInfo // nil: not registering
	gen        uint64               // bumped by every Register/Update/Deregister
	pubGen     uint64               // the latest gen whose state was applied
	published  bool                 // our znode exists with desired data (as of pubSession)
	pubSession int64                // session that owns our published znode
	lastErr    error                // why the latest attempt failed; nil after success
	changed    chan struct{}        // closed and replaced on every state change
	sessionID  int64
	lastSync   time.Time

	// Owned by the supervisor goroutine.
	childWatch bool                // a child watch on root is armed
	rootWatch  bool                // an exists watch on a missing root is armed
	dataWatch  map[string]bool     // child name -> data watch armed
	wSynced    bool                // Sync done on the current watch session
	cache      map[string]cacheEnt // child name -> last data read
	ownID      string              // ID of the znode we last created ("" if none)
	ownData    []byte              // data we last wrote to it
	ownSession int64               // session that created it
	ownVersion int32               // its data version after our last write
	rootReady  bool                // root known to exist
	evSession  int64               // last session seen established
	connected  bool                // a session was established at the last look
}

// zkConn is one client connection (session) with its own dialer tracking,
// so that closing it can unblock the library even if the server hangs.
type zkConn struct {
	c      *zk.Conn
	events <-chan zk.Event
	t      *connTracker
}

// close closes the session and waits (bounded) for the library's
// goroutines to exit.
func (z *zkConn) close(log *slog.Logger) {
	z.c.Close()    // closes the session: its ephemeral znodes go with it
	z.t.closeAll() // unblocks the library if the server hangs
	timer := time.NewTimer(closeWait)
	defer timer.Stop()
	for open := true; open; { // the library closes events when its loop ends
		select {
		case _, open = <-z.events:
		case <-timer.C:
			log.Warn("zookeeper client did not stop in time")
			open = false
		}
	}
}

type cacheEnt struct {
	info membership.NodeInfo
	ok   bool // data decoded and valid
}

type watchKind uint8

const (
	watchChildren watchKind = iota
	watchRoot
	watchData
)

type watchKey struct {
	gen  uint64 // watch session generation
	kind watchKind
	name string // child name for watchData
}

// wireNode is the znode payload: NodeInfo's fields plus the instance.
type wireNode struct {
	membership.NodeInfo
	Instance string `json:"instance,omitempty"`
}

var _ membership.Registry = (*Registry)(nil)

// New returns a Registry that can register this node. It connects in the
// background and returns at once: an unreachable ZooKeeper is not an error
// (Nodes returns nil until the first successful read). Only invalid
// configuration is.
func New(cfg Config) (*Registry, error) { return newRegistry(cfg, false) }

// NewWatcher returns a read-only Registry: it watches the members and never
// writes (Register, Update and Deregister return membership.ErrReadOnly). A
// missing root is an empty membership.
func NewWatcher(cfg Config) (*Registry, error) { return newRegistry(cfg, true) }

func newRegistry(cfg Config, readOnly bool) (*Registry, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("zkregistry: instance id: %w", err)
	}
	r := &Registry{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "zkregistry", "root", cfg.Root),
		readOnly:  readOnly,
		instance:  hex.EncodeToString(id[:]),
		root:      cfg.Root,
		kick:      make(chan struct{}, 1),
		sessKick:  make(chan struct{}, 1),
		fired:     make(chan watchKey, 64),
		done:      make(chan struct{}),
		supDone:   make(chan struct{}),
		changed:   make(chan struct{}),
		dataWatch: make(map[string]bool),
		cache:     make(map[string]cacheEnt),
	}
	if !readOnly {
		sess, err := r.dial(r.newTracker(), r.onSessionEvent)
		if err != nil {
			return nil, err
		}
		r.sess = sess
	}
	w, err := r.dialWatch()
	if err != nil {
		if r.sess != nil {
			r.sess.close(r.log)
		}
		return nil, err
	}
	r.watch = w
	go r.run()
	return r, nil
}

func (r *Registry) newTracker() *connTracker {
	return &connTracker{dial: r.cfg.Dialer, open: make(map[net.Conn]struct{})}
}

// dial opens a session in the background, dialing through t.
func (r *Registry) dial(t *connTracker, callback func(zk.Event)) (*zkConn, error) {
	c, events, err := zk.Connect(r.cfg.Servers, r.cfg.SessionTimeout,
		zk.WithDialer(t.Dial),
		zk.WithHostProvider(&hostProvider{}),
		zk.WithEventCallback(callback),
		zk.WithLogger(zkLogger{r.log}),
		zk.WithLogInfo(false),
		zk.WithMaxBufferSize(4<<20),
	)
	if err != nil {
		return nil, fmt.Errorf("zkregistry: connect: %w", err)
	}
	return &zkConn{c: c, events: events, t: t}, nil
}

// dialWatch opens a new watch session (the next generation).
func (r *Registry) dialWatch() (*zkConn, error) {
	g := r.wgen.Add(1)
	r.wHad.Store(false)
	r.wLost.Store(false)
	t := r.newTracker()
	return r.dial(t, func(ev zk.Event) { r.onWatchEvent(g, t, ev) })
}

// Register implements membership.Registry.
func (r *Registry) Register(ctx context.Context, self membership.NodeInfo) error {
	if err := membership.ValidateNode(self); err != nil {
		return err
	}
	g, err := r.setDesired(&self, true)
	if err != nil {
		return err
	}
	return r.wait(ctx, g, true, self.ID)
}

// Update implements membership.Registry.
func (r *Registry) Update(ctx context.Context, self membership.NodeInfo) error {
	if err := membership.ValidateNode(self); err != nil {
		return err
	}
	g, err := r.setDesired(&self, false)
	if err != nil {
		return err
	}
	return r.wait(ctx, g, true, self.ID)
}

// Deregister implements membership.Registry. It returns once the znode is deleted
// (or ctx ends; the deletion is then retried in the background).
func (r *Registry) Deregister(ctx context.Context) error {
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return membership.ErrClosed
	case r.readOnly:
		r.mu.Unlock()
		return membership.ErrReadOnly
	case r.desired == nil:
		r.mu.Unlock()
		return nil
	}
	id := r.desired.ID
	r.desired = nil
	r.gen++
	g := r.gen
	r.mu.Unlock()
	r.wake()
	return r.wait(ctx, g, false, id)
}

func (r *Registry) setDesired(self *membership.NodeInfo, register bool) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return 0, membership.ErrClosed
	case r.readOnly:
		return 0, membership.ErrReadOnly
	case r.desired == nil && !register:
		return 0, membership.ErrNotRegistered
	case r.desired != nil && r.desired.ID != self.ID && register:
		return 0, fmt.Errorf("%w: %q registered, not %q", membership.ErrAlreadyRegistered, r.desired.ID, self.ID)
	case r.desired != nil && r.desired.ID != self.ID:
		return 0, fmt.Errorf("%w: update of %q names %q", membership.ErrInvalidNode, r.desired.ID, self.ID)
	}
	r.desired = self
	r.gen++
	r.wake()
	return r.gen, nil
}

// wait blocks until the state of generation g (or a later one) is applied:
// published when want is true, removed otherwise.
func (r *Registry) wait(ctx context.Context, g uint64, want bool, id string) error {
	for {
		r.mu.Lock()
		switch {
		case r.closed:
			r.mu.Unlock()
			return membership.ErrClosed
		case want && r.desired == nil:
			r.mu.Unlock()
			return fmt.Errorf("zkregistry: node %q: %w (deregistered concurrently)", id, membership.ErrNotRegistered)
		case r.pubGen >= g && (r.published || !want):
			r.mu.Unlock()
			return nil
		}
		ch, cause := r.changed, r.lastErr
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			if cause == nil {
				cause = membership.ErrUnavailable
			}
			verb := "published"
			if !want {
				verb = "removed"
			}
			return fmt.Errorf("zkregistry: node %q not %s yet (still trying): %w: %w", id, verb, cause, ctx.Err())
		}
	}
}

// wake makes the supervisor reconcile soon.
func (r *Registry) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Nodes implements membership.Registry.
func (r *Registry) Nodes() []membership.NodeInfo { return r.feed.View() }

// Watch implements membership.Registry.
func (r *Registry) Watch(ctx context.Context) <-chan []membership.NodeInfo {
	return r.feed.Subscribe(ctx)
}

// Status returns a snapshot of the connection and registration state.
func (r *Registry) Status() Status {
	primary := r.sess
	if primary == nil {
		r.wmu.Lock()
		primary = r.watch
		r.wmu.Unlock()
	}
	state, sid := primary.c.State(), primary.c.SessionID()
	r.mu.Lock()
	defer r.mu.Unlock()
	connected := state == zk.StateHasSession
	if sid != 0 {
		r.sessionID = sid
	}
	st := Status{
		Connected:  connected,
		SessionID:  r.sessionID,
		Registered: r.published && connected && r.pubSession == sid,
		LastSync:   r.lastSync,
	}
	if r.desired != nil && !st.Registered {
		st.Err = r.lastErr
		if st.Err == nil {
			st.Err = membership.ErrUnavailable
		}
	}
	return st
}

// Close implements membership.Registry. It closes the ZooKeeper sessions (which
// deletes this node's znode) and waits for every goroutine of the registry
// and of the client library to exit (bounded by a few seconds if ZooKeeper
// hangs).
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.signalLocked()
	r.mu.Unlock()

	close(r.done)
	r.wmu.Lock()
	r.wclosed = true // the supervisor replaces the watch session no more
	w := r.watch
	r.wmu.Unlock()
	// Closing the sessions also fails the supervisor's pending requests.
	var cw sync.WaitGroup
	if r.sess != nil {
		cw.Go(func() { r.sess.close(r.log) })
	}
	cw.Go(func() { w.close(r.log) })
	cw.Wait()
	<-r.supDone
	r.wg.Wait()
	r.feed.Close()
	return nil
}

// signalLocked wakes every waiter. r.mu must be held.
func (r *Registry) signalLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// run is the supervisor: it owns all reads and writes to ZooKeeper.
func (r *Registry) run() {
	defer close(r.supDone)
	ticker := time.NewTicker(r.cfg.ResyncInterval)
	defer ticker.Stop()
	dirty, checkSelf, full := true, true, false
	ticks := 0
	for {
		if dirty {
			r.reconcile(checkSelf, full)
			dirty, checkSelf, full = false, false, false
		}
		select {
		case <-r.done:
			return
		case <-r.sessKick:
			if r.wLost.Load() {
				r.replaceWatch()
			}
			if r.noteSession() {
				dirty, checkSelf = true, true
			}
			if r.watch.c.State() == zk.StateHasSession {
				dirty = true
			}
		case k := <-r.fired:
			checkSelf = r.disarm(k) || checkSelf
			for more := true; more; {
				select {
				case k := <-r.fired:
					checkSelf = r.disarm(k) || checkSelf
				default:
					more = false
				}
			}
			dirty = true
		case <-r.kick:
			dirty, checkSelf = true, true
		case <-ticker.C:
			ticks++
			dirty, checkSelf, full = true, true, ticks%fullResyncEvery == 0
		}
	}
}

// onSessionEvent is the registration session's event callback. It runs on
// the library's goroutine and must not block: it only notes what happened
// and wakes the supervisor.
func (r *Registry) onSessionEvent(ev zk.Event) {
	if ev.Type != zk.EventSession {
		return
	}
	if ev.State == zk.StateExpired {
		r.sawExpired.Store(true)
	}
	r.sessionChanged()
}

// onWatchEvent is the event callback of watch session generation g, which
// dials through t.
func (r *Registry) onWatchEvent(g uint64, t *connTracker, ev zk.Event) {
	if ev.Type != zk.EventSession || g != r.wgen.Load() {
		return
	}
	switch ev.State {
	case zk.StateHasSession:
		r.wHad.Store(true)
	case zk.StateDisconnected, zk.StateExpired:
		if r.wHad.Load() {
			// This runs on the library's loop before it reconnects:
			// refuse its dials, so that the session is never resumed with
			// its watches (the supervisor replaces it).
			t.refuse()
			r.wLost.Store(true)
		}
	}
	r.sessionChanged()
}

func (r *Registry) sessionChanged() {
	select {
	case r.sessKick <- struct{}{}:
	default:
	}
}

// replaceWatch swaps the watch session, which lost its connection, for a
// new one; the old one is closed in the background. Every watch is re-armed
// by the next reconcile.
func (r *Registry) replaceWatch() {
	r.wmu.Lock()
	if r.wclosed {
		r.wmu.Unlock()
		return
	}
	old := r.watch
	w, err := r.dialWatch()
	if err != nil {
		r.wmu.Unlock()
		r.log.Warn("cannot open a new watch session", "err", err)
		return
	}
	r.watch = w
	r.wmu.Unlock()
	r.log.Debug("watch session lost its connection; watching on a new session")
	r.childWatch, r.rootWatch, r.wSynced = false, false, false
	clear(r.dataWatch)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		old.close(r.log)
	}()
}

// noteSession logs transitions of the registration session (of the watch
// session for a watcher) and reports whether it is established.
func (r *Registry) noteSession() bool {
	primary := r.sess
	if primary == nil {
		primary = r.watch
	}
	state, sid := primary.c.State(), primary.c.SessionID()
	if r.sawExpired.Swap(false) {
		r.log.Warn("zookeeper session expired; re-registering on a new session", "session", fmt.Sprintf("%#x", r.evSession))
	}
	if state != zk.StateHasSession || sid == 0 {
		if r.connected {
			r.connected = false
			r.log.Info("disconnected from zookeeper; keeping the last view")
		}
		return false
	}
	r.mu.Lock()
	r.sessionID = sid
	r.mu.Unlock()
	switch {
	case r.evSession == 0:
		r.log.Debug("connected to zookeeper", "session", fmt.Sprintf("%#x", sid))
	case r.evSession != sid && r.readOnly:
		r.log.Info("reconnected to zookeeper", "session", fmt.Sprintf("%#x", sid))
	case r.evSession != sid:
		r.log.Info("new zookeeper session", "session", fmt.Sprintf("%#x", sid), "previous", fmt.Sprintf("%#x", r.evSession))
	case !r.connected:
		r.log.Info("reconnected to zookeeper", "session", fmt.Sprintf("%#x", sid))
	}
	r.connected, r.evSession = true, sid
	return true
}

// disarm records that a watch fired (or was invalidated) and reports
// whether our own registration may be affected.
func (r *Registry) disarm(k watchKey) bool {
	if k.gen != r.wgen.Load() {
		return false // a watch of a replaced session
	}
	switch k.kind {
	case watchChildren:
		r.childWatch = false
		return true
	case watchRoot:
		r.rootWatch = false
		return true
	default:
		delete(r.dataWatch, k.name)
		return k.name == r.ownID
	}
}

// arm forwards the firing of ch to the supervisor.
func (r *Registry) arm(ch <-chan zk.Event, k watchKey) {
	k.gen = r.wgen.Load()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		select {
		case <-ch:
			select {
			case r.fired <- k:
			case <-r.done:
			}
		case <-r.done:
		}
	}()
}

// reconcile brings our znode to the desired state and re-reads the members.
// Errors leave the view as it was; the next event or tick retries. Nothing
// is sent on a session that is not established (requests queued during a
// disconnection would only time out).
func (r *Registry) reconcile(checkSelf, full bool) {
	if !r.readOnly && checkSelf && r.sess.c.State() == zk.StateHasSession {
		if err := r.syncSelf(); err != nil {
			r.log.Debug("registration not in sync", "err", err)
		}
	}
	if r.watch.c.State() != zk.StateHasSession {
		return
	}
	if !r.wSynced {
		// A new session may be served by a server that is behind the one
		// we used before: catch up first (this also lets the library
		// finish setting up the connection before watches are armed).
		if _, err := r.watch.c.Sync("/"); err != nil {
			r.log.Debug("sync failed", "err", err)
			return
		}
		r.wSynced = true
	}
	if err := r.syncMembers(full); err != nil {
		r.log.Debug("member list not refreshed", "err", err)
		return
	}
	r.mu.Lock()
	r.lastSync = time.Now()
	r.mu.Unlock()
}

// syncSelf makes our znode match r.desired.
func (r *Registry) syncSelf() error {
	r.mu.Lock()
	var desired *membership.NodeInfo
	if r.desired != nil {
		d := *r.desired
		desired = &d
	}
	g := r.gen
	r.mu.Unlock()

	// A previous registration under another ID (or a Deregister) first.
	if r.ownID != "" && (desired == nil || desired.ID != r.ownID) {
		if err := r.removeOwn(); err != nil {
			return r.failed(err)
		}
	}
	if desired == nil {
		r.applied(g, false)
		return nil
	}
	data, err := json.Marshal(wireNode{NodeInfo: *desired, Instance: r.instance})
	if err != nil {
		return r.failed(fmt.Errorf("zkregistry: encode: %w", err))
	}
	if err := r.publish(desired, data); err != nil {
		return r.failed(err)
	}
	r.applied(g, true)
	return nil
}

// applied records that the state of generation g is in ZooKeeper.
func (r *Registry) applied(g uint64, published bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g > r.pubGen {
		r.pubGen = g
	}
	if published && (!r.published || r.pubSession != r.ownSession) {
		r.log.Info("node registered", "id", r.ownID, "session", fmt.Sprintf("%#x", r.ownSession))
	}
	r.published, r.pubSession = published, r.ownSession
	r.lastErr = nil
	r.signalLocked()
}

// failed records why the desired state could not be applied and returns
// err, wrapped in membership.ErrUnavailable unless it is a conflict.
func (r *Registry) failed(err error) error {
	if !errors.Is(err, membership.ErrIDConflict) && !errors.Is(err, membership.ErrUnavailable) {
		err = fmt.Errorf("%w: %w", membership.ErrUnavailable, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lastErr == nil || r.lastErr.Error() != err.Error() {
		if errors.Is(err, membership.ErrIDConflict) {
			r.log.Warn("node id held by another registration; waiting for it to go away", "err", err)
		}
	}
	r.published = false
	r.lastErr = err
	r.signalLocked()
	return err
}

// publish creates or updates our znode. It needs at most a few rounds: a
// concurrent create or delete by someone else just makes it look again.
func (r *Registry) publish(desired *membership.NodeInfo, data []byte) error {
	p := r.root + "/" + desired.ID
	for attempt := 0; attempt < 4; attempt++ {
		sid := r.sess.c.SessionID()
		exists, stat, err := r.sess.c.Exists(p)
		if err != nil {
			return fmt.Errorf("zkregistry: exists %s: %w", p, err)
		}
		if !exists {
			if !r.rootReady {
				if err := r.ensureRoot(); err != nil {
					return err
				}
			}
			_, err := r.sess.c.Create(p, data, zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
			switch {
			case err == nil:
				r.setOwn(desired.ID, data, r.sess.c.SessionID(), 0)
				return nil
			case errors.Is(err, zk.ErrNodeExists):
				continue
			case errors.Is(err, zk.ErrNoNode):
				r.rootReady = false
				continue
			default:
				return fmt.Errorf("zkregistry: create %s: %w", p, err)
			}
		}
		if stat.EphemeralOwner == sid && sid != 0 {
			if r.ownID == desired.ID && r.ownSession == sid && r.ownVersion == stat.Version && bytes.Equal(r.ownData, data) {
				return nil // in sync
			}
			st, err := r.sess.c.Set(p, data, stat.Version)
			if err != nil {
				if errors.Is(err, zk.ErrNoNode) || errors.Is(err, zk.ErrBadVersion) {
					continue
				}
				return fmt.Errorf("zkregistry: set %s: %w", p, err)
			}
			r.setOwn(desired.ID, data, sid, st.Version)
			return nil
		}
		// The znode belongs to another session.
		raw, stat, err := r.sess.c.Get(p)
		if errors.Is(err, zk.ErrNoNode) {
			continue
		}
		if err != nil {
			return fmt.Errorf("zkregistry: get %s: %w", p, err)
		}
		var other wireNode
		decodeErr := json.Unmarshal(raw, &other)
		switch {
		case decodeErr == nil && other.Instance == r.instance:
			r.log.Info("deleting our znode left by an expired session", "path", p, "owner", fmt.Sprintf("%#x", stat.EphemeralOwner))
		case decodeErr != nil || stat.EphemeralOwner == 0 || other.BootEpoch < desired.BootEpoch:
			r.log.Warn("replacing the registration of an older incarnation", "path", p,
				"their_epoch", other.BootEpoch, "our_epoch", desired.BootEpoch, "owner", fmt.Sprintf("%#x", stat.EphemeralOwner))
		default:
			return fmt.Errorf("zkregistry: %s: %w (their boot epoch %d, ours %d)", p, membership.ErrIDConflict, other.BootEpoch, desired.BootEpoch)
		}
		if err := r.sess.c.Delete(p, stat.Version); err != nil &&
			!errors.Is(err, zk.ErrNoNode) && !errors.Is(err, zk.ErrBadVersion) {
			return fmt.Errorf("zkregistry: delete %s: %w", p, err)
		}
	}
	return fmt.Errorf("zkregistry: %s keeps changing under us", p)
}

// setOwn records the znode we wrote last (ID "" for none).
func (r *Registry) setOwn(id string, data []byte, session int64, version int32) {
	r.ownID, r.ownData, r.ownSession, r.ownVersion = id, data, session, version
}

// removeOwn deletes the znode we created, if it is still ours.
func (r *Registry) removeOwn() error {
	p := r.root + "/" + r.ownID
	for attempt := 0; attempt < 4; attempt++ {
		raw, stat, err := r.sess.c.Get(p)
		if errors.Is(err, zk.ErrNoNode) {
			r.setOwn("", nil, 0, 0)
			return nil
		}
		if err != nil {
			return fmt.Errorf("zkregistry: get %s: %w", p, err)
		}
		var other wireNode
		if json.Unmarshal(raw, &other) != nil || other.Instance != r.instance {
			r.setOwn("", nil, 0, 0) // not ours any more
			return nil
		}
		err = r.sess.c.Delete(p, stat.Version)
		if err == nil || errors.Is(err, zk.ErrNoNode) {
			r.setOwn("", nil, 0, 0)
			return nil
		}
		if !errors.Is(err, zk.ErrBadVersion) {
			return fmt.Errorf("zkregistry: delete %s: %w", p, err)
		}
	}
	return fmt.Errorf("zkregistry: %s keeps changing under us", p)
}

// ensureRoot creates the root and its parents (persistent, empty).
func (r *Registry) ensureRoot() error {
	parts := strings.Split(r.root[1:], "/")
	p := ""
	for _, part := range parts {
		p += "/" + part
		_, err := r.sess.c.Create(p, nil, 0, zk.WorldACL(zk.PermAll))
		if err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return fmt.Errorf("zkregistry: create %s: %w", p, err)
		}
	}
	r.rootReady = true
	return nil
}

// syncMembers re-reads the member list and publishes the view.
func (r *Registry) syncMembers(full bool) error {
	children, err := r.listChildren()
	if err != nil {
		return err
	}
	seen := make(map[string]struct{}, len(children))
	view := make([]membership.NodeInfo, 0, len(children))
	for _, name := range children {
		seen[name] = struct{}{}
		ent, cached := r.cache[name]
		if !cached || !r.dataWatch[name] || full {
			var raw []byte
			var err error
			if r.dataWatch[name] {
				raw, _, err = r.watch.c.Get(r.root + "/" + name)
			} else {
				var ch <-chan zk.Event
				raw, _, ch, err = r.watch.c.GetW(r.root + "/" + name)
				if err == nil {
					r.dataWatch[name] = true
					r.arm(ch, watchKey{kind: watchData, name: name})
				}
			}
			if errors.Is(err, zk.ErrNoNode) {
				delete(r.cache, name)
				continue // gone since the listing; its deletion fired the child watch
			}
			if err != nil {
				return fmt.Errorf("zkregistry: get %s/%s: %w", r.root, name, err)
			}
			ent = r.decode(name, raw)
			r.cache[name] = ent
		}
		if ent.ok {
			view = append(view, ent.info)
		}
	}
	for name := range r.cache {
		if _, ok := seen[name]; !ok {
			delete(r.cache, name)
		}
	}
	r.feed.Publish(view)
	return nil
}

// listChildren lists root, arming the child watch if it is not armed. A
// missing root is an empty membership (and an exists watch waits for it).
func (r *Registry) listChildren() ([]string, error) {
	for attempt := 0; attempt < 2; attempt++ {
		var children []string
		var err error
		if r.childWatch {
			children, _, err = r.watch.c.Children(r.root)
		} else {
			var ch <-chan zk.Event
			children, _, ch, err = r.watch.c.ChildrenW(r.root)
			if err == nil {
				r.childWatch = true
				r.arm(ch, watchKey{kind: watchChildren})
			}
		}
		if err == nil {
			return children, nil
		}
		if !errors.Is(err, zk.ErrNoNode) {
			return nil, fmt.Errorf("zkregistry: children %s: %w", r.root, err)
		}
		r.rootReady = false
		if r.rootWatch {
			return nil, nil
		}
		exists, _, ch, err := r.watch.c.ExistsW(r.root)
		if err != nil {
			return nil, fmt.Errorf("zkregistry: exists %s: %w", r.root, err)
		}
		r.rootWatch = true
		r.arm(ch, watchKey{kind: watchRoot})
		if !exists {
			return nil, nil
		}
		// Created in between: list again.
	}
	return nil, nil
}

// decode parses a member's znode data; invalid data is logged and skipped.
func (r *Registry) decode(name string, raw []byte) cacheEnt {
	var w wireNode
	if err := json.Unmarshal(raw, &w); err != nil {
		r.log.Warn("ignoring a member with undecodable data", "node", name, "err", err)
		return cacheEnt{}
	}
	if err := membership.ValidateNode(w.NodeInfo); err != nil || w.ID != name {
		r.log.Warn("ignoring an invalid member", "node", name, "id", w.ID, "err", err)
		return cacheEnt{}
	}
	return cacheEnt{info: w.NodeInfo, ok: true}
}

// connTracker dials ZooKeeper and remembers open connections so that Close
// can unblock the client library when the server hangs.
type connTracker struct {
	dial func(network, address string, timeout time.Duration) (net.Conn, error)
	mu   sync.Mutex
	open map[net.Conn]struct{}
	shut bool
}

// Dial implements zk.Dialer.
func (t *connTracker) Dial(network, address string, timeout time.Duration) (net.Conn, error) {
	c, err := t.dial(network, address, timeout)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shut {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, t: t}
	t.open[tc] = struct{}{}
	return tc, nil
}

// refuse makes later dials fail (open connections are left alone).
func (t *connTracker) refuse() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.shut = true
}

func (t *connTracker) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.shut = true
	for c := range t.open {
		_ = c.(*trackedConn).Conn.Close()
	}
	clear(t.open)
}

type trackedConn struct {
	net.Conn
	t    *connTracker
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.t.mu.Lock()
		delete(c.t.open, c)
		c.t.mu.Unlock()
	})
	return c.Conn.Close()
}

// zkLogger routes the client library's log lines to slog at Debug level
// (they repeat every second while ZooKeeper is down; state transitions are
// logged by the Registry itself).
type zkLogger struct{ l *slog.Logger }

func (z zkLogger) Printf(format string, args ...any) {
	z.l.Debug(fmt.Sprintf(format, args...), "source", "go-zookeeper")
}

// hostProvider is a zk.HostProvider that retries at once after a lost
// connection. The library's default waits a second whenever it has tried
// every server since the last success, which with one server means before
// every reconnect, twice after a session expiry (reconnect, learn of the
// expiry, connect again). Here the first two rounds through the server
// list after a success are immediate; later rounds wait (retryStart).
type hostProvider struct {
	mu       sync.Mutex
	servers  []string
	next     int
	attempts int // since the last successful connection
}

// Init implements zk.HostProvider.
func (h *hostProvider) Init(servers []string) error {
	if len(servers) == 0 {
		return errors.New("zkregistry: no servers")
	}
	h.servers = slices.Clone(servers)
	return nil
}

// Len implements zk.HostProvider.
func (h *hostProvider) Len() int { return len(h.servers) }

// Next implements zk.HostProvider.
func (h *hostProvider) Next() (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.servers[h.next]
	h.next = (h.next + 1) % len(h.servers)
	h.attempts++
	retryStart := h.attempts > 2*len(h.servers) && h.attempts%len(h.servers) == 1%len(h.servers)
	return s, retryStart
}

// Connected implements zk.HostProvider.
func (h *hostProvider) Connected() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.attempts = 0
}
