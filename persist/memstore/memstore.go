// Package memstore is an in-memory persist.Store for tests, benchmarks of the
// engine alone, and demos.
//
// It is NOT durable: everything is lost when the process exits, so the
// "returns nil means durable" clause of persist.MessageStore holds only for
// the lifetime of the Store. Every other guarantee of the persist interfaces
// holds, and the implementation passes persist/storetest.
//
// All state sits behind one sync.RWMutex: writes are serialised, reads run in
// parallel. Append is O(len(inboxes)) plus the copy of the body. Appenders
// that must not wait for each other (event loops) use TryAppendAsync and
// HandOffAppend, which hand a contended append to the lock's holder
// (handoff.go).
package memstore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/imgn/imgn/persist"
)

var (
	_ persist.Store         = (*Store)(nil)
	_ persist.AsyncAppender = (*Store)(nil)
	_ persist.NonBlocking   = (*Store)(nil)
	_ persist.Retainer      = (*Store)(nil)
	_ persist.ChatStore     = (*Store)(nil)
)

// Store is an in-memory persist.Store. The zero value is not usable; call New.
// A Store is safe for concurrent use by any number of goroutines.
type Store struct {
	mu     sync.RWMutex
	closed bool
	m      *messages // messages and inboxes (see messages.go)
	// Delivery cursors have a lock of their own: a PUSH_ACK on one event
	// loop then never waits for an append on another. nil once closed.
	curMu   sync.Mutex
	cursors map[cursorKey]uint64
	// Accounts: creation time by id, and the password hashes of those that
	// have one (accounts provisioned by token login have none): most
	// accounts then cost one small map entry.
	users  map[string]int64
	hashes map[string]string
	groups groupTable // groups.go
	comb   combiner   // the append hand-off (handoff.go)
}

type cursorKey struct{ user, device string }

// New returns an empty Store that keeps everything.
func New() *Store {
	s, _ := NewWith(persist.Retention{})
	return s
}

// NewWith returns an empty Store bounded by r (see persist.Retention; a
// negative setting is an error). The cap (InboxMax) is enforced on every
// append; age (MaxAge) and the dedup window by passes that appends start at
// most once a second and advance a few records at a time (so retention
// keeps pace with any append rate), and by EnforceRetention.
func NewWith(r persist.Retention) (*Store, error) {
	r, err := r.WithDefaults()
	if err != nil {
		return nil, fmt.Errorf("memstore: %w", err)
	}
	s := &Store{
		m:       newMessages(r),
		cursors: make(map[cursorKey]uint64),
		users:   make(map[string]int64),
		hashes:  make(map[string]string),
		groups:  newGroupTable(),
	}
	s.comb.room.L = &s.comb.mu
	return s, nil
}

// FirstSeq implements persist.Retainer.
func (s *Store) FirstSeq(ctx context.Context, user string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := persist.CheckID("user", user); err != nil {
		return 0, fmt.Errorf("memstore: first seq: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, persist.ErrClosed
	}
	if in := s.m.inboxes[user]; in != nil {
		return in.first, nil
	}
	return 1, nil
}

// EnforceRetention implements persist.Retainer: one whole pass, now.
func (s *Store) EnforceRetention(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return persist.ErrClosed
	}
	s.m.pass(s.m.clock())
	return nil
}

// copyMsg returns m with private copies of its strings and body.
func copyMsg(m *persist.Message) persist.Message {
	c := *m
	c.From, c.To, c.ClientMsgID = strings.Clone(m.From), strings.Clone(m.To), strings.Clone(m.ClientMsgID)
	c.Body = slices.Clone(m.Body)
	return c
}

// Append implements persist.MessageStore. The message and its inbox entries
// become visible to readers atomically. On a fresh insert the returned
// Msg.Body is msg.Body itself (the caller's slice); on a duplicate it is a
// fresh copy of the stored body. Seqs is always a new slice.
func (s *Store) Append(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	if err := ctx.Err(); err != nil {
		return persist.AppendResult{}, err
	}
	op := persist.AppendOp{Msg: msg, Inboxes: inboxes}
	err := persist.CheckAppend(msg, inboxes)
	s.mu.Lock()
	s.appendLocked(&op, err)
	if op.Err == nil && op.Result.Duplicate {
		// The original lives in the store's arena, which a later append
		// may reuse once it expires: copy it while the lock holds.
		op.Result.Msg = copyMsg(&op.Result.Msg)
	}
	s.mu.Unlock()
	if op.Err != nil {
		return persist.AppendResult{}, op.Err
	}
	return op.Result, nil
}

