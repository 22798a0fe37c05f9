package boltstore

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/imgn/imgn/persist"
)

// memberValue is the (ignored) value of a members key.
var memberValue = []byte{1}

// corrupt wraps a decode failure found while applying a request, before any
// write: the request fails alone with ErrUnavailable.
func corrupt(op string, err error) error {
	return fmt.Errorf("boltstore: %s: %w: %w", op, persist.ErrUnavailable, err)
}

// Append implements persist.MessageStore with group commit (see the package
// doc). It returns after the commit that made the message and all its inbox
// entries durable. The record is encoded on the caller's goroutine, so
// msg.Body is copied before Append queues anything and is never read after
// Append returns, even when ctx ends first. On a fresh insert the returned
// Msg.Body is msg.Body itself (the caller's slice); on a duplicate it is a
// fresh copy of the stored body. Seqs is always a new slice.
//
// If ctx ends while the request is queued or committing, Append returns
// ctx.Err() and the append may or may not happen; retrying with the same
// message is safe because Append is idempotent.
func (s *Store) Append(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	if err := persist.CheckAppend(msg, inboxes); err != nil {
		return persist.AppendResult{}, fmt.Errorf("boltstore: append: %w", err)
	}
	a := &appendOp{
		msg:      msg,
		inboxes:  slices.Clone(inboxes),
		rec:      encodeMessage(&msg),
		idKey:    be64(msg.ID),
		dedupKey: key2(msg.From, msg.ClientMsgID),
		prefixes: make([][]byte, len(inboxes)),
	}
	for i, in := range inboxes {
		a.prefixes[i] = lp(in, 8)
	}
	if err := s.write(ctx, &request{apply: a.apply}); err != nil {
		return persist.AppendResult{}, err
	}
	return a.res, nil
}

// appendOp is one Append: its inputs are prepared by the caller, apply runs
// on the committer and fills res.
type appendOp struct {
	msg      persist.Message
	inboxes  []string // a private copy
	rec      []byte   // encoded message
	idKey    []byte   // be64(msg.ID)
	dedupKey []byte   // lp(From) ClientMsgID
	prefixes [][]byte // lp(inbox) per inbox
	res      persist.AppendResult
}

func (a *appendOp) apply(b *buckets) error {
	const op = "append"
	id, idKey := a.msg.ID, a.idKey
	stored, dup := a.msg, false
	var refs map[string]uint64 // inbox -> seq of the stored message, for a duplicate
	var refsRec []byte
	if v := b.dedup.Get(a.dedupKey); v != nil {
		oid, err := u64(v)
		if err != nil {
			return corrupt(op, err)
		}
		id, idKey, dup = oid, be64(oid), true
		mv, rv := b.msgs.Get(idKey), b.refs.Get(idKey)
		if mv == nil || rv == nil {
			return corrupt(op, fmt.Errorf("%w: dedup entry for missing message %d", errCorrupt, oid))
		}
		if stored, err = decodeMessage(oid, mv); err != nil {
			return corrupt(op, err)
		}
		if refs, err = decodeRefs(oid, rv); err != nil {
			return corrupt(op, err)
		}
		refsRec = slices.Clip(rv) // appended to below, which copies
	} else if v := b.msgs.Get(idKey); v != nil {
		other, err := decodeMessage(id, v)
		if err != nil {
			return corrupt(op, err)
		}
		return fmt.Errorf("boltstore: append: %w: message id %d already stored for another (from, client message id) (%q, %q)",
			persist.ErrInvalid, id, other.From, other.ClientMsgID)
	} else {
		refsRec = make([]byte, 1, 1+len(a.inboxes)*12)
		refsRec[0] = recordV1
	}

	// Reads: the existing seq of each inbox that already has the message,
	// the next seq of the others. Inboxes are distinct, so the next seqs
	// do not interfere.
	seqs := make([]uint64, len(a.inboxes))
	fresh := 0
	for i, p := range a.prefixes {
		if seq, ok := refs[a.inboxes[i]]; ok {
			seqs[i] = seq
			continue
		}
		last, err := lastSeq(b.inbox, p)
		if err != nil {
			return corrupt(op, err)
		}
		if last == math.MaxUint64 {
			return fmt.Errorf("boltstore: append: %w: inbox seq exhausted", persist.ErrUnavailable)
		}
		seqs[i] = last + 1
		refsRec = appendRef(refsRec, a.inboxes[i], seqs[i])
		fresh++
	}

	// Writes. Values must stay valid until the commit: every one is a
	// fresh or immutable slice.
	if !dup {
		if err := b.msgs.Put(idKey, a.rec); err != nil {
			return abortError{err}
		}
		if err := b.dedup.Put(a.dedupKey, idKey); err != nil {
			return abortError{err}
		}
	}
	if fresh > 0 {
		if err := b.refs.Put(idKey, refsRec); err != nil {
			return abortError{err}
		}
	}
	for i, p := range a.prefixes {
		if _, ok := refs[a.inboxes[i]]; ok {
			continue
		}
		if err := b.inbox.Put(keyNum(p, seqs[i]), idKey); err != nil {
			return abortError{err}
		}
	}
	a.res = persist.AppendResult{Msg: stored, Seqs: seqs, Duplicate: dup}
	return nil
}

