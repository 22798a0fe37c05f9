package pebblestore_test

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
)

// freeOp is an AppendOp that returns itself to a free list when done,
// counting failures.
type freeOp struct {
	persist.AppendOp
	inboxes [2]string
	free    chan *freeOp
	failed  *atomic.Int64
}

func (o *freeOp) AppendDone(*persist.AppendOp) {
	if o.Err != nil {
		o.failed.Add(1)
	}
	o.free <- o
}

// BenchmarkFirstUse: 1:1 appends between 100,000 users in pairs that
// recur only every 100,000 messages, as the store-scale test writes them:
// most appends find their inboxes and conversations for the first time
// (NoSync: the store's CPU).
func BenchmarkFirstUse(b *testing.B) {
	s := openAt(b, b.TempDir(), pebblestore.Options{NoSync: true})
	defer s.Close()
	const users, window = 100_000, 4096
	free := make(chan *freeOp, window)
	var failed atomic.Int64
	for range window {
		free <- &freeOp{free: free, failed: &failed}
	}
	body := make([]byte, 100)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		o := <-free
		from := (i * 7919) % users
		o.inboxes = [2]string{"u" + strconv.Itoa(from), "u" + strconv.Itoa((from+1)%users)}
		o.AppendOp = persist.AppendOp{Msg: persist.Message{ID: uint64(i + 1), From: o.inboxes[0], To: o.inboxes[1],
			ClientMsgID: strconv.Itoa(i), Timestamp: time.Now().UnixMilli(), Body: body},
			Inboxes: o.inboxes[:], Result: persist.AppendResult{Seqs: o.Result.Seqs[:0]}, Done: o}
		s.AppendAsync(&o.AppendOp)
	}
	for range window {
		<-free
	}
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d appends failed", n)
	}
}
