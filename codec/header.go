// Package codec implements the IMGN frame: a fixed 16-byte big-endian header
// followed by a body encoded by one of three serializers (JSON, Protobuf,
// MessagePack). docs/protocol.md is the normative spec.
//
// Decoding works in place on a gnet-style Peeker: the header and body are
// peeked, validated and handed to the caller as slices of the peeker's own
// buffer, so parsing a frame allocates nothing. Encoding is append-style:
// AppendFrame writes a whole frame to the end of a caller-owned slice.
//
// The hot commands have fast paths that allocate nothing: DecodeSend,
// DecodePushAck and DecodeSync decode request bodies in place into views,
// and AppendSendAckFrame, AppendHeartbeatOKFrame and PushTemplate (a PUSH
// encoded once and spliced per inbox seq) write replies that are byte for
// byte what AppendFrame writes. Where docs/protocol.md §3 is stricter than
// the generic serializers (UTF-8, integer ranges, the body's shape), the fast
// decoders follow the spec. DecodeRequest decodes every other client request
// with the same decoders, so a server applies §3 to every body it receives;
// the generic Unmarshal is for the frames a server sends.
//
// codec imports nothing from the rest of the project.
package codec

import (
	"encoding/binary"
	"fmt"
)

// HeaderSize is the fixed size of a frame header in bytes.
const HeaderSize = 16

// Magic is the first four bytes of every frame: "IMGN".
var Magic = [4]byte{'I', 'M', 'G', 'N'}

// magicU32 is Magic read as a big-endian uint32, for a one-compare check.
const magicU32 = uint32('I')<<24 | uint32('M')<<16 | uint32('G')<<8 | uint32('N')

// Version1 is the only protocol version this package speaks.
const Version1 uint8 = 1

// DefaultMaxBody is the default largest accepted body length (64 KiB).
const DefaultMaxBody = 64 << 10

// Flags is the header's bit field. Unknown bits are ignored by receivers.
type Flags uint8

const (
	// FlagResent marks a request the client is sending again (same request
	// seq and idempotency key) after a timeout or reconnect. Informational.
	FlagResent Flags = 1 << 0
)

// Header is a decoded frame header.
type Header struct {
	Version    uint8
	Serializer SerializerID
	Command    Command
	Flags      Flags
	// Seq correlates a reply with its request: replies echo the request's
	// Seq; server-initiated frames carry 0.
	Seq uint32
	// Length is the body length in bytes.
	Length uint32
}

// FrameSize is the whole frame's size: header plus body.
func (h Header) FrameSize() int { return HeaderSize + int(h.Length) }

// AppendHeader appends the 16-byte encoding of h to dst. It does not
// validate h.
func AppendHeader(dst []byte, h Header) []byte {
	dst = append(dst, Magic[0], Magic[1], Magic[2], Magic[3],
		h.Version, byte(h.Serializer), byte(h.Command), byte(h.Flags))
	dst = binary.BigEndian.AppendUint32(dst, h.Seq)
	return binary.BigEndian.AppendUint32(dst, h.Length)
}

// ParseHeader decodes and validates the first HeaderSize bytes of b: magic,
// version and serializer. The body length is not checked against a maximum
// here (see Decoder). On a validation error the returned Header still holds
// every field that was read, so the caller can answer the request seq in the
// peer's serializer where that is known.
//
// ParseHeader never panics; a b shorter than HeaderSize gives ErrShortHeader.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, ErrShortHeader
	}
	h := Header{
		Version:    b[4],
		Serializer: SerializerID(b[5]),
		Command:    Command(b[6]),
		Flags:      Flags(b[7]),
		Seq:        binary.BigEndian.Uint32(b[8:12]),
		Length:     binary.BigEndian.Uint32(b[12:16]),
	}
	if binary.BigEndian.Uint32(b[0:4]) != magicU32 {
		return h, ErrBadMagic
	}
	if h.Version != Version1 {
		return h, fmt.Errorf("%w: %d", ErrUnsupportedVersion, h.Version)
	}
	if !h.Serializer.Known() {
		return h, fmt.Errorf("%w: %d", ErrUnknownSerializer, uint8(h.Serializer))
	}
	return h, nil
}
