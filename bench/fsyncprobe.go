package bench

import (
	"context"
	"fmt"
	"os"
	"time"
)

// Disk probe: a bare writer that appends a small record and syncs it, in a
// loop, like a write-ahead log with one record per commit and nothing else.
// Run beside a node with the embedded store, its latencies show what the
// file system alone costs at that moment, so a commit latency tail can be
// put down to the disk (or not).

// DefaultProbeRecord is the probe's record size: about one small batch of
// 1:1 messages in the store's log.
const DefaultProbeRecord = 600

// probeFileMax bounds the probe's file: past it the file is removed and a
// new one begun (a log rolls over to a new file the same way).
const probeFileMax = 64 << 20

// FsyncProbe appends record-byte writes, each followed by an fdatasync, to a
// file of its own in dir until ctx ends, and returns the latency of each
// write plus sync. One sync is in flight at a time. The file is removed on
// return; the directory is left alone. An I/O error ends the probe and is
// returned with the latencies measured so far.
func FsyncProbe(ctx context.Context, dir string, record int) (*Hist, error) {
	if record <= 0 {
		return nil, fmt.Errorf("bench: fsync probe: record size %d, want > 0", record)
	}
	h := NewHist()
	buf := make([]byte, record)
	for i := range buf {
		buf[i] = byte(i)
	}
	var f *os.File
	defer func() {
		if f != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	var size int
	for ctx.Err() == nil {
		if f == nil || size+record > probeFileMax {
			if f != nil {
				_ = f.Close()
				_ = os.Remove(f.Name())
			}
			var err error
			if f, err = os.CreateTemp(dir, "fsync-probe-"); err != nil {
				return h, fmt.Errorf("bench: fsync probe: %w", err)
			}
			size = 0
		}
		t0 := time.Now()
		if _, err := f.Write(buf); err != nil {
			return h, fmt.Errorf("bench: fsync probe: write %s: %w", f.Name(), err)
		}
		if err := syncData(f); err != nil {
			return h, fmt.Errorf("bench: fsync probe: sync %s: %w", f.Name(), err)
		}
		h.RecordNs(time.Since(t0).Nanoseconds())
		size += record
	}
	return h, nil
}
