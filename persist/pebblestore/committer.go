package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
)

// item is one request on the queue: an append, or a write a caller waits
// for.
type item struct {
	op *persist.AppendOp
	w  *writeReq
	at time.Time // when it was queued (imgn_store_queue_wait_seconds)
}

// writeReq is a write other than an append. apply runs on the committer; it
// must do every check and read before its first write and return an error
// only when it has written nothing. A maintenance request (alone) is
// committed in a batch of its own.
type writeReq struct {
	ctx   context.Context
	apply func(c *committer) error
	// finish, when set, runs on the completer after a successful apply
	// was committed, in queue order with the completions of the batch's
	// other requests, before done is closed. It must not block.
	finish func()
	alone  bool
	err    error         // set by the committer or the completer before done is closed
	done   chan struct{} // closed by the completer (a waiting write)
	// then, set instead of done for a write nobody waits on, is called by
	// the completer with err. It must not block.
	then func(error)
}

// AppendAsync implements persist.AsyncAppender. It validates op on the
// caller's goroutine, queues it without waiting, and completes it (calls
// op.Done.AppendDone) from the store's completer goroutine after the batch
// holding it is synced, in queue order (pipeline.go). A malformed op
// completes with ErrInvalid, and one that finds the store closed or its
// queue full with ErrClosed or ErrUnavailable, before AppendAsync returns.
//
// On success op.Result.Msg is op.Msg for a fresh insert, and for a duplicate
// a copy of the stored message owned by the caller. op.Result.Seqs reuses
// the capacity the caller gave it.
func (s *Store) AppendAsync(op *persist.AppendOp) {
	if err := persist.CheckAppend(op.Msg, op.Inboxes); err != nil {
		complete(op, fmt.Errorf("pebblestore: append: %w", err))
		return
	}
	err := s.enqueueNow(item{op: op, at: time.Now()})
	if err != nil {
		complete(op, err)
	}
}

// enqueueNow queues it without waiting.
func (s *Store) enqueueNow(it item) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return persist.ErrClosed
	}
	select {
	case s.queue <- it:
		return nil
	default:
		return fmt.Errorf("pebblestore: %w: write queue full (%d requests)", persist.ErrUnavailable, cap(s.queue))
	}
}

// complete finishes op with err (nil: op.Result is set).
func complete(op *persist.AppendOp, err error) {
	if err != nil {
		op.Result = persist.AppendResult{Seqs: op.Result.Seqs[:0]}
	}
	op.Err = err
	op.Done.AppendDone(op)
}

// Append implements persist.MessageStore as persist.AppendWait: it returns
// after the batch holding the message and its inbox entries is synced. msg
// and inboxes must stay unchanged until then, even if ctx ends first (the
// append may still happen; retrying it is safe).
func (s *Store) Append(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	return persist.AppendWait(ctx, s, msg, inboxes)
}

// write queues w and waits for its outcome. If ctx ends first, write
// returns ctx.Err() at once; w may still be committed later (or skipped, if
// the committer sees the context ended before applying it). Every write is
// idempotent or reports its own earlier attempt, so callers may retry.
func (s *Store) write(ctx context.Context, w *writeReq) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w.ctx = ctx
	w.done = make(chan struct{})
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return persist.ErrClosed
	}
	select {
	case s.queue <- item{w: w, at: time.Now()}:
		s.mu.RUnlock()
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	select {
	case <-w.done:
		return w.err
	case <-ctx.Done():
		select {
		case <-w.done: // finished at the same moment: report the real outcome
			return w.err
		default:
			return ctx.Err()
		}
	}
}

// writeAsync queues w without waiting; w.then gets the outcome (on the
// caller's goroutine, before writeAsync returns, when the store is closed
// or its queue is full).
func (s *Store) writeAsync(w *writeReq) {
	w.ctx = context.Background()
	if err := s.enqueueNow(item{w: w, at: time.Now()}); err != nil {
		w.then(err)
	}
}

