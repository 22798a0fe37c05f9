package events

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/persist"
)

// benchPublisher returns a publisher to a real Redis whose queue holds n
// events, closed when the benchmark ends.
func benchPublisher(b *testing.B, n int) *Publisher {
	b.Helper()
	r := testsvc.StartRedis(b)
	p, err := New(Config{Addrs: []string{r.Addr}, NodeID: "n1", Logger: quiet, QueueSize: max(n, 1024), Registry: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

// queueMessages reports b.N stored 1:1 messages (a 100-byte body, two
// inboxes, consecutive seqs) to p, timed.
func queueMessages(b *testing.B, p *Publisher) {
	m := &persist.Message{ID: 1 << 50, From: "alice", To: "bob", ClientMsgID: "c-1", Timestamp: 1_700_000_000_000, Body: make([]byte, 100)}
	inboxes, seqs := []string{"alice", "bob"}, []uint64{0, 0}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		seqs[0], seqs[1] = uint64(i+1), uint64(i+1)
		p.MessageStored(m, inboxes, seqs, false)
	}
}

// BenchmarkMessageStored is what the engine pays per stored 1:1 message
// when the event stream is on: the publisher copies the message into an
// event and queues it (the publishing goroutine is not running, so only the
// call is measured).
func BenchmarkMessageStored(b *testing.B) {
	p := benchPublisher(b, b.N)
	queueMessages(b, p)
	b.StopTimer()
	if p.Dropped() != 0 {
		b.Fatalf("%d events dropped", p.Dropped())
	}
}

// BenchmarkPublishToRedis is the publisher's throughput into a real Redis
// on this machine: b.N message events queued, then the time until the last
// is in the stream (batches of DefaultBatchSize, one Lua script each).
func BenchmarkPublishToRedis(b *testing.B) {
	p := benchPublisher(b, b.N)
	p.Start()
	queueMessages(b, p)
	for int(promtest.ToFloat64(p.m.published)) < b.N {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if p.Dropped() != 0 {
		b.Fatalf("%d events dropped", p.Dropped())
	}
}
