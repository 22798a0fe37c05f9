package pebblestore

import (
	"runtime"
	"syscall"
)

// linuxThreads sets thread priorities with setpriority(2), which on Linux
// applies to one thread when given its id.
type linuxThreads struct{ base int } // the process's niceness

func (t linuxThreads) lower(nice int) (int, error) {
	runtime.LockOSThread()
	tid := syscall.Gettid()
	if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, min(t.base+nice, 19)); err != nil {
		runtime.UnlockOSThread()
		return 0, err
	}
	return tid, nil
}

func (t linuxThreads) restore(tid int) error {
	return syscall.Setpriority(syscall.PRIO_PROCESS, tid, t.base)
}

func (linuxThreads) release() { runtime.UnlockOSThread() }

// threadNice returns the niceness of thread tid (0: the caller's).
func threadNice(tid int) (int, error) {
	// The raw system call returns 20 - nice (glibc converts; Go does not).
	v, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid)
	return 20 - v, err
}

// probeThreadPriority reports whether a thread can be lowered by nice and
// restored, trying it on a thread of its own. If the restore fails, that
// thread ends with the probe's goroutine instead of going back to the
// scheduler lowered.
func probeThreadPriority(nice int) (threadPriority, bool) {
	if nice <= 0 {
		return nil, false
	}
	base, err := threadNice(0)
	if err != nil || base >= 19 {
		return nil, false
	}
	t := linuxThreads{base: base}
	ok := make(chan bool, 1)
	go func() {
		tid, err := t.lower(nice)
		if err != nil {
			ok <- false
			return
		}
		if t.restore(tid) != nil {
			ok <- false
			return // still locked: the thread exits with this goroutine
		}
		t.release()
		ok <- true
	}()
	if !<-ok {
		return nil, false
	}
	return t, true
}