// committer is the state of the committer goroutine; nothing in it is
// touched by any other goroutine.
type committer struct {
	s     *Store
	b     *pebble.Batch         // the batch being built (its flight's)
	heads map[string]*headEntry // inbox -> head
	dirty []*headEntry          // heads trimmed by the current batch
	// nconvs counts the conversation states cached with the heads
	// (headEntry.convs), bounded like heads; cst holds those of the
	// append being applied.
	nconvs int
	cst    []*convState
	hst    []*headEntry // the heads of the append being applied
	// maxID is the highest message ID stored: an append above it cannot
	// clash with a stored ID, so it skips that read.
	maxID uint64
	// batchErr is the first failure to add a write to the batch; the batch
	// is then dropped and its writers fail.
	batchErr error

	// Per-batch state of appends: the messages stored by this batch, by
	// dedup key and by ID, so later requests of the batch see them.
	pend      []pending
	pendDedup map[dedupKey]int
	pendID    map[uint64]int
	// overlay holds the writes of this batch's other requests (cursors,
	// users, groups), so later requests of the batch read them. A nil
	// value is a deletion.
	overlay map[string][]byte

	// overCap lists inboxes that grew past Retention.InboxMax, for the next
	// retention pass; capScan asks that pass to scan every head instead
	// (after Open, or when overCap overflowed).
	overCap []string
	capScan bool
	capFrom []byte // where the scan of every head resumes

	// Inboxes whose conversation entries below the first seq retention
	// has yet to remove (retention.go), in order.
	convTrim      map[string]struct{}
	convTrimOrder []string

	// Removals by retention in the current batch, counted once it commits.
	rmMsgs, rmEnts uint64

	// gen is the generation of the batches being built: it moves on when
	// the committer learns that one of its batches failed its sync
	// (pipeline.go).
	gen uint64

	it              *pebble.Iterator // lookups of the current batch
	direct          bool             // a maintenance batch: writes go straight to b
	staged, sorted  []stagedOp       // otherwise they are staged here (see set)
	arena           []byte
	key, key2, key3 []byte // scratch
	val, val2       []byte
	idv             [8]byte
	refs            refsRecord
	sweepFrom       uint64 // where the cap sweep of the message table resumes

	filter filterState // the dedup filter (filter.go)
}

// headEntry is a cached inbox head.
type headEntry struct {
	inbox   string // a private copy (the map key)
	h       head
	convs   map[persist.ConvID]*convState // the inbox's conversations used so far (chat.go)
	dirty   bool                          // in committer.dirty
	overCap bool                          // in committer.overCap
}

// dedupKey is (From, ClientMsgID). Its strings point into the ops of the
// current batch and are only used while the batch is applied.
type dedupKey struct{ from, clientMsgID string }

// pending is a message stored (or found) by the current batch.
type pending struct {
	msg      persist.Message // for a duplicate's result; may point into an op
	refs     []ref           // every inbox entry of the message
	recallEv uint64          // the event that recalled it (0: none)
	external bool            // it has a refs record (writeRecord)
}

const maxOverCap = 1 << 16

func newCommitter(s *Store) (*committer, error) {
	c := &committer{
		s:         s,
		gen:       1,
		heads:     make(map[string]*headEntry),
		convTrim:  make(map[string]struct{}),
		pendDedup: make(map[dedupKey]int),
		pendID:    make(map[uint64]int),
		overlay:   make(map[string][]byte),
		capScan:   true,
	}
	c.initFilter()
	// The highest stored message ID: the last key of the message table.
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tMessage}, UpperBound: []byte{tMessage + 1}})
	if err != nil {
		return nil, err
	}
	if it.Last() {
		c.maxID, err = u64(it.Key()[1:])
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	return c, err
}

