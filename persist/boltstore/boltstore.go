// Package boltstore is the embedded, file-backed, crash-safe persist.Store of
// a single-node server, built on go.etcd.io/bbolt.
//
// # Durability
//
// Every write (Append, SetCursor, CreateUser, CreateGroup, AddMember,
// RemoveMember) returns nil only after the bbolt transaction that contains it
// has committed. A bbolt commit writes the dirty pages, fdatasyncs, writes
// the new meta page and fdatasyncs again; a crash at any point leaves the
// file at the previous or the new commit, never in between. So an
// acknowledged write survives a process crash and (with a disk that honours
// fsync) a power loss, and an unacknowledged one is either fully present or
// fully absent. When Open creates the file it also fsyncs the directory, so
// the file itself survives a power loss. Options.NoSync turns the fsyncs off
// and voids the power-loss half of that promise; it exists for benchmarks
// only.
//
// # Group commit
//
// One committer goroutine owns all writes. Callers encode their request,
// put it on a bounded queue and wait. The committer takes every queued
// request (up to Options.MaxBatch), applies them in queue order inside ONE
// read-write transaction, commits (one fsync pair for the whole batch) and
// then wakes all callers. There is no artificial delay: while one commit is
// syncing, the next batch accumulates in the queue, so the batch size adapts
// to the load and a lone writer pays one commit.
//
// Requests in a batch are isolated from each other: each one validates and
// reads before its first write, so a request that fails (ErrInvalid,
// ErrUserExists, ErrGroupFull, ...) writes nothing and the others proceed.
// Requests see the effects of earlier requests of the same batch, so they
// behave exactly as if serialised (two Appends with the same (From,
// ClientMsgID) in one batch: the second is a Duplicate). Only a failed commit
// fails the whole batch, with an error wrapping persist.ErrUnavailable;
// nothing of that batch was acknowledged and retries are safe. (A request
// that breaks after it started writing, which only an internal error can
// cause, makes the committer roll the transaction back and run the batch
// again without it.)
//
// # Abandoned calls
//
// A write whose ctx ends before its outcome is known returns ctx.Err(); the
// write may still be committed afterwards (or be skipped, if the committer
// sees the ended context first). Retrying is safe: Append and SetCursor are
// idempotent, and a retried CreateUser, CreateGroup or AddMember may report
// ErrUserExists, ErrGroupExists or success for the caller's own earlier
// attempt.
//
// # Reads
//
// Lookup, ReadInbox, LastSeq, Cursor, GetUser and GetGroup run in their own
// read-only transaction on the caller's goroutine, concurrently with each
// other and with the committer. They see only committed data.
package boltstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/imgn/imgn/persist"
)

var _ persist.Store = (*Store)(nil)

// Defaults used by Open for zero Options fields.
const (
	DefaultMaxBatch        = 1024
	DefaultQueueSize       = 4096
	DefaultLockTimeout     = 2 * time.Second
	DefaultInitialMmapSize = 1 << 30
)

// Options configures Open. Zero fields take the Default* values.
type Options struct {
	// Path is the database file; it is created (mode 0600) if missing. Its
	// directory must exist. Required.
	Path string

	// NoSync skips fsync on commit. UNSAFE: an operating-system crash or
	// power loss can then lose acknowledged writes or corrupt the file. For
	// benchmarks that want to measure everything but the disk; never in
	// production.
	NoSync bool

	// MaxBatch is the most write requests committed in one transaction.
	MaxBatch int

	// QueueSize bounds the write queue. When it is full, writers block
	// (until their context ends) instead of growing memory.
	QueueSize int

	// LockTimeout is how long Open waits for the file lock held by another
	// process (or another Store in this process) before failing.
	LockTimeout time.Duration

	// InitialMmapSize is the initial size of bbolt's memory map. A mapping
	// larger than the file makes remaps (which wait for all readers) rare;
	// it costs address space, not memory.
	InitialMmapSize int

	// MaxSize caps the database file size in bytes (0: no cap). A commit
	// that would grow the file beyond it fails, and every write of its
	// batch returns an error wrapping persist.ErrUnavailable: the store
	// keeps serving reads and rejects writes like a full disk would.
	MaxSize int

	// beforeCommit, when set (tests only), runs on the committer goroutine
	// before each batch is applied.
	beforeCommit func(batch int)
}