// lastSeq returns the highest seq under prefix in the inbox bucket, 0 if
// none.
func lastSeq(inbox *bolt.Bucket, prefix []byte) (uint64, error) {
	c := inbox.Cursor()
	end := keyNum(prefix, math.MaxUint64)
	k, _ := c.Seek(end)
	if k == nil {
		k, _ = c.Last()
	} else if !bytes.Equal(k, end) {
		k, _ = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, prefix) {
		return 0, nil
	}
	return u64(k[len(prefix):])
}

// SetCursor implements persist.MessageStore. A seq not above the stored
// cursor is a no-op; otherwise it returns after the new cursor is durable.
func (s *Store) SetCursor(ctx context.Context, user, device string, seq uint64) error {
	if err := checkUserDevice(user, device); err != nil {
		return fmt.Errorf("boltstore: set cursor: %w", err)
	}
	key := key2(user, device)
	return s.write(ctx, &request{apply: func(b *buckets) error {
		if v := b.cursors.Get(key); v != nil {
			cur, err := u64(v)
			if err != nil {
				return corrupt("set cursor", err)
			}
			if seq <= cur {
				return nil
			}
		}
		if err := b.cursors.Put(key, be64(seq)); err != nil {
			return abortError{err}
		}
		return nil
	}})
}

func checkUserDevice(user, device string) error {
	if err := persist.CheckID("user", user); err != nil {
		return err
	}
	return persist.CheckID("device", device)
}

func checkGroupUser(groupID, user string) error {
	if err := persist.CheckID("group", groupID); err != nil {
		return err
	}
	return persist.CheckID("user", user)
}

// CreateUser implements persist.UserStore; it returns after the user is
// durable, or persist.ErrUserExists.
func (s *Store) CreateUser(ctx context.Context, u persist.User) error {
	if err := persist.CheckID("user", u.ID); err != nil {
		return fmt.Errorf("boltstore: create user: %w", err)
	}
	key, rec := []byte(u.ID), encodeUser(&u)
	return s.write(ctx, &request{apply: func(b *buckets) error {
		if b.users.Get(key) != nil {
			return persist.ErrUserExists
		}
		if err := b.users.Put(key, rec); err != nil {
			return abortError{err}
		}
		return nil
	}})
}

