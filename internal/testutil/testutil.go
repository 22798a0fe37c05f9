// Package testutil holds the helpers that the project's tests share: one
// way to wait for a condition (no sleeps as synchronisation). It is for
// tests and test suites only; production code never imports it.
package testutil

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"
)

// Eventually calls cond until it returns nil, every few milliseconds, and
// fails the test with what and cond's last error if that does not happen
// within timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Until is Eventually for a condition that has no error to report.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	Eventually(t, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

var errNotYet = errors.New("condition still false")

// Buffer is a bytes.Buffer that one goroutine may write (a command's
// output) while another reads it (a test polling for a line).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns a copy of what was written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
