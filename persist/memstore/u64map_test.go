package memstore

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/imgn/imgn/persist"
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

// u64mapCheck verifies m's structure against want: every key of want in
// exactly one table with its value, cell counts that match n, an empty cell
// in each table, the old table's scanned cells empty and its scan position
// on an empty cell, and every stored key reachable from its home without
// crossing an empty cell (so find sees it).
func u64mapCheck(t *testing.T, m *u64map, want map[uint64]uint64, at string) {
	t.Helper()
	if m.len() != len(want) {
		t.Fatalf("%s: len %d, want %d", at, m.len(), len(want))
	}
	check := func(name string, tb *u64table) {
		n := 0
		for i, k := range tb.keys {
			if k == 0 {
				continue
			}
			n++
			wv, ok := want[k]
			if !ok || tb.vals[i] != wv {
				t.Fatalf("%s: %s cell %d holds %d=%d; want %d, %v", at, name, i, k, tb.vals[i], wv, ok)
			}
			mask := len(tb.keys) - 1
			for j := tb.home(k); j != i; j = (j + 1) & mask {
				if tb.keys[j] == 0 {
					t.Fatalf("%s: %s key %d at %d: empty cell %d after its home %d", at, name, k, i, j, tb.home(k))
				}
			}
		}
		if n != tb.n {
			t.Fatalf("%s: %s holds %d keys, n %d", at, name, n, tb.n)
		}
		if tb.keys != nil && n*4 > len(tb.keys)*3 {
			t.Fatalf("%s: %s holds %d keys in %d cells", at, name, n, len(tb.keys))
		}
	}
	check("cur", &m.cur)
	if !m.migrating() {
		if m.old.n != 0 {
			t.Fatalf("%s: not migrating, old.n %d", at, m.old.n)
		}
	} else {
		check("old", &m.old)
		if len(m.old.keys)*2 != len(m.cur.keys) {
			t.Fatalf("%s: old %d cells, cur %d", at, len(m.old.keys), len(m.cur.keys))
		}
		// old.n may be 0 here: a del that empties old leaves it to the
		// next put's migrateStep to drop.
		if m.oldLeft <= 0 || m.oldLeft > len(m.old.keys) {
			t.Fatalf("%s: migrating with oldLeft %d, old.n %d", at, m.oldLeft, m.old.n)
		}
		if m.old.keys[m.oldNext] != 0 {
			t.Fatalf("%s: old scan position %d is not empty", at, m.oldNext)
		}
		mask := len(m.old.keys) - 1
		for c := m.oldLeft; c < len(m.old.keys); c++ { // the scanned cells
			if i := (m.oldNext + c) & mask; m.old.keys[i] != 0 {
				t.Fatalf("%s: scanned old cell %d holds %d", at, i, m.old.keys[i])
			}
		}
	}
	for k, wv := range want {
		_, inCur := m.cur.find(k)
		inOld := false
		if m.migrating() {
			_, inOld = m.old.find(k)
		}
		if inCur == inOld {
			t.Fatalf("%s: key %d in cur %v, in old %v", at, k, inCur, inOld)
		}
		if v, ok := m.get(k); !ok || v != wv {
			t.Fatalf("%s: get(%d) = %d, %v; want %d", at, k, v, ok, wv)
		}
	}
}

