package storetest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
)

// BenchBodySize is the message body size used by Bench: a typical chat text.
const BenchBodySize = 100

// Bench runs the shared storage benchmarks against the stores made by open,
// which must return a fresh, empty store; Bench closes it. Sub-benchmarks:
//
//	Append/inboxes=N/serial     one goroutine; ns/op is the append latency
//	Append/inboxes=N/parallel   b.RunParallel with 32 goroutines per CPU
//	ReadInbox50                 ReadInbox of 50 entries at random offsets
//	GroupUpdate/members=N       one UpdateGroup (a role toggled) on a group
//	                            of N members
//	Concurrent64                64 appenders, each to its own inbox and a
//	                            peer's (a 1:1 send); reports appends/s and
//	                            p50/p99/max append latency in µs and
//	                            the process CPU time per append
//	Async/saturate              (persist.AsyncAppender only) 1:1 sends handed
//	                            over by two goroutines, as the engine's event
//	                            loops do, with up to 1024 in flight each: the
//	                            store's top rate
//	Async/rate=N                the same open loop at N appends/s: latency
//	                            from the intended send time to completion
//
// Every op allocates a few small objects in the harness itself (the
// ClientMsgID string); allocs/op includes them.
func Bench(b *testing.B, open func(b *testing.B) persist.Store) {
	for _, n := range []int{1, 2} {
		b.Run(fmt.Sprintf("Append/inboxes=%d/serial", n), func(b *testing.B) {
			benchAppend(b, open, n, false)
		})
		b.Run(fmt.Sprintf("Append/inboxes=%d/parallel", n), func(b *testing.B) {
			benchAppend(b, open, n, true)
		})
	}
	b.Run("ReadInbox50", func(b *testing.B) { benchRead(b, open) })
	b.Run("Concurrent64", func(b *testing.B) { benchConcurrent(b, open, 64) })
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("GroupUpdate/members=%d", n), func(b *testing.B) { benchGroupUpdate(b, open, n) })
	}
	probe := open(b)
	_, async := probe.(persist.AsyncAppender)
	if err := probe.Close(); err != nil {
		b.Fatalf("Close: %v", err)
	}
	if async {
		b.Run("Async/saturate", func(b *testing.B) { benchAsync(b, open, 0) })
		for _, rate := range []int{5000, 20000, 50000} {
			b.Run(fmt.Sprintf("Async/rate=%d", rate), func(b *testing.B) { benchAsync(b, open, rate) })
		}
	}
}

// benchEnv is the state shared by the goroutines of one benchmark.
type benchEnv struct {
	s      persist.Store
	body   []byte
	users  []string
	nextID atomic.Uint64
}

const benchUsers = 1024

func newBenchEnv(b *testing.B, open func(b *testing.B) persist.Store) *benchEnv {
	s := open(b)
	if s == nil {
		b.Fatal("open returned a nil store")
	}
	e := &benchEnv{s: s, body: make([]byte, BenchBodySize), users: make([]string, benchUsers)}
	for i := range e.body {
		e.body[i] = byte('a' + i%26)
	}
	for i := range e.users {
		e.users[i] = "user" + strconv.Itoa(i)
	}
	return e
}

func (e *benchEnv) close(b *testing.B) {
	if err := e.s.Close(); err != nil {
		b.Errorf("Close: %v", err)
	}
}

// append stores one new message from users[from] to n inboxes starting at
// users[from] (the sender's own inbox first, as for multi-device sync).
func (e *benchEnv) append(ctx context.Context, from, n int, inboxes []string) error {
	id := e.nextID.Add(1)
	for i := range n {
		inboxes[i] = e.users[(from+i)%len(e.users)]
	}
	_, err := e.s.Append(ctx, persist.Message{
		ID:          id,
		From:        e.users[from%len(e.users)],
		To:          inboxes[n-1],
		ClientMsgID: strconv.FormatUint(id, 10),
		Timestamp:   time.Now().UnixMilli(),
		Body:        e.body,
	}, inboxes[:n])
	return err
}

