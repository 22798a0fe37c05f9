package pebblestore

import (
	"context"
	"hash/maphash"
	"strconv"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
)

func TestDedupFilterFalsePositives(t *testing.T) {
	seed := maphash.MakeSeed()
	f := newDedupFilter(minFilterKeys, DefaultDedupFilterBytes)
	key := func(i int) []byte { return keyLP2(nil, tDedup, "user"+strconv.Itoa(i%1000), strconv.Itoa(i)) }
	for i := range f.capacity {
		f.add(dedupHash(seed, key(i)))
	}
	for i := range f.capacity {
		if !f.mayContain(dedupHash(seed, key(i))) {
			t.Fatalf("key %d was added but the filter rules it out", i)
		}
	}
	const probes = 200_000
	fp := 0
	for i := range probes {
		if f.mayContain(dedupHash(seed, key(f.capacity+i))) {
			fp++
		}
	}
	// The design rate at capacity is about 0.5%.
	if rate := float64(fp) / probes; rate > 0.01 {
		t.Fatalf("false-positive rate %.4f at capacity, want <= 0.01", rate)
	}
	if f.due() {
		t.Fatal("a filter at its capacity, all of it added by the build, is due")
	}
	f.built = f.keys
	f.add(1)
	if f.due() {
		t.Fatal("one key above capacity after the build is due: want more adds than the build found first")
	}
}

func TestDedupFilterSize(t *testing.T) {
	if f := newDedupFilter(0, DefaultDedupFilterBytes); f.capacity < minFilterKeys || f.bytes() > minFilterKeys*2 {
		t.Fatalf("empty store: capacity %d, %d bytes", f.capacity, f.bytes())
	}
	if f := newDedupFilter(100<<20, 1<<20); f.bytes() != 1<<20 || f.capacity != (1<<20)*8/filterBitsPerKey {
		t.Fatalf("capped filter: %d bytes, capacity %d; want 1 MiB", f.bytes(), f.capacity)
	}
	if f := newDedupFilter(10, 1); len(f.blocks) != 1 {
		t.Fatalf("cap below one block: %d blocks, want 1", len(f.blocks))
	}
}

// waitFilter commits writes until the committer has taken up a built
// filter, and returns its size.
func waitFilter(t *testing.T, s *Store) uint64 {
	t.Helper()
	for i := 0; ; i++ {
		if b := s.filterBytes.Load(); b > 0 {
			return b
		}
		if err := s.SetCursor(t.Context(), "filterwait", "d", uint64(i+1)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-t.Context().Done():
			t.Fatal("the dedup filter was never built")
		case <-time.After(time.Millisecond):
		}
	}
}

func filterMsg(i int) persist.Message {
	return persist.Message{ID: uint64(i + 1), From: "u" + strconv.Itoa(i%5), To: "peer", ClientMsgID: "c" + strconv.Itoa(i), Body: []byte("b")}
}

// TestDedupFilterBuiltWhileWriting: keys written while the filter is built
// from a snapshot (so the snapshot lacks them) are recognised as well as
// the keys the snapshot holds, and with the filter in use a fresh message
// does not search the store.
func TestDedupFilterBuiltWhileWriting(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	const before, during, after = 300, 200, 100
	for i := range before {
		if _, err := s.Append(ctx, filterMsg(i), []string{"peer"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	hold, started := make(chan struct{}), make(chan struct{})
	s, err = Open(Options{Dir: dir, beforeFilterBuild: func(ctx context.Context) {
		close(started)
		select {
		case <-hold:
		case <-ctx.Done():
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-started
	r0 := s.dedupReads.Load()
	for i := before; i < before+during; i++ {
		if _, err := s.Append(ctx, filterMsg(i), []string{"peer"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.dedupReads.Load() - r0; n != during {
		t.Fatalf("%d of %d appends searched the store while no filter was ready, want all", n, during)
	}
	close(hold)
	waitFilter(t, s)

	r0 = s.dedupReads.Load()
	for i := before + during; i < before+during+after; i++ {
		res, err := s.Append(ctx, filterMsg(i), []string{"peer"})
		if err != nil || res.Duplicate {
			t.Fatalf("fresh append %d: %+v, %v", i, res, err)
		}
	}
	if n := s.dedupReads.Load() - r0; n > 2 {
		t.Fatalf("%d of %d fresh appends searched the store with the filter in use", n, after)
	}
	// Every retry is recognised: keys of the snapshot, of the build's
	// window, and written since.
	for i := range before + during + after {
		m := filterMsg(i)
		m.ID += 1 << 40 // a retry gets a new message id
		res, err := s.Append(ctx, m, []string{"peer"})
		if err != nil || !res.Duplicate || res.Msg.ID != uint64(i+1) || res.Seqs[0] != uint64(i+1) {
			t.Fatalf("retry of message %d: %+v, %v; want the duplicate of id %d at seq %d", i, res, err, i+1, i+1)
		}
	}
	if last, _ := s.LastSeq(ctx, "peer"); last != before+during+after {
		t.Fatalf("LastSeq %d, want %d: a retry was stored again", last, before+during+after)
	}
}

// TestDedupFilterRebuilt: a filter that fills up is replaced by a larger
// one, built while appends go on, and no retry is missed on the way.
func TestDedupFilterRebuilt(t *testing.T) {
	ctx := context.Background()
	// 4 blocks: 85 keys, so the filter is due after a few dozen appends.
	s, err := Open(Options{Dir: t.TempDir(), DedupFilterBytes: 4 * 32})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first := waitFilter(t, s)
	const n = 2000
	for i := range n {
		if _, err := s.Append(ctx, filterMsg(i), []string{"peer"}); err != nil {
			t.Fatal(err)
		}
		if i%97 == 0 { // retries interleaved with the rebuilds
			m := filterMsg(i / 2)
			if res, err := s.Append(ctx, m, []string{"peer"}); err != nil || !res.Duplicate {
				t.Fatalf("retry of %d after %d appends: %+v, %v", i/2, i, res, err)
			}
		}
	}
	if b := s.filterBytes.Load(); b != first {
		t.Fatalf("filter %d bytes, want it held at its cap of %d", b, first)
	}
	if b := s.filterBuilds.Load(); b < 5 {
		t.Fatalf("%d filter builds for %d appends into an 85-key filter, want rebuilds", b, n)
	}
	for i := range n {
		if res, err := s.Append(ctx, filterMsg(i), []string{"peer"}); err != nil || !res.Duplicate {
			t.Fatalf("retry of %d: %+v, %v", i, res, err)
		}
	}
}

func TestDedupFilterDisabled(t *testing.T) {
	ctx := context.Background()
	s, err := Open(Options{Dir: t.TempDir(), DedupFilterBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 50 {
		if _, err := s.Append(ctx, filterMsg(i), []string{"peer"}); err != nil {
			t.Fatal(err)
		}
	}
	if r, b := s.dedupReads.Load(), s.filterBytes.Load(); r != 50 || b != 0 {
		t.Fatalf("disabled filter: %d dedup reads for 50 appends, filter %d bytes", r, b)
	}
}