// NonBlocking implements persist.NonBlocking: no call waits for I/O.
func (s *Store) NonBlocking() {}

// AppendAsync implements persist.AsyncAppender. It completes op before it
// returns: op.Done runs on the caller's goroutine under the store's lock,
// so appends complete in seq order per inbox. On a duplicate Result.Msg's
// strings and Body are the store's own, valid only during Done (the
// arena of an expired message is reused).
func (s *Store) AppendAsync(op *persist.AppendOp) {
	// Validation reads only op: it runs before the lock, which is held for
	// as little as possible (every event loop appends under it).
	err := persist.CheckAppend(op.Msg, op.Inboxes)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appendLocked(op, err)
	op.Done.AppendDone(op)
}

// appendLocked runs op (s.mu held), filling op.Result or op.Err. checkErr is
// persist.CheckAppend's verdict on op, taken before the lock. Result.Seqs
// reuses the capacity op brought. On a fresh insert Result.Msg is op.Msg;
// on a duplicate it is the stored message, in the store's arena.
func (s *Store) appendLocked(op *persist.AppendOp, checkErr error) {
	msg, inboxes := &op.Msg, op.Inboxes
	op.Result, op.Err = persist.AppendResult{Seqs: op.Result.Seqs[:0]}, nil
	if checkErr != nil {
		op.Err = fmt.Errorf("memstore: append: %w", checkErr)
		return
	}
	if s.closed {
		op.Err = persist.ErrClosed
		return
	}
	m := s.m
	m.expire()
	res := &op.Result
	res.Msg = *msg
	var r *record
	slot, dup, probe := m.find(msg.From, msg.ClientMsgID)
	if dup {
		var c *chunk
		r, c = m.rec(slot)
		res.Msg = c.message(r)
		res.Duplicate = true
	} else if other, ok := m.idSlot(msg.ID); ok {
		r, c := m.rec(other)
		op.Err = fmt.Errorf("memstore: append: %w: message id %d already stored for another (from, client message id) (%q, %q)",
			persist.ErrInvalid, msg.ID, c.str(r.from), c.str(r.cmid))
		return
	} else {
		slot, r = m.store(msg, &probe)
		if n := len(inboxes); n > len(r.in) {
			m.more[slot] = make([]inboxRef, 0, n-len(r.in)) // one allocation per group message
		}
	}
	for _, name := range inboxes {
		in := m.inbox(name, true)
		if dup {
			if seq := m.seqIn(slot, r, in); seq != 0 {
				res.Seqs = append(res.Seqs, seq)
				continue
			}
		}
		seq := m.appendTo(in, slot, r)
		res.Seqs = append(res.Seqs, seq)
		m.converse(in, &res.Msg, seq)
	}
}

