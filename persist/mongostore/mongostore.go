// Package mongostore is the MongoDB persist.Store of a cluster, on
// go.mongodb.org/mongo-driver/v2. It runs against MongoDB and against
// FerretDB v1 (the dev server of tests and `make cluster`), and so uses no
// transactions and no change streams: every guarantee below comes from
// single-document writes, unique indexes and the order of writes.
//
// # Collections
//
//	inbox     _id = "<user key><seq hex>"; unique (user, seq), unique (user, msg),
//	          unique (user, d); mid (origin entries only), indexed;
//	          rb = writer and time bucket, indexed (rb, msg) (replay.go)
//	messages  _id = message ID (int64 bit pattern); unique (from, cmid);
//	          mid = the ID in hex (indexed on FerretDB only)
//	heads     _id = "<user key>": a hint, the highest seq known to exist
//	cursors   _id = "<user key><device key>": pos (sign-flipped uint64)
//	users     _id = user id
//	groups    _id = group id; members array (in join order) and its length
//	          n, owner, admins, open, v (its version)
//	groupversions  _id = "<group key><incarnation>:<version>": the state a
//	          change claimed for that version (groups.go)
//	meta      _id = "format": v, the store format; _id = "migration":
//	          after, how far a migration got (format.go)
//
// Identifiers are stored as BSON strings when they are valid UTF-8 without
// NUL and as BSON binary otherwise (see enc), so any byte string persist
// accepts round-trips.
//
// # Where a message is stored (format 2)
//
// A message whose inboxes include its sender's (every 1:1 message, every
// group message of a member, a recall) is stored in the sender's inbox
// entry, the origin entry: the entry carries every field of a messages
// document (from, cmid, to, group, ts, kind, body, ev, tgt, rc, and mid,
// the ID in hex, which marks it an origin) besides its own. Every other
// entry of the message is a plain reference (msg = the ID). So a 1:1
// message is one document per inbox, written by one insert per inbox
// owner, and its body has one copy. A message whose sender has no inbox
// among its inboxes (a system broadcast, an event for another user) is a
// messages document, as are all messages of a database written before
// format 2 (format.go: the migration).
//
// Deduplication needs a unique index that catches a retry of an origin
// append, i.e. (sender, cmid) among entries. FerretDB v1 has neither
// sparse nor partial indexes, and MongoDB indexes a missing field as null
// (so a unique index over a field only origins had would refuse the second
// plain entry of an inbox), so every entry has the field d, unique with
// the user: "c"+cmid for an origin entry, "m"+the ID in hex for any other.
// A plain entry of the user's own message keeps "m": the two prefixes
// never meet. A retry of a messages document is caught by (from, cmid) on
// messages, as before; a retry is found on the path its inboxes choose,
// which is the original's for the same message.
//
// # Append without transactions
//
// Append first settles the message: a messages document is inserted (a
// duplicate (from, cmid) makes it a Duplicate of the stored one; a
// duplicate _id of another message is ErrInvalid); an origin message is
// written with its entries. Then one inbox entry is written per inbox that
// does not reference the message yet. An entry's seq is last+1, where last
// is a seq known to exist for that user: from an in-memory cache, or (when
// cold) from the heads hint followed by an exponential-then-binary search
// over the entries' _ids, which works because the existing seqs of a user
// always form the prefix 1..last. Entries are inserted with one ORDERED
// InsertMany per batch, laid out message-major with each message's origin
// entry first, each user's entries in ascending seq order, so the server
// stops at the first failing entry and never stores seq s+1 without s, nor
// an entry of a message whose origin entry is not stored: a crash, a
// network error or a conflict at any point leaves every inbox gap-free and
// every entry's message readable. A duplicate key on an entry means that
// the user's seq was taken (another writer: the unique (user, seq) index
// fences a stale inbox owner), that the inbox already references the
// message (an earlier attempt), or, for an origin entry, that its (user,
// d) is taken: an earlier attempt of the message stored its origin under
// another ID (a retry mints a fresh one). The store looks the unwritten
// entries of the batch up with one query (by (user, msg), and by (user, d)
// for the origins), forgets its cached seq for the user, makes each retry
// a Duplicate of its original (whose other entries are looked up with one
// more query; none of the fresh ID's exists, its origin came first) and
// plans the rest again. An origin whose ID another message of the same
// inbox holds fails with ErrInvalid. Two origin appends of one (From,
// ClientMsgID) in one batch are written one after the other, the second a
// Duplicate of the first.
//
// A failed Append may thus have stored the message and some of its inbox
// entries (visible to readers, never acknowledged); retrying it with the same
// (From, ClientMsgID) completes the missing entries and returns Duplicate
// with the seqs already assigned, never a second entry.
//
// AppendEntries is Append without the message, for a message that is
// stored already: in a cluster the owner of the first inbox (the sender's
// own, for a message of a user) stores the message, and the owners of the
// other inboxes write only plain entries. A 1:1 message between users of
// two nodes is thus two inserts, one per node; of one node, one.
// Duplicates are settled in bulk: the originals of a batch's duplicate
// messages are read with one query, the existing entries of its duplicates
// with another, and an entry conflict costs one query for all the batch's
// unwritten entries, never a query per message.
//
// # Group commit
//
// Appends are queued to one committer goroutine, which takes every queued
// append (up to Options.MaxBatch) and writes them with one InsertMany of
// messages documents (unordered; only when the batch has messages whose
// sender is not among their inboxes) and one ordered InsertMany of inbox
// entries, at the configured write concern, then wakes the callers. Append
// returns nil only after both were acknowledged. What a commit implies besides them (the
// conversation documents and heads hints) is written after it, coalesced
// across commits (upkeep.go). Cursor positions are batched too (see
// SetCursor): one bulk write per CursorInterval. The other writes (users,
// groups) are single-document operations on the caller's goroutine.
//
// Every command sent to the server is counted by name (Stats.Commands, and
// imgn_store_ops_total{op} when Options.Registry is set): the round trips
// a message costs can be measured, not guessed.
//
// # Reads
//
// ReadInbox returns a contiguous run of seqs starting at afterSeq+1: an entry
// whose predecessor is not visible yet (an ordered insert still in progress)
// ends the page early, so readers never observe a gap. An origin entry read
// is its message; the messages of the other entries are found with one
// query for origin entries (by mid) and, for those not found there, one on
// messages. Every read of a message by ID (history, conversations, replay,
// recall) looks in the same two places in that order; a recall updates the
// one copy of the body, the origin entry's or the document's. LastSeq is
// the heads hint followed by the same search as above.
//
// # Limits
//
// The fencing is as strong as the write concern. With "majority" (the
// default) an acknowledged entry survives a replica-set failover. A stale
// inbox owner that loses a race to a write that is later rolled back (it
// was never majority-acknowledged, so never acked to a client) can leave a
// hole below its own entry; ReadInbox then ends its pages before the hole.
// Single writer per inbox (docs/cluster.md) makes this a double fault.
//
// A message ID is checked against other messages' where they would
// collide in an index: on messages (_id), and in the origin's inbox
// (user, msg); and among the origin appends of one batch (refuseSharedIDs).
// Two origin messages of one ID in different inboxes are not
// detected; message IDs are minted unique (the engine's generator), this
// check only guards against a caller's mistake.
//
// # FerretDB
//
// FerretDB v1 (the dev server) accepts write concerns but has no
// replication: a write is acknowledged once SQLite committed it. The store
// detects it (buildInfo) and works around two of its bugs: an ordered
// insert of more than 100 documents does not stop at the first error (so
// inbox entries go in chunks of 100), and one createIndexes that re-requests
// two existing indexes panics (so indexes are created one per command). Its
// SQLite backend answers every query by scanning the collection (its unique
// indexes are enforced, but no query uses them), so reads cost O(collection
// size) there. Its updates are read-modify-write without isolation: two
// concurrent SetCursor calls on one cursor may lose one update there, where
// MongoDB applies each update atomically. Appends and group changes are
// safe on both: they rely on inserts and unique indexes (group changes
// claim versions, groups.go).
package mongostore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/imgn/imgn/internal/defaults"
	"github.com/imgn/imgn/internal/opcount"
	"github.com/imgn/imgn/persist"
)

