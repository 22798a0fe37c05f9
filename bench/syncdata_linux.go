package bench

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncData is fdatasync, as the embedded store's log uses on Linux.
func syncData(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }
