package persist

import (
	"context"
	"strings"
)

// This file holds the optional seams the server API and the event stream
// need beyond the core interfaces: changing an account, and listing what a
// store stored after a point (a replay).

// DisabledMark starts the PasswordHash of a disabled account. The rest of
// the field is the hash the account had (empty for accounts without a
// password), so enabling the account again restores its password. No login
// of any kind succeeds for a disabled account. The mark needs no support
// from a store: every store keeps PasswordHash as an opaque string.
const DisabledMark = "!"

// Disabled reports whether the account is disabled (see DisabledMark).
func (u User) Disabled() bool { return strings.HasPrefix(u.PasswordHash, DisabledMark) }

// SetDisabled marks or unmarks the account as disabled, keeping its hash.
func (u *User) SetDisabled(disabled bool) {
	hash := strings.TrimPrefix(u.PasswordHash, DisabledMark)
	if disabled {
		hash = DisabledMark + hash
	}
	u.PasswordHash = hash
}

// UserUpdater is implemented by stores that can change an existing account.
type UserUpdater interface {
	// UpdateUser replaces the PasswordHash of the account u.ID (Created is
	// kept) and returns after the change is durable. It returns ErrNotFound
	// when no such account exists. Concurrent updates of one account are
	// applied one after the other; the last one wins.
	UpdateUser(ctx context.Context, u User) error
}

// Replayer is implemented by stores that can list the messages they stored
// after a point, in message-ID order, with the inbox entries each got. The
// event stream uses it to publish again, after a crash, the messages
// acknowledged shortly before it (docs/events.md).
type Replayer interface {
	// ReplayFrom calls fn for every stored message with ID >= fromID, in
	// ascending ID order, with the inbox entries that reference it
	// (inboxes[i] at seqs[i], in the order they were appended). Entries
	// removed by retention are left out, and so are messages no inbox holds
	// any more. It reads one consistent view of the store: what was durable
	// when the call started (a store without snapshots, MongoDB's, may also
	// list what is written during the call). In a store several nodes share,
	// it lists the entries this node wrote. The arguments of fn are valid
	// only during the call. ReplayFrom stops with fn's error when fn returns
	// one, and with ctx's error when ctx ends.
	ReplayFrom(ctx context.Context, fromID uint64, fn func(msg *Message, inboxes []string, seqs []uint64) error) error
}
