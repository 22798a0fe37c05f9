package pebblestore

import (
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// jobThread runs Pebble's side of one job on a goroutine of its own:
// begin, report the thread and its niceness, wait, end.
type jobThread struct {
	tid, nice int
	endNow    chan time.Duration
	ended     chan int // the thread's niceness after end
}

func startJob(t *testing.T, p *backgroundPriority, kind, id int) *jobThread {
	t.Helper()
	j := &jobThread{endNow: make(chan time.Duration), ended: make(chan int, 1)}
	started := make(chan struct{})
	go func() {
		p.begin(kind, id)
		j.tid = syscall.Gettid()
		j.nice, _ = threadNice(0)
		close(started)
		p.end(kind, id, <-j.endNow)
		n, _ := threadNice(0)
		j.ended <- n
	}()
	<-started
	return j
}

func (j *jobThread) finish(ran time.Duration) int { j.endNow <- ran; return <-j.ended }

// threadNiceOf is the niceness of thread tid now.
func threadNiceOf(t *testing.T, tid int) int {
	t.Helper()
	n, err := threadNice(tid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newTestPriority(t *testing.T, budget int64) (p *backgroundPriority, base int, lowered, restored *int) {
	t.Helper()
	p = newBackgroundPriority(DefaultBackgroundNice, budget)
	if p == nil {
		if os.Geteuid() == 0 {
			t.Fatal("root may restore thread priorities, but the probe says no")
		}
		t.Skip("restoring a thread's priority needs root, CAP_SYS_NICE or RLIMIT_NICE; without it jobs are never lowered")
	}
	base = p.t.(linuxThreads).base
	lowered, restored = new(int), new(int)
	p.onLower, p.onRestore = func() { *lowered++ }, func() { *restored++ }
	return p, base, lowered, restored
}

func TestBackgroundPriorityLowersRareJobs(t *testing.T) {
	p, base, lowered, _ := newTestPriority(t, 1<<20)
	want := min(base+DefaultBackgroundNice, 19)

	j := startJob(t, p, kindFlush, 1)
	if j.nice != want || *lowered != 1 || p.lowered.Load() != 1 {
		t.Fatalf("first job: niceness %d (want %d), lowered %d", j.nice, want, *lowered)
	}
	if got := threadNiceOf(t, j.tid); got != want {
		t.Fatalf("the job's thread seen from another: niceness %d, want %d", got, want)
	}
	if got := j.finish(50 * time.Millisecond); got != base || p.lowered.Load() != 0 {
		t.Fatalf("after end: niceness %d (want %d), lowered now %d", got, base, p.lowered.Load())
	}

	// Right after a flush of 50 ms, flushes are not rare: the next runs
	// as is.
	j = startJob(t, p, kindFlush, 2)
	if j.nice != base || *lowered != 1 {
		t.Fatalf("flush right after another: niceness %d (want %d), lowered %d", j.nice, base, *lowered)
	}
	j.finish(50 * time.Millisecond)

	// Compactions are judged by their own history, not the flushes'.
	j = startJob(t, p, kindCompaction, 3)
	if j.nice != want || *lowered != 2 {
		t.Fatalf("first compaction right after a flush: niceness %d (want %d), lowered %d", j.nice, want, *lowered)
	}
	j.finish(2 * time.Second)

	// Once the idle time since is ten times the last flush's run, flushes
	// are rare again, whatever the compaction just before.
	p.mu.Lock()
	p.last[kindFlush].end = time.Now().Add(-rareJobRatio * p.last[kindFlush].ran)
	p.mu.Unlock()
	j = startJob(t, p, kindFlush, 4)
	if j.nice != want || *lowered != 3 {
		t.Fatalf("flush after a long idle time: niceness %d (want %d), lowered %d", j.nice, want, *lowered)
	}
	j.finish(time.Millisecond)
	j = startJob(t, p, kindCompaction, 5)
	if j.nice != base || *lowered != 3 {
		t.Fatalf("compaction right after one of 2 s: niceness %d (want %d), lowered %d", j.nice, base, *lowered)
	}
	j.finish(time.Millisecond)
}

func TestBackgroundPriorityRestoredWhenWritesNeedIt(t *testing.T) {
	p, base, _, restored := newTestPriority(t, 1000)
	j := startJob(t, p, kindFlush, 1)
	p.wrote(600, false)
	if got := threadNiceOf(t, j.tid); got == base || *restored != 0 {
		t.Fatalf("under the budget: niceness %d, restored %d; want still lowered", got, *restored)
	}
	p.wrote(600, false)
	if got := threadNiceOf(t, j.tid); got != base || *restored != 1 || p.lowered.Load() != 0 {
		t.Fatalf("over the budget: niceness %d (want %d), restored %d", got, base, *restored)
	}
	if got := j.finish(time.Millisecond); got != base {
		t.Fatalf("after end: niceness %d, want %d", got, base)
	}

	// The budget counts from the job's begin, not from the store's open.
	p.mu.Lock()
	p.last[kindFlush] = jobRun{}
	p.mu.Unlock()
	j = startJob(t, p, kindFlush, 2)
	p.wrote(600, false)
	if got := threadNiceOf(t, j.tid); got == base {
		t.Fatalf("a new job's budget must start empty: restored at %d bytes", 600)
	}

	// A stall restores at once and holds lowering off.
	p.wrote(0, true)
	if got := threadNiceOf(t, j.tid); got != base || *restored != 2 {
		t.Fatalf("after a stall: niceness %d (want %d), restored %d", got, base, *restored)
	}
	j.finish(time.Millisecond)
	p.mu.Lock()
	p.last[kindFlush] = jobRun{}
	p.mu.Unlock()
	j = startJob(t, p, kindFlush, 3)
	if j.nice != base {
		t.Fatalf("a job within %s of a stall: niceness %d, want %d", stallHold, j.nice, base)
	}
	j.finish(time.Millisecond)
}

func TestBackgroundPriorityDisabled(t *testing.T) {
	if p := newBackgroundPriority(0, 1000); p != nil {
		t.Fatal("nice 0 must disable lowering")
	}
	// What Open keeps when lowering is off: every method does nothing, so
	// the job's thread keeps the process's niceness throughout.
	var p *backgroundPriority
	runtime.LockOSThread() // the same thread before and after
	defer runtime.UnlockOSThread()
	before, err := threadNice(0)
	if err != nil {
		t.Fatal(err)
	}
	p.begin(kindFlush, 1)
	during, _ := threadNice(0)
	p.wrote(1<<30, true)
	p.end(kindFlush, 1, time.Second)
	after, _ := threadNice(0)
	if during != before || after != before {
		t.Fatalf("niceness %d before, %d during, %d after a job with lowering off", before, during, after)
	}
}
