package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func repeatReport(sent, delivered, p99, relayP99 int64, cpuRatio float64) *Report {
	r := &Report{Sent: sent, Delivered: delivered, LatencyUs: Latency{P99: p99}}
	if relayP99 > 0 {
		r.Baseline = &BaselineReport{LatencyUs: Latency{P99: relayP99}, CPURatio: cpuRatio, Ratio: float64(delivered) / float64(sent)}
	}
	return r
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSumRepeat(t *testing.T) {
	reps := []*Report{
		repeatReport(100, 100, 30_000, 20_000, 1.1), // 1.5x
		repeatReport(100, 100, 10_000, 10_000, 0.9), // 1.0x
		nil, // a run that printed nothing
		repeatReport(100, 100, 90_000, 40_000, 1.0), // 2.25x
	}
	s := SumRepeat(reps)
	if len(s.Runs) != 3 || !s.AllDelivered {
		t.Fatalf("%d runs, all delivered %v", len(s.Runs), s.AllDelivered)
	}
	if !near(s.Runs[0].P99Ratio, 1.5) || !near(s.Runs[2].P99Ratio, 2.25) {
		t.Fatalf("per-run p99 ratios %v %v", s.Runs[0].P99Ratio, s.Runs[2].P99Ratio)
	}
	if !near(s.MedianP99Ratio, 1.5) || !near(s.MedianCPURatio, 1.0) || !near(s.MedianP99Us, 30_000) || !near(s.MedianRelayP99Us, 20_000) {
		t.Fatalf("medians %+v", s)
	}
	if !near(s.P99Spread, 9) || !near(s.RelayP99Spread, 4) {
		t.Fatalf("spreads %v %v", s.P99Spread, s.RelayP99Spread)
	}

	// An even count takes the mean of the middle two; one short run
	// clears AllDelivered; runs without a baseline have no ratios.
	s = SumRepeat([]*Report{
		repeatReport(100, 99, 4_000, 0, 0),
		repeatReport(100, 100, 2_000, 0, 0),
	})
	if s.AllDelivered || !near(s.MedianP99Us, 3_000) || s.MedianP99Ratio != 0 || s.MedianCPURatio != 0 || s.RelayP99Spread != 0 || !near(s.P99Spread, 2) {
		t.Fatalf("%+v", s)
	}
	if s := SumRepeat(nil); s.AllDelivered || len(s.Runs) != 0 || s.P99Spread != 0 {
		t.Fatalf("no runs: %+v", s)
	}
}

func TestRepeatPrintAndJSON(t *testing.T) {
	reps := []*Report{repeatReport(100, 100, 30_000, 20_000, 1.1), repeatReport(100, 90, 10_000, 10_000, 0.9)}
	s := SumRepeat(reps)
	var b bytes.Buffer
	s.Print(&b)
	for _, want := range []string{
		"== 2 runs of the same command",
		"delivered 100/100; p99 30.0 ms, relay 20.0 ms: 1.50x; cpu_ratio 1.10; ratio 1.000",
		"p99 ratio 1.25x; cpu_ratio 1.00; ratio 0.950; NOT everything delivered in every run",
		"imd's p99 moved 3.00x between runs, the relay's 2.00x",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in\n%s", want, b.String())
		}
	}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := WriteRepeatJSON(path, s, reps); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Repeat struct {
			MedianP99Ratio float64 `json:"median_p99_ratio"`
			AllDelivered   bool    `json:"all_delivered"`
			Runs           []struct {
				P99Ratio float64 `json:"p99_ratio"`
			} `json:"runs"`
		} `json:"repeat"`
		Reports []struct {
			Sent int64 `json:"sent"`
		} `json:"reports"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if !near(got.Repeat.MedianP99Ratio, 1.25) || got.Repeat.AllDelivered || len(got.Repeat.Runs) != 2 || len(got.Reports) != 2 || got.Reports[1].Sent != 100 {
		t.Fatalf("%s", raw)
	}
}
