// Package procstat reads this process's resource use: resident memory and
// CPU time. Used by the node's admin stats and by the load generator.
package procstat

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// RSS returns the resident set size in bytes, from /proc/self/statm (0 if
// unavailable).
func RSS() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

// CPUSeconds returns the process's user plus system CPU time (0 if
// unavailable).
func CPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// CPUWaitSeconds returns how long the process's threads have been runnable
// but waiting for a CPU (the run-queue delay the kernel keeps per thread in
// /proc/self/task/*/schedstat, summed), and whether the kernel reports it.
// On a machine with more runnable threads than CPUs it grows beside
// CPUSeconds: their ratio says how long each CPU-second had to wait.
// Threads that exited are not counted (a Go process rarely ends one).
func CPUWaitSeconds() (float64, bool) { return cpuWaitIn("/proc/self/task") }

// cpuWaitIn sums the run-queue delay of the threads under dir (a
// /proc/PID/task directory). A kernel whose run-queue accounting is off
// (an older kernel with CONFIG_TASK_DELAY_ACCT but not CONFIG_SCHEDSTATS,
// booted with nodelayacct) still has the files but writes "0 0 0" in
// each: no thread with time on a CPU means nothing is measured, not that
// nothing waited.
func cpuWaitIn(dir string) (float64, bool) {
	tasks, err := os.ReadDir(dir)
	if err != nil || len(tasks) == 0 {
		return 0, false
	}
	var wait uint64
	ran := false
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "schedstat"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		if run, w, ok := schedstatTimes(string(b)); ok {
			wait += w
			ran = ran || run > 0
		}
	}
	return float64(wait) / 1e9, ran
}

// schedstatTimes parses one schedstat line: "<ns on CPU> <ns waiting> <slices>".
func schedstatTimes(line string) (run, wait uint64, ok bool) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0, 0, false
	}
	run, err1 := strconv.ParseUint(f[0], 10, 64)
	wait, err2 := strconv.ParseUint(f[1], 10, 64)
	return run, wait, err1 == nil && err2 == nil
}

// Syscalls returns how many read and write system calls the process has
// made (syscr and syscw in /proc/self/io: read, readv, recvmsg, pread and
// the like count as reads; write, writev, sendmsg as writes), and whether
// the kernel reports them. Per message they say how many messages each
// syscall carried: an event-loop server under light load makes one read
// and one write per message, under heavy load one for many.
func Syscalls() (reads, writes uint64, ok bool) { return syscallsIn("/proc/self/io") }

func syscallsIn(path string) (reads, writes uint64, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, false
	}
	var gotR, gotW bool
	for _, line := range strings.Split(string(b), "\n") {
		k, v, found := strings.Cut(line, ":")
		if !found {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "syscr":
			reads, gotR = n, true
		case "syscw":
			writes, gotW = n, true
		}
	}
	return reads, writes, gotR && gotW
}
