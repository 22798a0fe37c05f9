package pebblestore

// AppliedLastSeq is inbox's last seq as the database holds it, with the
// batches the committer applied whose sync has not returned yet (which
// readers do not see).
func AppliedLastSeq(s *Store, inbox string) (uint64, error) {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return 0, err
	}
	h, err := headAt(it, inbox)
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	return h.last, err
}
