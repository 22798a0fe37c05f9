package persist_test

import (
	"slices"
	"testing"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/sessiontest"
)

func TestMemorySessionStoreConformance(t *testing.T) {
	sessiontest.Run(t, func(t *testing.T) persist.SessionStore { return persist.NewMemorySessionStore() })
}

func BenchmarkMemorySessionStore(b *testing.B) {
	sessiontest.Bench(b, func(b *testing.B) persist.SessionStore { return persist.NewMemorySessionStore() })
}

func TestFilterLive(t *testing.T) {
	registry := map[string]int64{"node-a": 5, "node-b": 9} // live node -> boot epoch
	isLive := func(node string, epoch int64) bool {
		cur, ok := registry[node]
		return ok && epoch == cur
	}
	routes := []persist.Route{
		{User: "u", Device: "d1", NodeID: "node-a", BootEpoch: 5, ConnID: 1}, // live
		{User: "u", Device: "d2", NodeID: "node-a", BootEpoch: 4, ConnID: 2}, // old run of a live node
		{User: "u", Device: "d3", NodeID: "node-c", BootEpoch: 1, ConnID: 3}, // node not registered
		{User: "u", Device: "d4", NodeID: "node-b", BootEpoch: 9, ConnID: 4}, // live
	}
	orig := slices.Clone(routes)
	got := persist.FilterLive(routes, isLive)
	if want := []persist.Route{routes[0], routes[3]}; !slices.Equal(got, want) {
		t.Fatalf("FilterLive = %+v, want %+v", got, want)
	}
	if !slices.Equal(routes, orig) {
		t.Fatal("FilterLive modified its input")
	}
	if got := persist.FilterLive(nil, isLive); len(got) != 0 {
		t.Fatalf("FilterLive(nil) = %+v", got)
	}
	calls := 0
	persist.FilterLive(routes, func(string, int64) bool { calls++; return true })
	if calls != len(routes) {
		t.Fatalf("isLive called %d times, want %d", calls, len(routes))
	}
}

func TestRouteSameConn(t *testing.T) {
	r := persist.Route{User: "u", Device: "d", NodeID: "n", BootEpoch: 1, ConnID: 2}
	for _, tc := range []struct {
		o    persist.Route
		same bool
	}{
		{r, true},
		{persist.Route{User: "x", Device: "y", NodeID: "n", BootEpoch: 1, ConnID: 2}, true},
		{persist.Route{User: "u", Device: "d", NodeID: "m", BootEpoch: 1, ConnID: 2}, false},
		{persist.Route{User: "u", Device: "d", NodeID: "n", BootEpoch: 2, ConnID: 2}, false},
		{persist.Route{User: "u", Device: "d", NodeID: "n", BootEpoch: 1, ConnID: 3}, false},
	} {
		if got := r.SameConn(tc.o); got != tc.same {
			t.Errorf("SameConn(%+v) = %v, want %v", tc.o, got, tc.same)
		}
	}
}
