package pebblestore_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
	"github.com/imgn/imgn/persist/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func openAt(t testing.TB, dir string, opts pebblestore.Options) *pebblestore.Store {
	t.Helper()
	opts.Dir = dir
	s, err := pebblestore.Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// The conformance suite runs with real fsync: it is what production uses.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) persist.Store {
		return openAt(t, t.TempDir(), pebblestore.Options{})
	})
}

func TestDurable(t *testing.T) {
	storetest.RunDurable(t, func(t *testing.T, dir string) persist.Store {
		return openAt(t, dir, pebblestore.Options{})
	})
}
