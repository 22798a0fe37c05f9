package persist

import (
	"errors"
	"math/rand/v2"
	"strconv"
	"testing"
)

// TestCheckAppendDuplicateInboxes checks the duplicate-inbox rule on lists
// long enough for the hash set (more than 16 names) against a plain map:
// lists without a repeat pass, and a list with repeats fails naming the
// first name an earlier one repeats.
func TestCheckAppendDuplicateInboxes(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	msg := Message{ID: 1, ClientMsgID: "c"}
	for round := range 2000 {
		n := 17 + r.IntN(300)
		if round%200 == 0 {
			n = 20000
		}
		names := make([]string, n)
		for i := range names {
			names[i] = "member-" + strconv.Itoa(i)
		}
		r.Shuffle(n, func(i, j int) { names[i], names[j] = names[j], names[i] })
		if round%2 == 1 {
			for range 1 + r.IntN(3) {
				names[r.IntN(n)] = names[r.IntN(n)]
			}
		}
		want := ""
		seen := map[string]bool{}
		for _, name := range names {
			if seen[name] {
				want = name
				break
			}
			seen[name] = true
		}
		err := CheckAppend(msg, names)
		switch {
		case want == "" && err != nil:
			t.Fatalf("round %d: %d distinct inboxes refused: %v", round, n, err)
		case want != "" && !errors.Is(err, ErrInvalid):
			t.Fatalf("round %d: repeated inbox %q: err = %v, want ErrInvalid", round, want, err)
		case want != "" && err.Error() != `persist: invalid argument: duplicate inbox "`+want+`"`:
			t.Fatalf("round %d: err = %q, want it to name %q", round, err, want)
		}
	}
}

func TestCheckAppendGroupAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are asserted without -race")
	}
	names := make([]string, 99)
	for i := range names {
		names[i] = "m" + strconv.Itoa(i)
	}
	msg := Message{ID: 1, ClientMsgID: "c"}
	if err := CheckAppend(msg, names); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = CheckAppend(msg, names) }); n != 0 {
		t.Fatalf("CheckAppend of a 99-member fan-out: %v allocations, want 0", n)
	}
}

func BenchmarkCheckAppendGroup(b *testing.B) {
	names := make([]string, 99)
	for i := range names {
		names[i] = "bg3m" + strconv.Itoa(i)
	}
	msg := Message{ID: 1, ClientMsgID: "c"}
	b.ReportAllocs()
	for range b.N {
		if err := CheckAppend(msg, names); err != nil {
			b.Fatal(err)
		}
	}
}
