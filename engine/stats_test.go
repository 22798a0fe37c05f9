package engine

import (
	"testing"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/procstat"
)

// TestStatsCountSyscalls: /admin/stats carries the process's read and
// write syscalls, and a client's traffic makes both grow.
func TestStatsCountSyscalls(t *testing.T) {
	if _, _, ok := procstat.Syscalls(); !ok {
		t.Skip("this kernel has no /proc/self/io: the fields stay absent")
	}
	s := startServer(t, nil)
	before := s.Stats()
	c := dial(t, s, codec.JSON)
	c.login("alice", "d")
	after := s.Stats()
	if after.ReadSyscalls <= before.ReadSyscalls || after.WriteSyscalls <= before.WriteSyscalls {
		t.Fatalf("syscalls across a login: reads %d -> %d, writes %d -> %d; want both to grow",
			before.ReadSyscalls, after.ReadSyscalls, before.WriteSyscalls, after.WriteSyscalls)
	}
}
