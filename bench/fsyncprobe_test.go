package bench

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestFsyncProbe: the probe syncs until its context ends, records one
// latency per sync and leaves nothing behind in its directory.
func TestFsyncProbe(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	h, err := FsyncProbe(ctx, dir, DefaultProbeRecord)
	if err != nil {
		t.Fatal(err)
	}
	if h.Count() == 0 {
		t.Fatal("no sync measured in 200 ms")
	}
	if l := h.Summary(); !l.Ordered() || l.P50 <= 0 {
		t.Fatalf("latencies %+v", l)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Fatalf("left in the probe's directory: %v (%v)", ents, err)
	}
	if _, err := FsyncProbe(ctx, dir, 0); err == nil {
		t.Fatal("record size 0 accepted")
	}
	if _, err := FsyncProbe(context.Background(), dir+"/missing", 10); err == nil {
		t.Fatal("a missing directory gave no error")
	}
}
