package pebblestore

import (
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
)

// Reads see only what is durable (package doc): the committer takes a
// Pebble snapshot right after it applies a batch (the database then holds
// that batch and those before it, nothing after), the completer publishes
// it once the batch is synced, before it completes the batch's requests,
// and readers read the newest published one.
//
// Closing a snapshot that is the oldest one open makes Pebble look for
// compactions to schedule (data pinned by it may have become droppable),
// which scores every level under the database mutex. Done once per commit
// that cost about a tenth of the store's CPU at low rates, where commits
// carry a message or two. So the views keep an older snapshot open, the
// anchor: the published snapshot a commit replaces is then never the
// oldest, and its close only unlinks it. The anchor is replaced after a
// maintenance commit (so that retention's deletions can be compacted away
// at once) and otherwise at most every anchorEvery; keys it pins for that
// long cost nothing here, since appends overwrite almost nothing.

// anchorEvery bounds how long the anchor holds back the dropping of
// overwritten and deleted data.
const anchorEvery = time.Second

// readView is a published snapshot with a reference count: one reference
// while it is current, one per reader using it.
type readView struct {
	snap *pebble.Snapshot
	refs atomic.Int64
}

func (v *readView) release() {
	if v.refs.Add(-1) == 0 {
		_ = v.snap.Close()
	}
}

// views holds what readers read. mu guards cur; anchor and anchorAt belong
// to the committer (and Open and Close, when it is not running). The
// committer may have taken up to pipelineDepth views not yet published, so
// up to that many more snapshots are open while batches sync.
type views struct {
	mu  sync.Mutex
	cur *readView

	anchor   *pebble.Snapshot
	anchorAt time.Time
}

// pendingView is a view taken but not yet published, and the anchor it
// replaced (closed once the view is published or dropped).
type pendingView struct {
	v         *readView
	oldAnchor *pebble.Snapshot
}

// publish makes db's current state the one readers see. Open calls it
// before the committer starts: the database then holds only synced writes.
func (vs *views) publish(db *pebble.DB) {
	vs.install(vs.take(db, false))
}

// take snapshots db's current state for readers, to be published (install)
// once every write it holds is synced, or dropped. Only the committer calls
// it (and Open), right after it applied a batch. rotate asks for a new
// anchor now.
func (vs *views) take(db *pebble.DB, rotate bool) pendingView {
	var pv pendingView
	if now := time.Now(); rotate || vs.anchor == nil || now.Sub(vs.anchorAt) >= anchorEvery {
		// The new anchor is taken before the view, so it is no younger.
		pv.oldAnchor, vs.anchor, vs.anchorAt = vs.anchor, db.NewSnapshot(), now
	}
	pv.v = &readView{snap: db.NewSnapshot()}
	pv.v.refs.Store(1)
	return pv
}

// install publishes pv (the completer calls it, in the order the views were
// taken, once their batch is synced).
func (vs *views) install(pv pendingView) {
	if pv.v != nil {
		vs.replace(pv.v)
	}
	if pv.oldAnchor != nil {
		_ = pv.oldAnchor.Close()
	}
}

// drop closes pv without publishing it (its batch failed).
func (pv pendingView) drop() {
	if pv.v != nil {
		pv.v.release()
	}
	if pv.oldAnchor != nil {
		_ = pv.oldAnchor.Close()
	}
}

// replace makes v (nil: none) the current view and drops the current
// view's reference.
func (vs *views) replace(v *readView) {
	vs.mu.Lock()
	old := vs.cur
	vs.cur = v
	vs.mu.Unlock()
	if old != nil {
		old.release()
	}
}

// acquire returns the current view with a reference the caller releases,
// or nil after close.
func (vs *views) acquire() *readView {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	v := vs.cur
	if v != nil {
		v.refs.Add(1)
	}
	return v
}

// close drops the current view and the anchor (Close calls it once the
// committer and every reader are done).
func (vs *views) close() {
	vs.replace(nil)
	if vs.anchor != nil {
		_ = vs.anchor.Close()
		vs.anchor = nil
	}
}

// reader is what reads use: a published snapshot.
type reader interface {
	Get(key []byte) ([]byte, io.Closer, error)
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

// read runs fn on the current view, or returns ErrClosed.
func (s *Store) read(fn func(r reader) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return persist.ErrClosed
	}
	v := s.views.acquire()
	if v == nil {
		return persist.ErrClosed
	}
	defer v.release()
	return fn(v.snap)
}
