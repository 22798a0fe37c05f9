package lb

import "math/bits"

// Why XXH64. Ring positions must agree between processes (router and
// cluster nodes, old and new versions), so the hash must be fixed forever:
// hash/maphash is seeded per process by design and is ruled out. XXH64 has a
// published specification with test vectors and implementations in every
// common language; it avalanches fully, so sequential user IDs ("u1", "u2")
// scatter over the whole ring; it reads 8 bytes per step; and its seed gives
// each member's virtual-node positions without building strings. FNV-1a 64
// alone mixes its high bits poorly for short keys, and adding a splitmix64
// finalizer would make a home-grown combination with no reference to check
// against. This implementation is tested against published values and
// github.com/cespare/xxhash/v2.

// XXH64 primes, from the xxHash specification.
const (
	prime1 uint64 = 11400714785074694791
	prime2 uint64 = 14029467366897019727
	prime3 uint64 = 1609587929392839161
	prime4 uint64 = 9650029242287828579
	prime5 uint64 = 2870177450012600261
)

// Hash64 returns the 64-bit xxHash (XXH64, seed 0) of s.
//
// Guarantees: the result depends only on the bytes of s. It is the same in
// every process, on every platform and across restarts, and equals the
// output of any conforming XXH64 implementation (for example
// github.com/cespare/xxhash/v2.Sum64String), so programs in other languages
// can reproduce it. Hash64 is safe for concurrent use and does not allocate.
//
// It is the hash that places keys on a [Ring]. Changing it would make
// processes running different versions disagree about key owners, so a test
// pins its output.
func Hash64(s string) uint64 { return xxh64(s, 0) }

// xxh64 is XXH64 of s, seeded with seed. The ring derives a member's
// virtual-node positions from it: point i of member id is xxh64(id, i).
func xxh64(s string, seed uint64) uint64 {
	n := len(s)
	var h uint64
	if n >= 32 {
		v1 := seed + prime1 + prime2
		v2 := seed + prime2
		v3 := seed
		v4 := seed - prime1
		for len(s) >= 32 {
			v1 = round(v1, le64(s[0:8]))
			v2 = round(v2, le64(s[8:16]))
			v3 = round(v3, le64(s[16:24]))
			v4 = round(v4, le64(s[24:32]))
			s = s[32:]
		}
		h = bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) +
			bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
		h = mergeRound(h, v1)
		h = mergeRound(h, v2)
		h = mergeRound(h, v3)
		h = mergeRound(h, v4)
	} else {
		h = seed + prime5
	}
	h += uint64(n)
	for len(s) >= 8 {
		h ^= round(0, le64(s[0:8]))
		h = bits.RotateLeft64(h, 27)*prime1 + prime4
		s = s[8:]
	}
	if len(s) >= 4 {
		h ^= uint64(le32(s[0:4])) * prime1
		h = bits.RotateLeft64(h, 23)*prime2 + prime3
		s = s[4:]
	}
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i]) * prime5
		h = bits.RotateLeft64(h, 11) * prime1
	}
	// Final avalanche: every input bit affects every output bit.
	h ^= h >> 33
	h *= prime2
	h ^= h >> 29
	h *= prime3
	h ^= h >> 32
	return h
}

func round(acc, input uint64) uint64 {
	acc += input * prime2
	acc = bits.RotateLeft64(acc, 31)
	return acc * prime1
}

func mergeRound(acc, val uint64) uint64 {
	val = round(0, val)
	acc ^= val
	return acc*prime1 + prime4
}

// le64 reads a little-endian uint64 from the first 8 bytes of s; the
// compiler combines the byte loads into one load.
func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// le32 reads a little-endian uint32 from the first 4 bytes of s.
func le32(s string) uint32 {
	_ = s[3]
	return uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24
}