// TestU64MapResizeAdversarial forces many resizes of small tables with keys
// that collide heavily: clusters of keys sharing one home cell in every
// table size (among them the last cell, so runs wrap around the end), and
// consecutive ids. During resizes it deletes, reads, overwrites and
// re-inserts keys still in the old table right behind the scan position.
// Every operation is checked against a Go map, and the whole structure
// after every step.
func TestU64MapResizeAdversarial(t *testing.T) {
	var ginv uint64 = 0xF1DE83E19937733D // the inverse of u64table.home's multiplier mod 2^64
	if ginv*uint64(0x9E3779B97F4A7C15) != 1 {
		t.Fatal("ginv is not the inverse")
	}
	// clustered returns a key whose hash product has top bits top (so its
	// home is the same in every table up to 2^16 cells) and low part j.
	clustered := func(top, j uint64) uint64 { return (top<<48 | j) * ginv }
	tops := []uint64{0, 1, 0x7fff, 0xfffe, 0xffff}
	for seed := range uint64(30) {
		r := rand.New(rand.NewPCG(seed, 11))
		var pool []uint64
		switch seed % 3 {
		case 0: // clusters only
			for j := range uint64(60) {
				for _, top := range tops {
					pool = append(pool, clustered(top, j+1))
				}
			}
		case 1: // consecutive ids
			for j := range uint64(300) {
				pool = append(pool, 1000+j)
			}
		case 2: // both, and a few random keys
			for j := range uint64(100) {
				pool = append(pool, clustered(tops[j%uint64(len(tops))], j+1), 1+j, r.Uint64()|1)
			}
		}
		var m u64map
		want := map[uint64]uint64{}
		resizes, oldOps := 0, 0
		for op := range 2000 {
			if op == 1000 { // start again: small tables resize most often
				m, want = u64map{}, map[uint64]uint64{}
			}
			at := func() string { return "seed " + itoa(seed) + " op " + itoa(uint64(op)) }
			k := pool[r.IntN(len(pool))]
			if m.migrating() && r.IntN(4) != 0 {
				// The key of old the scan reaches next.
				mask := len(m.old.keys) - 1
				for d := 1; d < m.oldLeft; d++ {
					if ok := m.old.keys[(m.oldNext+d)&mask]; ok != 0 {
						k = ok
						oldOps++
						break
					}
				}
			}
			cells := len(m.cur.keys)
			// Grow more than shrink, so the table keeps resizing.
			switch c := r.IntN(10); {
			case c < 5:
				v := r.Uint64()
				m.put(k, v)
				want[k] = v
			case c < 8:
				_, ok := want[k]
				if m.del(k) != ok {
					t.Fatalf("%s: del(%d) = %v, want %v", at(), k, !ok, ok)
				}
				delete(want, k)
				if ok && c == 7 { // re-insert at once
					m.put(k, k)
					want[k] = k
				}
			default:
				v, ok := m.get(k)
				if wv, wok := want[k]; ok != wok || v != wv {
					t.Fatalf("%s: get(%d) = %d, %v; want %d, %v", at(), k, v, ok, wv, wok)
				}
			}
			if len(m.cur.keys) != cells {
				resizes++
			}
			u64mapCheck(t, &m, want, at())
		}
		if resizes < 8 || oldOps < 5 {
			t.Errorf("seed %d: %d resizes, %d operations on old keys: the test does not reach what it means to", seed, resizes, oldOps)
		}
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

// TestIDZeroIsNoMessage: 0 is never a message id (persist.CheckAppend), so
// a lookup of id 0 must miss. u64map takes no key 0 (0 marks an empty
// cell); the store's id lookups must not hand it one, or a lookup of 0
// lands on an empty cell and answers slot 0, the first message stored.
func TestIDZeroIsNoMessage(t *testing.T) {
	var m u64map
	m.put(7, 70)
	if v, ok := m.get(0); ok || m.del(0) || m.len() != 1 {
		t.Fatalf("u64map: get(0) = %d, %v; len %d after del(0)", v, ok, m.len())
	}
	s := New()
	ctx := context.Background()
	send(t, s, 5, "alice", "c1", 1, "alice", "bob")
	if seq, err := s.SeqOf(ctx, "bob", 0); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("SeqOf(bob, 0) = %d, %v; want ErrNotFound", seq, err)
	}
	if res, err := s.Delete(ctx, persist.EventRequest{User: "bob", Target: 0, ID: 9, Timestamp: 2}); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Delete of target 0 = %+v, %v; want ErrNotFound", res, err)
	}
	if seq, err := s.SeqOf(ctx, "bob", 5); err != nil || seq != 1 {
		t.Fatalf("SeqOf(bob, 5) = %d, %v", seq, err)
	}
}
