package client

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/imgn/imgn/codec/pb"
)

func msgs(seqs ...uint64) []*pb.Message {
	out := make([]*pb.Message, len(seqs))
	for i, s := range seqs {
		out[i] = &pb.Message{Seq: s}
	}
	return out
}

func seqsOf(ms []*pb.Message) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.GetSeq()
	}
	return out
}

func TestOrdererPush(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name     string
		last     uint64
		batches  [][]uint64
		want     []uint64
		buffered int
	}{
		{"in order", 0, [][]uint64{{1, 2}, {3}}, []uint64{1, 2, 3}, 0},
		{"duplicates dropped", 0, [][]uint64{{1, 2}, {2, 1}, {3, 3}}, []uint64{1, 2, 3}, 0},
		{"reverse order", 0, [][]uint64{{3}, {2}, {1}}, []uint64{1, 2, 3}, 0},
		{"gap stays open", 0, [][]uint64{{1}, {3, 4}}, []uint64{1}, 2},
		{"gap filled late", 0, [][]uint64{{1}, {3, 4}, {2}}, []uint64{1, 2, 3, 4}, 0},
		{"at or below start dropped", 10, [][]uint64{{9, 10, 11}}, []uint64{11}, 0},
		{"seq 0 and nil ignored", 0, [][]uint64{{0, 1}}, []uint64{1}, 0},
		{"unsorted batch", 0, [][]uint64{{2, 3, 1}}, []uint64{1, 2, 3}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOrderer(tt.last, 100, 50*time.Millisecond)
			var got []*pb.Message
			for _, b := range tt.batches {
				got = o.push(t0, append(msgs(b...), nil), got)
			}
			if !slices.Equal(seqsOf(got), tt.want) {
				t.Fatalf("delivered %v, want %v", seqsOf(got), tt.want)
			}
			if o.buffered() != tt.buffered {
				t.Fatalf("buffered %d, want %d", o.buffered(), tt.buffered)
			}
		})
	}
}

func TestOrdererGapGraceMakesSyncDue(t *testing.T) {
	t0 := time.Unix(1000, 0)
	grace := 50 * time.Millisecond
	o := newOrderer(0, 100, grace)
	if due, at := o.syncDue(t0); due || !at.IsZero() {
		t.Fatalf("no gap: due=%v at=%v", due, at)
	}
	o.push(t0, msgs(1, 3), nil)
	due, at := o.syncDue(t0)
	if due || !at.Equal(t0.Add(grace)) {
		t.Fatalf("fresh gap: due=%v at=%v, want not due until %v", due, at, t0.Add(grace))
	}
	if due, _ := o.syncDue(t0.Add(grace - time.Nanosecond)); due {
		t.Fatal("due before the grace ended")
	}
	if due, _ := o.syncDue(t0.Add(grace)); !due {
		t.Fatal("not due once the grace ended")
	}
	// Progress past part of a gap restarts the grace period.
	o.push(t0, msgs(5), nil) // buffer {3,5}
	out := o.push(t0.Add(40*time.Millisecond), msgs(2), nil)
	if !slices.Equal(seqsOf(out), []uint64{2, 3}) {
		t.Fatalf("delivered %v", seqsOf(out))
	}
	if _, at := o.syncDue(t0); !at.Equal(t0.Add(40*time.Millisecond + grace)) {
		t.Fatalf("grace not restarted after progress: at=%v", at)
	}
	// Filling the gap closes it.
	out = o.push(t0, msgs(4), nil)
	if !slices.Equal(seqsOf(out), []uint64{4, 5}) {
		t.Fatalf("delivered %v", seqsOf(out))
	}
	if due, at := o.syncDue(t0.Add(time.Hour)); due || !at.IsZero() {
		t.Fatalf("closed gap still due=%v at=%v", due, at)
	}
}