// run is the committer loop. It exits when the queue is closed and drained
// and every batch it applied is completed.
func (c *committer) run() {
	defer close(c.s.done)
	defer c.stopFilterBuild()
	c.filterBatch() // start building the dedup filter
	// Every flight is on the free list, being built, or with the
	// completer: neither channel ever fills.
	free := make(chan *flight, pipelineDepth)
	flights := make(chan *flight, pipelineDepth)
	for range pipelineDepth {
		free <- &flight{b: c.s.db.NewBatch(), items: make([]item, 0, 64)}
	}
	p := &completer{s: c.s, flights: flights, free: free}
	completed := make(chan struct{})
	go func() {
		defer close(completed)
		p.run()
	}()
	defer func() {
		close(flights)
		<-completed
	}()
	batch := make([]item, 0, c.s.opts.MaxBatch)
	for {
		// Take a free flight first: requests arriving while every flight
		// is busy join the next batch.
		f := <-free
		var ok bool
		if batch, ok = persist.NextBatch(c.s.queue, batch, c.s.opts.MaxBatch); !ok {
			return
		}
		// Maintenance requests go in batches of their own.
		for rest := batch; len(rest) > 0; {
			n := 1
			if !isAlone(rest[0]) {
				for n < len(rest) && !isAlone(rest[n]) {
					n++
				}
			}
			if f == nil {
				f = <-free
			}
			c.commit(rest[:n], f)
			flights <- f
			f = nil
			rest = rest[n:]
		}
		clear(batch) // drop references for the GC
	}
}

func isAlone(it item) bool { return it.w != nil && it.w.alone }

// commit applies items to f's batch and applies that to Pebble; the
// completer completes them once it is synced (pipeline.go).
func (c *committer) commit(items []item, f *flight) {
	if h := c.s.opts.beforeCommit; h != nil {
		h(len(items))
	}
	t0 := time.Now()
	for i := range items {
		c.s.m.queueWait.Observe(t0.Sub(items[i].at).Seconds())
	}
	if g := c.s.failedGen.Load(); g != 0 && g >= c.gen {
		// A batch of this generation failed its sync, and every batch
		// built on it fails: forget what the committer believes about
		// them and build on what the database holds.
		c.forgetHeads()
		c.gen = g + 1
	}
	f.items = append(f.items[:0], items...)
	f.gen = c.gen
	c.b = f.b
	c.resetBatchState()
	c.filterBatch()
	c.direct = len(items) == 1 && isAlone(items[0])
	full := c.s.full.Load()
	for i := range f.items {
		it := &f.items[i]
		switch {
		case it.op != nil:
			if full {
				it.op.Err = c.s.errFull()
				continue
			}
			it.op.Err = c.apply(it.op)
		case it.w.ctx.Err() != nil:
			// The caller has given up: skipping is cheaper under overload
			// and allowed, since it was told ctx.Err().
			it.w.err = it.w.ctx.Err()
		case full && !it.w.alone:
			it.w.err = c.s.errFull()
		default:
			it.w.err = it.w.apply(c)
			if it.w.err != nil && it.w.alone && c.batchErr == nil {
				// A maintenance request may fail after writing: drop its
				// batch (it is alone in it).
				c.batchErr = it.w.err
			}
		}
	}
	c.closeIter()
	c.flushHeads()
	c.writeStaged()
	c.s.m.build.Observe(time.Since(t0).Seconds())
	f.direct, f.rmMsgs, f.rmEnts = c.direct, c.rmMsgs, c.rmEnts
	switch {
	case c.batchErr != nil:
		f.err = fmt.Errorf("pebblestore: commit: %w: %w", persist.ErrUnavailable, c.batchErr)
		f.b.Reset()
	case !f.b.Empty():
		c.applyFlight(f)
	}
	if f.err != nil {
		// Nothing of the batch was applied: what the committer believes
		// about it is wrong.
		c.forgetHeads()
	}
}

// resetBatchState empties the per-batch state and bounds the head cache.
func (c *committer) resetBatchState() {
	for i := range c.pend {
		c.pend[i].msg = persist.Message{}
		c.pend[i].refs = c.pend[i].refs[:0]
		c.pend[i].recallEv = 0
		c.pend[i].external = false
	}
	c.pend = c.pend[:0]
	clear(c.pendDedup)
	clear(c.pendID)
	clear(c.overlay)
	c.batchErr = nil
	c.rmMsgs, c.rmEnts = 0, 0
	if len(c.heads) > c.s.opts.HeadCacheSize || c.nconvs > c.s.opts.HeadCacheSize {
		c.forgetHeads()
	}
}

