package main

import (
	"bytes"
	"runtime/trace"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLongSpansFindsASyscall traces a goroutine that sleeps 30 ms in a raw
// nanosleep syscall and checks that the span is found, as a syscall, at
// least that long (the kernel sleeps at least the time asked, so a loaded
// machine only makes it longer), with its stack, and that spans shorter
// than the minimum are left out.
func TestLongSpansFindsASyscall(t *testing.T) {
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts := syscall.NsecToTimespec(int64(30 * time.Millisecond))
		for syscall.Nanosleep(&ts, &ts) != nil { // EINTR: sleep the rest
		}
	}()
	<-done
	trace.Stop()

	spans, err := LongSpans(&buf, 20*time.Millisecond, 8)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for i, s := range spans {
		if s.Len < 20*time.Millisecond {
			t.Errorf("span %d shorter than the minimum: %+v", i, s)
		}
		if i > 0 && s.Len > spans[i-1].Len {
			t.Errorf("spans not longest first at %d", i)
		}
		if s.State.String() == "Syscall" && s.Len >= 30*time.Millisecond && strings.Contains(s.Stack, "syscall.Nanosleep") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no syscall span of >= 30 ms in syscall.Nanosleep among %+v", spans)
	}
}

func TestLongSpansRejectsGarbage(t *testing.T) {
	if _, err := LongSpans(strings.NewReader("not a trace"), time.Millisecond, 4); err == nil {
		t.Fatal("a non-trace was read without error")
	}
}

func TestKeep(t *testing.T) {
	const stack = "syscall.Syscall6 < golang.org/x/sys/unix.EpollWait < github.com/panjf2000/gnet/v2.(*eventloop).orbit"
	for _, tc := range []struct {
		match, exclude string
		want           bool
	}{
		{"", "", true},
		{"orbit", "", true},
		{"pebblestore.", "", false},
		{"", "os/signal.loop,(*eventloop).orbit", false},
		{"EpollWait", "os/signal.loop", true},
	} {
		if got := keep(stack, tc.match, tc.exclude); got != tc.want {
			t.Errorf("keep(match %q, exclude %q) = %v", tc.match, tc.exclude, got)
		}
	}
}
