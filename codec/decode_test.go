package codec

import (
	"bytes"
	"errors"
	"testing"

	"github.com/imgn/imgn/codec/pb"
)

// stream builds a byte stream of several frames of different serializers
// and sizes, and returns it with the frames' headers.
func stream(t testing.TB) ([]byte, []Header) {
	t.Helper()
	var b []byte
	var hs []Header
	msgs := sampleMessages()
	for i, m := range msgs {
		ser := SerializerID(i%3 + 1)
		start := len(b)
		var err error
		b, err = AppendFrame(b, ser, CmdSend, Flags(i), uint32(i+1), m)
		if err != nil {
			t.Fatal(err)
		}
		h, _ := ParseHeader(b[start:])
		hs = append(hs, h)
	}
	b = AppendRawFrame(b, JSON, CmdHeartbeat, 0, 999, nil) // empty body
	hs = append(hs, Header{Version: 1, Serializer: JSON, Command: CmdHeartbeat, Seq: 999})
	return b, hs
}

func TestDecodeWholeStreamInOneRead(t *testing.T) {
	b, hs := stream(t)
	p := &SlicePeeker{B: b}
	var got []Header
	n, err := Decoder{}.Decode(p, func(f Frame) error {
		if len(f.Body) != int(f.Length) {
			t.Fatalf("body len %d != %d", len(f.Body), f.Length)
		}
		got = append(got, f.Header)
		return nil
	})
	if err != nil || n != len(hs) {
		t.Fatalf("n=%d err=%v", n, err)
	}
	for i := range hs {
		if got[i] != hs[i] {
			t.Fatalf("frame %d: %+v want %+v", i, got[i], hs[i])
		}
	}
	if p.InboundBuffered() != 0 {
		t.Fatalf("%d bytes left", p.InboundBuffered())
	}
}

// TestDecodeSplitAtEveryOffset feeds the stream in two reads split at
// every byte offset, and in one-byte reads, and checks the same frames come
// out in order with their bodies intact.
func TestDecodeSplitAtEveryOffset(t *testing.T) {
	b, hs := stream(t)
	wantBodies := map[uint32][]byte{}
	_, _ = Decoder{}.Decode(&SlicePeeker{B: bytes.Clone(b)}, func(f Frame) error {
		wantBodies[f.Seq] = bytes.Clone(f.Body)
		return nil
	})
	check := func(t *testing.T, chunks [][]byte) {
		buf := &SlicePeeker{}
		var got []Header
		for _, c := range chunks {
			buf.B = append(buf.B, c...)
			if _, err := (Decoder{}).Decode(buf, func(f Frame) error {
				if !bytes.Equal(f.Body, wantBodies[f.Seq]) {
					t.Fatalf("frame seq %d: body differs", f.Seq)
				}
				got = append(got, f.Header)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		if len(got) != len(hs) {
			t.Fatalf("got %d frames, want %d", len(got), len(hs))
		}
		for i := range hs {
			if got[i] != hs[i] {
				t.Fatalf("frame %d: %+v want %+v", i, got[i], hs[i])
			}
		}
	}
	for cut := 0; cut <= len(b); cut++ {
		check(t, [][]byte{b[:cut], b[cut:]})
	}
	var ones [][]byte
	for i := range b {
		ones = append(ones, b[i:i+1])
	}
	check(t, ones)
}

func TestDecodeErrors(t *testing.T) {
	good, _ := AppendFrame(nil, JSON, CmdLogin, 0, 5, &pb.LoginRequest{User: "a"})
	tests := []struct {
		name    string
		in      []byte
		max     int
		wantErr error
		wantSeq uint32
	}{
		{"bad magic", append([]byte("XMGN"), good[4:]...), 0, ErrBadMagic, 5},
		{"bad version", append(append([]byte{}, good[:4]...), append([]byte{9}, good[5:]...)...), 0, ErrUnsupportedVersion, 5},
		{"unknown serializer", append(append([]byte{}, good[:5]...), append([]byte{7}, good[6:]...)...), 0, ErrUnknownSerializer, 5},
		{"too large default", rawHeader(Magic, 1, 1, 2, 0, 6, DefaultMaxBody+1), 0, ErrFrameTooLarge, 6},
		{"too large configured", good, 4, ErrFrameTooLarge, 5},
		{"negative-looking length", rawHeader(Magic, 1, 1, 2, 0, 8, 0x80000000), 0, ErrFrameTooLarge, 8},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Decoder{MaxBody: tc.max}
			f, ok, err := d.Next(&SlicePeeker{B: tc.in})
			if ok || !errors.Is(err, tc.wantErr) {
				t.Fatalf("ok=%v err=%v want %v", ok, err, tc.wantErr)
			}
			if f.Seq != tc.wantSeq {
				t.Fatalf("seq %d want %d (needed to answer the request)", f.Seq, tc.wantSeq)
			}
			_, _, err2 := d.ParseFrame(tc.in)
			if !errors.Is(err2, tc.wantErr) {
				t.Fatalf("ParseFrame err=%v", err2)
			}
		})
	}
	// A too-large length is rejected from the header alone, before any body.
	if _, _, err := (Decoder{}).Next(&SlicePeeker{B: rawHeader(Magic, 1, 1, 2, 0, 1, 1<<30)}); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("header-only oversized: %v", err)
	}
	// Incomplete is "need more", not an error.
	for cut := 0; cut < len(good); cut++ {
		if _, ok, err := (Decoder{}).Next(&SlicePeeker{B: good[:cut]}); ok || err != nil {
			t.Fatalf("cut %d: ok=%v err=%v", cut, ok, err)
		}
	}
	// A handler error stops decoding after discarding that frame.
	two := append(append([]byte{}, good...), good...)
	p := &SlicePeeker{B: two}
	stop := errors.New("stop")
	n, err := (Decoder{}).Decode(p, func(Frame) error { return stop })
	if n != 1 || err != stop || p.InboundBuffered() != len(good) {
		t.Fatalf("n=%d err=%v left=%d", n, err, p.InboundBuffered())
	}
}

func TestDecodeAllocatesNothing(t *testing.T) {
	frame, _ := AppendFrame(nil, Protobuf, CmdSend, 0, 1, &pb.SendRequest{ClientMsgId: "c", To: "bob", Body: []byte("hello")})
	p := &SlicePeeker{}
	var d Decoder
	var sink int
	allocs := testing.AllocsPerRun(1000, func() {
		p.B = frame
		f, ok, err := d.Next(p)
		if !ok || err != nil {
			t.Fatal("decode failed")
		}
		sink += len(f.Body)
		_, _ = p.Discard(f.FrameSize())
	})
	if allocs != 0 {
		t.Fatalf("Next allocates %.1f times per frame, want 0", allocs)
	}
	allocs = testing.AllocsPerRun(1000, func() {
		h, err := ParseHeader(frame)
		if err != nil {
			t.Fatal(err)
		}
		sink += int(h.Length)
	})
	if allocs != 0 {
		t.Fatalf("ParseHeader allocates %.1f times, want 0", allocs)
	}
	buf := make([]byte, 0, 256)
	msg := &pb.SendAck{ClientMsgId: "c", MsgId: 1, Seq: 2, Time: 3}
	allocs = testing.AllocsPerRun(1000, func() {
		var err error
		buf, err = AppendFrame(buf[:0], Protobuf, CmdSendAck, 0, 1, msg)
		if err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("AppendFrame(protobuf) into a large enough buffer allocates %.1f times, want 0", allocs)
	}
	_ = sink
}
