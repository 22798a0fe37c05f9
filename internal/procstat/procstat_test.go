package procstat

import (
	"os"
	"path/filepath"
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

func TestSchedstatTimes(t *testing.T) {
	if r, w, ok := schedstatTimes("123 456 7\n"); !ok || r != 123 || w != 456 {
		t.Fatalf("got %d %d %v, want 123 456 true", r, w, ok)
	}
	for _, bad := range []string{"", "123", "123 x 7", "x 456 7"} {
		if _, _, ok := schedstatTimes(bad); ok {
			t.Fatalf("%q parsed", bad)
		}
	}
}

// TestCPUWaitUnavailable: a kernel whose run-queue accounting is off writes
// "0 0 0" for every thread; that is reported as not measured, not as no
// wait (TestCPUWait would otherwise fail on it instead of skipping).
func TestCPUWaitUnavailable(t *testing.T) {
	write := func(dir, tid, line string) {
		if err := os.MkdirAll(filepath.Join(dir, tid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, tid, "schedstat"), []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	off := t.TempDir()
	write(off, "1", "0 0 0\n")
	write(off, "2", "0 0 0\n")
	if w, ok := cpuWaitIn(off); ok {
		t.Fatalf("all-zero schedstat: %v, %v; want not measured", w, ok)
	}
	on := t.TempDir()
	write(on, "1", "5000000 1500000000 10\n")
	write(on, "2", "7000000 500000000 3\n")
	if w, ok := cpuWaitIn(on); !ok || w != 2 {
		t.Fatalf("got %v, %v; want 2 s measured", w, ok)
	}
	if _, ok := cpuWaitIn(filepath.Join(on, "absent")); ok {
		t.Fatal("a missing task directory is measured")
	}
}