func TestOrdererOverflowDropsAndSyncs(t *testing.T) {
	t0 := time.Unix(1000, 0)
	o := newOrderer(0, 3, time.Hour)
	out := o.push(t0, msgs(5, 6, 7, 8, 9), nil)
	if len(out) != 0 || o.buffered() != 3 {
		t.Fatalf("out=%v buffered=%d, want none and 3", seqsOf(out), o.buffered())
	}
	if due, _ := o.syncDue(t0); !due {
		t.Fatal("a drop must make a sync due at once")
	}
	// The next in-order seq is delivered even with a full buffer.
	out = o.push(t0, msgs(1), nil)
	if !slices.Equal(seqsOf(out), []uint64{1}) {
		t.Fatalf("delivered %v", seqsOf(out))
	}
	out = o.synced(t0, 1, msgs(2, 3, 4, 5, 6, 7, 8, 9), nil)
	if !slices.Equal(seqsOf(out), []uint64{2, 3, 4, 5, 6, 7, 8, 9}) {
		t.Fatalf("after sync delivered %v", seqsOf(out))
	}
	o.syncDone(t0)
	if due, _ := o.syncDue(t0); due {
		t.Fatal("still due after a complete sync")
	}
	o.noteDropped()
	if due, _ := o.syncDue(t0); !due {
		t.Fatal("noteDropped must make a sync due")
	}
}

func TestOrdererSyncedIsAuthoritative(t *testing.T) {
	t0 := time.Unix(1000, 0)
	o := newOrderer(0, 100, time.Hour)
	o.push(t0, msgs(9), nil) // a push beyond the page
	// The page says seqs 1, 4 and 6 do not exist (e.g. trimmed): skip them.
	out := o.synced(t0, 0, msgs(2, 3, 5, 7), nil)
	if !slices.Equal(seqsOf(out), []uint64{2, 3, 5, 7}) {
		t.Fatalf("delivered %v", seqsOf(out))
	}
	if o.last != 7 || o.buffered() != 1 {
		t.Fatalf("last=%d buffered=%d, want 7 and 1", o.last, o.buffered())
	}
	out = o.synced(t0, 7, msgs(8, 9, 10), nil)
	if !slices.Equal(seqsOf(out), []uint64{8, 9, 10}) {
		t.Fatalf("delivered %v (9 must come once)", seqsOf(out))
	}
	// A page for an after beyond last (never sent by the client) is a push:
	// it must not skip the seqs in between.
	out = o.synced(t0, 12, msgs(13), nil)
	if len(out) != 0 || o.last != 10 {
		t.Fatalf("delivered %v last=%d", seqsOf(out), o.last)
	}
	// Empty and duplicate pages change nothing.
	if out = o.synced(t0, 10, msgs(3, 10), nil); len(out) != 0 {
		t.Fatalf("duplicates delivered: %v", seqsOf(out))
	}
	if out = o.synced(t0, 10, nil, nil); len(out) != 0 {
		t.Fatalf("empty page delivered %v", seqsOf(out))
	}
}

// TestOrdererExactlyOnceProperty drives the orderer like the delivery
// goroutine does, against a simulated server inbox: pushes lost,
// duplicated, split and shuffled, sync pages of random sizes, whenever the
// orderer asks for a sync. Whatever happens, the output must be exactly
// 1..n in order.
// TestOrdererRemoved: a SYNC_OK first_seq skips the seqs retention removed,
// delivers what was buffered behind them, and never goes backwards.
func TestOrdererRemoved(t *testing.T) {
	t0 := time.Unix(1000, 0)
	o := newOrderer(5, 100, time.Second)
	if out := o.push(t0, msgs(12, 13), nil); len(out) != 0 {
		t.Fatalf("pushed above a gap: delivered %v", seqsOf(out))
	}
	if out := o.removed(t0, 10, nil); len(out) != 0 || o.last != 9 {
		t.Fatalf("removed below 10: delivered %v, last %d; want nothing, last 9", seqsOf(out), o.last)
	}
	if out := o.synced(t0, 5, msgs(10, 11), nil); !slices.Equal(seqsOf(out), []uint64{10, 11, 12, 13}) {
		t.Fatalf("page from first_seq: delivered %v, want [10 11 12 13]", seqsOf(out))
	}
	o.push(t0, msgs(20), nil)
	if out := o.removed(t0, 20, nil); !slices.Equal(seqsOf(out), []uint64{20}) || o.buffered() != 0 {
		t.Fatalf("empty page with first_seq 20: delivered %v (buffered %d), want [20]", seqsOf(out), o.buffered())
	}
	for _, first := range []uint64{0, 5, 21} {
		if out := o.removed(t0, first, nil); len(out) != 0 || o.last != 20 {
			t.Fatalf("first_seq %d at or below last+1: delivered %v, last %d; want no change", first, seqsOf(out), o.last)
		}
	}
}

