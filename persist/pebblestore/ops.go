package pebblestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
)

// SetCursor implements persist.MessageStore. A seq not above the stored
// cursor is a no-op; otherwise it returns after the new cursor is durable.
func (s *Store) SetCursor(ctx context.Context, user, device string, seq uint64) error {
	w, err := cursorWrite(user, device, seq)
	if err != nil {
		return err
	}
	return s.write(ctx, w)
}

// SetCursorAsync implements persist.AsyncCursorSetter: SetCursor without
// waiting, done called from the completer once the batch holding it is
// synced (or on the caller's goroutine for invalid arguments, a closed
// store or a full queue).
func (s *Store) SetCursorAsync(user, device string, seq uint64, done func(error)) {
	w, err := cursorWrite(user, device, seq)
	if err != nil {
		done(err)
		return
	}
	w.then = done
	s.writeAsync(w)
}

// cursorWrite is the write of SetCursor: the cursor only moves forward.
func cursorWrite(user, device string, seq uint64) (*writeReq, error) {
	if err := checkUserDevice(user, device); err != nil {
		return nil, fmt.Errorf("pebblestore: set cursor: %w", err)
	}
	key := keyLP2(nil, tCursor, user, device)
	return &writeReq{apply: func(c *committer) error {
		v, ok, err := c.get(key)
		if err != nil {
			return unavailable("set cursor", err)
		}
		if ok {
			cur, err := u64(v)
			if err != nil {
				return unavailable("set cursor", err)
			}
			if seq <= cur {
				return nil
			}
		}
		c.put(key, appendBE64(nil, seq))
		return nil
	}}, nil
}

func checkUserDevice(user, device string) error {
	if err := persist.CheckID("user", user); err != nil {
		return err
	}
	return persist.CheckID("device", device)
}

// CreateUser implements persist.UserStore; it returns after the user is
// durable, or persist.ErrUserExists.
func (s *Store) CreateUser(ctx context.Context, u persist.User) error {
	if err := persist.CheckID("user", u.ID); err != nil {
		return fmt.Errorf("pebblestore: create user: %w", err)
	}
	key, rec := keyString(nil, tUser, u.ID), appendUser(nil, &u)
	return s.write(ctx, &writeReq{apply: func(c *committer) error {
		_, ok, err := c.get(key)
		if err != nil {
			return unavailable("create user", err)
		}
		if ok {
			return persist.ErrUserExists
		}
		c.put(key, rec)
		return nil
	}})
}

// viewRead runs fn on the current snapshot after the common argument and
// context checks, and maps its error for the caller: sentinel errors pass
// through, anything else (corruption, I/O) becomes ErrUnavailable.
func (s *Store) viewRead(ctx context.Context, op string, fn func(r reader) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.read(fn)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, persist.ErrClosed), errors.Is(err, persist.ErrNotFound):
		return err
	default:
		return fmt.Errorf("pebblestore: %s: %w: %w", op, persist.ErrUnavailable, err)
	}
}

// getValue reads key from r and passes its value (valid only during fn) to
// fn; a missing key is ErrNotFound.
func getValue(r reader, key []byte, fn func(v []byte) error) error {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return persist.ErrNotFound
	}
	if err != nil {
		return err
	}
	defer closer.Close()
	return fn(v)
}

// readerGet returns a point read of r for recordRefs: the value is a
// copy, ok false when the key is absent.
func readerGet(r reader) func(key []byte) ([]byte, bool, error) {
	return func(key []byte) ([]byte, bool, error) {
		var v []byte
		err := getValue(r, key, func(val []byte) error {
			v = bytes.Clone(val)
			return nil
		})
		if errors.Is(err, persist.ErrNotFound) {
			return nil, false, nil
		}
		return v, err == nil, err
	}
}

// Lookup implements persist.MessageStore. The result shares no memory with
// the store.
func (s *Store) Lookup(ctx context.Context, from, clientMsgID string) (persist.Message, error) {
	if err := persist.CheckLookup(from, clientMsgID); err != nil {
		return persist.Message{}, fmt.Errorf("pebblestore: lookup: %w", err)
	}
	var m persist.Message
	err := s.viewRead(ctx, "lookup", func(r reader) error {
		var id uint64
		err := getValue(r, keyLP2(nil, tDedup, from, clientMsgID), func(v []byte) (err error) {
			id, err = u64(v)
			return err
		})
		if err != nil {
			return err
		}
		return getMessage(r, id, &m)
	})
	return m, err
}

