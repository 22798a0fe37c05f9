package persist

import (
	"context"
	"fmt"
	"time"
)

// This file holds the retention contract (how a store forgets, so that a node
// can run for months on a bounded disk) and the optional statistics seam.

// Retention bounds what a store keeps. The zero value keeps everything for
// ever. A store that takes a Retention implements Retainer and enforces it by
// passes (in the background every Interval, or when EnforceRetention is
// called); between passes it may hold more than the bounds.
//
// The rules every store follows:
//
//   - An inbox is always the gap-free range of seqs [FirstSeq, LastSeq].
//     Retention only removes a prefix of it (it raises FirstSeq). Seqs are
//     never reused: LastSeq never goes down, and the next entry of an inbox
//     that lost everything still gets LastSeq+1.
//   - ReadInbox with afterSeq+1 below FirstSeq is not an error: the page
//     starts at FirstSeq. A caller that sees the first entry above afterSeq+1
//     knows that the seqs in between were removed and will never come back.
//   - MaxAge: a pass removes every message whose Timestamp is more than
//     MaxAge before the store's clock, from every inbox that holds it (raising
//     FirstSeq past its entry; an inbox entry below it goes too, even if its
//     message is a little younger: inboxes only lose prefixes), together with
//     its (From, ClientMsgID) dedup entry. Message IDs are time-ordered, and
//     a store may rely on it: it may keep an expired message until every
//     message with a lower ID has expired too.
//   - InboxMax: a pass raises FirstSeq of every inbox holding more than
//     InboxMax entries to LastSeq-InboxMax+1.
//   - Dedup window: a message, and with it the recognition of a retry of its
//     (From, ClientMsgID), is kept until it is older than MaxAge; when the
//     cap removed it from every inbox earlier, it is kept until it is older
//     than DedupWindow (or MaxAge, if that is shorter). A retry after that is
//     stored as a new message. So a retry arriving within
//     min(DedupWindow, MaxAge) of the original never stores twice.
//   - A Duplicate's AppendResult.Seqs are the original seqs, which may be
//     below FirstSeq when the entry was removed.
//   - Users, groups and cursors are never removed by retention.
type Retention struct {
	// MaxAge removes messages older than this, by Message.Timestamp (the
	// server's time of acceptance). Zero: no age limit.
	MaxAge time.Duration
	// InboxMax keeps at most this many newest entries per inbox. Zero: no
	// cap.
	InboxMax int
	// DedupWindow is how long a message that the cap removed from every
	// inbox is still kept for recognising retries. Zero means
	// DefaultDedupWindow.
	DedupWindow time.Duration
	// Interval is the time between background passes. Zero means
	// DefaultRetentionInterval.
	Interval time.Duration
}

// Defaults of Retention's zero fields.
const (
	DefaultDedupWindow       = 24 * time.Hour
	DefaultRetentionInterval = time.Minute
)

// Enabled reports whether r removes anything.
func (r Retention) Enabled() bool { return r.MaxAge > 0 || r.InboxMax > 0 }

// WithDefaults validates r and fills its zero DedupWindow and Interval. A
// negative field is an error wrapping ErrInvalid.
func (r Retention) WithDefaults() (Retention, error) {
	if r.MaxAge < 0 || r.InboxMax < 0 || r.DedupWindow < 0 || r.Interval < 0 {
		return r, fmt.Errorf("%w: negative retention setting %+v", ErrInvalid, r)
	}
	if r.DedupWindow == 0 {
		r.DedupWindow = DefaultDedupWindow
	}
	if r.Interval == 0 {
		r.Interval = DefaultRetentionInterval
	}
	return r, nil
}

// Retainer is implemented by a MessageStore that enforces a Retention.
type Retainer interface {
	// FirstSeq returns the lowest seq of user's inbox that ReadInbox can
	// still return: 1 when nothing was removed, LastSeq+1 when everything
	// was. An unknown user has FirstSeq 1.
	FirstSeq(ctx context.Context, user string) (uint64, error)
	// EnforceRetention runs one complete pass now and returns when its
	// removals are durable. It is safe to call concurrently with every other
	// method (passes are serialised).
	EnforceRetention(ctx context.Context) error
}

// StoreStats is a store's view of itself for /admin/stats. Fields a store
// does not track are zero.
type StoreStats struct {
	// Kind names the implementation ("pebble").
	Kind string `json:"kind"`
	// Commits is the number of write batches committed (each one fsync);
	// Writes the number of requests they carried; AvgBatch their ratio.
	Commits  uint64  `json:"commits"`
	Writes   uint64  `json:"writes"`
	AvgBatch float64 `json:"avg_batch"`
	// FailedCommits counts batches whose commit failed (their requests got
	// ErrUnavailable).
	FailedCommits uint64 `json:"failed_commits"`
	// Queued is the number of requests waiting for the committer.
	Queued int `json:"queued"`
	// DiskBytes is the space the store's files take; FreeDiskBytes what is
	// left on their file system.
	DiskBytes     uint64 `json:"disk_bytes"`
	FreeDiskBytes uint64 `json:"free_disk_bytes"`
	// WALBytes is the number of bytes written to the write-ahead log since
	// open.
	WALBytes uint64 `json:"wal_bytes"`
	// CompactionDebtBytes estimates the bytes compactions still have to
	// rewrite before the store reaches a steady shape.
	CompactionDebtBytes uint64 `json:"compaction_debt_bytes"`
	// Full is set while writes are refused for lack of disk space;
	// FullReason says why.
	Full       bool   `json:"full"`
	FullReason string `json:"full_reason,omitempty"`
	// Retention: passes run, and messages and inbox entries removed since
	// open.
	RetentionPasses  uint64 `json:"retention_passes"`
	RemovedMessages  uint64 `json:"removed_messages"`
	RemovedEntries   uint64 `json:"removed_entries"`
	RetentionMaxAge  string `json:"retention_max_age,omitempty"`
	RetentionInboxes int    `json:"retention_inbox_max,omitempty"`
}

// StatsReporter is implemented by stores that report StoreStats. StoreStats
// is safe for concurrent use and cheap enough to call on every admin
// request (it reads cached figures, never the disk).
type StatsReporter interface {
	StoreStats() StoreStats
}
