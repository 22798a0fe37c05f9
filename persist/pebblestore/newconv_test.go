package pebblestore_test

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
)

// BenchmarkFirstUse: 1:1 appends between the users of the store-scale test
// (scaleInboxes: 100,000 users in pairs that recur only every 100,000
// messages), so most appends find their inboxes and conversations for the
// first time (NoSync: the store's CPU).
func BenchmarkFirstUse(b *testing.B) {
	s := openAt(b, b.TempDir(), pebblestore.Options{NoSync: true})
	defer s.Close()
	const window = 4096
	free := make(chan *scaleOp, window)
	var failed atomic.Int64
	for range window {
		free <- &scaleOp{free: free, failed: &failed}
	}
	body := make([]byte, 100)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		o := <-free
		in := scaleInboxes(i, &o.inboxes)
		o.AppendOp = persist.AppendOp{Msg: persist.Message{ID: uint64(i + 1), From: in[0], To: in[1],
			ClientMsgID: strconv.Itoa(i), Timestamp: time.Now().UnixMilli(), Body: body},
			Inboxes: in, Result: persist.AppendResult{Seqs: o.Result.Seqs[:0]}, Done: o}
		s.AppendAsync(&o.AppendOp)
	}
	for range window {
		<-free
	}
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d appends failed", n)
	}
}