var _ persist.Store = (*Store)(nil)

// Defaults used by Open for zero Options fields.
const (
	DefaultDatabase               = "imgn"
	DefaultWriteConcern           = "majority"
	DefaultMaxBatch               = 256
	DefaultQueueSize              = 4096
	DefaultOpTimeout              = 10 * time.Second
	DefaultServerSelectionTimeout = 3 * time.Second
	DefaultConnectTimeout         = 3 * time.Second
	DefaultSeqCacheSize           = 100_000
	DefaultCursorInterval         = 100 * time.Millisecond
	DefaultCursorQueue            = 65_536
	DefaultSlowCommand            = 500 * time.Millisecond
	DefaultUpkeepInterval         = 100 * time.Millisecond
	DefaultUpkeepQueue            = 65_536
)

// errCorrupt reports a stored document the store cannot decode.
var errCorrupt = errors.New("mongostore: corrupt document")

// Collection and index names.
const (
	collMessages = "messages"
	collInbox    = "inbox"
	collHeads    = "heads"
	collCursors  = "cursors"
	collUsers    = "users"
	collGroups   = "groups"
	collMeta     = "meta"

	// dedupField is the inbox entries' field that is unique per user
	// (entry.dedup).
	dedupField = "d"
)

// Options configures Open. Zero fields take the Default* values.
type Options struct {
	// URI is the MongoDB connection string, e.g. "mongodb://127.0.0.1:27017/"
	// or "mongodb://a,b,c/?replicaSet=rs0". Required.
	URI string

	// Database is the database name (default "imgn").
	Database string

	// NodeID names this store's writer: every inbox entry it writes
	// records it, and ReplayFrom lists only the entries written under it
	// (replay.go). In a cluster it is the node's id, stable across
	// restarts; "" is a name like any other.
	NodeID string

	// WriteConcern every write waits for, overriding the URI's w/journal:
	//   "majority"            {w: "majority"} (default)
	//   "majority,journaled"  {w: "majority", j: true}
	//   "journaled"           {w: 1, j: true}
	//   "1", "2", ...         {w: N}
	// Unacknowledged writes ("0") are rejected: they would void
	// store-then-ack.
	WriteConcern string

	// MaxBatch is the most appends written by one group commit.
	MaxBatch int

	// QueueSize bounds the append queue; when it is full, Append blocks
	// until its context ends.
	QueueSize int

	// OpTimeout bounds each database operation of the committer (callers
	// bound their own calls with their context).
	OpTimeout time.Duration

	// ServerSelectionTimeout is how long an operation waits for a usable
	// server before failing with ErrUnavailable (default: the URI's
	// serverSelectionTimeoutMS, else 3s).
	ServerSelectionTimeout time.Duration

	// ConnectTimeout bounds opening one connection (default: the URI's
	// connectTimeoutMS, else 3s).
	ConnectTimeout time.Duration

	// SeqCacheSize bounds the per-user cache of the last seq used by the
	// committer (entries; the cache is dropped when full).
	SeqCacheSize int

	// CursorInterval is the longest a SetCursor waits in memory before it
	// is written (cursor writes are batched: see SetCursor).
	CursorInterval time.Duration

	// CursorQueue bounds the cursors recorded and not written yet; beyond
	// it SetCursor waits for the next flush.
	CursorQueue int

	// UpkeepInterval is the longest the conversation and heads-hint upkeep
	// of a group commit waits in memory before it is written (upkeep.go):
	// commits within it share one upsert per conversation.
	UpkeepInterval time.Duration

	// UpkeepQueue bounds the conversation documents and heads hints
	// recorded and not written yet; beyond it the committer waits for the
	// next flush.
	UpkeepQueue int

	// Registry, if set, receives imgn_store_ops_total{op}: the commands
	// sent to the server, by command name (insert, find, update, getMore,
	// ...), the round trips the store costs.
	Registry prometheus.Registerer

	// SlowCommand: a command that takes at least this long is logged as a
	// warning with its collection and the shape of its filter (field names
	// and operators, never values), at most once a second per command and
	// collection. Negative: off.
	SlowCommand time.Duration

	// Logger receives what the store does not return: failures of the
	// upkeep and of cursor writes (retried, or harmless for heads hints),
	// and slow commands. Nil: discard.
	Logger *slog.Logger
}