// forgetHeads empties the head and conversation caches; they are read
// again on use. Inboxes listed in overCap stay listed (a trim reads their
// head again).
func (c *committer) forgetHeads() {
	clear(c.heads)
	c.nconvs = 0
}

// head returns inbox's cached head, reading it on a miss.
func (c *committer) head(inbox string) (*headEntry, error) {
	if e, ok := c.heads[inbox]; ok {
		return e, nil
	}
	if err := c.openIter(); err != nil {
		return nil, err
	}
	h, err := headAt(c.it, inbox)
	if err != nil {
		return nil, fmt.Errorf("inbox %q: %w", inbox, err)
	}
	e := &headEntry{inbox: strings.Clone(inbox), h: h}
	c.heads[e.inbox] = e
	return e, nil
}

// advance records that inbox e got seq, its new last: appends write no head
// record (the last seq is the inbox's last key), they only note inboxes that
// grew past Retention.InboxMax.
func (c *committer) advance(e *headEntry, seq uint64) {
	e.h.last = seq
	if n := c.s.opts.Retention.InboxMax; n > 0 && !e.overCap && e.h.last-e.h.first+1 > uint64(n) {
		if len(c.overCap) >= maxOverCap {
			c.capScan = true
		} else {
			e.overCap = true
			c.overCap = append(c.overCap, e.inbox)
		}
	}
}

// setHead records e's new head after a trim; flushHeads writes its head
// record once per batch.
func (c *committer) setHead(e *headEntry, h head) {
	e.h = h
	if !e.dirty {
		e.dirty = true
		c.dirty = append(c.dirty, e)
	}
}

// flushHeads writes every head changed by this batch.
func (c *committer) flushHeads() {
	for _, e := range c.dirty {
		c.val = appendHead(c.val[:0], e.h)
		c.set(keyLP(c.key, tHead, e.inbox), c.val)
		e.dirty = false
	}
	clear(c.dirty)
	c.dirty = c.dirty[:0]
}

// set and del stage a point write of the batch; writeStaged hands them to
// the Pebble batch in key order at commit: inserting sorted keys into the
// memtable lets each insert start its search where the previous one ended,
// which costs far less than the random order requests write in. A key
// written twice keeps its order (the sort is stable), so the last write
// wins. Maintenance batches (direct) write straight to the Pebble batch:
// their range deletions must stay in order with their point writes.
func (c *committer) set(key, value []byte) {
	if c.direct {
		c.keep(c.b.Set(key, value, nil))
		return
	}
	c.stage(false, key, value)
}

func (c *committer) del(key []byte) {
	if c.direct {
		c.keep(c.b.Delete(key, nil))
		return
	}
	c.stage(true, key, nil)
}

// delRange deletes [start, end); maintenance batches only.
func (c *committer) delRange(start, end []byte) {
	if !c.direct {
		c.keep(fmt.Errorf("range deletion outside a maintenance batch"))
		return
	}
	c.keep(c.b.DeleteRange(start, end, nil))
}

// keep records the first failure to add a write. Pebble batches fail writes
// only on misuse (a closed batch, a 4 GiB batch); the failure fails the
// whole batch at commit.
func (c *committer) keep(err error) {
	if err != nil && c.batchErr == nil {
		c.batchErr = err
	}
}

// stagedOp is a staged point write: key and value are ranges of
// committer.arena.
type stagedOp struct {
	pre0, pre1   uint64 // the key's first 16 bytes, big-endian, zero-padded: most comparisons end here
	del          bool
	k, kn, v, vn uint32
}

func (c *committer) stage(del bool, key, value []byte) {
	var pre [16]byte
	copy(pre[:], key)
	op := stagedOp{pre0: binary.BigEndian.Uint64(pre[:8]), pre1: binary.BigEndian.Uint64(pre[8:]),
		del: del, k: uint32(len(c.arena)), kn: uint32(len(key))}
	c.arena = append(c.arena, key...)
	op.v, op.vn = uint32(len(c.arena)), uint32(len(value))
	c.arena = append(c.arena, value...)
	c.staged = append(c.staged, op)
}

