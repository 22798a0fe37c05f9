// Package childproc gives the process attributes of the helper processes
// that tests, benchmarks and dev tools start (databases, nodes, load
// generators): none of them may outlive the process that started it, even
// when that process is killed.
package childproc

import "syscall"

// Attr returns the attributes for a child process: it gets SIGKILL when
// its parent dies where the OS supports that (Linux's parent-death signal;
// elsewhere the parent's own shutdown has to stop it), and runs in a
// process group of its own when group is true, so a terminal's Ctrl-C
// reaches only the parent, which then stops its children in order.
//
// Linux ties the parent-death signal to the thread that forked, not the
// process. Go ends a thread while the process lives only when a goroutine
// exits locked to it (runtime.LockOSThread), so do not start children from
// such a goroutine.
func Attr(group bool) *syscall.SysProcAttr { return attr(group) }
