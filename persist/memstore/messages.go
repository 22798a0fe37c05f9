package memstore

import (
	"hash/maphash"
	"time"
	"unsafe"

	"github.com/imgn/imgn/persist"
)

// How messages are kept.
//
// Messages live in records, numbered by a slot counter that only grows, in
// chunks of chunkRecs records. A record's strings and body are copied into
// its chunk's arena (slabs of slabBytes), so storing a message costs no
// allocation of its own: a chunk and its slabs are allocated once per
// chunkRecs messages (or per slabBytes of text). Two maps find records: by
// message ID and by (From, ClientMsgID), the dedup key. An inbox is a list
// of slots, in seq order; a record remembers the seq it got in each inbox,
// which makes a retried append idempotent per (inbox, message) without a
// per-inbox index.
//
// Retention (persist.Retention) drops an inbox's oldest entries: beyond
// InboxMax entries (at once, on the append that exceeds it), or older than
// MaxAge (a few records per append, and whole passes by EnforceRetention).
// A record that no inbox holds any more waits in limbo for the dedup
// window, so a retry is still recognised; then it leaves both maps and its
// chunk's live count drops; a chunk whose records are all gone is released
// to the garbage collector. Steady traffic under retention therefore runs
// in bounded memory (the dedup window's worth of messages) with no
// allocation per message.

const (
	chunkRecs = 1024     // records per chunk
	slabBytes = 64 << 10 // arena slab size (a larger body gets a slab of its own size)
)

// record is one stored message. It holds no pointers (its text is located
// by spans into the chunk's arena, its inboxes by index), so the garbage
// collector never scans the record arrays, however many messages are kept.
type record struct {
	id                   uint64
	ts                   int64
	kind                 uint32
	group                bool
	refs                 int32  // inboxes that still hold the message
	hash                 uint64 // the dedup key's hash (not for events)
	from, to, cmid, body span
	// Chat: event is the entry's persist.Event*, target the message it is
	// about; a recalled message has recalled set (its body span cleared)
	// and evslot = the slot of its recall event + 1.
	event    uint32
	recalled bool
	target   uint64
	evslot   uint64
	// The message's seq in the inboxes it was appended to: the first two
	// inline (every 1:1 message), the rest in messages.more (groups).
	in [2]inboxRef
}

// span locates bytes in a chunk's arena.
type span struct {
	slab uint32
	off  uint32
	n    uint32
}

type inboxRef struct {
	in  uint32 // index in messages.list, plus one (0: unused)
	seq uint64
}

type chunk struct {
	recs  *[chunkRecs]record // pointer-free: allocated as no-scan memory
	slabs [][]byte           // arena, filled in order
	used  int                // the slab being filled
	live  int                // records stored and not dead
}

// put copies b into c's arena.
func (c *chunk) put(b []byte) span {
	if len(b) == 0 {
		return span{}
	}
	for c.used < len(c.slabs) && cap(c.slabs[c.used])-len(c.slabs[c.used]) < len(b) {
		c.used++
	}
	if c.used == len(c.slabs) {
		c.slabs = append(c.slabs, make([]byte, 0, max(slabBytes, len(b))))
	}
	s := c.slabs[c.used]
	start := len(s)
	c.slabs[c.used] = append(s, b...)
	return span{slab: uint32(c.used), off: uint32(start), n: uint32(len(b))}
}

func (c *chunk) putString(s string) span {
	return c.put(unsafe.Slice(unsafe.StringData(s), len(s)))
}

// bytes returns the arena bytes of sp (capacity clipped: appending copies).
func (c *chunk) bytes(sp span) []byte {
	if sp.n == 0 {
		return nil
	}
	return c.slabs[sp.slab][sp.off : sp.off+sp.n : sp.off+sp.n]
}

