package client

import (
	"errors"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

// errStopped ends the delivery goroutine's work when the Client stops.
var errStopped = errors.New("client: stopped")

// deliverer is the state of the delivery goroutine: it alone touches the
// orderer, writes to Messages, issues SYNC and sends PUSH_ACK.
type deliverer struct {
	c *Client
	o *orderer

	acked uint64    // the server's cursor as far as we know (LOGIN_OK.cursor, then our acks)
	ackAt time.Time // when a pending ack is due; zero: none pending

	syncWanted bool      // a sync must run (reconnect, SyncNow, failure)
	syncFails  int       // consecutive failed syncs
	syncAt     time.Time // no sync before this (backoff after failures)
	waiters    []chan error
	out        []*pb.Message
}

// deliverLoop runs the delivery goroutine. cursor is the server's cursor
// for this device at the first login.
func (c *Client) deliverLoop(o *orderer, cursor uint64) {
	defer c.workers.Done()
	defer close(c.msgs)
	d := &deliverer{c: c, o: o, acked: cursor}
	d.run()
}

func (d *deliverer) run() {
	c := d.c
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if c.lost.Swap(false) {
			d.o.noteDropped()
		}
		if err := d.work(time.Now()); err != nil {
			d.finish()
			return
		}
		if next := d.nextWake(); next.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(max(0, time.Until(next)))
		}
		select {
		case <-c.ctx.Done():
			d.finish()
			return
		case msgs := <-c.inbound:
			if !d.deliver(d.o.push(time.Now(), msgs, d.out[:0])) {
				d.finish()
				return
			}
		case cursor := <-c.connected:
			d.acked = cursor
			d.syncWanted, d.syncFails, d.syncAt = true, 0, time.Time{}
			if c.last.Load() > cursor {
				d.ackAt = time.Now() // the server lost (or never got) our last ack
			}
		case w := <-c.syncReq:
			d.waiters = append(d.waiters, w)
			d.syncWanted, d.syncAt = true, time.Time{}
		case w := <-c.ackReq:
			d.flushAck()
			close(w)
		case <-c.wake:
		case <-timer.C:
		}
	}
}

// work runs a sync when one is due and flushes a due ack. It returns
// errStopped when the Client stopped.
func (d *deliverer) work(now time.Time) error {
	gapDue, _ := d.o.syncDue(now)
	if (d.syncWanted || gapDue) && !now.Before(d.syncAt) {
		err := d.sync()
		switch {
		case errors.Is(err, errStopped):
			return err
		case err != nil:
			d.syncFails++
			d.syncWanted = true
			d.syncAt = time.Now().Add(max(d.c.cfg.GapGrace, d.c.bo.delay(d.syncFails)))
			if !errors.Is(err, errNotConnected) {
				d.c.log.Warn("sync failed", "err", err, "failures", d.syncFails)
				d.answer(err)
			}
		default:
			d.syncWanted, d.syncFails, d.syncAt = false, 0, time.Time{}
			d.answer(nil)
		}
	}
	if !d.ackAt.IsZero() && !time.Now().Before(d.ackAt) {
		d.flushAck()
	}
	return nil
}

// nextWake is when work has something to do next; zero for nothing.
func (d *deliverer) nextWake() time.Time {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	consider(d.ackAt)
	if d.syncWanted {
		consider(later(d.syncAt, time.Now()))
	} else if _, at := d.o.syncDue(time.Now()); !at.IsZero() {
		consider(later(at, d.syncAt))
	}
	return next
}

func later(a, b time.Time) time.Time {
	if a.Before(b) {
		return b
	}
	return a
}

// sync pages through the inbox from the last delivered seq until has_more
// is false, delivering through the orderer.
func (d *deliverer) sync() error {
	c := d.c
	for {
		after := d.o.last
		resp, err := c.do(c.ctx, request{
			cmd: codec.CmdSync, want: codec.CmdSyncOK,
			body:    &pb.SyncRequest{AfterSeq: after, Limit: c.cfg.SyncLimit},
			newResp: func() proto.Message { return new(pb.SyncOK) },
			mode:    retryNone,
		})
		if c.ctx.Err() != nil {
			return errStopped
		}
		if err != nil {
			return err
		}
		page := resp.(*pb.SyncOK)
		out := d.o.removed(time.Now(), page.GetFirstSeq(), d.out[:0])
		if !d.deliver(d.o.synced(time.Now(), after, page.GetMessages(), out)) {
			return errStopped
		}
		if !page.GetHasMore() || d.o.last == after {
			break
		}
	}
	d.o.syncDone(time.Now())
	return nil
}

// deliver hands msgs to the application in order, blocking while Messages
// is full, and schedules the PUSH_ACK. It returns false if the Client
// stopped.
func (d *deliverer) deliver(msgs []*pb.Message) bool {
	c := d.c
	for i, m := range msgs {
		select {
		case c.msgs <- m:
			c.last.Store(m.GetSeq())
		case <-c.ctx.Done():
			return false
		}
		msgs[i] = nil // the slice is scratch: do not retain the message
		if c.last.Load()-d.acked >= uint64(c.cfg.AckEvery) {
			d.flushAck()
		} else if d.ackAt.IsZero() {
			d.ackAt = time.Now().Add(c.cfg.AckInterval)
		} else if !time.Now().Before(d.ackAt) {
			d.flushAck() // a slow reader must not starve the timer-driven ack
		}
	}
	d.out = msgs[:0]
	return true
}

// flushAck sends PUSH_ACK{up_to_seq: last delivered} if the server's
// cursor is behind. Failures are dropped: the next connection's cursor
// tells what to resend.
func (d *deliverer) flushAck() {
	d.ackAt = time.Time{}
	up := d.c.last.Load()
	if up <= d.acked {
		return
	}
	cn := d.c.liveConn()
	if cn == nil {
		return
	}
	if err := cn.write(codec.CmdPushAck, 0, 0, &pb.PushAck{UpToSeq: up}); err != nil {
		return
	}
	d.acked = up
}

// answer replies to the SyncNow callers waiting for this sync.
func (d *deliverer) answer(err error) {
	for _, w := range d.waiters {
		w <- err // cap 1, written once
	}
	d.waiters = d.waiters[:0]
}

// finish runs when the Client stops: a last ack, then the waiters fail.
func (d *deliverer) finish() {
	d.flushAck()
	d.answer(ErrClosed)
}
