//go:build race

package lb

// raceEnabled lowers test sizes under the race detector, which slows the
// key loops about tenfold.
const raceEnabled = true
