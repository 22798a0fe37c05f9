package mongostore

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/imgn/imgn/persist"
)

// Identifiers (user, group, device, inbox names, Message.From/To/ClientMsgID,
// group names, password hashes) are arbitrary byte strings in package
// persist, but BSON strings must be UTF-8 and some servers (FerretDB among
// them) mangle NUL bytes. So a value is stored as a BSON string when it is
// valid UTF-8 without NUL (the usual case, readable in mongosh) and as BSON
// binary (subtype 0) otherwise. The mapping is deterministic and injective,
// so equality queries and unique indexes work on the encoded form.
func enc(s string) any {
	if plain(s) {
		return s
	}
	return bson.Binary{Subtype: bson.TypeBinaryGeneric, Data: []byte(s)}
}

func plain(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// encAll encodes every element of ss.
func encAll(ss []string) bson.A {
	a := make(bson.A, len(ss))
	for i, s := range ss {
		a[i] = enc(s)
	}
	return a
}

// dec is the inverse of enc for a field value.
func dec(v bson.RawValue) (string, error) {
	switch v.Type {
	case bson.TypeString:
		return v.StringValue(), nil
	case bson.TypeBinary:
		_, data := v.Binary()
		return string(data), nil
	default:
		return "", fmt.Errorf("%w: identifier of BSON type %v", errCorrupt, v.Type)
	}
}

// keyPart encodes s as a self-delimiting string usable inside an _id: plain
// values as "<len>:<s>" (starts with a digit), others as "x<hex>:" (starts
// with 'x'). Concatenations of key parts are therefore unambiguous.
// FerretDB's SQLite backend can use its primary key only for a string _id,
// so the hot lookups (inbox entries, heads, cursors) are by string _id.
func keyPart(s string) string {
	if plain(s) {
		return strconv.Itoa(len(s)) + ":" + s
	}
	return "x" + hex.EncodeToString([]byte(s)) + ":"
}

// inboxKey is the _id of the inbox entry (user, seq): the key part of the
// user and the seq as 16 hex digits, so that it is unique exactly when
// (user, seq) is.
func inboxKey(user string, seq uint64) string {
	var b strings.Builder
	p := keyPart(user)
	b.Grow(len(p) + 16)
	b.WriteString(p)
	var h [16]byte
	const digits = "0123456789abcdef"
	for i := 15; i >= 0; i-- {
		h[i] = digits[seq&0xf]
		seq >>= 4
	}
	b.Write(h[:])
	return b.String()
}

// cursorKey is the _id of the cursor of (user, device).
func cursorKey(user, device string) string { return keyPart(user) + keyPart(device) }

// Seqs are stored as int64 (BSON has no unsigned integers). Inbox seqs
// start at 1 and never reach 2^63. Message IDs use the two's-complement bit
// pattern (only equality is ever asked of them). Cursors can be any uint64
// and are compared with $max, so they are stored order-preserving with the
// sign bit flipped.
func idToDB(id uint64) int64      { return int64(id) }
func idFromDB(v int64) uint64     { return uint64(v) }
func cursorToDB(c uint64) int64   { return int64(c ^ (1 << 63)) }
func cursorFromDB(v int64) uint64 { return uint64(v) ^ (1 << 63) }

// maxSeq is the largest inbox seq the store can hold.
const maxSeq = math.MaxInt64

// messageDoc is the document of a message in messages. mid repeats the
// ID as a string (midKey) for FerretDB, which cannot look up an int64
// beyond 2^53 (most message IDs) by equality: it turns that filter into
// "every value above 2^53", a read of the whole collection.
func messageDoc(m *persist.Message) bson.D {
	return appendMessageFields(bson.D{{Key: "_id", Value: idToDB(m.ID)}}, m)
}

// appendMessageFields adds the fields of message m to d: a messages
// document, or an origin entry (whose msg holds the ID). mid is what both
// are looked up by on FerretDB (see messageDoc), and on an inbox entry
// what makes it an origin entry (isOrigin).
func appendMessageFields(d bson.D, m *persist.Message) bson.D {
	return appendEventFields(append(d,
		bson.E{Key: "mid", Value: midKey(m.ID)},
		bson.E{Key: "from", Value: enc(m.From)},
		bson.E{Key: "cmid", Value: enc(m.ClientMsgID)},
		bson.E{Key: "to", Value: enc(m.To)},
		bson.E{Key: "group", Value: m.Group},
		bson.E{Key: "ts", Value: m.Timestamp},
		bson.E{Key: "kind", Value: int64(m.Kind)},
		bson.E{Key: "body", Value: bson.Binary{Subtype: bson.TypeBinaryGeneric, Data: m.Body}},
	), m)
}

// isOrigin reports whether an inbox entry document is an origin entry
// (it carries its message).
func isOrigin(raw bson.Raw) bool {
	_, err := raw.LookupErr("mid")
	return err == nil
}

// midKey is a message ID as the string of a message document's mid field.
func midKey(id uint64) string { return strconv.FormatUint(id, 16) }

// decodeMessage decodes a messages document or an origin entry. The body
// is copied: the result shares no memory with raw.
func decodeMessage(raw bson.Raw) (persist.Message, error) {
	var m persist.Message
	idField := "_id"
	if v, err := raw.LookupErr("_id"); err == nil && v.Type == bson.TypeString {
		idField = "msg" // an origin entry: its _id is the entry's
	}
	id, err := int64Field(raw, idField)
	if err != nil {
		return m, err
	}
	m.ID = idFromDB(id)
	if m.From, err = strField(raw, "from"); err != nil {
		return m, err
	}
	if m.ClientMsgID, err = strField(raw, "cmid"); err != nil {
		return m, err
	}
	if m.To, err = strField(raw, "to"); err != nil {
		return m, err
	}
	g, err := lookup(raw, "group", bson.TypeBoolean)
	if err != nil {
		return m, err
	}
	m.Group = g.Boolean()
	if m.Timestamp, err = int64Field(raw, "ts"); err != nil {
		return m, err
	}
	kind, err := int64Field(raw, "kind")
	if err != nil {
		return m, err
	}
	m.Kind = uint32(kind)
	body, err := lookup(raw, "body", bson.TypeBinary)
	if err != nil {
		return m, err
	}
	_, data := body.Binary()
	m.Body = bytes.Clone(data)
	return m, decodeEventFields(raw, &m)
}

// strField decodes the identifier field name of raw (see enc).
func strField(raw bson.Raw, name string) (string, error) {
	v, err := raw.LookupErr(name)
	if err != nil {
		return "", fmt.Errorf("%w: no field %q", errCorrupt, name)
	}
	return dec(v)
}

// lookup returns the top-level field name of raw, which must have type t.
func lookup(raw bson.Raw, name string, t bson.Type) (bson.RawValue, error) {
	v, err := raw.LookupErr(name)
	if err != nil {
		return v, fmt.Errorf("%w: no field %q", errCorrupt, name)
	}
	if v.Type != t {
		return v, fmt.Errorf("%w: field %q has BSON type %v, want %v", errCorrupt, name, v.Type, t)
	}
	return v, nil
}

// int64Field returns the int64 field name of raw.
func int64Field(raw bson.Raw, name string) (int64, error) {
	v, err := lookup(raw, name, bson.TypeInt64)
	if err != nil {
		return 0, err
	}
	return v.Int64(), nil
}
