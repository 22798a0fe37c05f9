package persist

// NextBatch is the intake of a group-commit loop: it blocks for the first
// item of queue, then takes whatever else is already queued, without
// waiting, up to max items in all, appended to batch[:0]. A busy queue
// therefore yields large batches (one commit, one fsync, for many appends)
// and an idle one a batch of one with no added delay.
//
// ok is false only when queue is closed and nothing was taken: the loop is
// done. A queue closed after the first item ends the batch early; the next
// call reports the close. The caller owns the returned slice (batch's
// backing array, grown if max exceeds its capacity) and should clear it
// after the commit so the items can be collected.
func NextBatch[T any](queue <-chan T, batch []T, max int) (_ []T, ok bool) {
	it, ok := <-queue
	if !ok {
		return batch[:0], false
	}
	batch = append(batch[:0], it)
	for len(batch) < max {
		select {
		case it, ok := <-queue:
			if !ok {
				return batch, true
			}
			batch = append(batch, it)
		default:
			return batch, true
		}
	}
	return batch, true
}
