package defaults

import (
	"testing"
	"time"
)

func TestSetFillsOnlyZero(t *testing.T) {
	d, n, s := time.Duration(0), 7, ""
	Set(&d, time.Second)
	Set(&n, 9)
	Set(&s, "x")
	if d != time.Second || n != 7 || s != "x" {
		t.Fatalf("got %v %d %q, want 1s 7 \"x\"", d, n, s)
	}
	neg := -1
	Set(&neg, 5) // a negative value is Validate's business, not a default
	if neg != -1 {
		t.Fatalf("negative overwritten: %d", neg)
	}
}
