package codec

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/imgn/imgn/codec/pb"
)

func TestFrameReader(t *testing.T) {
	var stream []byte
	var err error
	for i, body := range []string{"first", "", string(bytes.Repeat([]byte("x"), 10000))} {
		stream, err = AppendFrame(stream, Protobuf, CmdSend, 0, uint32(i+1), &pb.SendRequest{ClientMsgId: body})
		if err != nil {
			t.Fatal(err)
		}
	}
	fr := &FrameReader{R: bufio.NewReaderSize(bytes.NewReader(stream), 64)}
	for i := 1; i <= 3; i++ {
		f, err := fr.Next()
		if err != nil || f.Seq != uint32(i) || f.Command != CmdSend {
			t.Fatalf("frame %d: %+v %v", i, f.Header, err)
		}
	}
	if _, err := fr.Next(); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
	// A cut inside a frame, a bad magic, an oversized length.
	cut := &FrameReader{R: bufio.NewReader(bytes.NewReader(stream[:len(stream)-3]))}
	for {
		if _, err := cut.Next(); err != nil {
			if err != io.ErrUnexpectedEOF {
				t.Fatalf("cut stream: %v", err)
			}
			break
		}
	}
	bad := append([]byte("HTTP"), stream[4:]...)
	if _, err := (&FrameReader{R: bufio.NewReader(bytes.NewReader(bad))}).Next(); !errors.Is(err, ErrBadMagic) {
		t.Fatalf("bad magic: %v", err)
	}
	small := &FrameReader{R: bufio.NewReader(bytes.NewReader(stream)), Dec: Decoder{MaxBody: 100}}
	_, _ = small.Next()
	_, _ = small.Next()
	if f, err := small.Next(); !errors.Is(err, ErrFrameTooLarge) || f.Seq != 3 {
		t.Fatalf("oversized: %+v %v", f.Header, err)
	}
}
