package mongostore

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
)

// slowLogEvery is the least time between two slow-command lines about the
// same command and collection, so that an overloaded server does not turn
// into a flood of log lines.
const slowLogEvery = time.Second

// slowLog logs the commands that took at least threshold, with their
// collection and the shape of their filter (field names and operators, no
// values): the evidence of which query a slow server spends its time on.
// It is fed by the driver's command monitor and is safe for concurrent
// use; it keeps one small record per command in flight.
type slowLog struct {
	threshold time.Duration
	log       *slog.Logger

	mu       sync.Mutex
	inFlight map[int64]string     // request id -> "command collection filter-shape"
	last     map[string]time.Time // "command collection" -> last line logged
}

func newSlowLog(threshold time.Duration, log *slog.Logger) *slowLog {
	return &slowLog{threshold: threshold, log: log, inFlight: map[int64]string{}, last: map[string]time.Time{}}
}

func (l *slowLog) started(e *event.CommandStartedEvent) {
	what := e.CommandName
	if coll, ok := e.Command.Lookup(e.CommandName).StringValueOK(); ok {
		what += " " + coll
	}
	if f, ok := e.Command.Lookup("filter").DocumentOK(); ok {
		what += " " + filterShape(f)
	}
	l.mu.Lock()
	l.inFlight[e.RequestID] = what
	l.mu.Unlock()
}

func (l *slowLog) finished(id int64, took time.Duration, failure string) {
	l.mu.Lock()
	what, ok := l.inFlight[id]
	delete(l.inFlight, id)
	if !ok || took < l.threshold {
		l.mu.Unlock()
		return
	}
	key, _, _ := strings.Cut(what, " {") // the command and collection
	now := time.Now()
	if now.Sub(l.last[key]) < slowLogEvery {
		l.mu.Unlock()
		return
	}
	l.last[key] = now
	l.mu.Unlock()
	args := []any{"command", what, "ms", took.Milliseconds()}
	if failure != "" {
		args = append(args, "failure", failure)
	}
	l.log.Log(context.Background(), slog.LevelWarn, "mongostore: slow command", args...)
}

// monitor returns the driver's command monitor: every command is counted
// (count), and timed when l is not nil.
func (l *slowLog) monitor(count func(name string)) *event.CommandMonitor {
	m := &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) { count(e.CommandName) }}
	if l == nil {
		return m
	}
	m.Started = func(_ context.Context, e *event.CommandStartedEvent) {
		count(e.CommandName)
		l.started(e)
	}
	m.Succeeded = func(_ context.Context, e *event.CommandSucceededEvent) { l.finished(e.RequestID, e.Duration, "") }
	m.Failed = func(_ context.Context, e *event.CommandFailedEvent) {
		l.finished(e.RequestID, e.Duration, e.Failure.Error())
	}
	return m
}

// filterShape renders a filter's field names and operators without its
// values: {user: {$in: [..20..]}, msg: 5} is "{user:$in[20] msg:eq}".
func filterShape(f bson.Raw) string {
	elems, err := f.Elements()
	if err != nil {
		return "{?}"
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, e := range elems {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(e.Key())
		b.WriteByte(':')
		v := e.Value()
		ops, ok := v.DocumentOK()
		if !ok {
			b.WriteString("eq")
			continue
		}
		opElems, _ := ops.Elements()
		for j, op := range opElems {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(op.Key())
			if arr, ok := op.Value().ArrayOK(); ok {
				vals, _ := arr.Values()
				fmt.Fprintf(&b, "[%d]", len(vals))
			}
		}
	}
	b.WriteByte('}')
	return b.String()
}
