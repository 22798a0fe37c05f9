package pebblestore

import (
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
)

// The commit pipeline (package doc, "Pipelined commits"): the committer
// builds a batch, applies it to Pebble without waiting for its WAL sync
// (DB.ApplyNoSyncWait: WAL write and memtable insert), and hands it to the
// completer, which waits for the sync (Batch.SyncWait), publishes the read
// view taken right after the apply, and completes the batch's requests. So
// batch N+1 is built while batch N syncs. The completer takes batches in the
// order they were applied and finishes one before it looks at the next:
// completions keep queue order across batches, and nothing of N+1 completes
// or becomes visible to readers before N is durable.

// pipelineDepth bounds the batches applied and not yet completed, counting
// the one being built: the committer takes a free flight before it takes
// requests from the queue, so while every flight waits for its sync, new
// requests wait in the queue and join one larger batch. Pebble syncs the WAL
// once for every batch written while the previous sync ran, so a deeper
// pipeline adds no fsyncs; it lets the committer go on building while two
// syncs follow each other.
const pipelineDepth = 4

// flight is one batch on its way through the pipeline. The committer owns
// it from the free list until it sends it to the completer, the completer
// from then until it puts it back on the free list.
type flight struct {
	b     *pebble.Batch
	items []item // the batch's requests, in queue order
	gen   uint64 // the committer's generation it was built in (see completer)
	// err is the batch's failure before its sync (a write the batch
	// refused, a failed apply): nothing of it was applied.
	err error
	// applied: b was handed to Pebble; wait: with ApplyNoSyncWait, so its
	// sync is still to be waited for.
	applied, wait bool
	view          pendingView // what readers see once it is durable
	direct        bool        // a maintenance batch
	rmMsgs        uint64      // removals by retention, counted once durable
	rmEnts        uint64
	appliedAt     time.Time // when the apply started (imgn_store_commit_seconds)
}

// completer is the goroutine that finishes flights. It touches only the
// flights it is given and the Store's goroutine-safe parts.
type completer struct {
	s       *Store
	flights <-chan *flight
	free    chan<- *flight
	// failErr is the failure of the newest batch whose sync failed; its
	// generation is Store.failedGen (0: none), which only the completer
	// writes. Every batch of that generation or an older one was built on
	// the failed batch's writes (the committer's caches assumed them): it
	// fails too. The committer reads Store.failedGen before each batch
	// and, seeing its own generation there, forgets its caches and starts
	// the next generation.
	failErr error
}

// run finishes flights in the order they arrive until the channel closes.
func (p *completer) run() {
	for f := range p.flights {
		p.finish(f)
		p.free <- f
	}
}

// finish waits until f is durable, publishes its view and completes its
// requests, or fails them.
func (p *completer) finish(f *flight) {
	s := p.s
	err := f.err
	var syncErr error
	if f.applied {
		if f.wait {
			syncErr = f.b.SyncWait()
		}
		if h := s.opts.afterSync; h != nil {
			syncErr = h(syncErr)
		}
		s.m.commit.Observe(time.Since(f.appliedAt).Seconds())
	}
	t0 := time.Now()
	switch {
	case syncErr != nil:
		p.failErr = syncErr
		s.failedGen.Store(f.gen)
		err = fmt.Errorf("pebblestore: commit: %w: %w", persist.ErrUnavailable, syncErr)
	case err == nil && f.gen <= s.failedGen.Load():
		err = fmt.Errorf("pebblestore: commit: %w: built on a batch whose sync failed: %w", persist.ErrUnavailable, p.failErr)
	}
	if err != nil {
		// Nothing of the batch is known to be durable: fail every request,
		// also one that wrote nothing and found its own error, since that
		// error may rest on writes of this batch or of the failed ones it
		// was built on (a user that "exists", a group "not found").
		f.view.drop()
		s.failedCommits.Add(1)
		for i := range f.items {
			if it := &f.items[i]; it.op != nil {
				it.op.Err = err
			} else {
				it.w.err = err
			}
		}
	} else {
		s.views.install(f.view)
		s.removedMsgs.Add(f.rmMsgs)
		s.removedEnts.Add(f.rmEnts)
		s.commits.Add(1)
		s.writes.Add(uint64(len(f.items)))
		s.m.batch.Observe(float64(len(f.items)))
	}
	f.view = pendingView{}
	for i := range f.items {
		if it := &f.items[i]; it.op != nil {
			it.op.InBatch = true
			complete(it.op, it.op.Err)
		} else {
			if it.w.err == nil && it.w.finish != nil {
				it.w.finish()
			}
			if it.w.then != nil {
				it.w.then(it.w.err)
			} else {
				close(it.w.done)
			}
		}
	}
	s.hooks.Run()
	clear(f.items) // drop references for the GC
	f.items = f.items[:0]
	if syncErr != nil || (f.applied && f.err != nil) {
		// Pebble does not let a batch that failed be reused.
		f.b = s.db.NewBatch()
	} else {
		f.b.Reset()
	}
	f.err, f.applied, f.wait, f.direct, f.rmMsgs, f.rmEnts = nil, false, false, false, 0, 0
	s.m.complete.Observe(time.Since(t0).Seconds())
}

// applyFlight hands f's batch to Pebble: with a sync, without waiting for
// it (the completer waits); without (Options.NoSync), at once. It then
// takes the view readers will see once f is durable: the committer is the
// only writer, so the database holds exactly the batches applied so far, f
// the last.
func (c *committer) applyFlight(f *flight) {
	f.appliedAt = time.Now()
	var err error
	if c.s.opts.NoSync {
		err = c.s.db.Apply(f.b, pebble.NoSync)
	} else {
		err = c.s.db.ApplyNoSyncWait(f.b, pebble.Sync)
		f.wait = err == nil
	}
	f.applied = true
	c.s.m.apply.Observe(time.Since(f.appliedAt).Seconds())
	cs := f.b.CommitStats()
	c.s.m.observeStalls(&cs)
	c.s.pri.wrote(f.b.Len(), cs.MemTableWriteStallDuration > 0 || cs.L0ReadAmpWriteStallDuration > 0)
	if err != nil {
		f.err = fmt.Errorf("pebblestore: commit: %w: %w", persist.ErrUnavailable, err)
		return
	}
	f.view = c.s.views.take(c.s.db, f.direct)
}

// OnBatchCompleted implements persist.BatchCompleting: f runs on the
// completer goroutine after the ops of each synced (or failed) commit are
// completed.
func (s *Store) OnBatchCompleted(f func()) (remove func()) { return s.hooks.Add(f) }
