package bench

import (
	"testing"
)

func TestHistMerge(t *testing.T) {
	a, b := NewHist(), NewHist()
	for i := int64(1); i <= 1000; i++ {
		a.RecordNs(i * 1000) // 1..1000 µs
	}
	for i := int64(1001); i <= 2000; i++ {
		b.RecordNs(i * 1000)
	}
	b.RecordNs(120e9) // above the range: clipped to 60 s
	m := NewHist()
	m.Merge(a)
	m.Merge(b)
	m.Merge(nil)
	if m.Count() != 2001 || m.Clipped != 1 {
		t.Fatalf("count %d clipped %d", m.Count(), m.Clipped)
	}
	s := m.Summary()
	if !s.Ordered() {
		t.Fatalf("not ordered: %+v", s)
	}
	// 3 significant digits: within 0.1% of the exact values.
	near := func(got, want int64) bool { return got >= want-want/500-1 && got <= want+want/500+1 }
	if !near(s.P50, 1000) || !near(s.P90, 1800) || !near(s.P99, 1981) || !near(s.Max, 60_000_000) {
		t.Fatalf("percentiles %+v", s)
	}
	// Merging is what the parent does with the workers' encoded
	// histograms: the result must not depend on the path.
	ea, err := a.Encode()
	if err != nil {
		t.Fatal(err)
	}
	eb, _ := b.Encode()
	da, err := DecodeHist(ea)
	if err != nil {
		t.Fatal(err)
	}
	db, _ := DecodeHist(eb)
	m2 := NewHist()
	m2.Merge(da)
	m2.Merge(db)
	if m2.Summary().P99 != s.P99 || m2.Count() != m.Count() {
		t.Fatalf("decoded merge differs: %+v vs %+v", m2.Summary(), s)
	}
	if e, err := DecodeHist(""); err != nil || e.Count() != 0 {
		t.Fatal("empty histogram")
	}
	if _, err := DecodeHist("!!!"); err == nil {
		t.Fatal("garbage decoded")
	}
	if NewHist().Summary() != (Latency{}) {
		t.Fatal("empty summary not zero")
	}
	small := NewHist()
	small.RecordNs(10) // below 1 µs: recorded as 1 µs
	if small.Summary().Max != 1 {
		t.Fatalf("sub-µs value: %+v", small.Summary())
	}
	if small.Percentiles() == "" {
		t.Fatal("no spectrum")
	}
}

func TestMergePhases(t *testing.T) {
	h1, h2 := NewHist(), NewHist()
	h1.RecordNs(100e3)
	h2.RecordNs(300e3)
	e1, _ := h1.Encode()
	e2, _ := h2.Encode()
	p, h, err := MergePhases([]*PhaseResult{
		{ID: 2, Rate: 100, WindowS: 10, Sent: 10, Expected: 10, Delivered: 9, Errors: map[string]int64{"x": 1}, Hist: e1,
			CPU: 3, CPUWait: 1, CPUSpan: 14},
		nil,
		{ID: 2, Rate: 50, WindowS: 10, Sent: 5, Expected: 5, Delivered: 5, Errors: map[string]int64{"x": 2, "y": 1}, Hist: e2,
			CPU: 2, CPUWait: 4, CPUSpan: 14.5},
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Rate != 150 || p.Sent != 15 || p.Delivered != 14 || p.Errors["x"] != 3 || sumCounts(p.Errors) != 4 || h.Count() != 2 {
		t.Fatalf("merged %+v count %d", p, h.Count())
	}
	// CPU adds up over the processes; they measure it over the same phase.
	if p.CPU != 5 || p.CPUWait != 5 || p.CPUSpan != 14.5 {
		t.Fatalf("merged CPU %v wait %v span %v; want 5, 5, 14.5", p.CPU, p.CPUWait, p.CPUSpan)
	}
	if _, _, err := MergePhases([]*PhaseResult{{ID: 1}, {ID: 2}}); err == nil {
		t.Fatal("merged different phases")
	}
	r, lh, err := MergeRamps([]*RampResult{{Units: 3, LoggedIn: 3, Held: 3, Seconds: 1, FDLimit: 20000, LoginHist: e1},
		{Units: 2, LoggedIn: 1, Held: 1, Seconds: 2, FDLimit: 1024, StopReason: "fd limit", Failures: map[string]int64{"dial: EMFILE": 1}, LoginHist: e2}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Units != 5 || r.Held != 4 || r.Seconds != 2 || r.FDLimit != 1024 || r.StopReason != "fd limit" || r.Failures["dial: EMFILE"] != 1 || lh.Count() != 2 {
		t.Fatalf("ramps %+v", r)
	}
}
