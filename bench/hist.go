package bench

import (
	"encoding/base64"
	"fmt"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram range: 1 µs to 60 s at 3 significant digits (about 0.1% error).
const (
	histMinUs = 1
	histMaxUs = 60_000_000
	histSig   = 3
)

// Hist is a latency histogram in microseconds. It is not safe for
// concurrent use: every event loop owns its own, and they are merged at the
// end (Merge), never shared.
type Hist struct {
	h *hdrhistogram.Histogram
	// Clipped counts values above the range (recorded as the maximum).
	Clipped int64
}

// NewHist returns an empty histogram.
func NewHist() *Hist { return &Hist{h: hdrhistogram.New(histMinUs, histMaxUs, histSig)} }

// RecordNs records a latency given in nanoseconds. Values below 1 µs are
// recorded as 1 µs, values above 60 s as 60 s (and counted in Clipped).
func (h *Hist) RecordNs(ns int64) {
	us := ns / 1000
	if us < histMinUs {
		us = histMinUs
	}
	if us > histMaxUs {
		us = histMaxUs
		h.Clipped++
	}
	_ = h.h.RecordValue(us)
}

// Count is the number of recorded values.
func (h *Hist) Count() int64 { return h.h.TotalCount() }

// Merge adds every value of o to h.
func (h *Hist) Merge(o *Hist) {
	if o == nil {
		return
	}
	h.h.Merge(o.h)
	h.Clipped += o.Clipped
}

// Latency is a percentile summary in microseconds.
type Latency struct {
	P50  int64 `json:"p50"`
	P90  int64 `json:"p90"`
	P99  int64 `json:"p99"`
	P999 int64 `json:"p999"`
	Max  int64 `json:"max"`
	// Count is the number of samples the percentiles are taken over.
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
}

// Summary returns the percentiles of h (all zero when h is empty).
func (h *Hist) Summary() Latency {
	if h.Count() == 0 {
		return Latency{}
	}
	return Latency{
		P50: h.h.ValueAtQuantile(50), P90: h.h.ValueAtQuantile(90), P99: h.h.ValueAtQuantile(99),
		P999: h.h.ValueAtQuantile(99.9), Max: h.h.Max(), Count: h.Count(), Mean: h.h.Mean(),
	}
}

// Ordered reports whether the percentiles are non-decreasing, which every
// summary of one histogram must be.
func (l Latency) Ordered() bool {
	return l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max
}

// Encode returns h in the HdrHistogram V2 compressed format, base64: the
// form worker processes send their histograms to the parent in.
func (h *Hist) Encode() (string, error) {
	b, err := h.h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
	if err != nil {
		return "", fmt.Errorf("bench: encode histogram: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// DecodeHist is the inverse of Encode. An empty string gives an empty
// histogram.
func DecodeHist(s string) (*Hist, error) {
	if s == "" {
		return NewHist(), nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("bench: decode histogram: %w", err)
	}
	h, err := hdrhistogram.Decode(b)
	if err != nil {
		return nil, fmt.Errorf("bench: decode histogram: %w", err)
	}
	out := NewHist()
	out.h.Merge(h)
	return out, nil
}

// Percentiles returns the HdrHistogram percentile spectrum of h as text in
// the .hgrm layout (value in µs, percentile, total count, 1/(1-p)), the
// form wrk2 publishes.
func (h *Hist) Percentiles() string {
	out := fmt.Sprintf("%12s %14s %10s %14s\n\n", "Value(us)", "Percentile", "TotalCount", "1/(1-Percentile)")
	for _, q := range []float64{0, 10, 20, 30, 40, 50, 55, 60, 65, 70, 75, 77.5, 80, 82.5, 85, 87.5, 88.75, 90, 91.25, 92.5, 93.75, 95, 96.875, 98.4375, 99, 99.2188, 99.6094, 99.8047, 99.9, 99.9023, 99.99, 99.999, 100} {
		v := h.h.ValueAtQuantile(q)
		inv := "inf"
		if q < 100 {
			inv = fmt.Sprintf("%.2f", 1/(1-q/100))
		}
		out += fmt.Sprintf("%12d %14.6f %10d %14s\n", v, q/100, int64(float64(h.Count())*q/100), inv)
	}
	l := h.Summary()
	out += fmt.Sprintf("#[Mean = %.3f, Max = %d, Total count = %d]\n", l.Mean, l.Max, l.Count)
	return out
}
