package childproc

import (
	"syscall"
	"testing"
)

// TestAttr: on Linux every child gets SIGKILL when its parent dies, and its
// own process group only when asked.
func TestAttr(t *testing.T) {
	for _, group := range []bool{false, true} {
		a := Attr(group)
		if a.Pdeathsig != syscall.SIGKILL || a.Setpgid != group {
			t.Errorf("Attr(%v) = %+v; want Pdeathsig SIGKILL, Setpgid %v", group, a, group)
		}
	}
	if a, b := Attr(false), Attr(false); a == b {
		t.Error("Attr returned one shared value: callers that set Credential would change each other's")
	}
}
