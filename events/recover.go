package events

import (
	"cmp"
	"container/heap"
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/persist"
)

// replayChunk bounds the messages Recover holds in memory to order them.
const replayChunk = 1 << 18

// Checkpoint reads the node's checkpoint: the time before which every
// event the node queued has been appended to the stream (or dropped). ok
// is false when the node has none yet. It retries until ctx ends while
// Redis cannot be reached.
func (p *Publisher) Checkpoint(ctx context.Context) (t time.Time, ok bool, err error) {
	key := CheckpointKey(p.cfg.Stream, p.cfg.NodeID)
	err = p.retry(ctx, "read the checkpoint", func(c rueidis.Client, ctx context.Context) error {
		ms, err := c.Do(ctx, c.B().Get().Key(key).Build()).AsInt64()
		if rueidis.IsRedisNil(err) {
			return nil
		}
		if err != nil {
			return err
		}
		t, ok = time.UnixMilli(ms), true
		return nil
	})
	return t, ok, err
}

// retry runs fn until it succeeds or ctx ends, with backoff.
func (p *Publisher) retry(ctx context.Context, what string, fn func(c rueidis.Client, ctx context.Context) error) error {
	wait := retryMin
	for attempt := 0; ; attempt++ {
		c, err := p.redis()
		if err == nil {
			octx, cancel := context.WithTimeout(ctx, p.cfg.OpTimeout)
			err = fn(c, octx)
			cancel()
		}
		if err == nil {
			return nil
		}
		if attempt == 0 {
			p.log.Warn("events: cannot "+what+"; retrying", "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("events: %s: %w (last error: %w)", what, ctx.Err(), err)
		}
		wait = min(2*wait, retryMax)
	}
}

// Recover publishes again what store holds from ReplayMargin before the
// node's checkpoint on: the messages acknowledged after the last batch that
// reached Redis, whose events a crash may have taken with the queue. Events
// already in the stream are published a second time (marked "replayed");
// consumers drop the seqs they have seen. A node without a checkpoint (its
// first start with the stream) has nothing to recover and records one now,
// so that its first crash is covered too.
//
// Call it after Start and before the node takes traffic: the replayed
// events then precede every new one, and each inbox's seqs come in order
// (Recover orders the replayed messages by their seqs). It waits for room
// in the queue and returns the number of events queued; it fails when ctx
// ends first (Redis unreachable: the window before the checkpoint is then
// not covered, and the error says so).
func (p *Publisher) Recover(ctx context.Context, store persist.Replayer) (int, error) {
	ckpt, ok, err := p.Checkpoint(ctx)
	if err != nil {
		return 0, fmt.Errorf("events: recover: %w; messages acknowledged shortly before the last stop may have no event", err)
	}
	if !ok {
		now := p.now()
		err := p.retry(ctx, "record the first checkpoint", func(c rueidis.Client, ctx context.Context) error {
			key := CheckpointKey(p.cfg.Stream, p.cfg.NodeID)
			err := c.Do(ctx, c.B().Set().Key(key).Value(strconv.FormatInt(now, 10)).Nx().Build()).Error()
			if rueidis.IsRedisNil(err) {
				err = nil // set meanwhile: keep it
			}
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("events: recover: %w", err)
		}
		return 0, nil
	}
	from := engine.MessageIDAt(ckpt.Add(-p.cfg.ReplayMargin))
	enq := ckpt.UnixMilli() // replayed events keep the checkpoint where it is
	var chunk []*Event
	n := 0
	flush := func() error {
		for _, e := range orderReplay(chunk) {
			select {
			case p.queue <- e:
				n++
				p.m.replayed.Inc()
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		chunk = chunk[:0]
		return nil
	}
	now := p.now()
	err = store.ReplayFrom(ctx, from, func(m *persist.Message, inboxes []string, seqs []uint64) error {
		e := messageEvent(p.cfg.NodeID, now, m, inboxes, seqs, false)
		e.Replayed, e.enq = true, enq
		chunk = append(chunk, e)
		if len(chunk) == replayChunk {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return n, fmt.Errorf("events: recover from %s: %w", ckpt.Format(time.RFC3339Nano), err)
	}
	if n > 0 {
		p.log.Info("events: published again the messages stored around the last stop", "events", n,
			"checkpoint", ckpt.Format(time.RFC3339Nano), "margin", p.cfg.ReplayMargin)
	}
	return n, nil
}

// orderReplay orders message events (given in message-ID order) so that
// each inbox's seqs come in increasing order: IDs are taken when a message
// is accepted, seqs when it is stored, so two messages accepted close
// together can be stored in the other order. It is a topological sort on
// "precedes in some inbox", breaking ties by ID.
func orderReplay(evs []*Event) []*Event {
	if len(evs) < 2 {
		return evs
	}
	type pos struct {
		seq uint64
		i   int
	}
	byInbox := map[string][]pos{}
	for i, e := range evs {
		for _, in := range e.Inboxes {
			byInbox[in.User] = append(byInbox[in.User], pos{in.Seq, i})
		}
	}
	indeg := make([]int, len(evs))
	next := make([][]int, len(evs))
	for _, ps := range byInbox {
		slices.SortFunc(ps, func(a, b pos) int { return cmp.Compare(a.seq, b.seq) })
		for k := 1; k < len(ps); k++ {
			if a, b := ps[k-1].i, ps[k].i; a != b {
				next[a] = append(next[a], b)
				indeg[b]++
			}
		}
	}
	ready := &intHeap{}
	for i, d := range indeg {
		if d == 0 {
			*ready = append(*ready, i)
		}
	}
	heap.Init(ready)
	out := make([]*Event, 0, len(evs))
	emitted := make([]bool, len(evs))
	for ready.Len() > 0 {
		i := heap.Pop(ready).(int)
		out, emitted[i] = append(out, evs[i]), true
		for _, j := range next[i] {
			if indeg[j]--; indeg[j] == 0 {
				heap.Push(ready, j)
			}
		}
	}
	if len(out) != len(evs) {
		// A cycle cannot happen (seqs follow one commit order); keep every
		// event all the same, the rest in ID order.
		for i, e := range evs {
			if !emitted[i] {
				out = append(out, e)
			}
		}
	}
	return out
}

type intHeap []int

func (h intHeap) Len() int           { return len(h) }
func (h intHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h intHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *intHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *intHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