// withDefaults validates o and fills in defaults: the single place where
// configuration is checked.
func (o Options) withDefaults() (Options, *writeconcern.WriteConcern, error) {
	bad := func(format string, args ...any) (Options, *writeconcern.WriteConcern, error) {
		return o, nil, fmt.Errorf("mongostore: options: %w: %s", persist.ErrInvalid, fmt.Sprintf(format, args...))
	}
	if o.URI == "" {
		return bad("empty URI")
	}
	if o.Database == "" {
		o.Database = DefaultDatabase
	}
	if strings.ContainsAny(o.Database, "/\\. \"$\x00") || len(o.Database) > 63 {
		return bad("database name %q", o.Database)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxBatch", int64(o.MaxBatch)},
		{"QueueSize", int64(o.QueueSize)},
		{"OpTimeout", int64(o.OpTimeout)},
		{"ServerSelectionTimeout", int64(o.ServerSelectionTimeout)},
		{"ConnectTimeout", int64(o.ConnectTimeout)},
		{"SeqCacheSize", int64(o.SeqCacheSize)},
		{"CursorInterval", int64(o.CursorInterval)},
		{"CursorQueue", int64(o.CursorQueue)},
		{"UpkeepInterval", int64(o.UpkeepInterval)},
		{"UpkeepQueue", int64(o.UpkeepQueue)},
	} {
		if f.v < 0 {
			return bad("negative %s %d", f.name, f.v)
		}
	}
	defaults.Set(&o.MaxBatch, DefaultMaxBatch)
	defaults.Set(&o.QueueSize, DefaultQueueSize)
	defaults.Set(&o.OpTimeout, DefaultOpTimeout)
	defaults.Set(&o.SeqCacheSize, DefaultSeqCacheSize)
	defaults.Set(&o.CursorInterval, DefaultCursorInterval)
	defaults.Set(&o.CursorQueue, DefaultCursorQueue)
	defaults.Set(&o.UpkeepInterval, DefaultUpkeepInterval)
	defaults.Set(&o.UpkeepQueue, DefaultUpkeepQueue)
	defaults.Set(&o.SlowCommand, DefaultSlowCommand)
	defaults.Set(&o.WriteConcern, DefaultWriteConcern)
	wc, err := parseWriteConcern(o.WriteConcern)
	if err != nil {
		return bad("%v", err)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, wc, nil
}

func parseWriteConcern(s string) (*writeconcern.WriteConcern, error) {
	w, j, hasJ := strings.Cut(s, ",")
	wc := &writeconcern.WriteConcern{}
	if hasJ {
		if j != "journaled" {
			return nil, fmt.Errorf("write concern %q", s)
		}
		t := true
		wc.Journal = &t
	}
	switch w {
	case "majority":
		wc.W = "majority"
	case "journaled":
		if hasJ {
			return nil, fmt.Errorf("write concern %q", s)
		}
		t := true
		wc.W, wc.Journal = 1, &t
	default:
		n, err := strconv.Atoi(w)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("write concern %q (want majority, journaled or a number >= 1)", s)
		}
		wc.W = n
	}
	return wc, nil
}

