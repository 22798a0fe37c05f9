// Package pebblestore is the embedded, crash-safe persist.Store of a
// single-node server, built on Pebble (github.com/cockroachdb/pebble/v2), the
// log-structured merge tree under CockroachDB.
//
// # Durability and group commit
//
// One committer goroutine owns every write. Writers queue requests on a
// bounded queue: appends through AppendAsync (persist.AsyncAppender), which
// never waits, and the other writes (cursors, users, groups) through a
// blocking call. The committer takes everything that is queued (up to
// Options.MaxBatch), applies it in queue order to ONE pebble.Batch, and
// hands that batch to Pebble with a sync (one WAL write and one fdatasync
// for the whole batch). Only once the sync returned are the requests
// completed: AppendDone for appends, in queue order, or the waiting
// caller's return. There is no timer: while one batch syncs, the next one
// fills, so the batch size follows the load and a lone writer pays one
// sync. A request therefore completes without error only when everything
// it wrote is on disk.
//
// Requests of one batch see each other as if serialised (two appends with the
// same (From, ClientMsgID) in one batch: the second is a Duplicate); one that
// fails its checks (ErrInvalid, ErrUserExists, ...) writes nothing and the
// others go on. Seqs are assigned by the committer from an in-memory cache
// of inbox heads, loaded on an inbox's first use (its last key, and its head
// record if retention trimmed it); an append reads nothing on the hot path
// but its dedup key, and only when an in-memory filter of the stored dedup
// keys (filter.go; built in the background after Open) cannot rule the key
// out, and writes six keys for a 1:1 message (message, dedup, and per
// inbox one entry and one conversation index entry; a conversation's first
// message adds its record). Conversation upkeep
// (persist.ChatStore: chat.go) is part of the same batch, so a crash never
// leaves an inbox and its conversations disagreeing, and reads nothing
// either: the committer keeps the state of the conversations it appends to
// in memory, loaded on first use like the inbox heads.
//
// # Pipelined commits
//
// The committer does not wait for a batch's sync before it builds the next
// one (pipeline.go). It applies a batch with DB.ApplyNoSyncWait (the WAL
// write and the memtable insert, without the wait for the fsync), takes the
// read view of the database as it stands then, and hands the batch to a
// second goroutine, the completer, which waits for the sync
// (Batch.SyncWait), publishes the view and completes the batch's requests.
// Meanwhile the committer builds the next batch on top of the applied one
// (its caches and its reads of the database include it). The guarantees:
//
//   - An ack leaves only after its batch's sync: completions run on the
//     completer, after SyncWait returned.
//   - Completions keep queue order across batches: the completer takes the
//     batches in the order they were applied and completes one before it
//     waits for the next, so nothing of batch N+1 completes before N is
//     durable (even when N+1's own sync returned first, which Pebble does
//     not do anyway: it syncs the log in order).
//   - Readers never see a batch before it is durable, nor one batch without
//     those before it: a view is published after its batch's sync, in
//     order.
//   - At most pipelineDepth (4) batches are applied and not yet completed,
//     the one being built counted; each has its own pebble.Batch. While all
//     of them wait, requests wait in the queue and make one larger batch.
//   - A failed sync fails its batch and every batch built on top of it (their
//     seqs and dedup answers assumed its writes), with ErrUnavailable, in
//     queue order: every request of them, also one that wrote nothing and
//     found an error of its own (ErrUserExists, ErrNotFound, ...), which may
//     rest on the failed writes; the committer then forgets its cached
//     inbox heads and conversation states and reads them again from the
//     database. (Pebble does not recover from a failed WAL sync, see below:
//     this is what happens until it stops the process.)
//
// Close waits until every queued request is committed and completed; the
// completer is stopped by the committer on its way out.
//
// # Reads see only what is durable
//
// Pebble makes a batch visible to readers before its WAL sync returns, and
// the committer applies batches before the previous ones are synced. So
// reads (Lookup, ReadInbox, LastSeq, FirstSeq, Cursor, GetUser, GetGroup) do
// not read the database directly: they read the Pebble snapshot the
// committer took right after it applied a batch (which holds that batch and
// those before it, nothing after), published by the completer once the
// batch is synced, before it completes the batch's requests (view.go). A
// reader never sees a write that a crash could still take back, and sees
// every write whose call has returned.
//
// # Key layout
//
// Every key starts with a table byte; numbers are fixed-width big-endian so
// that keys sort numerically; lp(s) is uvarint(len(s)) followed by s, which
// is prefix-free, so all keys of one user form one contiguous range.
//
//	0x00 "format"              -> format version (1 byte)
//	'm' be64(msgID)            -> message record (from, to, flags, client msg id, timestamp, kind,
//	                              up to 4 (inbox, seq) entries, body)
//	'r' be64(msgID)            -> refs record of a message with more entries: timestamp, from,
//	                              client msg id, and the (inbox, seq) entries
//	'd' lp(from) clientMsgID   -> be64(msgID)                   dedup
//	'i' lp(user) be64(seq)     -> be64(msgID) [flags]           inbox entries: a SYNC page is one range;
//	                                                            flags 1 = deleted by the owner (Delete)
//	'h' lp(user)               -> be64(last seq) be64(first kept seq)   inbox head, written by retention
//	'x' lp(user) conv be64(seq) -> uvarint(others) uvarint(own) conversation index: one per message entry
//	'v' lp(user) conv          -> be64(read) be64(last) be64(others)   conversation record
//	'c' lp(user) device        -> be64(seq)                     cursors
//	'u' userID                 -> user record
//	'g' groupID                -> group record (name, owner, created, member count, open, admins)
//	'n' lp(groupID) user       -> uvarint(join number)          group members (empty: joined before join order was kept)
//	'j' lp(user) groupID       -> (empty)                       the groups of a user (built at Open for older stores)
//
// conv is kind lp(id): kind 0 names a peer (1:1), 1 a group, as
// persist.ConvOf gives them from the inbox owner's side. A conversation index
// entry carries the conversation's counts as of that entry: the messages
// from others so far (ever) and the seq of the owner's newest own message
// (which raises the read cursor), so the last entry is the conversation's
// state and an unread count is one seek (the first kept entry above the
// cursor). The conversation record is written with the conversation's first
// message, so that a conversation's existence is one bloom-filtered lookup;
// READ rewrites it with the cursor, and retention, when it removes all the
// conversation's entries, with the last seq and counts as floors. Events (recall, delete) take inbox
// seqs but no conversation entry. A message record may carry the event
// fields (kind, target) or, once recalled, the recall event's id and no
// body; records without them are those of the first layout.
//
// An inbox's last seq is that of its last entry; the head record exists only
// once retention removed entries, so that an inbox that lost all of them
// does not give its seqs out again. Message IDs are time-ordered, so the
// message and refs tables grow at their end. A message's (inbox, seq)
// entries ("refs") make appends idempotent per (inbox, message): a retry
// reads them (only retries do) and adds entries only for inboxes that do
// not have the message yet. A message with at most 4 entries (every 1:1
// message: sender and recipient) carries them in its own record, as a tag
// for the sender or recipient (or the inbox's name) and the seq, so it has
// no refs record; one with more (a group message) has a refs record, so that
// reading the message does not read its entries. Format 1 (until this
// layout) gave every message a refs record; such a store is read as it is
// (a record without entries has a refs record) and marked format 2 at Open,
// which older versions refuse. Records start with a version byte and use
// varints and length-prefixed strings.
//
// # Retention
//
// With Options.Retention set, a background pass (every Retention.Interval,
// or on EnforceRetention) applies the rules of persist.Retention. Its writes
// go through the committer like every other write, each step in a batch of
// its own: expired messages are found in message-ID order in the message
// table and removed with their refs records and dedup keys; an inbox loses a prefix by a range
// delete (point deletes below 64 entries, which keeps range tombstones few)
// and a new first seq in its head; its conversation index entries below
// that seq go the same way at the end of the pass, in batches that visit at
// most 4096 conversations each (reads skip them meanwhile; a conversation
// left without entries gets its record); messages the cap removed from every inbox
// are found by a sweep over the message table that resumes where the last pass
// stopped. After a pass that removed messages by age, the removed key range
// is compacted so the disk space comes back.
//
// # Disk space and failures
//
// A housekeeping goroutine checks the file system's free space and the
// store's size every second. Below Options.MinFreeBytes free (or above
// Options.MaxDiskBytes used) writes fail with persist.ErrUnavailable while
// reads go on; retention keeps running and frees space. An I/O error while
// writing or syncing the WAL is not survivable in-process (after a failed
// fsync the kernel may have dropped the data, so nothing written since the
// last good sync can be trusted): Pebble reports a failed sync to the
// batches waiting for it (they fail, see "Pipelined commits"), keeps the
// error so that every later sync fails too, and stops the process at the
// next failed log write; a restart replays the WAL up to the last good
// sync. A torn WAL tail (a crash in the middle of a write) is cut off at
// open. Damage to a record that synced records follow in a later 32 KiB
// block of the WAL is reported by Open as corruption rather than silently
// dropping acknowledged data; within the last block Pebble cannot tell such
// damage (a disk returning wrong bytes) from a torn write, and recovery
// stops before it.
package pebblestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/internal/defaults"
	"github.com/imgn/imgn/persist"
)

