// Package bench is the load generator of the IM server: it speaks the real
// IMGN protocol (docs/protocol.md) to one or more imd nodes and measures
// connection capacity, login and churn rates, 1:1 and group delivery rates
// and open-loop delivery latency. cmd/imbench is its command-line front end.
//
// # Generator design
//
// The generator does not use a goroutine per connection. Each generator
// process runs a few event loops (one goroutine each, locked to an OS
// thread) over raw non-blocking sockets and epoll. A connection costs a
// ~100-byte struct and its file descriptor; a partial inbound frame or an
// unsent outbound tail is buffered only while it exists. One process holds
// as many connections as its RLIMIT_NOFILE allows; more connections are
// spread over several generator processes (Config.Procs: imbench re-executes
// itself as workers) and over source addresses 127.0.0.x.
//
// # Latency
//
// Message scenarios are open-loop (wrk2-style): each event loop sends its
// k-th message at the intended time start + k/rate whether or not earlier
// messages were answered, and writes that intended time into the message
// body. The receiving connection (always on the same loop as its sender, so
// both read one monotonic clock) records now - intended in an HdrHistogram.
// A stalled server therefore shows up as latency, never as a lower send rate
// (no coordinated omission). Each loop has its own histograms; they are
// merged per process and then across processes.
//
// # Ownership
//
// Run owns every goroutine and child process it starts (event loops, worker
// processes, spawned imd nodes, the baseline relay): all are stopped before
// Run returns, and child processes also die with the parent (Pdeathsig).
// Every run is bounded by Config.Timeout.
package bench
