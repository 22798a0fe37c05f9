package transporttest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
)

// BenchConcurrency lists the numbers of concurrent callers Bench measures.
var BenchConcurrency = []int{1, 16, 64}

// Bench measures forwarded Append round trips from one node to another
// whose handler answers at once (Echo, not recorded): a 100-byte message
// for two inboxes. For each concurrency in BenchConcurrency it reports
// rt/s (round trips per second over all callers) and the p50 and p99
// round-trip latency in microseconds.
func Bench(b *testing.B, s Suite) {
	for _, conc := range BenchConcurrency {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			p := DefaultParams
			p.QueueSize = 4096
			a := StartNode(b, s, p, "bench-a", "", nil)
			o := StartNode(b, s, p, "bench-b", "", &Handler{Discard: true})
			Connect(a, o)
			WaitLinked(b, a, o)
			m := persist.Message{ID: 1, From: "alice", To: "bob", ClientMsgID: "c-1", Timestamp: 1, Body: make([]byte, 100)}
			inboxes := []string{"bob", "alice"}
			lat := make([][]time.Duration, conc)
			var wg sync.WaitGroup
			errs := make(chan error, conc)
			b.ReportAllocs()
			b.ResetTimer()
			for w := range conc {
				n := b.N / conc
				if w < b.N%conc {
					n++
				}
				lat[w] = make([]time.Duration, 0, n)
				wg.Go(func() {
					ctx := context.Background()
					for range n {
						t0 := time.Now()
						if _, err := a.T.Append(ctx, o.Info.ID, m, inboxes); err != nil {
							errs <- err
							return
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				})
			}
			wg.Wait()
			elapsed := b.Elapsed()
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			all := slices.Concat(lat...)
			slices.Sort(all)
			if len(all) == 0 {
				return
			}
			pct := func(q float64) float64 {
				return float64(all[min(len(all)-1, int(q*float64(len(all))))].Nanoseconds()) / 1e3
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "rt/s")
			b.ReportMetric(pct(0.50), "p50-µs")
			b.ReportMetric(pct(0.99), "p99-µs")
		})
	}
}