var (
	_ persist.Store         = (*Store)(nil)
	_ persist.AsyncAppender = (*Store)(nil)
	_ persist.Retainer      = (*Store)(nil)
	_ persist.StatsReporter = (*Store)(nil)
)

// Defaults used by Open for zero Options fields.
const (
	DefaultMaxBatch      = 2048
	DefaultQueueSize     = 16384
	DefaultMinFreeBytes  = 256 << 20
	DefaultCacheSize     = 256 << 20
	DefaultMemTableSize  = 32 << 20
	DefaultMaxOpenFiles  = 256
	DefaultHeadCacheSize = 1 << 20
	// DefaultL0CompactionThreshold is twice Pebble's own (4): see
	// Options.L0CompactionThreshold.
	DefaultL0CompactionThreshold = 8
)

// LegacyBoltFile is the file name of the bbolt-based store that earlier
// versions kept in the data directory. Open refuses a directory holding it.
const LegacyBoltFile = "imgn.db"

// Options configures Open. Zero fields take the Default* values.
type Options struct {
	// Dir is the data directory; it is created (mode 0700) if missing.
	// Required.
	Dir string

	// NoSync commits without fsync. UNSAFE: a machine crash or power loss
	// can then lose acknowledged writes (a process crash cannot). For
	// benchmarks that want everything but the disk; never in production.
	NoSync bool

	// Retention bounds what the store keeps (see persist.Retention); the
	// zero value keeps everything.
	Retention persist.Retention

	// MaxBatch is the most requests committed in one batch.
	MaxBatch int
	// QueueSize bounds the write queue. When it is full, AppendAsync fails
	// the op with ErrUnavailable and other writes wait for room (until their
	// context ends).
	QueueSize int

	// MinFreeBytes: writes fail with ErrUnavailable while the file system
	// holding Dir has less free space than this (reads and retention go
	// on). Negative disables the check.
	MinFreeBytes int64
	// MaxDiskBytes caps the space the store's files take (0: no cap);
	// above it writes fail as for MinFreeBytes.
	MaxDiskBytes int64

	// CacheSize is Pebble's block cache in bytes; MemTableSize the size of
	// one memtable (a larger one means fewer flushes and a longer WAL replay
	// after a crash); MaxOpenFiles bounds open table files (they count
	// against the process's file limit, with the client connections).
	CacheSize    int64
	MemTableSize uint64
	MaxOpenFiles int
	// L0CompactionThreshold is how many sublevels of flushed tables (L0)
	// Pebble lets pile up before it compacts them into the level below;
	// writes stall at four times as many. Every such compaction rewrites
	// the part of that level the flushed keys overlap, and inbox keys of
	// many users overlap all of it, so waiting for more flushes rewrites
	// it less often: at 50k appends/s, 8 (twice Pebble's default) spends
	// 13% less CPU per append and halves imbench's median latency, with
	// reads (ReadInbox) within their noise; 16 saves a little more on
	// writes but may slow reads by up to 10-20% (docs/BENCHMARKS.md, "The
	// embedded store at 50k/s"). The pile-up is bounded by the stall.
	L0CompactionThreshold int
	// HeadCacheSize bounds the inbox heads the committer keeps in memory
	// (about 100 bytes each plus the user id), and separately the states
	// of conversations (about 120 bytes each plus the two ids); when either
	// is full both are emptied and read again on use.
	HeadCacheSize int
	// DedupFilterBytes caps the in-memory filter of dedup keys (1.5 bytes
	// per stored message, 1.5 MiB at least), which spares a fresh message
	// the search of the store for its (From, ClientMsgID). It is built in
	// the background after Open, from a scan of every dedup key (until then
	// every check searches the store), and rebuilt as the store grows.
	// Above the cap the filter answers "maybe" more often and more checks
	// search the store. Negative disables the filter.
	DedupFilterBytes int64
	// BackgroundNice is how much lower than the process's own priority
	// (in nice steps, at most 19) Pebble's flushes and compactions run
	// while they are rare, so that the event loops and the committer
	// preempt them; writes that may come to wait on a job undo it (see
	// backgroundPriority). 0 means DefaultBackgroundNice; negative
	// disables. Needs Linux and the right to raise a thread's priority
	// back (root, CAP_SYS_NICE or RLIMIT_NICE); without it jobs run at
	// the process's priority.
	BackgroundNice int

	// Registry, when set, receives the store's metrics (imgn_store_*).
	Registry prometheus.Registerer
	// Logger receives Pebble's messages and the store's own; nil discards
	// them.
	Logger *slog.Logger
	// FS is the file system Pebble uses; nil is the operating system's.
	// Tests put fault-injecting file systems here.
	FS vfs.FS
	// Now is the clock of retention; nil is time.Now.
	Now func() time.Time

	// housekeepEvery is the period of the disk-space and metrics refresh
	// (tests change it); zero means one second.
	housekeepEvery time.Duration
	// inlineRefs is the most inbox entries a message record carries itself
	// (zero: DefaultInlineRefs; negative: none, every message gets a refs
	// record as in the first layout; tests use that to write old stores).
	inlineRefs int
	// beforeCommit, when set (tests only), runs on the committer before
	// each batch is applied, with the batch's size.
	beforeCommit func(n int)
	// afterSync, when set (tests only), runs on the completer after each
	// applied batch's WAL sync returned, with its outcome, and replaces it:
	// tests fail or delay syncs with it.
	afterSync func(err error) error
	// beforeFilterBuild, when set (tests only), runs on the goroutine that
	// builds the dedup filter, after its snapshot is taken and before the
	// scan; ctx ends when the store closes.
	beforeFilterBuild func(ctx context.Context)
}

