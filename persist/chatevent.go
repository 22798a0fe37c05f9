package persist

import (
	"context"
	"fmt"
)

// EventPreparer is a ChatStore on storage shared by a cluster, whose
// recall and delete events the cluster appends through the owners of the
// inboxes concerned (single writer per inbox), as it appends messages.
// Recall and Delete of such a store append the events themselves and are
// for a store that is the only writer of every inbox.
type EventPreparer interface {
	ChatStore

	// PrepareEvent checks req as Recall (kind EventRecall) or Delete
	// (kind EventDelete) does, with the same errors, and applies the
	// target's side: the message is marked recalled (its body is no
	// longer served) or the entry is hidden from req.User. It returns the
	// event message to append, with a ClientMsgID fixed per (kind, target,
	// user) so that appending it again finds the first event, and the
	// inboxes that get it: req.User's first, then (recall) every other
	// holder of the target. Duplicate reports that the target was
	// recalled (hidden) already; the event is then appended again all the
	// same, which completes an earlier attempt that failed halfway and
	// appends nothing otherwise.
	PrepareEvent(ctx context.Context, kind uint32, req EventRequest) (PreparedEvent, error)
}

// PreparedEvent is what EventPreparer.PrepareEvent returns.
type PreparedEvent struct {
	Event     Message
	Inboxes   []string
	Duplicate bool
}

// Result is the EventResult of the prepared event once res, the result of
// appending p.Event to p.Inboxes, is known: a repeated Delete reports no
// inboxes. An append that found a message other than an event about the
// same target under the event's ClientMsgID is ErrInvalid.
func (p *PreparedEvent) Result(res AppendResult) (EventResult, error) {
	if res.Msg.Event != p.Event.Event || res.Msg.Target != p.Event.Target || len(res.Seqs) != len(p.Inboxes) {
		return EventResult{}, fmt.Errorf("%w: the event's client message id names message %d", ErrInvalid, res.Msg.ID)
	}
	if p.Duplicate && p.Event.Event == EventDelete {
		return EventResult{Duplicate: true}, nil
	}
	return EventResult{Event: res.Msg, Inboxes: p.Inboxes, Seqs: res.Seqs, Duplicate: p.Duplicate}, nil
}
