//go:build race

package engine

// raceEnabled: the race detector allocates on its own, so allocation counts
// are asserted only without it (make test runs both).
const raceEnabled = true
