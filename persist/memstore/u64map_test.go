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
		migratingOps := 0
		for op := range 200_000 {
			if got.migrating() {
				migratingOps++
			}
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
		if migratingOps == 0 {
			t.Errorf("range %d: no operation ran during a resize", keyRange)
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

// TestU64MapGrowsIncrementally fills a map the way the store fills its id
// index (increasing ids, the oldest removed once a cap is reached, lookups
// of fresh keys that miss) past a million keys, and checks that no put
// moves more than a few cells of a resize's old table, that resizes really
// spread over many puts, and that every key is found throughout.
func TestU64MapGrowsIncrementally(t *testing.T) {
	for _, cap := range []int{0, 300_000} { // 0: no removals
		var m u64map
		r := rand.New(rand.NewPCG(uint64(cap), 9))
		var ids []uint64
		id := uint64(1 << 40)
		maxScanned, resizes, migratingPuts := 0, 0, 0
		for len(ids) < 1_200_000 {
			id += 1 + r.Uint64N(9)
			if _, ok := m.get(id); ok {
				t.Fatalf("cap %d: fresh id %d found", cap, id)
			}
			wasMigrating, left, cells := m.migrating(), m.oldLeft, len(m.cur.keys)
			m.put(id, id^0xabc)
			ids = append(ids, id)
			scanned := 0
			switch {
			case len(m.cur.keys) != cells: // this put started a resize
				resizes++
				if m.migrating() {
					scanned = cells - m.oldLeft
				}
			case wasMigrating:
				scanned = left - m.oldLeft
			}
			if wasMigrating || m.migrating() {
				migratingPuts++
			}
			maxScanned = max(maxScanned, scanned)
			if cap > 0 && m.len() > cap {
				old := ids[len(ids)-cap-1]
				if !m.del(old) {
					t.Fatalf("cap %d: del(%d) found nothing", cap, old)
				}
			}
			if len(ids)%1000 == 0 { // spot checks while resizes run
				probe := ids[r.IntN(len(ids))]
				v, ok := m.get(probe)
				live := cap == 0 || probe > ids[max(0, len(ids)-cap-1)]
				if ok != live || (ok && v != probe^0xabc) {
					t.Fatalf("cap %d: get(%d) = %d, %v; live %v", cap, probe, v, ok, live)
				}
			}
		}
		// Budget 8, plus the rest of the probe run it stops in: runs at
		// 3/4 load reach a couple of hundred cells, against the million
		// a one-go rehash would move.
		if maxScanned > 512 {
			t.Errorf("cap %d: one put moved %d cells of an old table", cap, maxScanned)
		}
		if resizes < 10 || migratingPuts < len(m.cur.keys)/32 {
			t.Errorf("cap %d: %d resizes over %d puts while migrating (table %d cells): not incremental", cap, resizes, migratingPuts, len(m.cur.keys))
		}
		want := len(ids)
		if cap > 0 {
			want = cap
		}
		if m.len() != want {
			t.Fatalf("cap %d: len %d, want %d", cap, m.len(), want)
		}
		for _, k := range ids[len(ids)-want:] {
			if v, ok := m.get(k); !ok || v != k^0xabc {
				t.Fatalf("cap %d: get(%d) = %d, %v at the end", cap, k, v, ok)
			}
		}
	}
}
