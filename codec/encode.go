package codec

import (
	"encoding/binary"
	"fmt"

	"google.golang.org/protobuf/proto"
)

// AppendFrame appends a whole frame to dst: a header with the given
// serializer, command, flags and request seq, and msg encoded by that
// serializer as the body (a nil msg gives an empty body). It returns the
// extended slice. On error dst is returned unextended (truncated to its
// original length).
//
// AppendFrame allocates only when dst must grow; callers that send many
// frames reuse one buffer (see bytebufferpool in the engine and client).
func AppendFrame(dst []byte, ser SerializerID, cmd Command, flags Flags, seq uint32, msg proto.Message) ([]byte, error) {
	s, err := Lookup(ser)
	if err != nil {
		return dst, err
	}
	start := len(dst)
	dst = AppendHeader(dst, Header{Version: Version1, Serializer: ser, Command: cmd, Flags: flags, Seq: seq})
	if msg != nil {
		dst, err = s.Append(dst, msg)
		if err != nil {
			return dst[:start], fmt.Errorf("codec: encode %s: %w", cmd, err)
		}
	}
	bodyLen := len(dst) - start - HeaderSize
	binary.BigEndian.PutUint32(dst[start+12:start+16], uint32(bodyLen))
	return dst, nil
}

// AppendRawFrame appends a frame whose body is already encoded (for
// example a message encoded once for a group fan-out).
func AppendRawFrame(dst []byte, ser SerializerID, cmd Command, flags Flags, seq uint32, body []byte) []byte {
	dst = AppendHeader(dst, Header{Version: Version1, Serializer: ser, Command: cmd, Flags: flags, Seq: seq, Length: uint32(len(body))})
	return append(dst, body...)
}
