// Package nodestats is the JSON of a node's GET /admin/stats: the engine
// fills it, and the tools that read it (imbench, imcheck, the cluster kit)
// decode it without linking the engine.
package nodestats

import (
	"runtime"

	"github.com/imgn/imgn/internal/procstat"
	"github.com/imgn/imgn/persist"
)

// Stats is a snapshot of a node for the admin API and benchmarks.
type Stats struct {
	NodeID      string `json:"node_id"`
	Connections int    `json:"connections"`
	Sessions    int    `json:"sessions"`
	Users       int    `json:"users"`
	// Process memory: resident set, Go heap in use, and everything the Go
	// runtime holds from the OS (heap, stacks, runtime structures).
	RSSBytes   uint64  `json:"rss_bytes"`
	HeapBytes  uint64  `json:"heap_bytes"`
	GoSysBytes uint64  `json:"go_sys_bytes"`
	Goroutines int     `json:"goroutines"`
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUWaitSeconds is how long the process's threads were runnable but
	// waiting for a CPU (Linux schedstat; absent where the kernel keeps
	// none). Its growth per CPUSeconds says how long the threads waited to
	// run per second they ran: about 0 on an idle host, above 1 when every
	// CPU-second of work waited more than a second, whether for busy CPUs
	// or, on a VM, for the hypervisor to run an idle vCPU.
	CPUWaitSeconds float64 `json:"cpu_wait_seconds,omitempty"`
	// ReadSyscalls and WriteSyscalls count the process's read and write
	// system calls (/proc/self/io; absent where the kernel keeps none).
	// Their growth per message says how many messages each syscall
	// carried: about one read and one write per message and side under
	// light load, far fewer under heavy load, which is why CPU per message
	// falls as the load rises.
	ReadSyscalls  uint64  `json:"read_syscalls,omitempty"`
	WriteSyscalls uint64  `json:"write_syscalls,omitempty"`
	BytesPerConn  float64 `json:"bytes_per_conn"`
	// Store is the store's own figures, when it reports them
	// (persist.StatsReporter; the embedded store does).
	Store *persist.StoreStats `json:"store,omitempty"`
}

// Process returns the figures of this process, as a node with conns
// connections reports them: memory, goroutines, CPU, CPU wait, syscalls
// and bytes per connection. The caller adds its node id, sessions, users
// and store. It reads runtime memory statistics, a short stop-the-world:
// call it at most a few times a second.
func Process(conns int) Stats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := Stats{Connections: conns, HeapBytes: ms.HeapInuse, GoSysBytes: ms.Sys, Goroutines: runtime.NumGoroutine(),
		RSSBytes: procstat.RSS(), CPUSeconds: procstat.CPUSeconds()}
	st.CPUWaitSeconds, _ = procstat.CPUWaitSeconds()
	st.ReadSyscalls, st.WriteSyscalls, _ = procstat.Syscalls()
	if conns > 0 {
		st.BytesPerConn = float64(st.RSSBytes) / float64(conns)
	}
	return st
}
