package persist

import (
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
)

// MaxIDLen is the longest identifier, in bytes, that every implementation
// accepts: user, group, device and inbox names, Message.From and
// Message.ClientMsgID. Longer values are rejected with ErrInvalid so that all
// backends agree (the embedded store keys on them, and MongoDB index keys are
// size-limited too). Message.To and Body are not limited by the store.
const MaxIDLen = 1024

// CheckID returns nil when id is a valid identifier (non-empty, at most
// MaxIDLen bytes) and an error wrapping ErrInvalid otherwise; what names the
// argument in the message.
func CheckID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, MaxIDLen)
	}
	return nil
}

// CheckAppend validates the arguments of MessageStore.Append exactly as every
// implementation must, before anything is stored:
//   - msg.ID != 0;
//   - msg.ClientMsgID is a valid id (msg.From may be empty: system messages;
//     when set it must be at most MaxIDLen bytes);
//   - inboxes is non-empty and every name is a valid, distinct id.
//
// The error wraps ErrInvalid. CheckAppend does not retain its arguments and is
// safe for concurrent use.
func CheckAppend(msg Message, inboxes []string) error {
	if msg.ID == 0 {
		return fmt.Errorf("%w: message id 0", ErrInvalid)
	}
	if len(msg.From) > MaxIDLen {
		return fmt.Errorf("%w: from longer than %d bytes", ErrInvalid, MaxIDLen)
	}
	if err := CheckID("client message id", msg.ClientMsgID); err != nil {
		return err
	}
	if len(inboxes) == 0 {
		return fmt.Errorf("%w: no inboxes", ErrInvalid)
	}
	for _, in := range inboxes {
		if err := CheckID("inbox", in); err != nil {
			return err
		}
	}
	if len(inboxes) <= 16 {
		for i := 1; i < len(inboxes); i++ {
			for j := 0; j < i; j++ {
				if inboxes[i] == inboxes[j] {
					return fmt.Errorf("%w: duplicate inbox %q", ErrInvalid, inboxes[i])
				}
			}
		}
		return nil
	}
	// A group's inboxes: a pooled hash set, so a fan-out append allocates
	// nothing.
	set := inboxSets.Get().(*inboxSet)
	dup, ok := set.firstDuplicate(inboxes)
	if cap(set.slots) <= 1<<16 { // a huge group's arrays are not kept
		inboxSets.Put(set)
	}
	if ok {
		return fmt.Errorf("%w: duplicate inbox %q", ErrInvalid, dup)
	}
	return nil
}

// inboxSet finds a repeated name in a list of inboxes: open addressing over
// the names' 64-bit hashes, each slot holding an index into the list. It
// does the job of a map[string]struct{} at under half the cost (one hash
// per name, no map growth, one clear of the slots; a group fan-out checks a
// hundred names per message).
type inboxSet struct {
	seed   maphash.Seed
	slots  []int32  // index+1 into the list being checked; 0 is empty
	hashes []uint64 // hash of each name, by list index
}

var inboxSets = sync.Pool{New: func() any { return &inboxSet{seed: maphash.MakeSeed()} }}

// firstDuplicate returns the first name of names that an earlier one
// repeats, and whether there is one. It keeps nothing of names.
func (s *inboxSet) firstDuplicate(names []string) (string, bool) {
	size := 16
	for size < 2*len(names) {
		size <<= 1
	}
	if cap(s.slots) < size {
		s.slots = make([]int32, size)
	}
	slots := s.slots[:size]
	clear(slots)
	s.hashes = slices.Grow(s.hashes[:0], len(names))[:len(names)]
	mask := uint64(size - 1)
	for i, name := range names {
		h := maphash.String(s.seed, name)
		s.hashes[i] = h
		for j := h & mask; ; j = (j + 1) & mask {
			k := slots[j]
			if k == 0 {
				slots[j] = int32(i + 1)
				break
			}
			if s.hashes[k-1] == h && names[k-1] == name {
				return name, true
			}
		}
	}
	return "", false
}

// CheckLookup validates the arguments of MessageStore.Lookup: clientMsgID
// must be a valid id and from (which may be empty) at most MaxIDLen bytes,
// the same rules as CheckAppend, so a key that Append would reject is an
// ErrInvalid rather than an ErrNotFound.
func CheckLookup(from, clientMsgID string) error {
	if len(from) > MaxIDLen {
		return fmt.Errorf("%w: from longer than %d bytes", ErrInvalid, MaxIDLen)
	}
	return CheckID("client message id", clientMsgID)
}

// CheckRead validates the arguments of MessageStore.ReadInbox: user must be a
// valid id and limit must be positive (a zero limit is an error rather than an
// empty page, so that a caller bug cannot look like "nothing to sync").
func CheckRead(user string, limit int) error {
	if err := CheckID("user", user); err != nil {
		return err
	}
	if limit <= 0 {
		return fmt.Errorf("%w: limit %d <= 0", ErrInvalid, limit)
	}
	return nil
}

// NormalizeMembers returns a new sorted slice of the distinct names in
// members, the form in which GroupStore implementations store membership. It
// returns an error wrapping ErrInvalid if a name is not a valid id. The
// result never aliases members; nil or empty input gives an empty, non-nil
// slice.
func NormalizeMembers(members []string) ([]string, error) {
	out := make([]string, 0, len(members))
	for _, m := range members {
		if err := CheckID("member", m); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