// Lookup implements persist.MessageStore. The returned Body is a fresh copy.
func (s *Store) Lookup(ctx context.Context, from, clientMsgID string) (persist.Message, error) {
	if err := ctx.Err(); err != nil {
		return persist.Message{}, err
	}
	if err := persist.CheckLookup(from, clientMsgID); err != nil {
		return persist.Message{}, fmt.Errorf("memstore: lookup: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return persist.Message{}, persist.ErrClosed
	}
	slot, ok := s.m.lookup(from, clientMsgID)
	if !ok {
		return persist.Message{}, persist.ErrNotFound
	}
	r, c := s.m.rec(slot)
	msg := c.message(r)
	return copyMsg(&msg), nil
}

// ReadInbox implements persist.MessageStore. Every returned Body is a fresh
// copy owned by the caller. Entries dropped by retention are skipped: the
// first entry returned may then be later than afterSeq+1.
func (s *Store) ReadInbox(ctx context.Context, user string, afterSeq uint64, limit int) ([]persist.InboxEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := persist.CheckRead(user, limit); err != nil {
		return nil, fmt.Errorf("memstore: read inbox: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, persist.ErrClosed
	}
	in := s.m.inboxes[user]
	if in == nil || afterSeq >= in.head {
		return nil, nil
	}
	from := max(afterSeq+1, in.first)
	slots := in.slots[from-in.first:]
	if len(slots) > limit {
		slots = slots[:limit]
	}
	out := make([]persist.InboxEntry, len(slots))
	for i, slot := range slots {
		r, c := s.m.rec(slot &^ hiddenBit)
		msg := c.message(r)
		out[i] = persist.InboxEntry{Seq: from + uint64(i), Msg: copyMsg(&msg), Deleted: slot&hiddenBit != 0}
		if out[i].Deleted {
			out[i].Msg.Body = nil
		}
	}
	return out, nil
}

// LastSeq implements persist.MessageStore.
func (s *Store) LastSeq(ctx context.Context, user string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := persist.CheckID("user", user); err != nil {
		return 0, fmt.Errorf("memstore: last seq: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, persist.ErrClosed
	}
	if in := s.m.inboxes[user]; in != nil {
		return in.head, nil
	}
	return 0, nil
}

// SetCursor implements persist.MessageStore.
func (s *Store) SetCursor(ctx context.Context, user, device string, seq uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkUserDevice(user, device); err != nil {
		return fmt.Errorf("memstore: set cursor: %w", err)
	}
	s.curMu.Lock()
	defer s.curMu.Unlock()
	if s.cursors == nil {
		return persist.ErrClosed
	}
	k := cursorKey{user, device}
	if seq > s.cursors[k] {
		s.cursors[k] = seq
	}
	return nil
}

// Cursor implements persist.MessageStore.
func (s *Store) Cursor(ctx context.Context, user, device string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := checkUserDevice(user, device); err != nil {
		return 0, fmt.Errorf("memstore: cursor: %w", err)
	}
	s.curMu.Lock()
	defer s.curMu.Unlock()
	if s.cursors == nil {
		return 0, persist.ErrClosed
	}
	return s.cursors[cursorKey{user, device}], nil
}

func checkUserDevice(user, device string) error {
	if err := persist.CheckID("user", user); err != nil {
		return err
	}
	return persist.CheckID("device", device)
}

// CreateUser implements persist.UserStore.
func (s *Store) CreateUser(ctx context.Context, u persist.User) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := persist.CheckID("user", u.ID); err != nil {
		return fmt.Errorf("memstore: create user: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return persist.ErrClosed
	}
	if _, ok := s.users[u.ID]; ok {
		return persist.ErrUserExists
	}
	s.users[u.ID] = u.Created
	if u.PasswordHash != "" {
		s.hashes[u.ID] = u.PasswordHash
	}
	return nil
}

// GetUser implements persist.UserStore.
func (s *Store) GetUser(ctx context.Context, id string) (persist.User, error) {
	if err := ctx.Err(); err != nil {
		return persist.User{}, err
	}
	if err := persist.CheckID("user", id); err != nil {
		return persist.User{}, fmt.Errorf("memstore: get user: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return persist.User{}, persist.ErrClosed
	}
	created, ok := s.users[id]
	u := persist.User{ID: id, PasswordHash: s.hashes[id], Created: created}
	if !ok {
		return persist.User{}, persist.ErrNotFound
	}
	return u, nil
}

// Close releases the memory held by the store. Every later call, including
// a second Close, returns persist.ErrClosed. Close is safe to call
// concurrently with other methods: calls that already hold the lock finish
// first.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return persist.ErrClosed
	}
	s.closed = true
	s.m, s.users, s.hashes, s.groups = nil, nil, nil, groupTable{}
	s.curMu.Lock()
	s.cursors = nil
	s.curMu.Unlock()
	return nil
}

var _ persist.UserUpdater = (*Store)(nil)

// UpdateUser implements persist.UserUpdater.
func (s *Store) UpdateUser(ctx context.Context, u persist.User) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := persist.CheckID("user", u.ID); err != nil {
		return fmt.Errorf("memstore: update user: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return persist.ErrClosed
	}
	if _, ok := s.users[u.ID]; !ok {
		return persist.ErrNotFound
	}
	if u.PasswordHash == "" {
		delete(s.hashes, u.ID)
	} else {
		s.hashes[u.ID] = u.PasswordHash
	}
	return nil
}
