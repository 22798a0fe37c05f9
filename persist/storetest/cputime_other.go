//go:build !unix

package storetest

import "time"

func cpuTime() (time.Duration, bool) { return 0, false }
