package pebblestore

import "bytes"

// Sorting a batch's staged writes.
//
// The committer sorts every batch's point writes by key before it adds them
// to the Pebble batch, because Pebble inserts a batch into its memtable (a
// skiplist) key by key and an insert next to the previous one is cheap
// while a random one searches the whole list. At 50k appends/s a batch holds
// hundreds to over a thousand appends of six writes each, and with the generic
// slices.SortFunc the sort was the largest single item of the committer's own work
// (a closure call per comparison, and an out-of-line byte comparison
// whenever the 16-byte prefixes tie, as they do for one user's inbox and
// conversation entries). sortStaged is the same order with the comparison
// inlined: a quicksort with median-of-three pivots, insertion sort for short
// ranges, and heapsort when a range recurses too deep, so the worst case
// stays O(n log n).

// stagedLess orders staged writes by key, then by staging offset, so two
// writes of one key keep the order they were staged in (the later one
// wins in the batch). It is a total order: no two ops share an offset.
func stagedLess(a, b *stagedOp, arena []byte) bool {
	if a.pre0 != b.pre0 {
		return a.pre0 < b.pre0
	}
	if a.pre1 != b.pre1 {
		return a.pre1 < b.pre1
	}
	if a.kn > 16 || b.kn > 16 {
		// The prefixes hold the first 16 bytes, zero-padded; the rest
		// decides.
		ra := arena[a.k+min(a.kn, 16) : a.k+a.kn]
		rb := arena[b.k+min(b.kn, 16) : b.k+b.kn]
		if d := bytes.Compare(ra, rb); d != 0 {
			return d < 0
		}
	}
	if a.kn != b.kn {
		// Equal so far: the shorter key is a prefix of the longer (a short
		// key's padding ties with real zero bytes of the other).
		return a.kn < b.kn
	}
	return a.k < b.k
}

// stagedSorted reports whether ops are in stagedLess order.
func stagedSorted(ops []stagedOp, arena []byte) bool {
	for i := 1; i < len(ops); i++ {
		if stagedLess(&ops[i], &ops[i-1], arena) {
			return false
		}
	}
	return true
}

// sortStaged sorts ops by stagedLess. arena holds the keys.
func sortStaged(ops []stagedOp, arena []byte) {
	depth := 0
	for n := len(ops); n > 0; n >>= 1 {
		depth += 2
	}
	quickStaged(ops, arena, depth)
}

func quickStaged(ops []stagedOp, arena []byte, depth int) {
	for len(ops) > 12 {
		if depth == 0 {
			heapStaged(ops, arena)
			return
		}
		depth--
		p := partitionStaged(ops, arena)
		// Recurse into the smaller side, loop on the larger: the stack
		// stays O(log n).
		if p < len(ops)-p {
			quickStaged(ops[:p], arena, depth)
			ops = ops[p+1:]
		} else {
			quickStaged(ops[p+1:], arena, depth)
			ops = ops[:p]
		}
	}
	insertionStaged(ops, arena)
}

// partitionStaged moves the median of the first, middle and last op to the
// front, partitions the rest around it and returns the pivot's final index:
// ops[:p] are less than it, ops[p+1:] are not.
func partitionStaged(ops []stagedOp, arena []byte) int {
	lo, mid, hi := 0, len(ops)/2, len(ops)-1
	if stagedLess(&ops[mid], &ops[lo], arena) {
		ops[mid], ops[lo] = ops[lo], ops[mid]
	}
	if stagedLess(&ops[hi], &ops[mid], arena) {
		ops[hi], ops[mid] = ops[mid], ops[hi]
		if stagedLess(&ops[mid], &ops[lo], arena) {
			ops[mid], ops[lo] = ops[lo], ops[mid]
		}
	}
	ops[0], ops[mid] = ops[mid], ops[0]
	pivot := &ops[0]
	i, j := 1, len(ops)-1
	for {
		for i <= j && stagedLess(&ops[i], pivot, arena) {
			i++
		}
		for i <= j && !stagedLess(&ops[j], pivot, arena) {
			j--
		}
		if i > j {
			break
		}
		ops[i], ops[j] = ops[j], ops[i]
		i++
		j--
	}
	ops[0], ops[j] = ops[j], ops[0]
	return j
}

func insertionStaged(ops []stagedOp, arena []byte) {
	for i := 1; i < len(ops); i++ {
		for j := i; j > 0 && stagedLess(&ops[j], &ops[j-1], arena); j-- {
			ops[j], ops[j-1] = ops[j-1], ops[j]
		}
	}
}

func heapStaged(ops []stagedOp, arena []byte) {
	n := len(ops)
	for i := n/2 - 1; i >= 0; i-- {
		siftStaged(ops, i, n, arena)
	}
	for end := n - 1; end > 0; end-- {
		ops[0], ops[end] = ops[end], ops[0]
		siftStaged(ops, 0, end, arena)
	}
}

func siftStaged(ops []stagedOp, root, n int, arena []byte) {
	for {
		child := 2*root + 1
		if child >= n {
			return
		}
		if child+1 < n && stagedLess(&ops[child], &ops[child+1], arena) {
			child++
		}
		if !stagedLess(&ops[root], &ops[child], arena) {
			return
		}
		ops[root], ops[child] = ops[child], ops[root]
		root = child
	}
}