// withDefaults validates o and fills in defaults: the single place where
// configuration is checked.
func (o Options) withDefaults() (Options, error) {
	if o.Path == "" {
		return o, fmt.Errorf("boltstore: options: %w: empty Path", persist.ErrInvalid)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxBatch", int64(o.MaxBatch)},
		{"QueueSize", int64(o.QueueSize)},
		{"LockTimeout", int64(o.LockTimeout)},
		{"InitialMmapSize", int64(o.InitialMmapSize)},
		{"MaxSize", int64(o.MaxSize)},
	} {
		if f.v < 0 {
			return o, fmt.Errorf("boltstore: options: %w: negative %s %d", persist.ErrInvalid, f.name, f.v)
		}
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.InitialMmapSize == 0 {
		o.InitialMmapSize = DefaultInitialMmapSize
	}
	return o, nil
}

// Store is the bbolt-backed persist.Store. It is safe for concurrent use by
// any number of goroutines. It owns one goroutine (the committer), started by
// Open and stopped by Close.
type Store struct {
	db   *bolt.DB
	opts Options

	// mu guards closed and the send side of queue: senders hold it for
	// reading while they enqueue, Close holds it for writing to close the
	// queue, so nothing is ever sent on a closed channel. Readers hold it
	// for reading around their transaction so Close waits for them.
	mu     sync.RWMutex
	closed bool
	queue  chan *request
	done   chan struct{} // closed when the committer has exited

	commits       atomic.Uint64
	writes        atomic.Uint64
	failedCommits atomic.Uint64
}

// request is one write waiting for the committer. apply runs on the
// committer goroutine inside the batch transaction; it must do every check
// and read before its first write and return a plain error only when it has
// written nothing. Errors after a write must be wrapped in abortError.
type request struct {
	ctx   context.Context
	apply func(b *buckets) error
	err   error         // set by the committer before done is closed
	done  chan struct{} // closed by the committer
}

// abortError reports a failure after a request started writing: the
// transaction cannot be kept, so the committer rolls it back and retries the
// batch without that request.
type abortError struct{ err error }

func (e abortError) Error() string { return e.err.Error() }
func (e abortError) Unwrap() error { return e.err }

// Open opens (creating if needed) the database at opts.Path and starts the
// committer. Errors wrap the cause with the path; a file that is not a
// bbolt database, a missing directory or a lock held too long are errors,
// never panics.
func Open(opts Options) (*Store, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	_, statErr := os.Stat(o.Path)
	created := errors.Is(statErr, fs.ErrNotExist)
	db, err := bolt.Open(o.Path, 0o600, &bolt.Options{
		Timeout:         o.LockTimeout,
		NoSync:          o.NoSync,
		NoFreelistSync:  true, // as etcd: rebuilt at open, saves a write per commit
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: o.InitialMmapSize,
		MaxSize:         o.MaxSize,
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", o.Path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(metaFormatKey); {
		case v == nil:
			return meta.Put(metaFormatKey, []byte{formatVersion})
		case len(v) != 1 || v[0] != formatVersion:
			return fmt.Errorf("unsupported format %v (want %d)", v, formatVersion)
		}
		return nil
	})
	if err == nil && created && !o.NoSync {
		err = syncDir(filepath.Dir(o.Path))
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("boltstore: open %s: %w", o.Path, err)
	}
	s := &Store{
		db:    db,
		opts:  o,
		queue: make(chan *request, o.QueueSize),
		done:  make(chan struct{}),
	}
	go s.run()
	return s, nil
}

// syncDir fsyncs a directory so that a file created in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// Path returns the database file path.
func (s *Store) Path() string { return s.opts.Path }

// Stats are cumulative counters of the committer, for metrics and tests.
type Stats struct {
	// Commits is the number of write transactions committed.
	Commits uint64
	// Writes is the number of write requests carried by those commits
	// (including requests that failed validation inside the batch).
	Writes uint64
	// FailedCommits is the number of transactions whose commit failed; each
	// failed all the requests of its batch with persist.ErrUnavailable.
	FailedCommits uint64
}

// Stats returns the current counters. Safe for concurrent use, also after
// Close. Writes/Commits is the average group-commit batch size.
func (s *Store) Stats() Stats {
	return Stats{
		Commits:       s.commits.Load(),
		Writes:        s.writes.Load(),
		FailedCommits: s.failedCommits.Load(),
	}
}

// Close stops accepting work, waits for the committer to commit every write
// already queued, waits for running reads, and closes the file. Writes and
// reads started after Close return persist.ErrClosed, as does a second
// Close. Close is safe to call concurrently with any other method.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return persist.ErrClosed
	}
	s.closed = true
	close(s.queue)
	s.mu.Unlock()
	<-s.done
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("boltstore: close %s: %w", s.opts.Path, err)
	}
	return nil
}

