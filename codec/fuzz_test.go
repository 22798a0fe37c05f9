package codec

import (
	"bytes"
	"testing"

	"github.com/imgn/imgn/codec/pb"
)

// FuzzDecode feeds arbitrary bytes to the decoder whole and split in two at
// every third offset, and checks: no panic, the same frames either way, and
// every frame's body decodes without panicking in its serializer.
func FuzzDecode(f *testing.F) {
	b, _ := stream(f)
	f.Add(b)
	f.Add(b[:40])
	f.Add(rawHeader(Magic, 1, 1, 4, 0, 1, 0))
	f.Add(rawHeader(Magic, 1, 3, 0x10, 0, 1, 0xFFFFFFFF))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	d := Decoder{MaxBody: 4096}
	f.Fuzz(func(t *testing.T, data []byte) {
		whole, wholeErr := decodeAll(d, [][]byte{data})
		for cut := 0; cut <= len(data); cut += 3 {
			split, splitErr := decodeAll(d, [][]byte{data[:cut], data[cut:]})
			if (wholeErr == nil) != (splitErr == nil) || len(whole) != len(split) {
				t.Fatalf("cut %d: whole %d frames err %v, split %d frames err %v", cut, len(whole), wholeErr, len(split), splitErr)
			}
			for i := range whole {
				if whole[i].Header != split[i].Header || !bytes.Equal(whole[i].Body, split[i].Body) {
					t.Fatalf("cut %d: frame %d differs", cut, i)
				}
			}
		}
	})
}

func decodeAll(d Decoder, chunks [][]byte) ([]Frame, error) {
	var out []Frame
	p := &SlicePeeker{}
	for _, c := range chunks {
		p.B = append(p.B, c...)
		_, err := d.Decode(p, func(f Frame) error {
			out = append(out, Frame{Header: f.Header, Body: bytes.Clone(f.Body)})
			// Every body type must survive garbage without panicking.
			_ = Unmarshal(f.Serializer, f.Body, &pb.Push{})
			_ = Unmarshal(f.Serializer, f.Body, &pb.LoginRequest{})
			return nil
		})
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// FuzzSerializers decodes arbitrary bodies with every serializer into a
// nested message type and re-encodes what decoded: no panics, and a decoded
// value always re-encodes.
func FuzzSerializers(f *testing.F) {
	for _, id := range []SerializerID{JSON, Protobuf, MsgPack} {
		s, _ := Lookup(id)
		for _, m := range sampleMessages() {
			body, _ := s.Append(nil, m)
			f.Add(uint8(id), body)
		}
	}
	f.Fuzz(func(t *testing.T, id uint8, body []byte) {
		s, err := Lookup(SerializerID(id))
		if err != nil {
			return
		}
		var m pb.SyncOK
		if err := s.Unmarshal(body, &m); err != nil {
			return
		}
		if _, err := s.Append(nil, &m); err != nil {
			t.Fatalf("decoded value does not re-encode: %v", err)
		}
	})
}
