package codec

import (
	"fmt"
	"testing"

	"github.com/imgn/imgn/codec/pb"
)

// The fast paths next to the generic path they replace, on the typical
// chat message of bench_test.go. "generic" is what the engine did before:
// Unmarshal into a pb struct, AppendFrame of a pb struct.

func typicalSend() *pb.SendRequest {
	m := typicalMessage()
	return &pb.SendRequest{ClientMsgId: m.ClientMsgId, To: m.To, Kind: m.Kind, Body: m.Body}
}

func typicalFields() *MessageFields {
	m := typicalMessage()
	return &MessageFields{MsgID: m.MsgId, From: m.From, To: m.To, GroupID: m.GroupId, ClientMsgID: m.ClientMsgId, Kind: m.Kind, Body: m.Body, Time: m.Time}
}

func BenchmarkDecodeSend(b *testing.B) {
	for _, ser := range allSerializers {
		s, _ := Lookup(ser)
		body, _ := s.Append(nil, typicalSend())
		b.Run("generic/"+ser.String(), func(b *testing.B) {
			var m pb.SendRequest
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Unmarshal(body, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("fast/"+ser.String(), func(b *testing.B) {
			var v SendView
			scratch := make([]byte, 0, len(body))
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if scratch, err = DecodeSend(ser, body, false, &v, scratch[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAppendSendAck(b *testing.B) {
	m := typicalMessage()
	for _, ser := range allSerializers {
		b.Run("generic/"+ser.String(), func(b *testing.B) {
			buf := make([]byte, 0, 256)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				buf, err = AppendFrame(buf[:0], ser, CmdSendAck, 0, 9, &pb.SendAck{ClientMsgId: m.ClientMsgId, MsgId: m.MsgId, Seq: m.Seq, Time: m.Time})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("fast/"+ser.String(), func(b *testing.B) {
			buf := make([]byte, 0, 256)
			b.ReportAllocs()
			for b.Loop() {
				buf = AppendSendAckFrame(buf[:0], ser, 9, m.ClientMsgId, m.MsgId, m.Seq, m.Time, false)
			}
		})
	}
}

// BenchmarkPush pushes one message to 1 inbox (the 1:1 case) and to 100
// inboxes (a group), each with its own seq: per op, that many frames. The
// fast path's op includes the template's Reset.
func BenchmarkPush(b *testing.B) {
	for _, members := range []int{1, 100} {
		for _, ser := range allSerializers {
			name := fmt.Sprintf("members=%d/%%s/%s", members, ser)
			b.Run(fmt.Sprintf(name, "generic"), func(b *testing.B) {
				m := typicalMessage()
				buf := make([]byte, 0, 512)
				b.ReportAllocs()
				for b.Loop() {
					for i := range members {
						m.Seq = uint64(1000 + i)
						var err error
						buf, err = AppendFrame(buf[:0], ser, CmdPush, 0, 0, &pb.Push{Messages: []*pb.Message{m}})
						if err != nil {
							b.Fatal(err)
						}
					}
				}
			})
			b.Run(fmt.Sprintf(name, "fast"), func(b *testing.B) {
				f := typicalFields()
				var t PushTemplate
				buf := make([]byte, 0, 512)
				b.ReportAllocs()
				for b.Loop() {
					t.Reset(f)
					for i := range members {
						buf = t.AppendFrame(buf[:0], ser, uint64(1000+i))
					}
				}
			})
		}
	}
}