// write queues r and waits for its outcome. If ctx ends first, write returns
// ctx.Err() at once; the request may still be committed later (or skipped,
// if the committer sees the context ended before applying it). Callers rely
// on every write being idempotent to retry safely.
func (s *Store) write(ctx context.Context, r *request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.ctx = ctx
	r.done = make(chan struct{})
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return persist.ErrClosed
	}
	select {
	case s.queue <- r:
		s.mu.RUnlock()
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		select {
		case <-r.done: // finished at the same moment: report the real outcome
			return r.err
		default:
			return ctx.Err()
		}
	}
}

// view runs fn in a read-only transaction, or returns ErrClosed.
func (s *Store) view(fn func(b *buckets) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return persist.ErrClosed
	}
	return s.db.View(func(tx *bolt.Tx) error {
		b, err := getBuckets(tx)
		if err != nil {
			return err
		}
		return fn(b)
	})
}

// run is the committer loop. It exits when the queue is closed and drained.
func (s *Store) run() {
	defer close(s.done)
	batch := make([]*request, 0, s.opts.MaxBatch)
	for {
		r, ok := <-s.queue
		if !ok {
			return
		}
		batch = append(batch[:0], r)
	fill:
		for len(batch) < s.opts.MaxBatch {
			select {
			case r, ok := <-s.queue:
				if !ok {
					break fill // closed: commit what we have, then the loop exits
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		s.commit(batch)
		clear(batch) // drop references for the GC
	}
}

// commit applies batch in one transaction and signals every request.
func (s *Store) commit(batch []*request) {
	if h := s.opts.beforeCommit; h != nil {
		h(len(batch))
	}
	// Requests whose caller has given up are skipped: cheaper under
	// overload, and allowed since the caller was told ctx.Err().
	live := batch[:0:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.finish(err)
			continue
		}
		live = append(live, r)
	}
	for len(live) > 0 {
		poisoned := -1
		err := s.db.Update(func(tx *bolt.Tx) error {
			b, err := getBuckets(tx)
			if err != nil {
				return err
			}
			for i, r := range live {
				r.err = r.apply(b)
				if errors.As(r.err, new(abortError)) {
					poisoned = i
					return r.err
				}
			}
			return nil
		})
		if poisoned >= 0 {
			// Everything was rolled back. Fail only the request that broke
			// mid-write and run the others again in a fresh transaction.
			r := live[poisoned]
			r.finish(fmt.Errorf("boltstore: %w: %w", persist.ErrUnavailable, r.err))
			live = append(live[:poisoned:poisoned], live[poisoned+1:]...)
			continue
		}
		if err != nil {
			s.failedCommits.Add(1)
			err = fmt.Errorf("boltstore: commit: %w: %w", persist.ErrUnavailable, err)
			for _, r := range live {
				r.finish(err)
			}
			return
		}
		s.commits.Add(1)
		s.writes.Add(uint64(len(live)))
		for _, r := range live {
			r.finish(r.err)
		}
		return
	}
}

func (r *request) finish(err error) {
	r.err = err
	close(r.done)
}

// buckets holds the handles of one transaction.
type buckets struct {
	msgs, dedup, refs, inbox, cursors, users, groups, members *bolt.Bucket
}

func getBuckets(tx *bolt.Tx) (*buckets, error) {
	b := &buckets{
		msgs:    tx.Bucket(bucketMsgs),
		dedup:   tx.Bucket(bucketDedup),
		refs:    tx.Bucket(bucketRefs),
		inbox:   tx.Bucket(bucketInbox),
		cursors: tx.Bucket(bucketCursors),
		users:   tx.Bucket(bucketUsers),
		groups:  tx.Bucket(bucketGroups),
		members: tx.Bucket(bucketMembers),
	}
	if b.msgs == nil || b.dedup == nil || b.refs == nil || b.inbox == nil ||
		b.cursors == nil || b.users == nil || b.groups == nil || b.members == nil {
		return nil, fmt.Errorf("%w: missing bucket", errCorrupt)
	}
	if tx.Writable() {
		// Keys (message IDs) grow over time: fill pages before splitting.
		b.msgs.FillPercent = 0.9
		b.refs.FillPercent = 0.9
	}
	return b, nil
}

// mapReadErr wraps an error from a read transaction for the caller:
// sentinel errors pass through, anything else (corruption, I/O) becomes
// ErrUnavailable.
func mapReadErr(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, persist.ErrClosed), errors.Is(err, persist.ErrNotFound):
		return err
	default:
		return fmt.Errorf("boltstore: %s: %w: %w", op, persist.ErrUnavailable, err)
	}
}
