package memstore

// u64map is a hash table from non-zero uint64 keys to uint64 values: open
// addressing, linear probing, deletion by backward shift. The store's two
// big indexes (message id -> slot, dedup hash -> slot) take an insert and a
// delete per message in steady state; Go's maps leave a tombstone per
// delete there, and the lookups of new keys (every fresh append looks its
// key up and misses) then probe long runs of them. Backward-shift deletion
// leaves no tombstones: lookups stay short however long the churn runs,
// and the table never grows at a steady size, so it allocates nothing.
//
// Keys and values are in separate arrays, so a probe reads keys only (eight
// to a cache line). The load is at most 3/4. Not safe for concurrent use.
type u64map struct {
	keys  []uint64 // 0: an empty cell
	vals  []uint64
	n     int
	shift uint // 64 - log2(len(keys))
}

const u64mapMinCells = 16

// home is k's preferred cell: Fibonacci hashing, so sequential ids spread.
func (t *u64map) home(k uint64) int { return int((k * 0x9E3779B97F4A7C15) >> t.shift) }

// len returns the number of keys.
func (t *u64map) len() int { return t.n }

// get returns the value of k (k != 0).
func (t *u64map) get(k uint64) (uint64, bool) {
	if t.n == 0 {
		return 0, false
	}
	mask := len(t.keys) - 1
	for i := t.home(k); ; i = (i + 1) & mask {
		switch t.keys[i] {
		case k:
			return t.vals[i], true
		case 0:
			return 0, false
		}
	}
}

// put sets the value of k (k != 0).
func (t *u64map) put(k, v uint64) {
	if (t.n+1)*4 > len(t.keys)*3 {
		t.grow()
	}
	mask := len(t.keys) - 1
	for i := t.home(k); ; i = (i + 1) & mask {
		switch t.keys[i] {
		case k:
			t.vals[i] = v
			return
		case 0:
			t.keys[i], t.vals[i] = k, v
			t.n++
			return
		}
	}
}

// del removes k and reports whether it was there. The cells after it in
// its run move back to fill the hole, unless that would put one before its
// home cell.
func (t *u64map) del(k uint64) bool {
	if t.n == 0 {
		return false
	}
	mask := len(t.keys) - 1
	i := t.home(k)
	for t.keys[i] != k {
		if t.keys[i] == 0 {
			return false
		}
		i = (i + 1) & mask
	}
	for j := (i + 1) & mask; t.keys[j] != 0; j = (j + 1) & mask {
		// The entry at j may move to the hole at i unless its home lies
		// cyclically in (i, j].
		if h := t.home(t.keys[j]); (j-h)&mask >= (j-i)&mask {
			t.keys[i], t.vals[i] = t.keys[j], t.vals[j]
			i = j
		}
	}
	t.keys[i], t.vals[i] = 0, 0
	t.n--
	return true
}

// grow doubles the table (the first call makes it).
func (t *u64map) grow() {
	oldKeys, oldVals := t.keys, t.vals
	cells := max(2*len(oldKeys), u64mapMinCells)
	t.keys, t.vals = make([]uint64, cells), make([]uint64, cells)
	t.shift = 64
	for c := cells; c > 1; c >>= 1 {
		t.shift--
	}
	t.n = 0
	for i, k := range oldKeys {
		if k != 0 {
			t.put(k, oldVals[i])
		}
	}
}
