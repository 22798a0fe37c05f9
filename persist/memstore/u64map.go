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
// Growing is incremental. Rehashing a table of a million keys in one go
// takes 10-20 ms, and the store does it under its lock, so every append
// of the node would wait that long (the tail of a benchmark whose store is
// still filling). Instead a full table becomes the old table, a table twice
// its size the current one, and each put moves a few of the old table's
// cells over (migrateStep) until none is left; lookups and deletes look in
// both tables meanwhile. A key is in at most one of them.
//
// Keys and values are in separate arrays, so a probe reads keys only (eight
// to a cache line). The load is at most 3/4. Not safe for concurrent use.
type u64map struct {
	cur u64table
	// old is the table being emptied into cur (nil keys: no resize under
	// way). Its cells are scanned from oldNext on, cyclically; oldLeft
	// cells remain. The scan stops only on an empty cell, so the cells not
	// yet scanned hold whole probe runs: a lookup in old finds its key, or
	// an empty cell, exactly as if nothing had moved.
	old     u64table
	oldNext int
	oldLeft int
}

// u64mapMinCells is the smallest table; u64mapMigrateCells the old cells a
// put moves at least. A table grows at 3/4 load into one twice its size,
// which has room for 3/4 of the old table's cell count in further puts
// before it is full itself: 8 cells per put empties the old table after
// 1/8 of that.
const (
	u64mapMinCells     = 16
	u64mapMigrateCells = 8
)

// len returns the number of keys.
func (m *u64map) len() int { return m.cur.n + m.old.n }

// migrating reports whether a resize is under way.
func (m *u64map) migrating() bool { return m.old.keys != nil }

// get returns the value of k; k 0 is never there. (0 marks an empty cell:
// a probe for it would stop on the first empty cell and report it found.
// The store looks up ids taken from requests, which may be 0.)
func (m *u64map) get(k uint64) (uint64, bool) {
	if k == 0 {
		return 0, false
	}
	if v, ok := m.cur.get(k); ok || !m.migrating() {
		return v, ok
	}
	return m.old.get(k)
}

// put sets the value of k (k != 0).
func (m *u64map) put(k, v uint64) {
	if m.migrating() {
		m.migrateStep(u64mapMigrateCells)
	}
	if (m.len()+1)*4 > len(m.cur.keys)*3 {
		m.grow() // k may now be in old (the table it was in)
	}
	if m.migrating() {
		if i, ok := m.old.find(k); ok {
			m.old.vals[i] = v // it moves over with its cell
			return
		}
	}
	m.cur.put(k, v)
}

// del removes k and reports whether it was there; k 0 never is (see get:
// a probe for 0 would "delete" an empty cell and corrupt the count).
func (m *u64map) del(k uint64) bool {
	if k == 0 {
		return false
	}
	if m.cur.del(k) {
		return true
	}
	// A delete in old shifts entries back within their run, which lies
	// wholly in the part not yet scanned.
	return m.migrating() && m.old.del(k)
}

// grow starts a resize to a table twice the current size (the first call
// makes the table). A resize still under way is finished first.
func (m *u64map) grow() {
	if m.migrating() {
		m.migrateStep(m.oldLeft)
	}
	prev := m.cur
	m.cur = newU64Table(max(2*len(prev.keys), u64mapMinCells))
	if prev.n == 0 {
		return
	}
	m.old = prev
	m.oldLeft = len(prev.keys)
	// Start the scan on an empty cell (there is one: the load is at most
	// 3/4), so that no probe run is split between the scanned part and
	// the rest.
	for m.oldNext = 0; prev.keys[m.oldNext] != 0; m.oldNext++ {
	}
	m.migrateStep(u64mapMigrateCells)
}

// migrateStep moves at least budget cells of the old table (or all that are
// left) into the current one, and goes on to the end of the probe run it
// is in.
func (m *u64map) migrateStep(budget int) {
	o := &m.old
	mask := len(o.keys) - 1
	for m.oldLeft > 0 && (budget > 0 || o.keys[m.oldNext] != 0) {
		i := m.oldNext
		if k := o.keys[i]; k != 0 {
			m.cur.put(k, o.vals[i])
			o.keys[i], o.vals[i] = 0, 0
			o.n--
		}
		m.oldNext = (i + 1) & mask
		m.oldLeft--
		budget--
	}
	if m.oldLeft == 0 || o.n == 0 {
		m.old = u64table{} // nothing left to move
	}
}

// u64table is one open-addressing table of a u64map.
type u64table struct {
	keys  []uint64 // 0: an empty cell
	vals  []uint64
	n     int
	shift uint // 64 - log2(len(keys))
}

func newU64Table(cells int) u64table {
	t := u64table{keys: make([]uint64, cells), vals: make([]uint64, cells), shift: 64}
	for c := cells; c > 1; c >>= 1 {
		t.shift--
	}
	return t
}

// home is k's preferred cell: Fibonacci hashing, so sequential ids spread.
func (t *u64table) home(k uint64) int { return int((k * 0x9E3779B97F4A7C15) >> t.shift) }

// find returns the cell of k and true, or false when k is absent.
func (t *u64table) find(k uint64) (int, bool) {
	if t.n == 0 {
		return 0, false
	}
	mask := len(t.keys) - 1
	for i := t.home(k); ; i = (i + 1) & mask {
		switch t.keys[i] {
		case k:
			return i, true
		case 0:
			return 0, false
		}
	}
}

func (t *u64table) get(k uint64) (uint64, bool) {
	if i, ok := t.find(k); ok {
		return t.vals[i], true
	}
	return 0, false
}

// put sets the value of k; the caller makes sure there is room.
func (t *u64table) put(k, v uint64) {
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
func (t *u64table) del(k uint64) bool {
	i, ok := t.find(k)
	if !ok {
		return false
	}
	mask := len(t.keys) - 1
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