// withDefaults validates o and fills in defaults: the single place where
// configuration is checked.
func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		return o, fmt.Errorf("pebblestore: options: %w: empty Dir", persist.ErrInvalid)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxBatch", int64(o.MaxBatch)},
		{"QueueSize", int64(o.QueueSize)},
		{"MaxDiskBytes", o.MaxDiskBytes},
		{"CacheSize", o.CacheSize},
		{"MaxOpenFiles", int64(o.MaxOpenFiles)},
		{"HeadCacheSize", int64(o.HeadCacheSize)},
		{"L0CompactionThreshold", int64(o.L0CompactionThreshold)},
	} {
		if f.v < 0 {
			return o, fmt.Errorf("pebblestore: options: %w: negative %s %d", persist.ErrInvalid, f.name, f.v)
		}
	}
	r, err := o.Retention.WithDefaults()
	if err != nil {
		return o, fmt.Errorf("pebblestore: options: %w", err)
	}
	o.Retention = r
	defaults.Set(&o.MaxBatch, DefaultMaxBatch)
	defaults.Set(&o.QueueSize, DefaultQueueSize)
	defaults.Set(&o.MinFreeBytes, DefaultMinFreeBytes)
	defaults.Set(&o.CacheSize, DefaultCacheSize)
	defaults.Set(&o.MemTableSize, DefaultMemTableSize)
	defaults.Set(&o.MaxOpenFiles, DefaultMaxOpenFiles)
	defaults.Set(&o.HeadCacheSize, DefaultHeadCacheSize)
	defaults.Set(&o.L0CompactionThreshold, DefaultL0CompactionThreshold)
	defaults.Set(&o.DedupFilterBytes, DefaultDedupFilterBytes)
	defaults.Set(&o.BackgroundNice, DefaultBackgroundNice)
	defaults.Set(&o.housekeepEvery, time.Second)
	defaults.Set(&o.inlineRefs, DefaultInlineRefs)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// Store is the Pebble-backed persist.Store. It is safe for concurrent use by
