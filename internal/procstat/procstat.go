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
func CPUWaitSeconds() (float64, bool) {
	tasks, err := filepath.Glob("/proc/self/task/*/schedstat")
	if err != nil || len(tasks) == 0 {
		return 0, false
	}
	var ns uint64
	found := false
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited meanwhile
		}
		if wait, ok := schedstatWait(string(b)); ok {
			ns += wait
			found = true
		}
	}
	return float64(ns) / 1e9, found
}

// schedstatWait parses one schedstat line: "<ns on CPU> <ns waiting> <slices>".
func schedstatWait(line string) (uint64, bool) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0, false
	}
	v, err := strconv.ParseUint(f[1], 10, 64)
	return v, err == nil
}
