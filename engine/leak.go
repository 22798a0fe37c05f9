package engine

import "go.uber.org/goleak"

// GnetGoroutines lists the goroutines gnet starts once per process (its
// package-level ants worker pool) and never stops, for goleak in tests of
// packages that run a Server.
func GnetGoroutines() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	}
}
