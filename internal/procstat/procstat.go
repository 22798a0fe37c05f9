// Package procstat reads this process's resource use: resident memory and
// CPU time. Used by the node's admin stats and by the load generator.
package procstat

import (
	"os"
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
