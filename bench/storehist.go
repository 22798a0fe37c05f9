package bench

import (
	"math"
	"strconv"
	"strings"
)

// The embedded store's latency histograms, read from a node's /metrics at
// the window's edges: their difference is the window's commits and WAL
// syncs, to set beside the message latencies and the disk probe.

// storeHists are the histograms read, by the name the report gives them.
var storeHists = map[string]string{
	"imgn_store_queue_wait_seconds": "queue wait",
	"imgn_store_build_seconds":      "build",
	"imgn_store_apply_seconds":      "apply",
	"imgn_store_commit_seconds":     "commit",
	"imgn_store_fsync_seconds":      "fsync",
	"imgn_store_complete_seconds":   "complete",
}

// storeHistOrder is the order the report prints them in: a request's way
// through the committer (queue, batch build, hand-over to Pebble, commit
// until durable, completion), the WAL syncs last.
var storeHistOrder = []string{"queue wait", "build", "apply", "commit", "complete", "fsync"}

// PromHist is a Prometheus histogram from the text format: cumulative
// counts by upper bound (seconds, ascending, +Inf last), sum and count.
type PromHist struct {
	Bounds []float64
	Counts []float64
	Sum    float64
	Count  float64
}

// addLine folds one exposition line of histogram name into h; it reports
// whether the line belonged to it.
func (h *PromHist) addLine(name, line string) bool {
	rest, ok := strings.CutPrefix(line, name)
	if !ok {
		return false
	}
	switch {
	case strings.HasPrefix(rest, `_bucket{le="`):
		le, val, ok := strings.Cut(rest[len(`_bucket{le="`):], `"} `)
		if !ok {
			return false
		}
		b, err1 := strconv.ParseFloat(le, 64) // "+Inf" parses as +Inf
		v, err2 := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err1 != nil || err2 != nil {
			return false
		}
		h.Bounds, h.Counts = append(h.Bounds, b), append(h.Counts, v)
	case strings.HasPrefix(rest, "_sum "):
		v, err := strconv.ParseFloat(strings.TrimSpace(rest[len("_sum "):]), 64)
		if err != nil {
			return false
		}
		h.Sum = v
	case strings.HasPrefix(rest, "_count "):
		v, err := strconv.ParseFloat(strings.TrimSpace(rest[len("_count "):]), 64)
		if err != nil {
			return false
		}
		h.Count = v
	default:
		return false
	}
	return true
}

// add adds o's counts to h (another node's histogram of the same buckets;
// one with other buckets is left out).
func (h *PromHist) add(o *PromHist) {
	if len(h.Bounds) == 0 {
		h.Bounds = append([]float64(nil), o.Bounds...)
		h.Counts = make([]float64, len(o.Counts))
	}
	if !sameBounds(h.Bounds, o.Bounds) {
		return
	}
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	h.Sum += o.Sum
	h.Count += o.Count
}

// Sub returns h - before: what was observed between the two reads. A
// before with other buckets (or none) counts as empty.
func (h *PromHist) Sub(before *PromHist) *PromHist {
	d := &PromHist{Bounds: h.Bounds, Counts: append([]float64(nil), h.Counts...), Sum: h.Sum, Count: h.Count}
	if before == nil || !sameBounds(h.Bounds, before.Bounds) {
		return d
	}
	for i, c := range before.Counts {
		d.Counts[i] -= c
	}
	d.Sum -= before.Sum
	d.Count -= before.Count
	return d
}

func sameBounds(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// StoreLatency summarises a store histogram over the window. Percentiles
// and the maximum are bucket upper bounds (the histogram's resolution: a
// factor of two), in microseconds; -1 means above the last finite bound.
type StoreLatency struct {
	Count  int64   `json:"count"`
	MeanUs float64 `json:"mean_us"`
	P50Us  float64 `json:"p50_le_us"`
	P99Us  float64 `json:"p99_le_us"`
	P999Us float64 `json:"p999_le_us"`
	MaxUs  float64 `json:"max_le_us"`
	// Over50ms is the share of observations above the largest bucket
	// bound up to 51.2 ms (51.2 ms itself in the store's histograms).
	Over50ms float64 `json:"share_over_51ms"`
}

// over50msBound is the bucket bound Over50ms counts from (50 µs x 2^10).
const over50msBound = 0.0512

// Summary returns h's summary (zero when h is empty).
func (h *PromHist) Summary() StoreLatency {
	if h == nil || h.Count <= 0 || len(h.Counts) == 0 {
		return StoreLatency{}
	}
	s := StoreLatency{Count: int64(h.Count), MeanUs: h.Sum / h.Count * 1e6,
		P50Us: h.quantileBound(0.5), P99Us: h.quantileBound(0.99), P999Us: h.quantileBound(0.999)}
	for i := range h.Counts {
		below := 0.0
		if i > 0 {
			below = h.Counts[i-1]
		}
		if h.Counts[i] > below {
			s.MaxUs = boundUs(h.Bounds[i])
		}
		if h.Bounds[i] <= over50msBound {
			s.Over50ms = (h.Count - h.Counts[i]) / h.Count
		}
	}
	return s
}

// quantileBound is the upper bound of the bucket holding quantile q.
func (h *PromHist) quantileBound(q float64) float64 {
	want := q * h.Count
	for i, c := range h.Counts {
		if c >= want {
			return boundUs(h.Bounds[i])
		}
	}
	return -1
}

func boundUs(b float64) float64 {
	if math.IsInf(b, 1) {
		return -1
	}
	return math.Round(b * 1e6)
}