// any number of goroutines. It owns three goroutines, started by Open and
// stopped by Close: the committer, the housekeeper and (with retention) the
// retention loop.
type Store struct {
	db   *pebble.DB
	opts Options
	m    *metrics
	pri  *backgroundPriority // nil: Pebble's jobs are never lowered

	// mu guards closed and the send side of queue: senders hold it for
	// reading while they enqueue, Close holds it for writing to close the
	// queue, so nothing is ever sent on a closed channel. Readers hold it
	// for reading around their read so Close waits for them.
	mu     sync.RWMutex
	closed bool
	queue  chan item
	done   chan struct{} // closed when the committer has exited

	views views              // the snapshots readers use (view.go)
	hooks persist.BatchHooks // OnBatchCompleted

	bgCancel context.CancelFunc
	bg       sync.WaitGroup // housekeeper and retention loop

	retMu sync.Mutex // serialises retention passes

	failedGen     atomic.Uint64 // the generation of the newest batch whose sync failed (pipeline.go)
	commits       atomic.Uint64
	writes        atomic.Uint64
	failedCommits atomic.Uint64
	passes        atomic.Uint64
	removedMsgs   atomic.Uint64
	removedEnts   atomic.Uint64
	dedupReads    atomic.Uint64 // dedup checks that searched the store
	filterBytes   atomic.Uint64 // the dedup filter in use
	filterBuilds  atomic.Uint64 // dedup filters built and taken up

	// Refreshed by the housekeeper.
	full       atomic.Bool
	fullReason atomic.Pointer[string]
	diskBytes  atomic.Uint64
	freeBytes  atomic.Uint64
	walBytes   atomic.Uint64
	debtBytes  atomic.Uint64
}