// writeStaged adds the staged writes to the Pebble batch in key order
// (stagesort.go says why the order).
func (c *committer) writeStaged() {
	c.sortStaged()
	for _, o := range c.sorted {
		if o.del {
			c.keep(c.b.Delete(c.arena[o.k:o.k+o.kn], nil))
		} else {
			c.keep(c.b.Set(c.arena[o.k:o.k+o.kn], c.arena[o.v:o.v+o.vn], nil))
		}
	}
	c.staged, c.sorted, c.arena = c.staged[:0], c.sorted[:0], c.arena[:0]
}

// sortStaged puts the staged writes in c.sorted in key order: grouped by
// table (a stable counting sort on the first byte), then each table's run
// sorted unless it is in order already, as the message and refs tables
// are: message IDs rise.
func (c *committer) sortStaged() {
	var count [257]int
	for _, o := range c.staged {
		count[o.pre0>>56+1]++
	}
	for i := 1; i < len(count); i++ {
		count[i] += count[i-1]
	}
	c.sorted = slices.Grow(c.sorted[:0], len(c.staged))[:len(c.staged)]
	for _, o := range c.staged {
		t := o.pre0 >> 56
		c.sorted[count[t]] = o
		count[t]++
	}
	for lo := 0; lo < len(c.sorted); {
		hi := lo + 1
		for hi < len(c.sorted) && c.sorted[hi].pre0>>56 == c.sorted[lo].pre0>>56 {
			hi++
		}
		if run := c.sorted[lo:hi]; !stagedSorted(run, c.arena) {
			sortStaged(run, c.arena)
		}
		lo = hi
	}
}

// get reads key as the current batch sees it: this batch's own writes of
// other requests (the overlay), else the database, which holds every batch
// the committer applied, synced or not (it is the only writer; a batch
// that fails its sync fails every batch built on it). The value is a copy.
// Appends do not use it (see apply).
func (c *committer) get(key []byte) ([]byte, bool, error) {
	if v, ok := c.overlay[string(key)]; ok {
		return v, v != nil, nil
	}
	v, ok, err := c.lookup(key)
	if !ok || err != nil {
		return nil, false, err
	}
	return append([]byte{}, v...), true, nil
}

// lookup reads key from the database as the committer left it (every
// batch it applied, see get), through one iterator per batch: cheaper than
// a Get each, which opens an iterator on every table it consults. The value
// is valid until the next lookup.
func (c *committer) lookup(key []byte) ([]byte, bool, error) {
	if err := c.openIter(); err != nil {
		return nil, false, err
	}
	if !c.it.SeekPrefixGE(key) || !bytes.Equal(c.it.Key(), key) {
		return nil, false, c.it.Error()
	}
	v, err := c.it.ValueAndErr()
	return v, err == nil, err
}

// openIter opens the batch's lookup iterator if needed. Most dedup lookups
// miss, so it consults bloom filters on every level, the last included.
func (c *committer) openIter() error {
	if c.it == nil {
		it, err := c.s.db.NewIter(&pebble.IterOptions{UseL6Filters: true})
		if err != nil {
			return err
		}
		c.it = it
	}
	return nil
}

// closeIter closes the batch's lookup iterator (before the commit: it pins
// the state the batch was built on).
func (c *committer) closeIter() {
	if c.it != nil {
		if err := c.it.Close(); err != nil && c.batchErr == nil {
			c.batchErr = err
		}
		c.it = nil
	}
}

// put writes key for a request other than an append, visible to the rest
// of the batch through get.
func (c *committer) put(key, value []byte) {
	c.set(key, value)
	c.overlay[string(key)] = append([]byte{}, value...)
}

// remove deletes key for a request other than an append.
func (c *committer) remove(key []byte) {
	c.del(key)
	c.overlay[string(key)] = nil
}