// CreateGroup implements persist.GroupStore; it returns after the group and
// its members are durable, or persist.ErrGroupExists. g.Members is copied,
// sorted and deduplicated before CreateGroup queues anything.
func (s *Store) CreateGroup(ctx context.Context, g persist.Group) error {
	if err := persist.CheckID("group", g.ID); err != nil {
		return fmt.Errorf("boltstore: create group: %w", err)
	}
	members, err := persist.NormalizeMembers(g.Members)
	if err != nil {
		return fmt.Errorf("boltstore: create group: %w", err)
	}
	key := []byte(g.ID)
	rec := encodeGroup(&groupRecord{name: g.Name, owner: g.Owner, created: g.Created, count: uint64(len(members))})
	return s.write(ctx, &request{apply: func(b *buckets) error {
		if b.groups.Get(key) != nil {
			return persist.ErrGroupExists
		}
		if err := b.groups.Put(key, rec); err != nil {
			return abortError{err}
		}
		for _, m := range members {
			if err := b.members.Put(key2(g.ID, m), memberValue); err != nil {
				return abortError{err}
			}
		}
		return nil
	}})
}

// AddMember implements persist.GroupStore. It is O(log n): membership is one
// key per member plus a count in the group record.
func (s *Store) AddMember(ctx context.Context, groupID, user string, maxMembers int) error {
	if err := checkGroupUser(groupID, user); err != nil {
		return fmt.Errorf("boltstore: add member: %w", err)
	}
	gkey, mkey := []byte(groupID), key2(groupID, user)
	return s.write(ctx, &request{apply: func(b *buckets) error {
		v := b.groups.Get(gkey)
		if v == nil {
			return persist.ErrNotFound
		}
		if b.members.Get(mkey) != nil {
			return nil
		}
		g, err := decodeGroup(groupID, v)
		if err != nil {
			return corrupt("add member", err)
		}
		if maxMembers > 0 && g.count >= uint64(maxMembers) {
			return persist.ErrGroupFull
		}
		g.count++
		if err := b.members.Put(mkey, memberValue); err != nil {
			return abortError{err}
		}
		if err := b.groups.Put(gkey, encodeGroup(&g)); err != nil {
			return abortError{err}
		}
		return nil
	}})
}

// RemoveMember implements persist.GroupStore.
func (s *Store) RemoveMember(ctx context.Context, groupID, user string) error {
	if err := checkGroupUser(groupID, user); err != nil {
		return fmt.Errorf("boltstore: remove member: %w", err)
	}
	gkey, mkey := []byte(groupID), key2(groupID, user)
	return s.write(ctx, &request{apply: func(b *buckets) error {
		v := b.groups.Get(gkey)
		if v == nil {
			return persist.ErrNotFound
		}
		if b.members.Get(mkey) == nil {
			return nil
		}
		g, err := decodeGroup(groupID, v)
		if err != nil {
			return corrupt("remove member", err)
		}
		if g.count > 0 {
			g.count--
		}
		if err := b.members.Delete(mkey); err != nil {
			return abortError{err}
		}
		if err := b.groups.Put(gkey, encodeGroup(&g)); err != nil {
			return abortError{err}
		}
		return nil
	}})
}

// Lookup implements persist.MessageStore. The result shares no memory with
// the store.
func (s *Store) Lookup(ctx context.Context, from, clientMsgID string) (persist.Message, error) {
	if err := ctx.Err(); err != nil {
		return persist.Message{}, err
	}
	if err := persist.CheckLookup(from, clientMsgID); err != nil {
		return persist.Message{}, fmt.Errorf("boltstore: lookup: %w", err)
	}
	dk := key2(from, clientMsgID)
	var m persist.Message
	err := s.view(func(b *buckets) error {
		v := b.dedup.Get(dk)
		if v == nil {
			return persist.ErrNotFound
		}
		id, err := u64(v)
		if err != nil {
			return err
		}
		return getMessage(b, id, &m)
	})
	return m, mapReadErr("lookup", err)
}

func getMessage(b *buckets, id uint64, m *persist.Message) error {
	v := b.msgs.Get(be64(id))
	if v == nil {
		return fmt.Errorf("%w: missing message %d", errCorrupt, id)
	}
	var err error
	*m, err = decodeMessage(id, v)
	return err
}

