package procstat

import "testing"

func TestReadsThisProcess(t *testing.T) {
	if RSS() == 0 {
		t.Fatal("no RSS")
	}
	x := 0
	for i := range 20_000_000 {
		x += i
	}
	if CPUSeconds() <= 0 {
		t.Fatalf("no CPU time after a busy loop (%d)", x)
	}
}