// Store is the MongoDB persist.Store. It is safe for concurrent use by any
// number of goroutines. It owns three goroutines (the committer, the cursor
// flusher and the upkeep flusher) and the driver's client, started by Open
// and stopped by Close.
type Store struct {
	opts   Options
	client *mongo.Client
	db     *mongo.Database

	messages, inbox, heads, cursors, users, groups *mongo.Collection
	convs                                          *mongo.Collection // chat.go
	meta                                           *mongo.Collection // format.go

	// mu guards closed and the send side of queue (as in pebblestore):
	// senders and readers hold it for reading, Close for writing.
	mu     sync.RWMutex
	closed bool
	queue  chan *appendReq
	done   chan struct{} // closed when the committer has exited

	// ferret: the server is FerretDB (buildInfo has ferretdbVersion), whose
	// ordered inserts need chunking (see insertOrdered).
	ferret bool
	// eqQueries: findAny sends equality queries in place of one $in query
	// (set for FerretDB; tests of the MongoDB query shape clear it).
	eqQueries bool

	// committer-only state
	seqCache map[string]uint64 // user -> a seq known to be that user's last

	// Batched cursor writes (cursors.go). curMu guards the fields below.
	curMu       sync.Mutex
	curClosed   bool
	curPending  map[cursorID]uint64 // recorded, not taken by the flusher yet
	curFlushing map[cursorID]uint64 // being written now (nil when idle)
	curTaken    chan struct{}       // closed when the flusher takes curPending
	curWake     chan struct{}       // cap 1: positions are waiting
	curStop     chan struct{}       // closed by Close: final flush, then exit
	curDone     chan struct{}       // closed when the flusher has exited

	// Upkeep of group commits, written by the upkeep flusher (upkeep.go).
	// upMu guards the fields below.
	upMu      sync.Mutex
	upClosed  bool
	upConvs   map[string]*convUpdate // conversation documents by _id, not taken yet
	upHeads   map[string]uint64      // heads hints by user, not taken yet
	upGen     uint64                 // counts the updates recorded
	upTried   uint64                 // the upGen a finished flush took (all before it were tried)
	upTaken   chan struct{}          // closed when the flusher takes the table
	upFlushed chan struct{}          // closed when a flush ends
	upWake    chan struct{}          // cap 1: updates are waiting
	upNow     chan struct{}          // cap 1: a caller waits, skip the linger
	upStop    chan struct{}          // closed by Close: final flush, then exit
	upDone    chan struct{}          // closed when the flusher has exited

	ops *opcount.Counter // commands sent, by name

	stats struct {
		batches, appends, rounds, conflicts, failedBatches, cursorFailures, upkeepFailures atomic.Uint64
	}
}

