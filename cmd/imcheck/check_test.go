package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgn/imgn/internal/clusterkit"
)

// TestShortCheck runs the short checker (3 nodes, router, the short fault
// set for 25s) on real processes and asserts the must-be-zero counts.
func TestShortCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	bin, err := clusterkit.Build(ctx, filepath.Join(os.TempDir(), "imgn-imcheck-bin"))
	if err != nil {
		t.Fatal(err)
	}
	dur := 25 * time.Second
	if testing.Short() {
		dur = 12 * time.Second
	}
	rep, err := Check(ctx, CheckConfig{Bin: bin, Nodes: 3, Clients: 8, Rate: 40, Duration: dur, Quiet: 3 * time.Second,
		Faults: ShortFaults, Seed: 1, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	rep.Print(&buf)
	t.Log(buf.String())
	if rep.Acked == 0 {
		t.Fatal("nothing acked")
	}
	c := rep.Counts
	if c.Lost != 0 || c.Unexpected != 0 || c.Twice != 0 || c.Order != 0 || c.Gaps != 0 {
		t.Fatalf("lost=%d unexpected=%d twice=%d order=%d gaps=%d", c.Lost, c.Unexpected, c.Twice, c.Order, c.Gaps)
	}
	for _, e := range rep.Events {
		if e.Err != nil {
			t.Errorf("fault %s on %s: %v", e.Name, e.Target, e.Err)
		}
	}
}
