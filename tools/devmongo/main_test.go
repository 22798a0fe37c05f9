package main

import (
	"strings"
	"testing"
)

// TestRunRejectsBadFlags: configuration errors are reported, never a panic
// and never a server on a default address.
func TestRunRejectsBadFlags(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{}, "--dir is required"},
		{[]string{"--dir", dir, "--sync", "fast"}, "--sync"},
		{[]string{"--dir", dir, "--log-level", "loud"}, "--log-level"},
		{[]string{"--dir", dir, "extra"}, "unexpected arguments"},
		{[]string{"--dir", dir, "--no-such-flag"}, "no-such-flag"},
		{[]string{"--dir", dir, "--listen", "127.0.0.1:-1"}, "listen"},
	}
	for _, tc := range cases {
		err := run(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
}