// Open connects to opts.URI, checks that the server answers, creates the
// collections' indexes (idempotent) and starts the committer. ctx bounds
// these steps. An unreachable server is an error wrapping
// persist.ErrUnavailable; bad options wrap persist.ErrInvalid.
func Open(ctx context.Context, opts Options) (*Store, error) {
	o, wc, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	co := options.Client().ApplyURI(o.URI).SetAppName("imgn")
	if err := co.Validate(); err != nil {
		return nil, fmt.Errorf("mongostore: options: %w: URI: %v", persist.ErrInvalid, err)
	}
	switch {
	case o.ServerSelectionTimeout > 0:
		co.SetServerSelectionTimeout(o.ServerSelectionTimeout)
	case co.ServerSelectionTimeout == nil:
		co.SetServerSelectionTimeout(DefaultServerSelectionTimeout)
	}
	switch {
	case o.ConnectTimeout > 0:
		co.SetConnectTimeout(o.ConnectTimeout)
	case co.ConnectTimeout == nil:
		co.SetConnectTimeout(DefaultConnectTimeout)
	}
	ops, err := opcount.New(o.Registry, "imgn_store_ops_total", "Commands sent to MongoDB by the message store, by command name.")
	if err != nil {
		return nil, fmt.Errorf("mongostore: metrics: %w: %v", persist.ErrInvalid, err)
	}
	var slow *slowLog
	if o.SlowCommand > 0 {
		slow = newSlowLog(o.SlowCommand, o.Logger)
	}
	co.SetMonitor(slow.monitor(ops.Inc))
	client, err := mongo.Connect(co)
	if err != nil {
		ops.Unregister()
		return nil, fmt.Errorf("mongostore: connect: %w: %v", persist.ErrInvalid, err)
	}
	s := &Store{
		opts:       o,
		client:     client,
		db:         client.Database(o.Database, options.Database().SetWriteConcern(wc)),
		queue:      make(chan *appendReq, o.QueueSize),
		done:       make(chan struct{}),
		seqCache:   make(map[string]uint64),
		curPending: make(map[cursorID]uint64),
		curTaken:   make(chan struct{}),
		curWake:    make(chan struct{}, 1),
		curStop:    make(chan struct{}),
		curDone:    make(chan struct{}),
		upConvs:    make(map[string]*convUpdate),
		upHeads:    make(map[string]uint64),
		upTaken:    make(chan struct{}),
		upFlushed:  make(chan struct{}),
		upWake:     make(chan struct{}, 1),
		upNow:      make(chan struct{}, 1),
		upStop:     make(chan struct{}),
		upDone:     make(chan struct{}),
		ops:        ops,
	}
	s.messages = s.db.Collection(collMessages)
	s.inbox = s.db.Collection(collInbox)
	s.heads = s.db.Collection(collHeads)
	s.cursors = s.db.Collection(collCursors)
	s.users = s.db.Collection(collUsers)
	s.groups = s.db.Collection(collGroups)
	s.convs = s.db.Collection(collConvs)
	s.meta = s.db.Collection(collMeta)
	if err := s.setup(ctx); err != nil {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = client.Disconnect(dctx)
		ops.Unregister()
		return nil, err
	}
	go s.run()
	go s.flushCursors(s.curStop)
	go s.flushUpkeep(s.upStop)
	return s, nil
}

