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

func TestPositiveReplacesZeroAndNegative(t *testing.T) {
	a, b, c := -3, 0, 4
	Positive(&a, 10)
	Positive(&b, 10)
	Positive(&c, 10)
	d := -time.Second
	Positive(&d, time.Minute)
	if a != 10 || b != 10 || c != 4 || d != time.Minute {
		t.Fatalf("got %d %d %d %v", a, b, c, d)
	}
}
