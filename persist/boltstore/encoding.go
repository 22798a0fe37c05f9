package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/imgn/imgn/persist"
)

// On-disk layout. Every bucket lives at the top level of the bbolt file.
//
//	meta      "format" -> formatVersion (1 byte)
//	msgs      be64(msgID) -> message record
//	dedup     lp(from) clientMsgID -> be64(msgID)
//	refs      be64(msgID) -> refs record: the (inbox, seq) entries of msgID
//	inbox     lp(user) be64(seq) -> be64(msgID)
//	cursors   lp(user) device -> be64(seq)
//	users     userID -> user record
//	groups    groupID -> group record
//	members   lp(groupID) user -> {1}
//
// lp(s) is uvarint(len(s)) followed by s. Because a uvarint is prefix-free,
// lp(a) is never a proper prefix of lp(b) for a != b, so "every key of user
// u" is exactly "every key starting with lp(u)", and within that range keys
// sort by the big-endian number that follows (seq order for the inbox).
//
// Message IDs are time-ordered, so msgs and refs grow at their tail and a
// batch of appends dirties few of their pages; refs (rather than an index
// keyed by user) gives per-(inbox, message) idempotency for that reason: it
// is read only when (From, ClientMsgID) is a duplicate.
//
// Records start with a format byte (recordV1) so the layout can evolve; they
// use uvarint/varint integers and length-prefixed strings, never JSON.
var (
	bucketMeta    = []byte("meta")
	bucketMsgs    = []byte("msgs")
	bucketDedup   = []byte("dedup")
	bucketInbox   = []byte("inbox")
	bucketRefs    = []byte("refs")
	bucketCursors = []byte("cursors")
	bucketUsers   = []byte("users")
	bucketGroups  = []byte("groups")
	bucketMembers = []byte("members")

	allBuckets = [][]byte{bucketMeta, bucketMsgs, bucketDedup, bucketRefs, bucketInbox,
		bucketCursors, bucketUsers, bucketGroups, bucketMembers}

	metaFormatKey = []byte("format")
)

const (
	formatVersion = 1 // the file layout above
	recordV1      = 1 // the record encodings below

	flagGroup = 1 << 0 // message flags byte
)

// errCorrupt marks a record or key that does not decode; it is never
// returned for caller mistakes.
var errCorrupt = errors.New("boltstore: corrupt record")

func be64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// lp returns uvarint(len(s)) s with extra spare capacity for a suffix.
func lp(s string, extra int) []byte {
	b := make([]byte, 0, binary.MaxVarintLen64+len(s)+extra)
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// key2 returns lp(a) b as a fresh slice.
func key2(a, b string) []byte {
	return append(lp(a, len(b)), b...)
}

// keyNum returns prefix be64(n) as a fresh slice; prefix is not modified.
func keyNum(prefix []byte, n uint64) []byte {
	k := make([]byte, len(prefix)+8)
	copy(k, prefix)
	binary.BigEndian.PutUint64(k[len(prefix):], n)
	return k
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// encodeMessage returns the record of m (without the ID, which is the key).
// The result shares nothing with m.
func encodeMessage(m *persist.Message) []byte {
	n := 1 + 3*binary.MaxVarintLen32 + len(m.From) + len(m.To) + len(m.ClientMsgID) +
		1 + binary.MaxVarintLen64 + binary.MaxVarintLen32 + len(m.Body)
	b := make([]byte, 0, n)
	b = append(b, recordV1)
	b = appendString(b, m.From)
	b = appendString(b, m.To)
	var flags byte
	if m.Group {
		flags |= flagGroup
	}
	b = append(b, flags)
	b = appendString(b, m.ClientMsgID)
	b = binary.AppendVarint(b, m.Timestamp)
	b = binary.AppendUvarint(b, uint64(m.Kind))
	return append(b, m.Body...) // the body is the rest of the record
}

// decoder reads a record; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errCorrupt
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

// string copies a length-prefixed string out of the record.
func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) version() {
	if v := d.byte(); d.err == nil && v != recordV1 {
		d.err = fmt.Errorf("%w: record version %d", errCorrupt, v)
	}
}

// decodeMessage decodes a record made by encodeMessage. The returned message
// shares no memory with rec (bbolt values are only valid inside their
// transaction). A record with no body decodes to a nil Body.
func decodeMessage(id uint64, rec []byte) (persist.Message, error) {
	d := decoder{b: rec}
	d.version()
	m := persist.Message{ID: id}
	m.From = d.string()
	m.To = d.string()
	flags := d.byte()
	m.ClientMsgID = d.string()
	m.Timestamp = d.varint()
	kind := d.uvarint()
	if d.err == nil && kind > 1<<32-1 {
		d.fail()
	}
	if d.err != nil {
		return persist.Message{}, fmt.Errorf("message %d: %w", id, d.err)
	}
	m.Group = flags&flagGroup != 0
	m.Kind = uint32(kind)
	if len(d.b) > 0 {
		m.Body = append([]byte(nil), d.b...)
	}
	return m, nil
}

func encodeUser(u *persist.User) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen32+len(u.PasswordHash)+binary.MaxVarintLen64)
	b = append(b, recordV1)
	b = appendString(b, u.PasswordHash)
	return binary.AppendVarint(b, u.Created)
}

func decodeUser(id string, rec []byte) (persist.User, error) {
	d := decoder{b: rec}
	d.version()
	u := persist.User{ID: id}
	u.PasswordHash = d.string()
	u.Created = d.varint()
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	if d.err != nil {
		return persist.User{}, fmt.Errorf("user %q: %w", id, d.err)
	}
	return u, nil
}

// groupRecord is the groups bucket value; members live in the members
// bucket and count caches their number for the maxMembers check.
type groupRecord struct {
	name, owner string
	created     int64
	count       uint64
}

func encodeGroup(g *groupRecord) []byte {
	b := make([]byte, 0, 1+2*binary.MaxVarintLen32+len(g.name)+len(g.owner)+2*binary.MaxVarintLen64)
	b = append(b, recordV1)
	b = appendString(b, g.name)
	b = appendString(b, g.owner)
	b = binary.AppendVarint(b, g.created)
	return binary.AppendUvarint(b, g.count)
}

func decodeGroup(id string, rec []byte) (groupRecord, error) {
	d := decoder{b: rec}
	d.version()
	var g groupRecord
	g.name = d.string()
	g.owner = d.string()
	g.created = d.varint()
	g.count = d.uvarint()
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	if d.err != nil {
		return groupRecord{}, fmt.Errorf("group %q: %w", id, d.err)
	}
	return g, nil
}

// appendRef appends one (inbox, seq) entry to a refs record; a record
// starts with recordV1.
func appendRef(b []byte, inbox string, seq uint64) []byte {
	b = appendString(b, inbox)
	return binary.AppendUvarint(b, seq)
}

// decodeRefs returns the inbox -> seq map of a refs record.
func decodeRefs(id uint64, rec []byte) (map[string]uint64, error) {
	d := decoder{b: rec}
	d.version()
	refs := make(map[string]uint64)
	for d.err == nil && len(d.b) > 0 {
		in := d.string()
		refs[in] = d.uvarint()
	}
	if d.err != nil {
		return nil, fmt.Errorf("refs of message %d: %w", id, d.err)
	}
	return refs, nil
}

// u64 decodes an 8-byte big-endian value.
func u64(v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: %d-byte number", errCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