// setup pings the server and creates the indexes.
func (s *Store) setup(ctx context.Context) error {
	if err := s.client.Ping(ctx, nil); err != nil {
		return mapErr(ctx, "open: ping", err)
	}
	info, err := s.db.RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Raw()
	if err != nil {
		return mapErr(ctx, "open: buildInfo", err)
	}
	_, err = info.LookupErr("ferretdbVersion")
	s.ferret = err == nil
	s.eqQueries = s.ferret
	unique := func(name string, keys ...string) mongo.IndexModel {
		d := make(bson.D, len(keys))
		for i, k := range keys {
			d[i] = bson.E{Key: k, Value: 1}
		}
		return mongo.IndexModel{Keys: d, Options: options.Index().SetUnique(true).SetName(name)}
	}
	messageIndexes := []mongo.IndexModel{unique("from_cmid", "from", "cmid")}
	if s.ferret {
		// What FerretDB looks messages up by (see messageDoc). Not
		// unique: a dev database written before mid existed holds
		// documents without it, which a unique index would refuse.
		messageIndexes = append(messageIndexes, mongo.IndexModel{Keys: bson.D{{Key: "mid", Value: 1}}, Options: options.Index().SetName("mid")})
	}
	format, err := s.readFormat(ctx)
	if err != nil {
		return err
	}
	if format > storeFormat {
		return fmt.Errorf("mongostore: open: %w: database %q has format %d, newer than this build's %d: run a newer imd",
			persist.ErrInvalid, s.opts.Database, format, storeFormat)
	}
	// What origin entries are found by, from a message ID (findByID).
	// Not unique: plain entries have no mid.
	midIndex := mongo.IndexModel{Keys: bson.D{{Key: "mid", Value: 1}}, Options: options.Index().SetName("mid")}
	for _, ix := range []struct {
		c      *mongo.Collection
		models []mongo.IndexModel
	}{
		{s.messages, messageIndexes},
		{s.inbox, []mongo.IndexModel{unique("user_seq", "user", "seq"), unique("user_msg", "user", "msg"), midIndex}},
		{s.inbox, chatInboxIndexes()},
		{s.inbox, replayIndexes()},
		{s.convs, chatConvIndexes()},
		{s.groups, []mongo.IndexModel{{Keys: bson.D{{Key: "members", Value: 1}}, Options: options.Index().SetName("members")}}},
	} {
		// One index per command: FerretDB v1.24 panics (and drops the
		// connection) when one createIndexes re-requests two or more
		// existing indexes (validateIndexesForCreation deletes from the
		// slice it iterates by index).
		for _, m := range ix.models {
			if _, err := ix.c.Indexes().CreateOne(ctx, m); err != nil {
				return mapErr(ctx, "open: create indexes on "+ix.c.Name(), err)
			}
		}
	}
	if format < storeFormat {
		return s.migrate(ctx)
	}
	if _, err := s.inbox.Indexes().CreateOne(ctx, dedupIndex()); err != nil {
		return mapErr(ctx, "open: create indexes on inbox", err)
	}
	return nil
}