func TestOrdererExactlyOnceProperty(t *testing.T) {
	for seed := uint64(1); seed <= 200; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed*7919))
		n := 1 + rng.IntN(300)
		maxBuf := 1 + rng.IntN(64)
		grace := 50 * time.Millisecond
		o := newOrderer(0, maxBuf, grace)
		now := time.Unix(1000, 0)

		// Build the push stream: each seq pushed 0..2 times, in batches,
		// then batches and seqs inside them shuffled a bit.
		var pushes [][]*pb.Message
		for s := 1; s <= n; {
			k := 1 + rng.IntN(5)
			var b []*pb.Message
			for j := 0; j < k && s <= n; j, s = j+1, s+1 {
				switch r := rng.IntN(10); {
				case r == 0: // lost
				case r == 1: // duplicated
					b = append(b, &pb.Message{Seq: uint64(s)}, &pb.Message{Seq: uint64(s)})
				default:
					b = append(b, &pb.Message{Seq: uint64(s)})
				}
			}
			pushes = append(pushes, b)
		}
		for i := range pushes {
			if j := i + rng.IntN(4); j < len(pushes) {
				pushes[i], pushes[j] = pushes[j], pushes[i]
			}
		}
		// Replay some old batches as late duplicates.
		for range rng.IntN(5) {
			pushes = append(pushes, pushes[rng.IntN(len(pushes))])
		}

		var got []*pb.Message
		syncAll := func() {
			for {
				after := o.last
				end := min(uint64(n), after+uint64(1+rng.IntN(50)))
				var page []*pb.Message
				for s := after + 1; s <= end; s++ {
					page = append(page, &pb.Message{Seq: s})
				}
				got = o.synced(now, after, page, got)
				if end == uint64(n) {
					break
				}
			}
			o.syncDone(now)
		}
		if rng.IntN(2) == 0 {
			syncAll() // login sync first, pushes after (all duplicates or newer)
		}
		for _, b := range pushes {
			got = o.push(now, b, got)
			now = now.Add(time.Duration(rng.IntN(30)) * time.Millisecond)
			if due, _ := o.syncDue(now); due {
				syncAll()
			}
		}
		// End of traffic: if anything is still missing, the orderer must
		// say so (buffered gap or drop), and a sync completes the stream.
		if o.last < uint64(n) {
			if due, at := o.syncDue(now.Add(time.Hour)); !due && at.IsZero() && o.buffered() > 0 {
				t.Fatalf("seed %d: gap with %d buffered but no sync ever due", seed, o.buffered())
			}
			syncAll()
		}
		want := make([]uint64, n)
		for i := range want {
			want[i] = uint64(i + 1)
		}
		if !slices.Equal(seqsOf(got), want) {
			t.Fatalf("seed %d (n=%d, max=%d): delivered %v", seed, n, maxBuf, seqsOf(got))
		}
		if o.buffered() != 0 {
			t.Fatalf("seed %d: %d messages still buffered", seed, o.buffered())
		}
	}
}
