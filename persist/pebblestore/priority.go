package pebblestore

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// DefaultBackgroundNice is how much lower than the process's own priority
// Pebble's rare flushes and compactions run (see Options.BackgroundNice).
const DefaultBackgroundNice = 10

// Tuning of backgroundPriority.
const (
	// A job is lowered only if the last job of its kind (flush or
	// compaction) ended at least this many times its run ago: at 5k
	// appends/s a flush takes about 0.3 s every 15 s (lowered), at 50k/s
	// about 0.4 s every 1.4 s (not lowered: writers would soon wait on
	// it). By kind, because a compaction of seconds every few minutes
	// says nothing about how soon the next flush is needed.
	rareJobRatio = 10
	// After a write stall no job is lowered for this long.
	stallHold = 30 * time.Second
)

// backgroundPriority lowers the CPU priority of the OS threads running
// Pebble's flushes and compactions while those jobs are rare, and
// restores it as soon as writers may come to wait on them.
//
// Why: on a small machine a flush encodes and compresses a whole memtable
// (a quarter second of CPU at the default size) while the event loops and
// the committer wait to run; every latency tail at low load lines up with
// one. With Go's Ps outnumbering the CPUs (imd runs two per CPU with this
// store), a woken loop gets a P at once, and the kernel then prefers its
// thread to the lowered job's. A lowered job still runs on idle CPU, so a
// lightly loaded node flushes as fast as before.
//
// The lowering is undone, for the rest of the job, when the committer has
// applied budget bytes since the job began (the next memtable is filling:
// the job must end before it is full), when an apply waited on a memtable
// or L0 stall (and then for stallHold no job is lowered), and when the job
// ends. Lowering needs Linux and the right to raise a thread's priority
// back (root, CAP_SYS_NICE, or RLIMIT_NICE): newBackgroundPriority probes
// it and returns nil otherwise; every method of a nil *backgroundPriority
// does nothing.
//
// begin and end run on the job's goroutine (Pebble's event listener);
// wrote and restoreAll on the committer; all are safe for concurrent use.
type backgroundPriority struct {
	t      threadPriority
	nice   int   // the niceness a lowered job runs at
	budget int64 // bytes applied while a job is lowered before it is restored

	lowered atomic.Int32 // jobs lowered and not yet restored: the committer's cheap check
	written atomic.Int64 // bytes applied since the first of them began

	mu       sync.Mutex
	jobs     map[int]loweredJob // by Pebble job id: the jobs that begin lowered
	last     [numJobKinds]jobRun
	heldTill time.Time // no lowering before this (after a stall)

	onLower, onRestore func() // counters, for the metrics
}

// The kinds of jobs, for backgroundPriority.last.
const (
	kindFlush = iota
	kindCompaction
	numJobKinds
)

// jobRun is the last job of a kind to end (lowered or not).
type jobRun struct {
	end time.Time     // when it ended
	ran time.Duration // and how long it ran
}

// loweredJob is a job that begin lowered.
type loweredJob struct {
	tid      int  // its thread
	restored bool // its priority is back to the process's own
}

// threadPriority sets the priority of the calling goroutine's thread; one
// implementation per platform (priority_linux.go, priority_other.go).
type threadPriority interface {
	// lower locks the calling goroutine to its thread and sets the
	// thread's niceness; it returns the thread's id. On error the
	// goroutine is not locked.
	lower(nice int) (tid int, err error)
	// restore sets thread tid back to the process's own niceness.
	restore(tid int) error
	// release unlocks the calling goroutine from its thread.
	release()
}

// newBackgroundPriority returns nil when nice <= 0 or priorities cannot
// be restored here (see backgroundPriority).
func newBackgroundPriority(nice int, budget int64) *backgroundPriority {
	t, ok := probeThreadPriority(nice)
	if !ok {
		return nil
	}
	return &backgroundPriority{t: t, nice: nice, budget: budget, jobs: map[int]loweredJob{},
		onLower: func() {}, onRestore: func() {}}
}

// enabled reports whether jobs may be lowered at all.
func (p *backgroundPriority) enabled() bool { return p != nil }

// eventListener lowers and restores the jobs Pebble runs.
func (p *backgroundPriority) eventListener() *pebble.EventListener {
	if p == nil {
		return &pebble.EventListener{}
	}
	return &pebble.EventListener{
		FlushBegin:      func(info pebble.FlushInfo) { p.begin(kindFlush, info.JobID) },
		FlushEnd:        func(info pebble.FlushInfo) { p.end(kindFlush, info.JobID, info.TotalDuration) },
		CompactionBegin: func(info pebble.CompactionInfo) { p.begin(kindCompaction, info.JobID) },
		CompactionEnd:   func(info pebble.CompactionInfo) { p.end(kindCompaction, info.JobID, info.TotalDuration) },
	}
}

// begin lowers the calling goroutine's thread for job id of kind if jobs
// of that kind are rare.
func (p *backgroundPriority) begin(kind, id int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	last := p.last[kind]
	if now.Before(p.heldTill) || (!last.end.IsZero() && now.Sub(last.end) < rareJobRatio*last.ran) {
		return
	}
	tid, err := p.t.lower(p.nice)
	if err != nil {
		return
	}
	p.jobs[id] = loweredJob{tid: tid}
	if p.lowered.Add(1) == 1 {
		p.written.Store(0)
	}
	p.onLower()
}

// end restores job id's thread if begin lowered it, and notes when the
// job of kind ended and how long it ran.
func (p *backgroundPriority) end(kind, id int, ran time.Duration) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last[kind] = jobRun{end: time.Now(), ran: ran}
	j, ok := p.jobs[id]
	if !ok {
		return
	}
	delete(p.jobs, id)
	if !j.restored {
		p.lowered.Add(-1)
		if p.t.restore(j.tid) != nil {
			// Keep the goroutine on its lowered thread: the thread then
			// ends with it instead of running other goroutines lowered.
			return
		}
	}
	p.t.release()
}

// wrote counts n bytes applied by the committer and restores every
// lowered job if they reach the budget or if stalled (the apply waited
// for a flush or a compaction).
func (p *backgroundPriority) wrote(n int, stalled bool) {
	if p == nil {
		return
	}
	if stalled {
		p.restoreAll(true)
		return
	}
	if p.lowered.Load() > 0 && p.written.Add(int64(n)) >= p.budget {
		p.restoreAll(false)
	}
}

// restoreAll restores every lowered job now; after a stall, no job is
// lowered for stallHold.
func (p *backgroundPriority) restoreAll(stalled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if stalled {
		p.heldTill = time.Now().Add(stallHold)
	}
	for id, j := range p.jobs {
		if j.restored || p.t.restore(j.tid) != nil {
			continue
		}
		j.restored = true
		p.jobs[id] = j
		p.lowered.Add(-1)
		p.onRestore()
	}
}
