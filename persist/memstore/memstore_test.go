package memstore_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
	"github.com/imgn/imgn/persist/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) persist.Store { return memstore.New() })
}

func TestRetentionConformance(t *testing.T) {
	storetest.RunRetention(t, func(t *testing.T, r persist.Retention) persist.Store {
		s, err := memstore.NewWith(r)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) persist.Store { return memstore.New() })
}

func TestChatConformance(t *testing.T) {
	storetest.RunChat(t, func(t *testing.T) persist.Store { return memstore.New() })
}
