//go:build unix

package storetest

import (
	"syscall"
	"time"
)

// cpuTime returns the user+system CPU time consumed by this process so far,
// or false where that is unknown.
func cpuTime() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
