// Command tracespans lists the longest spans of a Go execution trace in
// which a goroutine was running, runnable (waiting for a P) or in a
// syscall: the stalls an event loop or a store committer suffered, with
// the goroutine's last stack. It is how the benchmark notes find what
// holds up a node's tail latency (docs/BENCHMARKS.md):
//
//	imbench p2p ... --profile DIR --trace 5s
//	go run ./tools/tracespans -min 2ms DIR/p2p-trace.out
//
// A long running span is code that did not yield (a rehash, a sort); a
// long runnable span a goroutine that found no free P; a long syscall
// span a blocking call or a thread the kernel did not run. Time a
// goroutine spent blocked on a channel, lock or timer is not listed.
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

// Span is a stretch of one goroutine in one state.
type Span struct {
	G     trace.GoID
	State trace.GoState
	Start time.Duration // since the trace's first event
	Len   time.Duration
	// Stack is innermost first: for a running span where it stopped
	// running (the code that ran), for the others where it entered the
	// state (the syscall; where it was preempted, or where it had parked
	// before it was woken).
	Stack string
}

func main() {
	minLen := flag.Duration("min", 2*time.Millisecond, "list spans at least this long")
	n := flag.Int("n", 40, "list at most this many spans, longest first")
	frames := flag.Int("frames", 6, "stack frames per span")
	match := flag.String("match", "", "list only spans whose stack contains this text (e.g. engine. or pebblestore.)")
	exclude := flag.String("exclude", "os/signal.loop,(*eventloop).rotate", "comma-separated texts: leave out spans whose stack contains one (default: the signal handler's and the listener's idle waits)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: tracespans [-min 2ms] [-n 40] [-frames 6] [-match TEXT] [-exclude A,B] TRACE\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "tracespans:", err)
		os.Exit(1)
	}
	defer f.Close()
	spans, err := LongSpans(f, *minLen, *frames)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tracespans:", err)
		os.Exit(1)
	}
	listed := 0
	for _, s := range spans {
		if listed == *n {
			break
		}
		if !keep(s.Stack, *match, *exclude) {
			continue
		}
		listed++
		fmt.Printf("%10.1fms  g%-7d %-9s %8.2fms  %s\n", ms(s.Start), s.G, s.State, ms(s.Len), s.Stack)
	}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// keep reports whether a span with this stack is listed: it contains
// match (when set) and none of the comma-separated exclude texts.
func keep(stack, match, exclude string) bool {
	if match != "" && !strings.Contains(stack, match) {
		return false
	}
	for _, x := range strings.Split(exclude, ",") {
		if x != "" && strings.Contains(stack, x) {
			return false
		}
	}
	return true
}

// LongSpans reads a trace and returns the spans of at least minLen in
// which a goroutine was running, runnable or in a syscall, longest first.
func LongSpans(r io.Reader, minLen time.Duration, frames int) ([]Span, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("read trace: %w", err)
	}
	type goState struct {
		since trace.Time
		stack string
	}
	gs := map[trace.GoID]*goState{}
	var spans []Span
	var t0 trace.Time
	for {
		ev, err := tr.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read trace: %w", err)
		}
		if t0 == 0 {
			t0 = ev.Time()
		}
		if ev.Kind() != trace.EventStateTransition {
			continue
		}
		st := ev.StateTransition()
		if st.Resource.Kind != trace.ResourceGoroutine {
			continue
		}
		id := st.Resource.Goroutine()
		from, _ := st.Goroutine()
		g := gs[id]
		if g == nil {
			g = &goState{}
			gs[id] = g
		}
		// The transition's stack is the goroutine's own where the trace
		// has it (a goroutine woken by another: where it was parked); the
		// event's stack is its emitter's (the waker's). A transition into
		// running has neither; one out of running (blocked, preempted)
		// shows the code that ran, so a running span takes its stack from
		// its end, the others from their start.
		now := stackString(st.Stack, frames)
		if now == "" {
			now = stackString(ev.Stack(), frames)
		}
		if g.since != 0 && (from == trace.GoRunning || from == trace.GoRunnable || from == trace.GoSyscall) {
			if d := ev.Time().Sub(g.since); d >= minLen {
				stack := g.stack
				if from == trace.GoRunning && now != "" {
					stack = now
				}
				spans = append(spans, Span{G: id, State: from, Start: g.since.Sub(t0), Len: d, Stack: stack})
			}
		}
		g.since = ev.Time()
		// A goroutine woken from waiting keeps the stack it parked with:
		// the wake-up event carries only its waker's.
		if now != "" && from != trace.GoWaiting {
			g.stack = now
		}
	}
	slices.SortStableFunc(spans, func(a, b Span) int { return cmp.Compare(b.Len, a.Len) })
	return spans, nil
}

func stackString(s trace.Stack, frames int) string {
	var fs []string
	for f := range s.Frames() {
		if len(fs) == frames {
			break
		}
		fs = append(fs, f.Func)
	}
	return strings.Join(fs, " < ")
}
