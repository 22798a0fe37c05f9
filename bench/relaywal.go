package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"sync/atomic"

	"github.com/imgn/imgn/codec"
)

// The durable relay (imbench --baseline-durable): the relay with a
// write-ahead log in front of every SEND and GROUP_SEND. It is the floor of
// any server that makes a message durable before it acknowledges or
// forwards it, on the same disk and the same two cores: one log file, group
// commit (every message that arrives while a sync runs waits for the next
// one, so a message waits for at most two syncs, as in the embedded store),
// and nothing else: no index, no seqs on disk, no compaction.
//
// The event loops append each message's request body to the pending batch
// and go on; one goroutine, the syncer, takes the batch, writes it with one
// pwrite, syncs it with one fdatasync, and only then queues the PUSHes and
// SEND_ACKs and wakes the destination loops (once per connection per
// batch, as the plain relay does). The log file is written full of zeros at
// start and then overwritten in a circle, so a sync never has to change the
// file's size (the embedded store's log reuses its files for the same
// reason). Records carry a length and a CRC-32C, as a real log's would;
// nothing ever reads them back.

// relayWALSize is the log file's length. It is at least twice
// relayWALMaxPending, so one batch always fits.
const relayWALSize = 64 << 20

// relayWALMaxPending bounds the bytes waiting for a sync. A message that
// would go past it (the disk has stalled for long at a high rate) is
// dropped: neither stored, acknowledged nor forwarded. The generator
// counts it as not delivered.
const relayWALMaxPending = 16 << 20

// relayWALHeader is a record's header: body length and CRC-32C, 4 bytes each.
const relayWALHeader = 8

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type relayWAL struct {
	r    *Relay
	f    *os.File
	off  int64 // where the next batch is written (the syncer's)
	kick chan struct{}
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	cur   *walBatch // filled by the loops (under mu)
	spare *walBatch // the syncer's, swapped with cur

	syncs      atomic.Uint64         // batches synced (read by tests)
	beforeSync func()                // Relay.walBeforeSync
	err        atomic.Pointer[error] // the first write or sync error: the syncer stops
}

// walBatch is the messages of one group commit: their records, back to
// back, and what to deliver once they are durable.
type walBatch struct {
	buf []byte
	ops []walOp
}

// walOp is one logged request: its sender, command, request seq, the
// message id the relay gave it, and where its body sits in walBatch.buf.
type walOp struct {
	c      *rconn
	cmd    codec.Command
	seq    uint32
	id     uint64
	off, n int
}

// openRelayWAL creates the log at path, writes it full of zeros and syncs
// it, and starts the syncer.
func openRelayWAL(r *Relay, path string) (*relayWAL, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("bench: relay log: %w", err)
	}
	zeros := make([]byte, 1<<20)
	for off := 0; off < relayWALSize; off += len(zeros) {
		if _, err := f.Write(zeros); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("bench: relay log: fill %s: %w", path, err)
		}
	}
	if err := syncData(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("bench: relay log: sync %s: %w", path, err)
	}
	w := &relayWAL{r: r, f: f, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		cur: &walBatch{}, spare: &walBatch{}, beforeSync: r.walBeforeSync}
	go w.run()
	return w, nil
}

// add logs the request body of a SEND or GROUP_SEND of c; the syncer
// answers and forwards it once the log is synced. body is copied. Event
// loop only (any goroutine would do: it takes mu).
func (w *relayWAL) add(c *rconn, cmd codec.Command, seq uint32, id uint64, body []byte) {
	w.mu.Lock()
	b := w.cur
	if len(b.buf)+relayWALHeader+len(body) > relayWALMaxPending {
		w.mu.Unlock()
		return
	}
	b.buf = binary.LittleEndian.AppendUint32(b.buf, uint32(len(body)))
	b.buf = binary.LittleEndian.AppendUint32(b.buf, crc32.Checksum(body, castagnoli))
	b.ops = append(b.ops, walOp{c: c, cmd: cmd, seq: seq, id: id, off: len(b.buf), n: len(body)})
	b.buf = append(b.buf, body...)
	first := len(b.ops) == 1
	w.mu.Unlock()
	if first {
		select {
		case w.kick <- struct{}{}:
		default: // a kick is pending: the syncer will look
		}
	}
}

// run is the syncer: it writes and syncs each batch, then delivers it,
// until close. Batches are taken whole, so everything that arrived during
// one sync goes into the next.
func (w *relayWAL) run() {
	defer close(w.done)
	for {
		select {
		case <-w.kick:
		case <-w.stop:
			return
		}
		for {
			w.mu.Lock()
			b := w.cur
			w.cur, w.spare = w.spare, b
			w.mu.Unlock()
			if len(b.ops) == 0 {
				break
			}
			if err := w.persist(b.buf); err != nil {
				w.err.CompareAndSwap(nil, &err)
				return
			}
			w.deliver(b)
			clear(b.ops) // drop the connections for the GC
			b.buf, b.ops = b.buf[:0], b.ops[:0]
		}
	}
}

// persist writes buf at the log's current offset (from the start when it
// would pass the end) and syncs it.
func (w *relayWAL) persist(buf []byte) error {
	if w.off+int64(len(buf)) > relayWALSize {
		w.off = 0
	}
	if _, err := w.f.WriteAt(buf, w.off); err != nil {
		return fmt.Errorf("bench: relay log: write: %w", err)
	}
	if w.beforeSync != nil {
		w.beforeSync()
	}
	if err := syncData(w.f); err != nil {
		return fmt.Errorf("bench: relay log: sync: %w", err)
	}
	w.off += int64(len(buf))
	w.syncs.Add(1)
	return nil
}

// deliver queues the PUSHes and SEND_ACKs of a synced batch, in the order
// its messages arrived, and wakes each destination connection's loop once.
func (w *relayWAL) deliver(b *walBatch) {
	for i := range b.ops {
		op := &b.ops[i]
		w.r.deliver(op.c, nil, op.cmd, op.seq, op.id, b.buf[op.off:op.off+op.n])
	}
}

// close stops the syncer (what is pending is dropped: the relay is
// stopping) and closes the file. It returns the syncer's error, if any.
func (w *relayWAL) close() error {
	close(w.stop)
	<-w.done
	err := w.f.Close()
	if p := w.err.Load(); p != nil {
		err = errors.Join(*p, err)
	}
	return err
}