// Open opens (creating if needed) the store in opts.Dir and starts its
// goroutines. Errors name the directory; a directory written by the old
// bbolt store, a corrupt store or a directory locked by another process are
// errors, never panics.
func Open(opts Options) (*Store, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := checkLegacy(o.Dir); err != nil {
		return nil, err
	}
	_, statErr := os.Stat(o.Dir)
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("pebblestore: open %s: %w", o.Dir, err)
	}
	if errors.Is(statErr, fs.ErrNotExist) && !o.NoSync {
		// Pebble makes its files durable in Dir; Dir itself is new.
		if err := syncDir(filepath.Dir(o.Dir)); err != nil {
			return nil, fmt.Errorf("pebblestore: open %s: %w", o.Dir, err)
		}
	}
	m := newMetrics()
	// A quarter of a memtable: the one filling while a flush runs must
	// not fill before the flush ends.
	pri := newBackgroundPriority(o.BackgroundNice, int64(o.MemTableSize/4))
	if pri.enabled() {
		pri.onLower, pri.onRestore = m.priority[priorityLowered].Inc, m.priority[priorityRestoredEarly].Inc
	}
	db, err := openDB(o.Dir, pebbleOptions(o, m, pri))
	if err != nil {
		return nil, fmt.Errorf("pebblestore: open %s: %w", o.Dir, err)
	}
	wo := pebble.Sync
	if o.NoSync {
		wo = pebble.NoSync
	}
	if err := buildGroupIndex(db, wo); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("pebblestore: open %s: group index: %w", o.Dir, err)
	}
	s := &Store{db: db, opts: o, m: m, pri: pri, queue: make(chan item, o.QueueSize), done: make(chan struct{})}
	if o.Registry != nil {
		if err := m.register(o.Registry, s); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("pebblestore: open %s: metrics: %w", o.Dir, err)
		}
	}
	c, err := newCommitter(s)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("pebblestore: open %s: %w", o.Dir, err)
	}
	s.views.publish(db)
	s.housekeep()
	ctx, cancel := context.WithCancel(context.Background())
	s.bgCancel = cancel
	go c.run()
	s.bg.Go(func() { every(ctx, o.housekeepEvery, s.housekeep) })
	if o.Retention.Enabled() {
		s.bg.Go(func() {
			every(ctx, o.Retention.Interval, func() {
				if err := s.EnforceRetention(ctx); err != nil && ctx.Err() == nil {
					s.opts.Logger.Warn("retention pass failed; retrying at the next one", "err", err)
				}
			})
		})
	}
	return s, nil
}