func benchAppend(b *testing.B, open func(b *testing.B) persist.Store, n int, parallel bool) {
	e := newBenchEnv(b, open)
	defer e.close(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(BenchBodySize)
	b.ResetTimer()
	cpu0, cpuOK := cpuTime()
	defer func() {
		// CPU per append, as in measured. Serially every commit holds one
		// append, so this is the store's cost per commit at low rates,
		// independent of how batches form under load.
		if cpu1, _ := cpuTime(); cpuOK && b.N > 0 {
			b.ReportMetric(float64((cpu1-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-us/op")
		}
	}()
	if !parallel {
		inboxes := make([]string, n)
		for i := 0; i < b.N; i++ {
			if err := e.append(ctx, i, n, inboxes); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	var worker atomic.Int64
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		// Each goroutine sends from its own users, so an inbox has few
		// concurrent writers (the engine's single-writer-per-inbox rule).
		w := int(worker.Add(1))
		inboxes := make([]string, n)
		for i := 0; pb.Next(); i++ {
			if err := e.append(ctx, w*7+i%7, n, inboxes); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
}

func benchRead(b *testing.B, open func(b *testing.B) persist.Store) {
	e := newBenchEnv(b, open)
	defer e.close(b)
	ctx := context.Background()
	const total, page = 1000, 50
	// Fill one inbox with concurrent appends so a durable store batches them.
	var wg sync.WaitGroup
	for w := range 10 {
		wg.Go(func() {
			inboxes := []string{""}
			for range total / 10 {
				if err := e.append(ctx, 0, 1, inboxes); err != nil {
					b.Errorf("fill %d: %v", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		after := uint64(i*37) % (total - page)
		es, err := e.s.ReadInbox(ctx, e.users[0], after, page)
		if err != nil {
			b.Fatal(err)
		}
		if len(es) != page {
			b.Fatalf("read %d entries, want %d", len(es), page)
		}
	}
}

func benchConcurrent(b *testing.B, open func(b *testing.B) persist.Store, workers int) {
	e := newBenchEnv(b, open)
	defer e.close(b)
	ctx := context.Background()
	lat := make([][]time.Duration, workers)
	var next atomic.Int64
	measured(b, func(time.Time) []time.Duration {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				inboxes := make([]string, 2)
				l := make([]time.Duration, 0, b.N/workers+1)
				for next.Add(1) <= int64(b.N) {
					t0 := time.Now()
					if err := e.append(ctx, w, 2, inboxes); err != nil {
						b.Error(err)
						break
					}
					l = append(l, time.Since(t0))
				}
				lat[w] = l
			})
		}
		wg.Wait()
		return slices.Concat(lat...)
	})
}

// measured times work, which does the b.N appends and returns the latencies
// of those that succeeded, and reports their rate, latency quantiles and
// CPU per append. work gets the start time.
func measured(b *testing.B, work func(start time.Time) []time.Duration) {
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	cpu0, cpuOK := cpuTime()
	lat := work(start)
	elapsed := time.Since(start)
	cpu1, _ := cpuTime()
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "appends/s")
	b.ReportMetric(q(0.50), "p50-us")
	b.ReportMetric(q(0.99), "p99-us")
	b.ReportMetric(q(1), "max-us")
	if cpuOK {
		// CPU per append (all goroutines, user+system): unlike ns/op it
		// barely moves when other processes compete for the cores.
		b.ReportMetric(float64((cpu1-cpu0).Nanoseconds())/1e3/float64(len(lat)), "cpu-us/op")
	}
}

// asyncOp is one in-flight append of benchAsync.
type asyncOp struct {
	persist.AppendOp
	inboxes [2]string
	start   time.Time // intended (open loop) or actual (saturate) hand-over
	lat     []time.Duration
	failed  *atomic.Int64
	free    chan *asyncOp
}

func (o *asyncOp) AppendDone(*persist.AppendOp) {
	if o.Err != nil {
		o.failed.Add(1)
	} else {
		o.lat[o.Msg.ID-1] = max(time.Since(o.start), 1) // early by < 200 µs at most
	}
	o.free <- o // never blocks: free holds every op
}

// benchAsync hands b.N 1:1 appends to an AsyncAppender from two goroutines,
// as fast as 1024 in-flight ops per goroutine allow (rate 0) or at rate per
// second in total.
func benchAsync(b *testing.B, open func(b *testing.B) persist.Store, rate int) {
	e := newBenchEnv(b, open)
	defer e.close(b)
	s := e.s.(persist.AsyncAppender)
	const submitters, window = 2, 1024
	lat := make([]time.Duration, b.N)
	var failed atomic.Int64
	var next atomic.Int64
	measured(b, func(start time.Time) []time.Duration {
		var wg sync.WaitGroup
		for w := range submitters {
			wg.Go(func() {
				free := make(chan *asyncOp, window)
				for range window {
					free <- &asyncOp{lat: lat, failed: &failed, free: free}
				}
				for {
					i := next.Add(1)
					if i > int64(b.N) {
						break
					}
					o := <-free
					from := int(i*7+int64(w)) % len(e.users)
					o.inboxes = [2]string{e.users[from], e.users[(from+1)%len(e.users)]}
					o.AppendOp = persist.AppendOp{
						Msg: persist.Message{ID: uint64(i), From: e.users[from], To: o.inboxes[1],
							ClientMsgID: strconv.FormatInt(i, 10), Timestamp: time.Now().UnixMilli(), Body: e.body},
						Inboxes: o.inboxes[:],
						Result:  persist.AppendResult{Seqs: o.Result.Seqs[:0]},
						Done:    o,
					}
					o.start = time.Now()
					if rate > 0 {
						// Sleep only for gaps of 200 µs or more: a timer
						// wake-up per op would cost the generator more
						// CPU than the store uses.
						o.start = start.Add(time.Duration(i) * time.Second / time.Duration(rate))
						if d := time.Until(o.start); d >= 200*time.Microsecond {
							time.Sleep(d)
						}
					}
					s.AppendAsync(&o.AppendOp)
				}
				for range window { // wait for this goroutine's ops
					<-free
				}
			})
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			b.ReportMetric(float64(n), "failed")
		}
		done := lat[:0]
		for _, l := range lat {
			if l > 0 {
				done = append(done, l)
			}
		}
		return done
	})
}
