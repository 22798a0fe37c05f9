package mongostore

import (
	"context"

	"github.com/imgn/imgn/persist"
)

// headsEvery, for the external tests.
const HeadsEvery = headsEvery

// FerretUpdateBatch exposes ferretUpdateBatch to the external tests.
const FerretUpdateBatch = ferretUpdateBatch

// UseEqQueries sets whether s sends equality queries in place of one $in
// query (on by default on FerretDB), so that tests on FerretDB can check
// the query shape sent to MongoDB as well. Call it before using s.
func UseEqQueries(s *Store, on bool) { s.eqQueries = on }

// SyncUpkeep waits until the upkeep recorded so far was written (or a
// flush of it failed), as a read of the chat seam does first.
func SyncUpkeep(s *Store) error { return s.syncUpkeep(context.Background()) }

// ConvStored reports whether user's conversation c is stored with exactly
// last and read (a document, not the inbox's view of it).
func ConvStored(ctx context.Context, s *Store, user string, c persist.ConvID, last, read uint64) bool {
	d, err := s.getConv(ctx, user, c)
	return err == nil && d.last == last && d.read == read
}

// OpsSince returns the commands counted since before (Stats.Commands),
// without zeros.
func OpsSince(before, after map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for op, n := range after {
		if n > before[op] {
			d[op] = n - before[op]
		}
	}
	return d
}