// checkLegacy refuses a data directory written by the bbolt store.
func checkLegacy(dir string) error {
	p := filepath.Join(dir, LegacyBoltFile)
	if _, err := os.Stat(p); err == nil {
		return fmt.Errorf("pebblestore: open %s: %s is the data file of the old bbolt store, which this version cannot read; "+
			"move it out of the directory (its messages are not carried over) or start with another data directory", dir, p)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	return nil
}

// corruptionHint adds what to do to a corruption error from Pebble.
func corruptionHint(err error) string {
	if pebble.IsCorruptionError(err) {
		return " (the store is damaged in data that was already synced, so acknowledged messages would be lost: " +
			"restore the directory from a backup, or move it away to start empty)"
	}
	return ""
}

// pebbleOptions returns Pebble's options for the store's options o (with
// defaults) and metrics m.
func pebbleOptions(o Options, m *metrics, pri *backgroundPriority) *pebble.Options {
	listener := pebble.TeeEventListener(*m.eventListener(), *pri.eventListener())
	popts := &pebble.Options{
		FS:                    &meteredFS{FS: o.FS, fsync: m.fsync},
		EventListener:         &listener,
		FormatMajorVersion:    pebble.FormatNewest,
		CacheSize:             o.CacheSize,
		MemTableSize:          o.MemTableSize,
		MaxOpenFiles:          o.MaxOpenFiles,
		L0CompactionThreshold: o.L0CompactionThreshold,
		L0StopWritesThreshold: 4 * o.L0CompactionThreshold,
		Logger:                pebbleLogger{o.Logger},
	}
	for i := range popts.Levels {
		// Dedup and message-id checks are mostly misses: filters answer
		// them without reading a block.
		popts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	return popts
}

// openDB opens the Pebble database in dir, checks the store's format
// version. A new store is written its format version and opened a second
// time: Pebble writes the first WAL of a new database before it settles its
// format, in the older chunk format whose recovery cannot tell damage to
// synced records from a torn tail.
func openDB(dir string, popts *pebble.Options) (*pebble.DB, error) {
	for attempt := 0; ; attempt++ {
		db, err := pebble.Open(dir, popts)
		if err != nil {
			return nil, fmt.Errorf("%w%s", err, corruptionHint(err))
		}
		v, closer, err := db.Get(metaFormatKey)
		switch {
		case errors.Is(err, pebble.ErrNotFound) && attempt == 0:
			err = db.Set(metaFormatKey, []byte{formatVersion}, pebble.Sync)
			if cerr := db.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
			continue
		case err != nil:
		case len(v) == 1 && v[0] == formatVersion-1:
			// Format 1 reads as it is (every message has a refs record);
			// mark it 2 before writing records that carry their refs, so
			// that an older binary refuses the store instead of missing
			// them.
			closer.Close()
			if err = db.Set(metaFormatKey, []byte{formatVersion}, pebble.Sync); err == nil {
				return db, nil
			}
		case len(v) != 1 || v[0] != formatVersion:
			err = fmt.Errorf("unsupported store format %v (this version reads formats %d and %d): "+
				"it was written by a newer version of imd; run that version, or start with another data directory",
				v, formatVersion-1, formatVersion)
			closer.Close()
		default:
			closer.Close()
			return db, nil
		}
		_ = db.Close()
		return nil, err
	}
}

// syncDir fsyncs a directory so that the files created in it are durable.
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

// Dir returns the data directory.
func (s *Store) Dir() string { return s.opts.Dir }

// Close stops accepting work, waits for the committer to commit everything
// already queued and for running reads, stops the background goroutines and
// closes the database. Calls started after Close return persist.ErrClosed,
// as does a second Close. Close is safe to call concurrently with any other
// method.
func (s *Store) Close() error {
	s.bgCancel() // first: a background compaction holds mu for reading
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return persist.ErrClosed
	}
	s.closed = true
	close(s.queue)
	s.mu.Unlock()
	s.bg.Wait()
	<-s.done
	s.views.close()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("pebblestore: close %s: %w", s.opts.Dir, err)
	}
	return nil
}

