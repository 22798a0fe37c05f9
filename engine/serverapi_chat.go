package engine

import (
	"context"

	"github.com/imgn/imgn/persist"
)

// The server API's delete-for-me and read count: the protocol's DELETE and
// READ_COUNT (docs/protocol.md §4.8, §6.14) done for user, on the same
// paths as the other chat calls of serverapi.go.

// DeleteForMe hides message msgID from user's own view, as DELETE does: a
// delete event is appended to user's inbox only (in a cluster through the
// inbox's owner) and pushed to user's devices; other members keep the
// message. A repeat is Duplicate and appends nothing. Errors:
// INVALID_ARGUMENT (msgID 0), UNKNOWN_MESSAGE (not in user's inbox);
// store and cluster failures are retryable.
func (s *Server) DeleteForMe(ctx context.Context, user string, msgID uint64) (persist.EventResult, error) {
	cs, err := s.chatUser(ctx, user)
	if err != nil {
		return persist.EventResult{}, err
	}
	return s.chatEvent(ctx, nil, cs, persist.EventDelete, user, msgID, nil)
}

// ReadCount reports, for the message at seq of user's inbox in conversation
// conv, how many of the other members holding it (its sender excepted)
// have read it, out of how many, as READ_COUNT does. It reads the shared
// store, so in a cluster any node answers. Errors: INVALID_ARGUMENT,
// UNKNOWN_MESSAGE (no message at seq in that conversation).
func (s *Server) ReadCount(ctx context.Context, user string, conv persist.ConvID, seq uint64) (read, members int, err error) {
	cs, err := s.chatUser(ctx, user)
	if err != nil {
		return 0, 0, err
	}
	if err := checkConv(conv); err != nil {
		return 0, 0, err
	}
	return readCount(ctx, cs, user, conv, seq)
}
