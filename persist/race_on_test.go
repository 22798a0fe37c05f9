//go:build race

package persist

// raceEnabled: under the race detector sync.Pool drops items at random, so
// allocation counts are asserted only without it (make test runs both).
const raceEnabled = true
