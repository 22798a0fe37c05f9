package codec

import (
	"testing"

	"github.com/imgn/imgn/codec/pb"
)

// typicalMessage is a chat message as pushed to a client: about 60 bytes of
// text plus ids.
func typicalMessage() *pb.Message {
	return &pb.Message{Seq: 123456, MsgId: 7390000000000001234, From: "alice_1024", To: "bob_2048",
		ClientMsgId: "c7f3a9e0-42", Kind: 0, Body: []byte("hey, are we still on for lunch tomorrow at noon? :)"), Time: 1764150000000}
}

func BenchmarkParseHeader(b *testing.B) {
	frame, _ := AppendFrame(nil, Protobuf, CmdSend, 0, 1, typicalMessage())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseHeader(frame); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecoderNext(b *testing.B) {
	frame, _ := AppendFrame(nil, Protobuf, CmdSend, 0, 1, typicalMessage())
	p := &SlicePeeker{}
	var d Decoder
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		p.B = frame
		f, ok, err := d.Next(p)
		if !ok || err != nil {
			b.Fatal(err)
		}
		_, _ = p.Discard(f.FrameSize())
	}
}

func BenchmarkAppendFrame(b *testing.B) {
	for _, id := range []SerializerID{JSON, Protobuf, MsgPack} {
		b.Run(id.String(), func(b *testing.B) {
			m := typicalMessage()
			buf := make([]byte, 0, 512)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				buf, err = AppendFrame(buf[:0], id, CmdPush, 0, 0, m)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	for _, id := range []SerializerID{JSON, Protobuf, MsgPack} {
		b.Run(id.String(), func(b *testing.B) {
			s, _ := Lookup(id)
			body, _ := s.Append(nil, typicalMessage())
			var m pb.Message
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Unmarshal(body, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
