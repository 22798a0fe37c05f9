package procstat

import (
	"runtime"
	"sync"
	"testing"
)

func TestReadsThisProcess(t *testing.T) {
	if RSS() == 0 {
		t.Fatal("no RSS")
	}
	x := 0
	for i := range 20_000_000 {
		x += i
	}
	if CPUSeconds() <= 0 {
		t.Fatalf("no CPU time after a busy loop (%d)", x)
	}
}

// TestCPUWait: with more busy threads than CPUs, the threads wait for a
// CPU, and the wait is counted.
func TestCPUWait(t *testing.T) {
	w0, ok := CPUWaitSeconds()
	if !ok {
		t.Skip("this kernel keeps no schedstat (CONFIG_SCHED_INFO off): CPUWaitSeconds reports unavailable")
	}
	n := 3 * runtime.NumCPU()
	prev := runtime.GOMAXPROCS(n)
	defer runtime.GOMAXPROCS(prev)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			x := 0
			for i := range 50_000_000 {
				x += i
			}
			_ = x
		}()
	}
	wg.Wait()
	w1, _ := CPUWaitSeconds()
	if w1 <= w0 {
		t.Fatalf("no CPU wait counted after %d busy threads on %d CPUs (%.6f -> %.6f s)", n, runtime.NumCPU(), w0, w1)
	}
}

func TestSchedstatWait(t *testing.T) {
	if v, ok := schedstatWait("123 456 7\n"); !ok || v != 456 {
		t.Fatalf("got %d %v, want 456 true", v, ok)
	}
	for _, bad := range []string{"", "123", "123 x 7"} {
		if _, ok := schedstatWait(bad); ok {
			t.Fatalf("%q parsed", bad)
		}
	}
}