// StoreStats implements persist.StatsReporter.
func (s *Store) StoreStats() persist.StoreStats {
	st := persist.StoreStats{
		Kind:                "pebble",
		Commits:             s.commits.Load(),
		Writes:              s.writes.Load(),
		FailedCommits:       s.failedCommits.Load(),
		Queued:              len(s.queue),
		DiskBytes:           s.diskBytes.Load(),
		FreeDiskBytes:       s.freeBytes.Load(),
		WALBytes:            s.walBytes.Load(),
		CompactionDebtBytes: s.debtBytes.Load(),
		Full:                s.full.Load(),
		RetentionPasses:     s.passes.Load(),
		RemovedMessages:     s.removedMsgs.Load(),
		RemovedEntries:      s.removedEnts.Load(),
		RetentionInboxes:    s.opts.Retention.InboxMax,
	}
	if st.Commits > 0 {
		st.AvgBatch = float64(st.Writes) / float64(st.Commits)
	}
	if st.Full {
		if r := s.fullReason.Load(); r != nil {
			st.FullReason = *r
		}
	}
	if a := s.opts.Retention.MaxAge; a > 0 {
		st.RetentionMaxAge = a.String()
	}
	return st
}

// every runs fn every d until ctx ends.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// housekeep reads the free space and Pebble's metrics, and sets or clears
// the full flag.
func (s *Store) housekeep() {
	pm := s.db.Metrics()
	used := pm.DiskSpaceUsage()
	s.diskBytes.Store(used)
	s.walBytes.Store(pm.WAL.BytesWritten)
	s.debtBytes.Store(pm.Compact.EstimatedDebt)
	var reason string
	if du, err := s.opts.FS.GetDiskUsage(s.opts.Dir); err == nil {
		s.freeBytes.Store(du.AvailBytes)
		if s.opts.MinFreeBytes > 0 && du.AvailBytes < uint64(s.opts.MinFreeBytes) {
			reason = fmt.Sprintf("%d bytes free on the file system of %s, below the minimum of %d", du.AvailBytes, s.opts.Dir, s.opts.MinFreeBytes)
		}
	}
	if s.opts.MaxDiskBytes > 0 && used > uint64(s.opts.MaxDiskBytes) {
		reason = fmt.Sprintf("the store takes %d bytes, above its cap of %d", used, s.opts.MaxDiskBytes)
	}
	was := s.full.Load()
	if reason != "" {
		s.fullReason.Store(&reason)
	}
	s.full.Store(reason != "")
	switch {
	case reason != "" && !was:
		s.opts.Logger.Error("store full: refusing writes", "reason", reason)
	case reason == "" && was:
		s.opts.Logger.Info("store no longer full: accepting writes")
	}
}

// errFull is the error of a write refused while the store is full.
func (s *Store) errFull() error {
	reason := "no space"
	if r := s.fullReason.Load(); r != nil {
		reason = *r
	}
	return fmt.Errorf("pebblestore: %w: store full: %s", persist.ErrUnavailable, reason)
}

// pebbleLogger routes Pebble's messages to slog.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug("pebble: " + fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error("pebble: " + fmt.Sprintf(format, args...))
}

// Fatalf is how Pebble reports a failed WAL write or sync: it cannot go on
// (see the package doc), so neither can the process.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := "pebble: " + fmt.Sprintf(format, args...)
	p.l.Error(msg)
	fmt.Fprintln(os.Stderr, "imgn store: fatal:", msg)
	os.Exit(70)
}
