package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
)

// Repeat sums up one command run several times (imbench --repeat N), each
// run against freshly spawned servers: imd, then the relay when the runs
// have a baseline. On a shared machine one run's p99 moves by a factor of
// two or more from run to run with the same code (the relay's too), so a
// target on a ratio is read off the median of several runs, and the
// relay's own spread says how far a single run can be trusted.
type Repeat struct {
	Runs []RepeatRun `json:"runs"`
	// AllDelivered: every run delivered everything it sent in its window.
	AllDelivered bool `json:"all_delivered"`
	// Medians over the runs that have the figure (0: none has it).
	MedianP99Us      float64 `json:"median_p99_us"`
	MedianRelayP99Us float64 `json:"median_relay_p99_us,omitempty"`
	MedianP99Ratio   float64 `json:"median_p99_ratio,omitempty"`
	MedianCPURatio   float64 `json:"median_cpu_ratio,omitempty"`
	MedianRatio      float64 `json:"median_ratio,omitempty"`
	// Spreads: the largest p99 over the smallest, for imd and the relay
	// (0: fewer than two runs with a p99).
	P99Spread      float64 `json:"p99_spread,omitempty"`
	RelayP99Spread float64 `json:"relay_p99_spread,omitempty"`
}

// RepeatRun is one run's figures.
type RepeatRun struct {
	Sent       int64 `json:"sent"`
	Delivered  int64 `json:"delivered"`
	P99Us      int64 `json:"p99_us"`
	RelayP99Us int64 `json:"relay_p99_us,omitempty"`
	// P99Ratio is imd's p99 over the relay's in the same run.
	P99Ratio float64 `json:"p99_ratio,omitempty"`
	CPURatio float64 `json:"cpu_ratio,omitempty"`
	// Ratio is the baseline's ratio: delivered rates, or with --find-max
	// the highest passing rates.
	Ratio   float64 `json:"ratio,omitempty"`
	MaxRate float64 `json:"max_rate,omitempty"`
}

// SumRepeat sums up reps, the reports of the runs in order (nil entries are
// skipped).
func SumRepeat(reps []*Report) *Repeat {
	r := &Repeat{AllDelivered: true}
	var p99, relayP99, p99Ratio, cpuRatio, ratio []float64
	for _, rep := range reps {
		if rep == nil {
			continue
		}
		run := RepeatRun{Sent: rep.Sent, Delivered: rep.Delivered, P99Us: rep.LatencyUs.P99, MaxRate: rep.MaxRate}
		if rep.Delivered < rep.Sent || rep.Sent == 0 {
			r.AllDelivered = false
		}
		if run.P99Us > 0 {
			p99 = append(p99, float64(run.P99Us))
		}
		if b := rep.Baseline; b != nil {
			run.RelayP99Us, run.CPURatio, run.Ratio = b.LatencyUs.P99, b.CPURatio, b.Ratio
			if run.RelayP99Us > 0 {
				relayP99 = append(relayP99, float64(run.RelayP99Us))
				if run.P99Us > 0 {
					run.P99Ratio = float64(run.P99Us) / float64(run.RelayP99Us)
					p99Ratio = append(p99Ratio, run.P99Ratio)
				}
			}
			if run.CPURatio > 0 {
				cpuRatio = append(cpuRatio, run.CPURatio)
			}
			if run.Ratio > 0 {
				ratio = append(ratio, run.Ratio)
			}
		}
		r.Runs = append(r.Runs, run)
	}
	if len(r.Runs) == 0 {
		r.AllDelivered = false
	}
	r.MedianP99Us, r.MedianRelayP99Us = median(p99), median(relayP99)
	r.MedianP99Ratio, r.MedianCPURatio, r.MedianRatio = median(p99Ratio), median(cpuRatio), median(ratio)
	r.P99Spread, r.RelayP99Spread = spread(p99), spread(relayP99)
	return r
}

// median is the middle value of v (the mean of the two middle ones for an
// even count), 0 for none. v is reordered.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// spread is max(v)/min(v), 0 for fewer than two values.
func spread(v []float64) float64 {
	if len(v) < 2 {
		return 0
	}
	return slices.Max(v) / slices.Min(v)
}

// Print writes the summary after the runs' own reports.
func (r *Repeat) Print(w io.Writer) {
	fmt.Fprintf(w, "\n== %d runs of the same command\n", len(r.Runs))
	for i, run := range r.Runs {
		fmt.Fprintf(w, "run %-14d delivered %d/%d; p99 %.1f ms", i+1, run.Delivered, run.Sent, float64(run.P99Us)/1000)
		if run.RelayP99Us > 0 {
			fmt.Fprintf(w, ", relay %.1f ms: %.2fx", float64(run.RelayP99Us)/1000, run.P99Ratio)
		}
		if run.CPURatio > 0 {
			fmt.Fprintf(w, "; cpu_ratio %.2f", run.CPURatio)
		}
		if run.MaxRate > 0 {
			fmt.Fprintf(w, "; max rate %.0f/s", run.MaxRate)
		}
		if run.Ratio > 0 {
			fmt.Fprintf(w, "; ratio %.3f", run.Ratio)
		}
		fmt.Fprintln(w)
	}
	delivered := "everything delivered in every run"
	if !r.AllDelivered {
		delivered = "NOT everything delivered in every run"
	}
	fmt.Fprintf(w, "median             p99 %.1f ms", r.MedianP99Us/1000)
	if r.MedianRelayP99Us > 0 {
		fmt.Fprintf(w, ", relay %.1f ms; p99 ratio %.2fx", r.MedianRelayP99Us/1000, r.MedianP99Ratio)
	}
	if r.MedianCPURatio > 0 {
		fmt.Fprintf(w, "; cpu_ratio %.2f", r.MedianCPURatio)
	}
	if r.MedianRatio > 0 {
		fmt.Fprintf(w, "; ratio %.3f", r.MedianRatio)
	}
	fmt.Fprintf(w, "; %s\n", delivered)
	if r.P99Spread > 0 {
		fmt.Fprintf(w, "spread             imd's p99 moved %.2fx between runs", r.P99Spread)
		if r.RelayP99Spread > 0 {
			fmt.Fprintf(w, ", the relay's %.2fx (the machine's own run-to-run noise)", r.RelayP99Spread)
		}
		fmt.Fprintln(w)
	}
}

// RepeatJSON is the JSON document of imbench --repeat N --json: the summary
// and each run's full report.
type RepeatJSON struct {
	Repeat  *Repeat   `json:"repeat"`
	Reports []*Report `json:"reports"`
}

// WriteRepeatJSON writes the summary of reps and the reports to path.
func WriteRepeatJSON(path string, sum *Repeat, reps []*Report) error {
	b, err := json.MarshalIndent(RepeatJSON{Repeat: sum, Reports: reps}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
