package pebblestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
)

// Tables: the first byte of every key. The layout is described in the
// package doc.
const (
	tMeta    = 0x00
	tConv    = 'v'
	tConvIdx = 'x'
	tCursor  = 'c'
	tDedup   = 'd'
	tGroup   = 'g'
	tHead    = 'h'
	tInbox   = 'i'
	tMessage = 'm'
	tMember  = 'n'
	tRefs    = 'r'
	tUser    = 'u'
	tUserGrp = 'j'
)

const (
	// formatVersion is the key layout. 2: message records may carry their
	// inbox entries (flagRefs) instead of a refs record; a store of format
	// 1 (every message has a refs record) is read unchanged and marked 2
	// at Open, so that an older binary refuses it rather than miss refs.
	formatVersion = 2
	recordV1      = 1 // the record encodings below

	flagGroup    = 1 << 0 // message flags byte
	flagEvent    = 1 << 1 // an event entry: uvarint(event) uvarint(target) follow the kind
	flagRecalled = 1 << 2 // a recalled message: uvarint(recall event id) follows; no body
	// flagRefs: the message's inbox entries follow (before the body), and
	// it has no refs record: uvarint(n), then per entry a tag (refFrom,
	// refTo, or refOther and lp(inbox)) and uvarint(seq).
	flagRefs = 1 << 3

	refFrom, refTo, refOther = 0, 1, 2 // inline ref tags

	// DefaultInlineRefs is the most inbox entries a message record carries
	// itself: a 1:1 message (two) has no refs record, one key less per
	// append; a group message keeps its entries in the refs table so that
	// reading the message does not read them.
	DefaultInlineRefs = 4

	// entryHidden marks an inbox entry its owner deleted (the optional
	// ninth byte of an inbox entry's value).
	entryHidden = 1 << 0
)

// metaFormatKey holds formatVersion.
var metaFormatKey = []byte("\x00format")

// errCorrupt marks a record or key that does not decode; it is never
// returned for caller mistakes.
var errCorrupt = errors.New("pebblestore: corrupt record")

// appendLP appends uvarint(len(s)) s. A uvarint is prefix-free, so lp(a) is
// never a proper prefix of lp(b) for a != b: "every key of user u" is
// exactly "every key starting with t lp(u)".
func appendLP(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBE64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

// keyLP returns t lp(s), appended to b[:0].
func keyLP(b []byte, t byte, s string) []byte { return appendLP(append(b[:0], t), s) }

// keyLP2 returns t lp(a) b2, appended to b[:0].
func keyLP2(b []byte, t byte, a, b2 string) []byte { return append(keyLP(b, t, a), b2...) }

// keyID returns t be64(id), appended to b[:0].
func keyID(b []byte, t byte, id uint64) []byte { return appendBE64(append(b[:0], t), id) }

// keyInbox returns 'i' lp(user) be64(seq), appended to b[:0].
func keyInbox(b []byte, user string, seq uint64) []byte {
	return appendBE64(keyLP(b, tInbox, user), seq)
}

// keyString returns t s, appended to b[:0] (users and groups: the id is the
// rest of the key).
func keyString(b []byte, t byte, s string) []byte { return append(append(b[:0], t), s...) }

// prefixEnd returns the smallest key above every key starting with prefix
// (prefix is not modified). Prefixes here never end in 0xff runs that
// exhaust: a table byte below 0xff always increments.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil // unreachable for our tables
}

// head is an inbox's head: the highest seq given out and the lowest seq
// still kept (1 when nothing was removed). Its record is written only when
// retention removes entries (an inbox that lost everything must not give its
// seqs out again); otherwise the last seq is that of the inbox's last entry.
type head struct {
	last, first uint64
}