func getMessage(r reader, id uint64, m *persist.Message) error {
	err := getValue(r, keyID(nil, tMessage, id), func(v []byte) (err error) {
		*m, err = decodeMessage(id, v)
		return err
	})
	if errors.Is(err, persist.ErrNotFound) {
		return fmt.Errorf("%w: missing message %d", errCorrupt, id)
	}
	return err
}

// ReadInbox implements persist.MessageStore. Entries and their bodies are
// fresh memory owned by the caller. It reads one snapshot, so the page is
// consistent and gap-free; below the inbox's FirstSeq it starts at FirstSeq
// (see persist.Retention).
func (s *Store) ReadInbox(ctx context.Context, user string, afterSeq uint64, limit int) ([]persist.InboxEntry, error) {
	if err := persist.CheckRead(user, limit); err != nil {
		return nil, fmt.Errorf("pebblestore: read inbox: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if afterSeq == math.MaxUint64 {
		return nil, nil
	}
	prefix := keyLP(nil, tInbox, user)
	lower := appendBE64(bytes.Clone(prefix), afterSeq+1)
	var out []persist.InboxEntry
	err := s.viewRead(ctx, "read inbox", func(r reader) (err error) {
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
		if err != nil {
			return err
		}
		defer func() {
			if cerr := it.Close(); err == nil {
				err = cerr
			}
		}()
		var msgs *pebble.Iterator // message IDs rise with seq: one forward iterator
		defer func() {
			if msgs != nil {
				if cerr := msgs.Close(); err == nil {
					err = cerr
				}
			}
		}()
		var mkey []byte
		for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
			seq, err := u64(it.Key()[len(prefix):])
			if err != nil {
				return err
			}
			id, hidden, err := decodeEntry(it.Value())
			if err != nil {
				return err
			}
			if msgs == nil {
				if msgs, err = r.NewIter(&pebble.IterOptions{LowerBound: []byte{tMessage}, UpperBound: []byte{tMessage + 1}}); err != nil {
					return err
				}
			}
			mkey = keyID(mkey, tMessage, id)
			if !msgs.SeekGE(mkey) || !bytes.Equal(msgs.Key(), mkey) {
				if err := msgs.Error(); err != nil {
					return err
				}
				return fmt.Errorf("%w: missing message %d", errCorrupt, id)
			}
			e := persist.InboxEntry{Seq: seq, Deleted: hidden}
			if e.Msg, err = decodeMessage(id, msgs.Value()); err != nil {
				return err
			}
			if hidden {
				e.Msg.Body = nil
			}
			if out == nil {
				out = make([]persist.InboxEntry, 0, min(limit, 64))
			}
			out = append(out, e)
		}
		return it.Error()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// readHead returns user's head (zero last, first 1 when the inbox is
// unknown).
func (s *Store) readHead(ctx context.Context, op, user string) (head, error) {
	if err := persist.CheckID("user", user); err != nil {
		return head{}, fmt.Errorf("pebblestore: %s: %w", op, err)
	}
	var h head
	err := s.viewRead(ctx, op, func(r reader) error {
		it, err := r.NewIter(nil)
		if err != nil {
			return err
		}
		h, err = headAt(it, user)
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		return err
	})
	return h, err
}

// LastSeq implements persist.MessageStore.
func (s *Store) LastSeq(ctx context.Context, user string) (uint64, error) {
	h, err := s.readHead(ctx, "last seq", user)
	return h.last, err
}

// FirstSeq implements persist.Retainer.
func (s *Store) FirstSeq(ctx context.Context, user string) (uint64, error) {
	h, err := s.readHead(ctx, "first seq", user)
	return h.first, err
}

// Cursor implements persist.MessageStore.
func (s *Store) Cursor(ctx context.Context, user, device string) (uint64, error) {
	if err := checkUserDevice(user, device); err != nil {
		return 0, fmt.Errorf("pebblestore: cursor: %w", err)
	}
	var seq uint64
	err := s.viewRead(ctx, "cursor", func(r reader) error {
		err := getValue(r, keyLP2(nil, tCursor, user, device), func(v []byte) (err error) {
			seq, err = u64(v)
			return err
		})
		if errors.Is(err, persist.ErrNotFound) {
			return nil
		}
		return err
	})
	return seq, err
}

// GetUser implements persist.UserStore.
func (s *Store) GetUser(ctx context.Context, id string) (persist.User, error) {
	if err := persist.CheckID("user", id); err != nil {
		return persist.User{}, fmt.Errorf("pebblestore: get user: %w", err)
	}
	var u persist.User
	err := s.viewRead(ctx, "get user", func(r reader) error {
		return getValue(r, keyString(nil, tUser, id), func(v []byte) (err error) {
			u, err = decodeUser(id, v)
			return err
		})
	})
	return u, err
}
