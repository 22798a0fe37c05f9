package pebblestore

import (
	"bytes"
	"cmp"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/imgn/imgn/persist"
)

// stagedOrderRef is the order sortStaged must produce, written the plain
// way: by the full key, then by staging offset.
func stagedOrderRef(arena []byte) func(a, b stagedOp) int {
	return func(a, b stagedOp) int {
		if d := bytes.Compare(arena[a.k:a.k+a.kn], arena[b.k:b.k+b.kn]); d != 0 {
			return d
		}
		return cmp.Compare(a.k, b.k)
	}
}

// TestSortStagedMatchesKeyOrder sorts random keys built to tie in their
// 16-byte prefixes in every way (short keys, zero bytes next to the
// padding, equal keys staged twice, long shared prefixes) and compares
// with the plain order. Sizes cross the insertion-sort cutoff, and sorted
// and reversed inputs make the quicksort's pivots as bad as they get.
func TestSortStagedMatchesKeyOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte{0, 0, 1, 'a', 0xff}
	for round := range 3000 {
		c := &committer{}
		n := r.IntN(200)
		if round%100 == 0 {
			n = 5000
		}
		shared := make([]byte, r.IntN(20)) // a prefix every key starts with
		for i := range shared {
			shared[i] = alphabet[r.IntN(len(alphabet))]
		}
		var keys [][]byte
		for range n {
			var k []byte
			if len(keys) > 0 && r.IntN(8) == 0 {
				k = keys[r.IntN(len(keys))] // a key written twice
			} else {
				k = append([]byte{}, shared[:r.IntN(len(shared)+1)]...)
				for range r.IntN(12) {
					k = append(k, alphabet[r.IntN(len(alphabet))])
				}
			}
			keys = append(keys, k)
		}
		switch round % 3 {
		case 1:
			slices.SortFunc(keys, bytes.Compare)
		case 2:
			slices.SortFunc(keys, func(a, b []byte) int { return bytes.Compare(b, a) })
		}
		for _, k := range keys {
			c.stage(false, k, []byte{byte(len(k))})
		}
		want := slices.Clone(c.staged)
		slices.SortFunc(want, stagedOrderRef(c.arena))
		got := slices.Clone(c.staged)
		sortStaged(got, c.arena)
		if !slices.Equal(got, want) {
			t.Fatalf("round %d (%d keys): sortStaged order differs from the key order", round, n)
		}
	}
}

// stageBenchBatch stages what the committer writes for appends 1:1
// messages between 100 sender/receiver pairs named as imbench names them:
// the message, the dedup key, and per inbox the entry and the
// conversation entry.
func stageBenchBatch(c *committer, appends int, seq *[200]uint64, id *uint64) {
	for i := range appends {
		p := i * 7919 % 100
		from, to := "bps"+strconv.Itoa(p), "bpr"+strconv.Itoa(p)
		*id++
		c.stage(false, keyID(nil, tMessage, *id), make([]byte, 120))
		c.stage(false, keyLP2(nil, tDedup, from, "r1-"+strconv.FormatUint(*id, 10)), make([]byte, 8))
		for j, u := range [2]string{from, to} {
			peer := [2]string{to, from}[j]
			seq[p*2+j]++
			c.stage(false, keyInbox(nil, u, seq[p*2+j]), make([]byte, 8))
			c.stage(false, keyConvEntry(nil, u, persist.ConvID{ID: peer}, seq[p*2+j]), nil)
		}
	}
}

// BenchmarkSortStaged sorts the writes of a batch of 1,000 appends, the
// size of a batch at 50k appends/s on the embedded store under imbench.
func BenchmarkSortStaged(b *testing.B) {
	c := &committer{}
	var seq [200]uint64
	var id uint64
	stageBenchBatch(c, 1000, &seq, &id)
	b.ResetTimer()
	for range b.N {
		c.sortStaged()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(c.staged)), "ns/write")
}