// headAt reads inbox's head through it (positioned anywhere): its head
// record, if any, and its last entry.
func headAt(it *pebble.Iterator, inbox string) (head, error) {
	h := head{first: 1}
	k := keyLP(nil, tHead, inbox)
	if it.SeekGE(k) && bytes.Equal(it.Key(), k) {
		v, err := it.ValueAndErr()
		if err == nil {
			h, err = decodeHead(v)
		}
		if err != nil {
			return head{}, err
		}
	}
	prefix := keyLP(k, tInbox, inbox)
	if it.SeekLT(prefixEnd(prefix)) && bytes.HasPrefix(it.Key(), prefix) {
		seq, err := u64(it.Key()[len(prefix):])
		if err != nil {
			return head{}, err
		}
		h.last = max(h.last, seq)
	}
	return h, it.Error()
}

func appendHead(b []byte, h head) []byte {
	return appendBE64(appendBE64(b, h.last), h.first)
}

func decodeHead(v []byte) (head, error) {
	if len(v) != 16 {
		return head{}, fmt.Errorf("%w: %d-byte inbox head", errCorrupt, len(v))
	}
	return head{last: binary.BigEndian.Uint64(v), first: binary.BigEndian.Uint64(v[8:])}, nil
}

// u64 decodes an 8-byte big-endian value.
func u64(v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: %d-byte number", errCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// appendMessage appends the record of m (without the ID, which is the key),
// without refs.
func appendMessage(b []byte, m *persist.Message) []byte { return appendMessageRec(b, m, 0, nil) }

// appendMessageRec appends the record of m; recallEv != 0 records that m
// was recalled by that event, and drops the body; refs, when not nil, are
// the message's inbox entries, carried by the record (flagRefs). Records
// of plain messages without refs are those of the first layout (the flags
// that add fields are new), so stores written before the chat seam read
// unchanged.
func appendMessageRec(b []byte, m *persist.Message, recallEv uint64, refs []ref) []byte {
	b = append(b, recordV1)
	b = appendLP(b, m.From)
	b = appendLP(b, m.To)
	var flags byte
	if m.Group {
		flags |= flagGroup
	}
	if m.Event != persist.EventNone {
		flags |= flagEvent
	}
	if recallEv != 0 {
		flags |= flagRecalled
	}
	if refs != nil {
		flags |= flagRefs
	}
	b = append(b, flags)
	b = appendLP(b, m.ClientMsgID)
	b = binary.AppendVarint(b, m.Timestamp)
	b = binary.AppendUvarint(b, uint64(m.Kind))
	if m.Event != persist.EventNone {
		b = binary.AppendUvarint(b, uint64(m.Event))
		b = binary.AppendUvarint(b, m.Target)
	}
	if recallEv != 0 {
		b = binary.AppendUvarint(b, recallEv)
	}
	if refs != nil {
		b = binary.AppendUvarint(b, uint64(len(refs)))
		for _, r := range refs {
			switch r.inbox {
			case m.From:
				b = append(b, refFrom)
			case m.To:
				b = append(b, refTo)
			default:
				b = appendLP(append(b, refOther), r.inbox)
			}
			b = binary.AppendUvarint(b, r.seq)
		}
	}
	if recallEv != 0 {
		return b
	}
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

// decodeMessage decodes a record made by appendMessage. The returned message
// shares no memory with rec (Pebble values are only valid until their
// closer or iterator moves). A record with no body decodes to a nil Body.
func decodeMessage(id uint64, rec []byte) (persist.Message, error) {
	m, _, err := decodeMessageRec(id, rec)
	return m, err
}

// decodeMessageRec is decodeMessage that also returns the id of the event
// that recalled the message (0: not recalled).
func decodeMessageRec(id uint64, rec []byte) (persist.Message, uint64, error) {
	m, recallEv, _, err := decodeMessageRefs(id, rec, nil, true)
	return m, recallEv, err
}

// decodeMessageRefs decodes a message record. If the record carries the
// message's refs (inline), they are appended to (*refs)[:0] when refs is not
// nil; otherwise they are in the refs table. With body false the body is
// left out (retention and retries need only the header). The message and
// refs share no memory with rec.
func decodeMessageRefs(id uint64, rec []byte, refs *[]ref, body bool) (m persist.Message, recallEv uint64, inline bool, err error) {
	d := decoder{b: rec}
	d.version()
	m = persist.Message{ID: id}
	m.From = d.string()
	m.To = d.string()
	flags := d.byte()
	m.ClientMsgID = d.string()
	m.Timestamp = d.varint()
	kind := d.uvarint()
	if d.err == nil && kind > 1<<32-1 {
		d.fail()
	}
	if flags&flagEvent != 0 {
		ev := d.uvarint()
		m.Target = d.uvarint()
		if d.err == nil && (ev == 0 || ev > 1<<32-1) {
			d.fail()
		}
		m.Event = uint32(ev)
	}
	if flags&flagRecalled != 0 {
		if recallEv = d.uvarint(); d.err == nil && recallEv == 0 {
			d.fail()
		}
	}
	if inline = flags&flagRefs != 0; inline {
		d.refs(&m, refs)
	}
	if d.err == nil && flags&flagRecalled != 0 && len(d.b) != 0 {
		d.fail() // a recalled message has no body
	}
	if d.err == nil && flags&^(flagGroup|flagEvent|flagRecalled|flagRefs) != 0 {
		d.err = fmt.Errorf("%w: message flags %#x", errCorrupt, flags)
	}
	if d.err != nil {
		return persist.Message{}, 0, false, fmt.Errorf("message %d: %w", id, d.err)
	}
	m.Group = flags&flagGroup != 0
	m.Kind = uint32(kind)
	m.Recalled = recallEv != 0
	if body && len(d.b) > 0 {
		m.Body = append([]byte(nil), d.b...)
	}
	return m, recallEv, inline, nil
}

// refs decodes inline refs of message m into refs (if not nil); inboxes
// named by tag share m's strings.
func (d *decoder) refs(m *persist.Message, refs *[]ref) {
	n := d.uvarint()
	if d.err == nil && (n == 0 || n > uint64(len(d.b))/2) {
		d.fail() // every entry takes two bytes at least
	}
	if refs != nil {
		*refs = (*refs)[:0]
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		var in string
		switch tag := d.byte(); tag {
		case refFrom:
			in = m.From
		case refTo:
			in = m.To
		case refOther:
			in = d.string()
		default:
			d.fail()
		}
		seq := d.uvarint()
		if refs != nil && d.err == nil {
			*refs = append(*refs, ref{in, seq})
		}
	}
}

// appendEntry appends an inbox entry's value: the message id, and a flags
// byte only when the owner deleted the message.
func appendEntry(b []byte, id uint64, hidden bool) []byte {
	b = appendBE64(b, id)
	if hidden {
		b = append(b, entryHidden)
	}
	return b
}

// decodeEntry decodes an inbox entry's value.
func decodeEntry(v []byte) (id uint64, hidden bool, err error) {
	switch {
	case len(v) == 8:
	case len(v) == 9 && v[8] == entryHidden:
		hidden = true
	default:
		return 0, false, fmt.Errorf("%w: %d-byte inbox entry", errCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), hidden, nil
}

// Conversations (chat.go). A conversation is named kind lp(id), kind 0
// for a peer and 1 for a group.

// appendConvID appends kind lp(id).
func appendConvID(b []byte, id persist.ConvID) []byte {
	var kind byte
	if id.Group {
		kind = 1
	}
	return appendLP(append(b, kind), id.ID)
}

// keyConv returns t lp(user) kind lp(id), appended to b[:0]: the key of a
// conversation record (tConv) or the prefix of its index (tConvIdx).
func keyConv(b []byte, t byte, user string, id persist.ConvID) []byte {
	return appendConvID(keyLP(b, t, user), id)
}

// keyConvEntry returns 'x' lp(user) kind lp(id) be64(seq), appended to b[:0].
func keyConvEntry(b []byte, user string, id persist.ConvID, seq uint64) []byte {
	return appendBE64(keyConv(b, tConvIdx, user, id), seq)
}

// parseConvID decodes kind lp(id) at the start of b and returns the
// conversation and the bytes it took.
func parseConvID(b []byte) (persist.ConvID, int, error) {
	if len(b) < 1 || b[0] > 1 {
		return persist.ConvID{}, 0, fmt.Errorf("%w: conversation key", errCorrupt)
	}
	n, w := binary.Uvarint(b[1:])
	if w <= 0 || n > uint64(len(b)-1-w) {
		return persist.ConvID{}, 0, fmt.Errorf("%w: conversation key", errCorrupt)
	}
	end := 1 + w + int(n)
	return persist.ConvID{ID: string(b[1+w : end]), Group: b[0] == 1}, end, nil
}

// convEntry is the value of a conversation index entry: counts as of that
// entry, so that the last entry alone gives the conversation's state.
type convEntry struct {
	others uint64 // messages from others in the conversation up to this one, ever
	own    uint64 // the seq of the owner's newest own message up to this one (0: none)
}

func appendConvEntry(b []byte, e convEntry) []byte {
	return binary.AppendUvarint(binary.AppendUvarint(b, e.others), e.own)
}

func decodeConvEntry(v []byte) (convEntry, error) {
	d := decoder{b: v}
	e := convEntry{others: d.uvarint(), own: d.uvarint()}
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	if d.err != nil {
		return convEntry{}, fmt.Errorf("conversation entry: %w", d.err)
	}
	return e, nil
}

// convRecord is the value of a conversation record: the read cursor, and
// floors of the last seq and the count of others' messages, which keep the
// conversation's state once retention removed all its index entries.
type convRecord struct {
	read, last, others uint64
}

func appendConvRecord(b []byte, r convRecord) []byte {
	return appendBE64(appendBE64(appendBE64(b, r.read), r.last), r.others)
}

func decodeConvRecord(v []byte) (convRecord, error) {
	if len(v) != 24 {
		return convRecord{}, fmt.Errorf("%w: %d-byte conversation record", errCorrupt, len(v))
	}
	return convRecord{read: binary.BigEndian.Uint64(v), last: binary.BigEndian.Uint64(v[8:]), others: binary.BigEndian.Uint64(v[16:])}, nil
}

// ref is one inbox entry of a message.
type ref struct {
	inbox string
	seq   uint64
}

// refsRecord is the refs table's value: what retention and retries need to
// know about a message without reading its body.
type refsRecord struct {
	ts                int64 // Message.Timestamp
	from, clientMsgID string
	refs              []ref
}

func appendRefsHeader(b []byte, ts int64, from, clientMsgID string) []byte {
	b = append(b, recordV1)
	b = binary.AppendVarint(b, ts)
	b = appendLP(b, from)
	return appendLP(b, clientMsgID)
}

func appendRef(b []byte, inbox string, seq uint64) []byte {
	return binary.AppendUvarint(appendLP(b, inbox), seq)
}

// recordRefs decodes message record rec of message id into r (timestamp,
// sender, client message id, refs): from the record itself, or from the
// message's refs record, read through get, when the record does not carry
// them. r shares no memory with rec or get's values.
func recordRefs(id uint64, rec []byte, r *refsRecord, get func(key []byte) ([]byte, bool, error)) error {
	m, _, inline, err := decodeMessageRefs(id, rec, &r.refs, false)
	if err != nil {
		return err
	}
	if inline {
		r.ts, r.from, r.clientMsgID = m.Timestamp, m.From, m.ClientMsgID
		return nil
	}
	v, ok, err := get(keyID(nil, tRefs, id))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: missing refs of message %d", errCorrupt, id)
	}
	return decodeRefs(id, v, r)
}

// decodeRefs decodes a refs record into r, reusing r.refs.
func decodeRefs(id uint64, rec []byte, r *refsRecord) error {
	d := decoder{b: rec}
	d.version()
	r.ts = d.varint()
	r.from = d.string()
	r.clientMsgID = d.string()
	r.refs = r.refs[:0]
	for d.err == nil && len(d.b) > 0 {
		in := d.string()
		r.refs = append(r.refs, ref{in, d.uvarint()})
	}
	if d.err != nil {
		return fmt.Errorf("refs of message %d: %w", id, d.err)
	}
	return nil
}

func appendUser(b []byte, u *persist.User) []byte {
	b = append(b, recordV1)
	b = appendLP(b, u.PasswordHash)
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
