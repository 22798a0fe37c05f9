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

// TestSyscalls: writing to a pipe 100 times and reading it 100 times shows
// up as at least that many write and read syscalls.
func TestSyscalls(t *testing.T) {
	r0, w0, ok := Syscalls()
	if !ok {
		t.Skip("this kernel has no /proc/self/io (CONFIG_TASK_IO_ACCOUNTING off): Syscalls reports unavailable")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	buf := make([]byte, 1)
	for range 100 {
		if _, err := pw.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := pr.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	r1, w1, _ := Syscalls()
	if r1-r0 < 100 || w1-w0 < 100 {
		t.Fatalf("100 reads and 100 writes counted as %d reads and %d writes", r1-r0, w1-w0)
	}
}

func TestSyscallsParse(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "io")
	if err := os.WriteFile(p, []byte("rchar: 10\nwchar: 20\nsyscr: 7\nsyscw: 9\nread_bytes: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r, w, ok := syscallsIn(p); !ok || r != 7 || w != 9 {
		t.Fatalf("syscallsIn = %d, %d, %v; want 7, 9, true", r, w, ok)
	}
	if err := os.WriteFile(p, []byte("rchar: 10\nsyscr: 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := syscallsIn(p); ok {
		t.Fatal("a file without syscw reported as complete")
	}
	if _, _, ok := syscallsIn(filepath.Join(dir, "missing")); ok {
		t.Fatal("a missing file reported as available")
	}
}
