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
		{[]string{"--dir", dir, "--backend", "mysql"}, "--backend"},
		{[]string{"--dir", dir, "--pg-pool", "0"}, "--pg-pool"},
	}
	for _, tc := range cases {
		err := run(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
}

// TestDirLocked: a second devmongo on the same data directory fails at
// once, naming the holder.
func TestDirLocked(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := lockDir(dir); err == nil || !strings.Contains(err.Error(), "in use by another devmongo") {
		t.Fatalf("second lock: %v, want in use", err)
	}
	err = run([]string{"--dir", dir, "--listen", "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "in use by another devmongo") {
		t.Fatalf("run on a locked directory: %v", err)
	}
}
