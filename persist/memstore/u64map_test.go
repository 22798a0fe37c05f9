package memstore

import (
	"math/rand/v2"
	"testing"
)

// TestU64MapMatchesGoMap runs random inserts, overwrites, deletes and
// lookups against a Go map, with keys drawn from a small range (long runs,
// wrap-around at the table's end, many deletes inside runs) and from the
// full range.
func TestU64MapMatchesGoMap(t *testing.T) {
	for _, keyRange := range []uint64{50, 1000, 1 << 62} {
		r := rand.New(rand.NewPCG(keyRange, 7))
		var got u64map
		want := map[uint64]uint64{}
		for op := range 200_000 {
			k := r.Uint64N(keyRange) + 1
			switch r.IntN(4) {
			case 0, 1:
				v := r.Uint64()
				got.put(k, v)
				want[k] = v
			case 2:
				_, ok := want[k]
				if got.del(k) != ok {
					t.Fatalf("range %d op %d: del(%d) = %v, want %v", keyRange, op, k, !ok, ok)
				}
				delete(want, k)
			case 3:
				v, ok := got.get(k)
				if wv, wok := want[k]; ok != wok || v != wv {
					t.Fatalf("range %d op %d: get(%d) = %d, %v; want %d, %v", keyRange, op, k, v, ok, wv, wok)
				}
			}
			if got.len() != len(want) {
				t.Fatalf("range %d op %d: len %d, want %d", keyRange, op, got.len(), len(want))
			}
		}
		for k, wv := range want {
			if v, ok := got.get(k); !ok || v != wv {
				t.Fatalf("range %d: get(%d) = %d, %v at the end; want %d", keyRange, k, v, ok, wv)
			}
		}
	}
}

// TestU64MapSteadyChurnAllocatesNothing: at a steady size, an insert and a
// delete per step never grow the table.
func TestU64MapSteadyChurnAllocatesNothing(t *testing.T) {
	var m u64map
	const live = 10_000
	next, oldest := uint64(1), uint64(1)
	for ; next <= live; next++ {
		m.put(next, next)
	}
	step := func() {
		m.put(next, next)
		next++
		if !m.del(oldest) {
			t.Fatalf("del(%d) found nothing", oldest)
		}
		oldest++
	}
	for range 10 * live {
		step()
	}
	if allocs := testing.AllocsPerRun(10*live, step); allocs != 0 {
		t.Fatalf("%.2f allocations per step", allocs)
	}
	if v, ok := m.get(next - 1); !ok || v != next-1 || m.len() != live {
		t.Fatalf("get(%d) = %d, %v; len %d", next-1, v, ok, m.len())
	}
}
