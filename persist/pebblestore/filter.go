package pebblestore

import (
	"context"
	"fmt"
	"hash/maphash"
	"math/bits"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// The dedup filter answers "is (From, ClientMsgID) surely not stored?"
// from memory, so that a fresh message, which is nearly every message,
// does not search Pebble's memtables and tables for its dedup key. At low
// rates that search was the largest cost of an append after the fsync: a
// memtable is a skiplist of tens of megabytes, and each of its levels is a
// cache miss.
//
// It is a split-block Bloom filter: a key sets one bit in each of the eight
// 32-bit words of one 32-byte block, so a check reads one cache line.
// Bits are only ever set: keys removed by retention stay in it (their
// check then reads Pebble, as without a filter), and it is rebuilt when the
// keys added since its last build could have filled it.
//
// Lifecycle (see committer.filterBatch): the committer owns the filter.
// At open, and whenever it is due for a rebuild, the committer takes a
// Pebble snapshot between two batches, when the database holds exactly the
// batches applied so far (a key of one whose sync then fails stays in the
// filter: a "maybe" costs a read, never a wrong answer), and from then on
// records the hash of every dedup key it writes; a builder goroutine adds
// every dedup key of the snapshot to a new filter; the committer adds the
// recorded hashes and switches to it. Until the first filter is ready every
// check reads Pebble.

// filterBitsPerKey sizes the filter: 12 bits per key give a false
// positive rate of about 0.5% at full capacity.
const filterBitsPerKey = 12

// Defaults of the filter's size.
const (
	// DefaultDedupFilterBytes caps the dedup filter's memory: 64 MiB
	// hold 44 million keys at the designed false-positive rate.
	DefaultDedupFilterBytes = 64 << 20
	// minFilterKeys is the smallest capacity built (1.5 MiB).
	minFilterKeys = 1 << 20
)

// saltFilter are the odd multipliers that pick a key's bit in each word
// (the constants of the Parquet split-block Bloom filter).
var saltFilter = [8]uint32{0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31}

// filterBlock is one 256-bit block.
type filterBlock [8]uint32

// dedupFilter is a split-block Bloom filter of dedup key hashes. It is not
// safe for concurrent use: a filter under construction belongs to its
// builder, then to the committer.
type dedupFilter struct {
	blocks   []filterBlock
	capacity int // keys it was sized for
	built    int // keys its build added
	keys     int // keys added, by its build and since
}

// newDedupFilter returns an empty filter for capacity keys, at most
// maxBytes large.
func newDedupFilter(capacity int, maxBytes int64) *dedupFilter {
	capacity = max(capacity, minFilterKeys)
	n := (int64(capacity)*filterBitsPerKey + 255) / 256
	n = max(1, min(n, maxBytes/32))
	return &dedupFilter{blocks: make([]filterBlock, n), capacity: int(n * 256 / filterBitsPerKey)}
}

// mask returns the block of h and the bit h sets in each of its words.
func (f *dedupFilter) mask(h uint64) (*filterBlock, [8]uint32) {
	hi, _ := bits.Mul64(h, uint64(len(f.blocks))) // h scaled to [0, len)
	var m [8]uint32
	x := uint32(h)
	for i, s := range saltFilter {
		m[i] = 1 << ((x * s) >> 27)
	}
	return &f.blocks[hi], m
}

func (f *dedupFilter) add(h uint64) {
	b, m := f.mask(h)
	for i := range b {
		b[i] |= m[i]
	}
	f.keys++
}

// mayContain reports false only for a hash never added.
func (f *dedupFilter) mayContain(h uint64) bool {
	b, m := f.mask(h)
	for i := range b {
		if b[i]&m[i] == 0 {
			return false
		}
	}
	return true
}

// due reports whether the filter should be rebuilt: it holds more keys
// than it was sized for (so its false-positive rate is above the design's),
// and more were added since its build than the build found, so the cost of
// the rebuilds (a scan of every dedup key) stays proportional to the
// appends, also when the size cap keeps the capacity below the keys.
func (f *dedupFilter) due() bool { return f.keys > f.capacity && f.keys-f.built > f.built }

// bytes returns the filter's memory.
func (f *dedupFilter) bytes() int { return len(f.blocks) * 32 }

// dedupHash hashes a dedup key with the store's maphash seed (the filter
// lives only in memory, so it may differ from one open to the next).
func dedupHash(seed maphash.Seed, key []byte) uint64 { return maphash.Bytes(seed, key) }

// buildFilter returns a filter of every dedup key in snap. It sizes the
// filter for the keys counted in a first pass (a second pass fills it), so
// its memory follows the store and not a guess; twice the count leaves
// room for the keys that will be added before the next rebuild.
func buildFilter(ctx context.Context, snap *pebble.Snapshot, seed maphash.Seed, maxBytes int64) (*dedupFilter, error) {
	scan := func(fn func(key []byte)) error {
		it, err := snap.NewIter(&pebble.IterOptions{LowerBound: []byte{tDedup}, UpperBound: []byte{tDedup + 1}})
		if err != nil {
			return err
		}
		n := 0
		for ok := it.First(); ok; ok = it.Next() {
			if n++; n%4096 == 0 && ctx.Err() != nil {
				break
			}
			fn(it.Key())
		}
		err = it.Error()
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = ctx.Err()
		}
		return err
	}
	count := 0
	if err := scan(func([]byte) { count++ }); err != nil {
		return nil, fmt.Errorf("dedup filter: count keys: %w", err)
	}
	f := newDedupFilter(2*count, maxBytes)
	if err := scan(func(k []byte) { f.add(dedupHash(seed, k)) }); err != nil {
		return nil, fmt.Errorf("dedup filter: add keys: %w", err)
	}
	f.built = f.keys
	return f, nil
}

