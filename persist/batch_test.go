package persist

import (
	"slices"
	"testing"
)

func TestNextBatch(t *testing.T) {
	q := make(chan int, 10)
	for i := range 5 {
		q <- i
	}
	batch, ok := NextBatch(q, nil, 3)
	if !ok || !slices.Equal(batch, []int{0, 1, 2}) {
		t.Fatalf("first batch %v, %v; want [0 1 2] (capped at max)", batch, ok)
	}
	batch, ok = NextBatch(q, batch, 3)
	if !ok || !slices.Equal(batch, []int{3, 4}) {
		t.Fatalf("second batch %v, %v; want [3 4] (what was queued, no wait)", batch, ok)
	}
	q <- 5
	close(q)
	batch, ok = NextBatch(q, batch, 3)
	if !ok || !slices.Equal(batch, []int{5}) {
		t.Fatalf("batch before the close %v, %v; want [5]", batch, ok)
	}
	if batch, ok = NextBatch(q, batch, 3); ok || len(batch) != 0 {
		t.Fatalf("after the close: %v, %v; want an empty batch and false", batch, ok)
	}
}