// ReadInbox implements persist.MessageStore. Entries and their bodies are
// fresh memory owned by the caller. It reads one consistent snapshot.
func (s *Store) ReadInbox(ctx context.Context, user string, afterSeq uint64, limit int) ([]persist.InboxEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := persist.CheckRead(user, limit); err != nil {
		return nil, fmt.Errorf("boltstore: read inbox: %w", err)
	}
	if afterSeq == math.MaxUint64 {
		return nil, nil
	}
	prefix := lp(user, 8)
	var out []persist.InboxEntry
	err := s.view(func(b *buckets) error {
		c := b.inbox.Cursor()
		for k, v := c.Seek(keyNum(prefix, afterSeq+1)); k != nil && bytes.HasPrefix(k, prefix) && len(out) < limit; k, v = c.Next() {
			seq, err := u64(k[len(prefix):])
			if err != nil {
				return err
			}
			id, err := u64(v)
			if err != nil {
				return err
			}
			e := persist.InboxEntry{Seq: seq}
			if err := getMessage(b, id, &e.Msg); err != nil {
				return err
			}
			if out == nil {
				out = make([]persist.InboxEntry, 0, min(limit, 64))
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, mapReadErr("read inbox", err)
	}
	return out, nil
}

// LastSeq implements persist.MessageStore.
func (s *Store) LastSeq(ctx context.Context, user string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := persist.CheckID("user", user); err != nil {
		return 0, fmt.Errorf("boltstore: last seq: %w", err)
	}
	prefix := lp(user, 8)
	var seq uint64
	err := s.view(func(b *buckets) (err error) {
		seq, err = lastSeq(b.inbox, prefix)
		return err
	})
	return seq, mapReadErr("last seq", err)
}

// Cursor implements persist.MessageStore.
func (s *Store) Cursor(ctx context.Context, user, device string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := checkUserDevice(user, device); err != nil {
		return 0, fmt.Errorf("boltstore: cursor: %w", err)
	}
	key := key2(user, device)
	var seq uint64
	err := s.view(func(b *buckets) (err error) {
		if v := b.cursors.Get(key); v != nil {
			seq, err = u64(v)
		}
		return err
	})
	return seq, mapReadErr("cursor", err)
}

// GetUser implements persist.UserStore.
func (s *Store) GetUser(ctx context.Context, id string) (persist.User, error) {
	if err := ctx.Err(); err != nil {
		return persist.User{}, err
	}
	if err := persist.CheckID("user", id); err != nil {
		return persist.User{}, fmt.Errorf("boltstore: get user: %w", err)
	}
	var u persist.User
	err := s.view(func(b *buckets) (err error) {
		v := b.users.Get([]byte(id))
		if v == nil {
			return persist.ErrNotFound
		}
		u, err = decodeUser(id, v)
		return err
	})
	return u, mapReadErr("get user", err)
}

// GetGroup implements persist.GroupStore. Members is a fresh sorted slice
// owned by the caller (empty, not nil, for a group without members).
func (s *Store) GetGroup(ctx context.Context, id string) (persist.Group, error) {
	if err := ctx.Err(); err != nil {
		return persist.Group{}, err
	}
	if err := persist.CheckID("group", id); err != nil {
		return persist.Group{}, fmt.Errorf("boltstore: get group: %w", err)
	}
	var g persist.Group
	err := s.view(func(b *buckets) error {
		v := b.groups.Get([]byte(id))
		if v == nil {
			return persist.ErrNotFound
		}
		rec, err := decodeGroup(id, v)
		if err != nil {
			return err
		}
		g = persist.Group{ID: id, Name: rec.name, Owner: rec.owner, Created: rec.created,
			Members: make([]string, 0, min(rec.count, 1<<16))}
		prefix := lp(id, 0)
		c := b.members.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			g.Members = append(g.Members, string(k[len(prefix):]))
		}
		return nil
	})
	return g, mapReadErr("get group", err)
}