// filterState is the committer's side of the dedup filter.
type filterState struct {
	enabled bool
	seed    maphash.Seed
	f       *dedupFilter // nil until the first build is done
	maxB    int64

	// While a build runs: the hashes of the dedup keys written since its
	// snapshot, which the snapshot does not hold.
	building bool
	pending  []uint64
	result   chan filterResult // the builder's answer (buffered: it never waits)
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	retryAt  time.Time // after a failed build, no new one before this
}

type filterResult struct {
	f   *dedupFilter
	err error
}

// filterRetry is the pause after a failed build (an I/O error reading the
// snapshot): until then checks read Pebble.
const filterRetry = time.Minute

func (c *committer) initFilter() {
	fs := &c.filter
	fs.enabled = c.s.opts.DedupFilterBytes > 0
	fs.maxB = c.s.opts.DedupFilterBytes
	fs.seed = maphash.MakeSeed()
	fs.result = make(chan filterResult, 1)
}

// filterBatch runs on the committer before a batch is built, when the
// database holds exactly the batches applied so far: it takes a finished
// build and starts one when the filter is missing or due.
func (c *committer) filterBatch() {
	fs := &c.filter
	if !fs.enabled {
		return
	}
	if fs.building {
		select {
		case r := <-fs.result:
			fs.building = false
			fs.cancel()
			if r.err != nil {
				fs.retryAt = time.Now().Add(filterRetry)
				c.s.opts.Logger.Warn("pebblestore: building the dedup filter failed; every dedup check reads the store until the next attempt",
					"err", r.err, "retry_in", filterRetry)
			} else {
				for _, h := range fs.pending {
					r.f.add(h)
				}
				fs.f = r.f
				c.s.filterBytes.Store(uint64(r.f.bytes()))
				c.s.filterBuilds.Add(1)
			}
			fs.pending = nil
		default:
			return
		}
	}
	if (fs.f == nil || fs.f.due()) && !fs.building && (fs.retryAt.IsZero() || time.Now().After(fs.retryAt)) {
		c.startFilterBuild()
	}
}

// startFilterBuild snapshots the database and builds a filter from it on a
// goroutine of its own; stopFilterBuild ends it.
func (c *committer) startFilterBuild() {
	fs := &c.filter
	snap := c.s.db.NewSnapshot()
	ctx, cancel := context.WithCancel(context.Background())
	fs.building, fs.cancel, fs.pending = true, cancel, []uint64{}
	hook := c.s.opts.beforeFilterBuild
	seed, maxB := fs.seed, fs.maxB
	fs.wg.Go(func() {
		if hook != nil {
			hook(ctx)
		}
		f, err := buildFilter(ctx, snap, seed, maxB)
		// Closed before the result is handed over: once the committer
		// has taken it, nothing waits for this goroutine, and Close
		// must not find the snapshot still open ("leaked snapshots").
		_ = snap.Close()
		fs.result <- filterResult{f, err}
	})
}

// stopFilterBuild cancels a running build and waits for its goroutine (the
// committer calls it on its way out, before the database closes).
func (c *committer) stopFilterBuild() {
	if fs := &c.filter; fs.building {
		fs.cancel()
		fs.wg.Wait()
		fs.building = false
	}
}

// dedupMayExist reports whether the dedup key in c.key may be stored, and
// its hash; false means surely not, without reading Pebble.
func (c *committer) dedupMayExist() (uint64, bool) {
	fs := &c.filter
	if !fs.enabled {
		return 0, true
	}
	h := dedupHash(fs.seed, c.key)
	if fs.f != nil && !fs.f.mayContain(h) {
		return h, false
	}
	return h, true
}

// dedupWritten notes that a batch writes the dedup key of hash h.
func (c *committer) dedupWritten(h uint64) {
	fs := &c.filter
	if !fs.enabled {
		return
	}
	if fs.f != nil {
		fs.f.add(h)
	}
	if fs.building {
		fs.pending = append(fs.pending, h)
	}
}
