package engine

import (
	"sync/atomic"
	"time"
)

// idEpoch is the zero of msg_id timestamps: 2025-01-01T00:00:00Z.
const idEpoch int64 = 1735689600000

// idGen makes cluster-unique, time-ordered 64-bit ids: 41 bits of
// milliseconds since idEpoch, 10 bits of node number, 12 bits of sequence.
// When more than 4096 ids are asked for in one millisecond it borrows the
// next millisecond, so ids never repeat and never go backwards, even if
// the wall clock does. Safe for concurrent use; allocation-free.
type idGen struct {
	node uint64
	last atomic.Uint64 // (ms << 12) | seq of the last id
	now  func() int64  // unix ms; replaced in tests
}

func newIDGen(node uint16) *idGen {
	return &idGen{node: uint64(node) & 0x3FF, now: func() int64 { return time.Now().UnixMilli() }}
}

func (g *idGen) next() uint64 { return g.nextAt(g.now()) }

// nextAt is next with the clock read by the caller (unix ms).
func (g *idGen) nextAt(nowMs int64) uint64 {
	floor := uint64(nowMs-idEpoch) << 12
	for {
		last := g.last.Load()
		n := last + 1
		if n < floor {
			n = floor
		}
		if g.last.CompareAndSwap(last, n) {
			ms, seq := n>>12, n&0xFFF
			return ms<<22 | g.node<<12 | seq
		}
	}
}

// idTime returns the unix milliseconds encoded in id.
func idTime(id uint64) int64 { return int64(id>>22) + idEpoch }
