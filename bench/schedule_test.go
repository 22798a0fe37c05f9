package bench

import (
	"testing"
)

func TestScheduleIntended(t *testing.T) {
	for _, s := range []Schedule{
		{Start: 1000, Rate: 1000},    // 1 ms period
		{Start: 0, Rate: 3},          // 333,333,333.33 ns: a period that is not an integer
		{Start: 5e9, Rate: 123456.7}, // high, fractional rate
	} {
		if s.Intended(0) != s.Start {
			t.Fatalf("%+v: event 0 at %d", s, s.Intended(0))
		}
		prev := s.Intended(0)
		for j := uint64(1); j < 5000; j++ {
			it := s.Intended(j)
			if it < prev {
				t.Fatalf("%+v: intended times go back at %d", s, j)
			}
			prev = it
			// Due and Intended agree exactly.
			if d := s.Due(it); d != j+1 {
				t.Fatalf("%+v: Due(Intended(%d)) = %d", s, j, d)
			}
			if d := s.Due(it - 1); d > j {
				t.Fatalf("%+v: Due just before event %d = %d", s, j, d)
			}
		}
		// No drift: event j is computed, not accumulated.
		for _, j := range []uint64{1e6, 1e9, 3e9} {
			exact := float64(s.Start) + float64(j)*1e9/s.Rate
			if got := float64(s.Intended(j)); got > exact || exact-got > 1+exact*1e-15 {
				t.Fatalf("%+v: event %d at %.0f, exact %.3f", s, j, got, exact)
			}
		}
	}
}

func TestScheduleDueAndCount(t *testing.T) {
	s := Schedule{Start: 1e9, Rate: 1000}
	if s.Due(0) != 0 || s.Due(1e9-1) != 0 || s.Due(1e9) != 1 {
		t.Fatal("due around the start")
	}
	// A loop that wakes late sends everything due at once, with the
	// intended times it should have had: after a 10 ms stall 10 events
	// are due, the oldest intended 10 ms ago.
	now := int64(1e9 + 10e6 + 500e3)
	if d := s.Due(now); d != 11 {
		t.Fatalf("due after a stall: %d", d)
	}
	if now-s.Intended(0) != 10.5e6 {
		t.Fatal("lateness of the oldest due event")
	}
	// Window counts: rate x duration, whatever the alignment.
	w := Window{From: 1e9 + 250e3, To: 1e9 + 250e3 + 2e9}
	if n := s.Count(w.From, w.To); n != 2000 {
		t.Fatalf("count in a 2 s window at 1000/s: %d", n)
	}
	if s.Count(5, 5) != 0 || (Schedule{Rate: 0}).Due(10) != 0 {
		t.Fatal("empty cases")
	}
	if !w.Contains(w.From) || w.Contains(w.To) {
		t.Fatal("window is [From, To)")
	}
}
