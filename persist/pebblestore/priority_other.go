//go:build !linux

package pebblestore

// probeThreadPriority: lowering one thread needs Linux's per-thread
// setpriority; elsewhere Pebble's jobs run at the process's priority.
func probeThreadPriority(int) (threadPriority, bool) { return nil, false }