// FerretDB reports whether the server identified itself as FerretDB.
func (s *Store) FerretDB() bool { return s.ferret }

// Database returns the name of the database the store uses.
func (s *Store) Database() string { return s.opts.Database }

// Stats are cumulative counters of the committer, for metrics and tests.
type Stats struct {
	// Batches is the number of group commits; Appends the appends they
	// carried. Appends/Batches is the average batch size.
	Batches, Appends uint64
	// Rounds counts inbox InsertMany calls (one per batch without
	// conflicts); Conflicts the duplicate-key conflicts on inbox entries
	// that were resolved by a lookup and a new plan.
	Rounds, Conflicts uint64
	// FailedBatches counts batches that failed some of their appends with
	// ErrUnavailable.
	FailedBatches uint64
	// CursorFailures counts cursor flushes that failed (retried at the
	// next flush).
	CursorFailures uint64
	// UpkeepFailures counts upkeep flushes that failed to write some
	// conversations (retried at the next flush).
	UpkeepFailures uint64
	// Commands counts the commands sent to the server, by command name.
	Commands map[string]uint64
}

// Stats returns the current counters. Safe for concurrent use, also after
// Close.
func (s *Store) Stats() Stats {
	return Stats{
		Batches:        s.stats.batches.Load(),
		Appends:        s.stats.appends.Load(),
		Rounds:         s.stats.rounds.Load(),
		Conflicts:      s.stats.conflicts.Load(),
		FailedBatches:  s.stats.failedBatches.Load(),
		CursorFailures: s.stats.cursorFailures.Load(),
		UpkeepFailures: s.stats.upkeepFailures.Load(),
		Commands:       s.ops.Snapshot(),
	}
}

// Close stops accepting work, waits for the committer to write every append
// already queued (and the upkeep flusher its table) and for running calls
// to finish, and disconnects. Calls
// started after Close return persist.ErrClosed, as does a second Close.
// Close is safe to call concurrently with any other method.
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
	// The committer has exited: no upkeep is recorded any more but a
	// reader's repair, which the final flush may leave out (reads repair
	// again).
	s.upMu.Lock()
	s.upClosed = true
	s.upMu.Unlock()
	close(s.upStop) // the upkeep flusher writes the table, then exits
	<-s.upDone
	s.curMu.Lock()
	s.curClosed = true
	s.curMu.Unlock()
	close(s.curStop) // the flusher writes what is recorded, then exits
	<-s.curDone
	defer s.ops.Unregister()
	// Disconnect first ends the server sessions (best effort, errors
	// ignored by the driver): bound that so Close does not wait for server
	// selection when the server is down. Pools are closed either way.
	ctx, cancel := context.WithTimeout(context.Background(), min(s.opts.OpTimeout, time.Second))
	defer cancel()
	if err := s.client.Disconnect(ctx); err != nil {
		return fmt.Errorf("mongostore: close: %w: %v", persist.ErrUnavailable, err)
	}
	return nil
}

// enter starts a call: it checks ctx and that the store is open, and holds
// the read lock until the returned function is called.
func (s *Store) enter(ctx context.Context) (leave func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, persist.ErrClosed
	}
	return s.mu.RUnlock, nil
}

// mapErr maps a driver error of operation op to the persist errors: the
// caller's context error when ctx is a caller's and has ended, else
// ErrUnavailable (network
// errors, timeouts, server selection, and any other refusal by the server).
// The driver error is kept as text only: callers never see driver types.
func mapErr(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil && ctx.Value(committerOp{}) == nil {
		return fmt.Errorf("mongostore: %s: %w", op, cerr)
	}
	if errors.Is(err, persist.ErrInvalid) || errors.Is(err, persist.ErrNotFound) {
		return fmt.Errorf("mongostore: %s: %w", op, err)
	}
	if errors.Is(err, errCorrupt) {
		return fmt.Errorf("mongostore: %s: %w: %w", op, persist.ErrUnavailable, err)
	}
	return fmt.Errorf("mongostore: %s: %w: %v", op, persist.ErrUnavailable, err)
}
