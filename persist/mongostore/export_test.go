package mongostore

// FerretUpdateBatch exposes ferretUpdateBatch to the external tests.
const FerretUpdateBatch = ferretUpdateBatch

// UseEqQueries sets whether s sends equality queries in place of one $in
// query (on by default on FerretDB), so that tests on FerretDB can check
// the query shape sent to MongoDB as well. Call it before using s.
func UseEqQueries(s *Store, on bool) { s.eqQueries = on }
