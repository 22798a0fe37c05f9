// Package leaktest holds goleak options shared by the tests of packages
// that run a server: the goroutines third-party libraries start once per
// process and never stop. It is for tests only (production binaries must
// not link goleak).
package leaktest

import "go.uber.org/goleak"

// Gnet lists the goroutines gnet starts once per process (its
// package-level ants worker pool) and never stops, and that pool's idle
// workers: Engine.Register (TLS connections) runs on the pool, and a
// worker waits up to the pool's expiry for its next task before it ends.
func Gnet() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*goWorker).run.func1"),
	}
}
