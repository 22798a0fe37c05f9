package pebblestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
)

var (
	_ persist.UserUpdater = (*Store)(nil)
	_ persist.Replayer    = (*Store)(nil)
)

// UpdateUser implements persist.UserUpdater: it rewrites the account's
// record with the new hash through the committer and returns once it is
// durable.
func (s *Store) UpdateUser(ctx context.Context, u persist.User) error {
	if err := persist.CheckID("user", u.ID); err != nil {
		return fmt.Errorf("pebblestore: update user: %w", err)
	}
	key := keyString(nil, tUser, u.ID)
	return s.write(ctx, &writeReq{apply: func(c *committer) error {
		v, ok, err := c.get(key)
		if err != nil {
			return unavailable("update user", err)
		}
		if !ok {
			return persist.ErrNotFound
		}
		old, err := decodeUser(u.ID, v)
		if err != nil {
			return unavailable("update user", err)
		}
		u.Created = old.Created
		c.put(key, appendUser(nil, &u))
		return nil
	}})
}

// ReplayFrom implements persist.Replayer over the message table, which is
// in message-ID order; each message's inbox entries are in its record or
// its refs record. It reads the
// snapshot published by the last commit (only durable data) and checks each
// entry against the inbox table, so entries retention removed are left out.
func (s *Store) ReplayFrom(ctx context.Context, fromID uint64, fn func(msg *persist.Message, inboxes []string, seqs []uint64) error) error {
	var fnErr error
	err := s.viewRead(ctx, "replay", func(r reader) (err error) {
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: keyID(nil, tMessage, fromID), UpperBound: []byte{tMessage + 1}})
		if err != nil {
			return err
		}
		defer func() {
			if cerr := it.Close(); err == nil {
				err = cerr
			}
		}()
		var (
			refs    refsRecord
			inboxes []string
			seqs    []uint64
			key     []byte
			msg     persist.Message
		)
		for ok := it.First(); ok; ok = it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			id, err := u64(it.Key()[1:])
			if err == nil {
				err = recordRefs(id, it.Value(), &refs, readerGet(r))
			}
			if err != nil {
				return err
			}
			inboxes, seqs = inboxes[:0], seqs[:0]
			want := appendBE64(nil, id)
			for _, ref := range refs.refs {
				key = keyInbox(key, ref.inbox, ref.seq)
				v, closer, err := r.Get(key)
				if errors.Is(err, pebble.ErrNotFound) {
					continue // removed by retention
				}
				if err != nil {
					return err
				}
				same := len(v) >= 8 && bytes.Equal(v[:8], want) // a ninth byte: deleted by its owner
				closer.Close()
				if same {
					inboxes, seqs = append(inboxes, ref.inbox), append(seqs, ref.seq)
				}
			}
			if len(inboxes) == 0 {
				continue
			}
			if msg, err = decodeMessage(id, it.Value()); err != nil {
				return err
			}
			if err := fn(&msg, inboxes, seqs); err != nil {
				fnErr = err
				return err
			}
		}
		return it.Error()
	})
	if fnErr != nil {
		return fnErr
	}
	return err
}
