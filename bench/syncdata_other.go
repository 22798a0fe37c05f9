//go:build !linux

package bench

import "os"

// syncData falls back to fsync where fdatasync is not available.
func syncData(f *os.File) error { return f.Sync() }