func (c *chunk) str(sp span) string {
	b := c.bytes(sp)
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// message returns the record's message; its strings and Body are the
// arena's (valid for as long as the caller keeps them: the garbage
// collector keeps a slab alive while anything points into it).
func (c *chunk) message(r *record) persist.Message {
	return persist.Message{ID: r.id, From: c.str(r.from), To: c.str(r.to), Group: r.group, ClientMsgID: c.str(r.cmid),
		Timestamp: r.ts, Kind: r.kind, Body: c.bytes(r.body), Event: r.event, Target: r.target, Recalled: r.recalled}
}

// inbox is one user's inbox: slots[i] holds the message at seq first+i,
// with hiddenBit set when the user deleted it for itself.
type inbox struct {
	idx   uint32 // its inboxRef.in
	name  string // the user
	slots []uint64
	buf   []uint64 // the array slots is a window of (pushWindow)
	first uint64   // seq of slots[0]; head+1 when the inbox is empty
	head  uint64   // the last seq assigned (kept when retention empties it)
	convs map[persist.ConvID]*conv
	// lastConv is the conversation of the inbox's last append (converse).
	lastConv *conv
}

// pushWindow appends v to *s, a window of the array *buf that drops
// entries from its front by reslicing. When the window reaches the array's
// end while it fills at most two thirds of it, it moves down to the array's
// start instead of the array growing, so a queue that drops at the front
// and adds at the back (a capped inbox) settles on one array, half as long
// again as what it holds, and copies two entries per append on average.
func pushWindow[T any](s, buf *[]T, v T) {
	if n := len(*s); n == cap(*s) {
		if n > 0 && 3*n <= 2*cap(*buf) {
			b := (*buf)[:cap(*buf)]
			copy(b, *s)
			clear(b[n:]) // no stale pointers for the collector to follow
			*s = b[:n]
		} else {
			// Room for the window to move down next time rather than
			// the array growing again.
			b := make([]T, n, max(n+n/2, 8))
			copy(b, *s)
			*s, *buf = b, b
		}
	}
	*s = append(*s, v)
}

// hiddenBit marks an inbox slot deleted for its owner (slot numbers never
// reach it).
const hiddenBit = 1 << 63

// slotAt returns the slot at seq and whether it is hidden; ok is false when
// the inbox does not hold seq.
func (in *inbox) slotAt(seq uint64) (slot uint64, hidden, ok bool) {
	if seq < in.first || seq > in.head {
		return 0, false, false
	}
	v := in.slots[seq-in.first]
	return v &^ hiddenBit, v&hiddenBit != 0, true
}

// messages is the message part of the store. Every method runs with the
// store's lock held (write lock for the mutating ones).
type messages struct {
	opts       persist.Retention // defaults filled
	limbo      []uint64          // limbo[limboOff:]: slots of messages in no inbox, kept for the dedup window, oldest first
	limboOff   int               // limbo[:limboOff] is done with
	chunks     []*chunk          // chunks[i] holds slots from base + i*chunkRecs
	chunkBuf   []*chunk          // the array chunks is a window of (pushWindow)
	free       []*chunk          // released chunks, kept for reuse
	madeChunks int               // chunks allocated (tests check reuse)
	base       uint64            // first slot of chunks[0], a multiple of chunkRecs
	next       uint64            // slot of the next record
	oldest     uint64            // no live record has a lower slot (MaxAge scans start here)
	byID       u64map            // message id -> slot
	maxID      uint64            // the highest id byID has held (idSlot)
	// The dedup index: by a 64-bit hash of (From, ClientMsgID), checked
	// against the record, so the map holds no pointers for the collector
	// to scan; the rare keys whose hash is taken by another message go in
	// spill.
	seed     maphash.Seed
	dedup    u64map // dedup hash -> slot
	spill    map[dedupKey]uint64
	testHash func(from, cmid string) uint64 // tests force collisions
	inboxes  map[string]*inbox
	list     []*inbox              // by inbox index
	more     map[uint64][]inboxRef // by slot: inbox seqs beyond a record's first two
	clock    func() time.Time
	// The MaxAge pass (see expire): when the last one started, whether one
	// is in progress, and its cutoff (Unix milliseconds).
	scanned time.Time
	aging   bool
	ageCut  int64
}

type dedupKey struct{ from, clientMsgID string }

func newMessages(o persist.Retention) *messages {
	return &messages{opts: o, spill: make(map[dedupKey]uint64), seed: maphash.MakeSeed(),
		inboxes: make(map[string]*inbox), more: make(map[uint64][]inboxRef), clock: time.Now}
}

// rec returns the record at slot and its chunk, or nils when the chunk was
// released.
func (m *messages) rec(slot uint64) (*record, *chunk) {
	if slot < m.base {
		return nil, nil
	}
	i := (slot - m.base) / chunkRecs
	if i >= uint64(len(m.chunks)) || m.chunks[i] == nil {
		return nil, nil
	}
	c := m.chunks[i]
	return &c.recs[slot%chunkRecs], c
}

// maxFreeChunks bounds the released chunks kept for reuse.
const maxFreeChunks = 4

// newChunk returns an empty chunk: a released one when there is one (under
// retention, steady traffic then allocates nothing), else a new one.
func (m *messages) newChunk() *chunk {
	if n := len(m.free); n > 0 {
		c := m.free[n-1]
		m.free[n-1] = nil
		m.free = m.free[:n-1]
		clear(c.recs[:])
		for i := range c.slabs {
			c.slabs[i] = c.slabs[i][:0]
		}
		c.used = 0
		return c
	}
	m.madeChunks++
	return &chunk{recs: new([chunkRecs]record)}
}

// store copies msg into a new record and returns its slot. p is what the
// dedup lookup of msg's key learnt (nil for an event, which has no key).
func (m *messages) store(msg *persist.Message, p *dedupProbe) (uint64, *record) {
	slot := m.next
	m.next++
	if slot%chunkRecs == 0 {
		pushWindow(&m.chunks, &m.chunkBuf, m.newChunk())
	}
	c := m.chunks[(slot-m.base)/chunkRecs]
	r := &c.recs[slot%chunkRecs]
	*r = record{id: msg.ID, ts: msg.Timestamp, kind: msg.Kind, group: msg.Group,
		from: c.putString(msg.From), to: c.putString(msg.To), cmid: c.putString(msg.ClientMsgID), body: c.put(msg.Body)}
	c.live++
	m.byID.put(msg.ID, slot)
	m.maxID = max(m.maxID, msg.ID)
	if msg.Event != persist.EventNone {
		// An event is found through its target, never by a dedup key.
		r.event, r.target = msg.Event, msg.Target
		return slot, r
	}
	r.hash = p.h
	if p.taken {
		m.spill[dedupKey{c.str(r.from), c.str(r.cmid)}] = slot
	} else {
		m.dedup.put(p.h, slot)
	}
	return slot, r
}

// idSlot returns the slot of the message (or event) with id, if stored. An
// id above every stored one needs no map lookup: ids from one node's
// generator grow, so a fresh append usually skips it.
func (m *messages) idSlot(id uint64) (uint64, bool) {
	if id > m.maxID {
		return 0, false
	}
	return m.byID.get(id)
}

func (m *messages) dedupHash(from, cmid string) uint64 {
	if m.testHash != nil {
		return m.testHash(from, cmid)
	}
	return max(maphash.String(m.seed, from)*0x9E3779B97F4A7C15^maphash.String(m.seed, cmid), 1) // 0 is not a key (u64map)
}

// dedupProbe is what a dedup lookup learnt, for the store that follows a
// miss: the key's hash, and whether another key holds the hash's entry
// (the new key then goes to spill).
type dedupProbe struct {
	h     uint64
	taken bool
}

// find finds the slot of the message stored for (from, cmid).
func (m *messages) find(from, cmid string) (slot uint64, found bool, p dedupProbe) {
	p.h = m.dedupHash(from, cmid)
	if s, ok := m.dedup.get(p.h); ok {
		p.taken = true
		if r, c := m.rec(s); r != nil && c.str(r.from) == from && c.str(r.cmid) == cmid {
			return s, true, p
		}
	}
	if len(m.spill) == 0 {
		return 0, false, p
	}
	slot, found = m.spill[dedupKey{from, cmid}]
	return slot, found, p
}

// lookup finds the slot of the message stored for (from, cmid).
func (m *messages) lookup(from, cmid string) (uint64, bool) {
	slot, found, _ := m.find(from, cmid)
	return slot, found
}

// forget removes the dedup entry of the record at slot.
func (m *messages) forget(slot uint64, r *record, c *chunk) {
	if s, ok := m.dedup.get(r.hash); ok && s == slot {
		m.dedup.del(r.hash)
		return
	}
	delete(m.spill, dedupKey{c.str(r.from), c.str(r.cmid)})
}

// seqIn returns the seq of the record at slot in inbox in, or 0.
func (m *messages) seqIn(slot uint64, r *record, in *inbox) uint64 {
	for _, ref := range r.in {
		if ref.in == in.idx {
			return ref.seq
		}
	}
	if r.in[1].in != 0 {
		for _, ref := range m.more[slot] {
			if ref.in == in.idx {
				return ref.seq
			}
		}
	}
	return 0
}

// inbox returns user's inbox, creating it when create is set.
func (m *messages) inbox(user string, create bool) *inbox {
	in := m.inboxes[user]
	if in == nil && create {
		name := string(append([]byte(nil), user...))
		m.list = append(m.list, nil)
		in = &inbox{idx: uint32(len(m.list)), name: name, first: 1}
		m.list[in.idx-1] = in
		m.inboxes[name] = in
	}
	return in
}

// appendTo adds the record at slot to in and returns its seq, trimming the
// inbox to InboxMax.
func (m *messages) appendTo(in *inbox, slot uint64, r *record) uint64 {
	in.head++
	if len(in.slots) == 0 {
		in.first = in.head
	}
	pushWindow(&in.slots, &in.buf, slot)
	r.refs++
	ref := inboxRef{in: in.idx, seq: in.head}
	switch {
	case r.in[0].in == 0:
		r.in[0] = ref
	case r.in[1].in == 0:
		r.in[1] = ref
	default:
		m.more[slot] = append(m.more[slot], ref)
	}
	if max := m.opts.InboxMax; max > 0 && len(in.slots) > max {
		// The cap is enforced at once (a pass would do no more).
		m.trim(in, len(in.slots)-max)
	}
	return in.head
}

// trim drops the n oldest entries of in.
func (m *messages) trim(in *inbox, n int) {
	for _, slot := range in.slots[:n] {
		slot &^= hiddenBit
		if r, _ := m.rec(slot); r != nil && r.refs > 0 {
			m.unref(slot, r)
		}
	}
	// Reuse the array rather than let it creep: copy down once the dead
	// prefix is as long as what is left.
	rest := in.slots[n:]
	if n >= len(rest) {
		in.slots = append(in.slots[:0], rest...)
	} else {
		in.slots = rest
	}
	in.first += uint64(n)
}

// unref drops one inbox's hold on the record at slot. When no inbox holds
// it any more it waits in limbo: its dedup key (and its original seqs,
// for a retry's answer) stay for the dedup window (persist.Retention).
func (m *messages) unref(slot uint64, r *record) {
	r.refs--
	if r.refs == 0 {
		m.limbo = append(m.limbo, slot)
	}
}

// kill forgets the record at slot for good, and releases its chunk when it
// was the chunk's last.
func (m *messages) kill(slot uint64, r *record, c *chunk) {
	m.byID.del(r.id)
	if r.event == persist.EventNone {
		m.forget(slot, r, c)
	}
	if r.in[1].in != 0 {
		delete(m.more, slot)
	}
	*r = record{}
	c.live--
	if c.live == 0 && slot/chunkRecs != m.next/chunkRecs {
		m.chunks[(slot-m.base)/chunkRecs] = nil
		if len(m.free) < maxFreeChunks {
			m.free = append(m.free, c)
		}
		for len(m.chunks) > 0 && m.chunks[0] == nil {
			m.chunks = m.chunks[1:]
			m.base += chunkRecs
		}
	}
}

// reapPerAppend bounds the records each append examines for retention, in
// each of its two scans: the limbo (every append) and the MaxAge pass (one
// starts at most once a second, then advances with the appends until it is
// done). An append adds at most one record to each scan, so both keep level
// with any append rate, in bounded memory, with chunks released one at a
// time (and reused) rather than in bursts, and no append pays for a
// backlog. (A fixed budget per second falls behind once the append rate
// passes it, and the heap then grows with every message.)
const reapPerAppend = 4

// expire is the retention step every append runs (see reapPerAppend).
func (m *messages) expire() {
	if !m.opts.Enabled() {
		return
	}
	now := m.clock()
	if m.opts.MaxAge > 0 {
		if !m.aging && now.Sub(m.scanned) >= time.Second {
			m.scanned, m.aging = now, true
			m.ageCut = now.Add(-m.opts.MaxAge).UnixMilli()
		}
		if m.aging {
			m.age(reapPerAppend)
		}
	}
	m.reap(now, reapPerAppend)
}

// pass runs a whole pass now (EnforceRetention): it drops inbox entries
// older than MaxAge (an inbox only loses a prefix: the entries up to the
// last expired one), then forgets the messages in limbo older than the
// dedup window.
func (m *messages) pass(now time.Time) {
	if m.opts.MaxAge > 0 {
		m.aging, m.ageCut = true, now.Add(-m.opts.MaxAge).UnixMilli()
		m.age(0)
	}
	m.reap(now, 0)
}

// age advances the MaxAge pass in progress by at most budget records (<= 0:
// no bound), and ends it at the first record younger than its cutoff.
func (m *messages) age(budget int) {
	m.oldest = max(m.oldest, m.base)
	for n := 0; m.oldest < m.next && (budget <= 0 || n < budget); m.oldest++ {
		n++
		r, _ := m.rec(m.oldest)
		if r == nil || r.refs == 0 {
			continue
		}
		if r.ts >= m.ageCut {
			m.aging = false
			return
		}
		// Drop, from the front of each inbox holding this message,
		// every entry up to and including it.
		refs := append([]inboxRef{r.in[0], r.in[1]}, m.more[m.oldest]...)
		for _, ref := range refs {
			if ref.in == 0 {
				continue
			}
			in := m.list[ref.in-1]
			if ref.seq >= in.first {
				m.trim(in, int(ref.seq-in.first+1))
			}
		}
	}
	if m.oldest >= m.next {
		m.aging = false
	}
}

// reap forgets the messages in limbo older than the dedup window (or
// MaxAge, if shorter) at now, oldest first, examining at most budget
// entries (<= 0: no bound).
func (m *messages) reap(now time.Time, budget int) {
	window := m.opts.DedupWindow
	if m.opts.MaxAge > 0 {
		window = min(window, m.opts.MaxAge)
	}
	cutoff := now.Add(-window).UnixMilli()
	i, end := m.limboOff, len(m.limbo)
	if budget > 0 {
		end = min(end, i+budget)
	}
	for ; i < end; i++ {
		slot := m.limbo[i]
		r, c := m.rec(slot)
		if r == nil || r.id == 0 || r.refs > 0 {
			continue // killed already, or back in an inbox (a retry added one)
		}
		if r.ts >= cutoff {
			break
		}
		m.kill(slot, r, c)
	}
	m.limboOff = i
	// Compact once the dead prefix is half the slice: amortised O(1) per
	// entry, and the array is reused rather than reallocated.
	if m.limboOff > 0 && m.limboOff >= len(m.limbo)/2 {
		n := copy(m.limbo, m.limbo[m.limboOff:])
		clear(m.limbo[n:])
		m.limbo, m.limboOff = m.limbo[:n], 0
	}
}
