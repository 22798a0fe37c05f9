package mongostore

import (
	"strings"
	"testing"
)

// TestReplayKeyOrder: one node's keys sort by bucket, and the keys of
// nodes whose names share a prefix never fall between them (the skip of
// empty buckets is a range query on the keys).
func TestReplayKeyOrder(t *testing.T) {
	if got := replayKey("n1", 0x1a2b); got != "2:n1"+"00001a2b" {
		t.Fatalf("replayKey = %q", got)
	}
	lo, hi := replayKey("n1", 5), replayKey("n1", 1<<26-1)
	if !(lo < replayKey("n1", 6) && replayKey("n1", 0xff) < replayKey("n1", 0x100) && replayKey("n1", 0x100) < hi) {
		t.Fatal("keys of one node do not sort by bucket")
	}
	for _, other := range []string{"n", "n10", "n1\x00", "n2", "", "2:n1"} {
		for _, b := range []uint64{0, 5, 6, 1 << 20, 1<<26 - 1} {
			if k := replayKey(other, b); lo < k && k <= hi {
				t.Errorf("node %q bucket %d: key %q falls within n1's keys", other, b, k)
			}
		}
	}
	if strings.Contains(replayKey("a\x00b", 1), "\x00") {
		t.Fatal("a NUL reached the key")
	}
}
