// Package leaktest holds goleak options shared by the tests of packages
// that run a server: the goroutines third-party libraries start once per
// process and never stop. It is for tests only (production binaries must
// not link goleak).
package leaktest

import "go.uber.org/goleak"

// Gnet lists the goroutines gnet starts once per process (its
// package-level ants worker pool) and never stops.
func Gnet() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	}
}
