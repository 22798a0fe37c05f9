package sessiontest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
)

// benchUsers is the number of users the benchmarks spread over; each has
// two devices online.
const benchUsers = 10000

// Bench runs the shared benchmarks against the stores made by open (called
// once per sub-benchmark; the store must be fresh and is closed by Bench).
// Lookup rates are also reported as lookups/s.
func Bench(b *testing.B, open func(b *testing.B) persist.SessionStore) {
	b.Run("Lookup", func(b *testing.B) {
		s := seeded(b, open)
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			if _, err := s.Lookup(ctx, benchUser(i)); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, "lookups/s")
	})
	// Callers per P: 1 is GOMAXPROCS goroutines; 32 models a node's worker
	// pool with many sends in flight (what automatic pipelining batches).
	for _, par := range []int{1, 32} {
		b.Run(fmt.Sprintf("LookupParallel/callers=%dxP", par), func(b *testing.B) {
			s := seeded(b, open)
			ctx := context.Background()
			var n atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(par)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(n.Add(1)) * 7919
				for pb.Next() {
					i++
					if _, err := s.Lookup(ctx, benchUser(i)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportRate(b, "lookups/s")
		})
	}
	b.Run("RenewParallel/callers=32xP", func(b *testing.B) {
		s := seeded(b, open)
		ctx := context.Background()
		var n atomic.Int64
		b.ReportAllocs()
		b.SetParallelism(32)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := int(n.Add(1)) * 7919
			for pb.Next() {
				i++
				if err := s.Renew(ctx, benchRoute(i, 0), time.Minute); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportRate(b, "renews/s")
	})
	b.Run("PutParallel/callers=32xP", func(b *testing.B) {
		s := open(b)
		b.Cleanup(func() { _ = s.Close() })
		ctx := context.Background()
		var n atomic.Int64
		b.ReportAllocs()
		b.SetParallelism(32)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := int(n.Add(1)) * 7919
			for pb.Next() {
				i++
				if _, err := s.Put(ctx, benchRoute(i, 0), time.Minute); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportRate(b, "puts/s")
	})
}

func benchUser(i int) string { return fmt.Sprintf("user-%d", i%benchUsers) }

func benchRoute(i, device int) persist.Route {
	return persist.Route{User: benchUser(i), Device: fmt.Sprintf("dev-%d", device), NodeID: "node-1", BootEpoch: 1, ConnID: uint64(i%benchUsers) + 1}
}

// seeded returns a store holding two live devices for each bench user.
func seeded(b *testing.B, open func(b *testing.B) persist.SessionStore) persist.SessionStore {
	s := open(b)
	b.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	for i := range benchUsers {
		for d := range 2 {
			if _, err := s.Put(ctx, benchRoute(i, d), time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	}
	return s
}

func reportRate(b *testing.B, unit string) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, unit)
	}
}
