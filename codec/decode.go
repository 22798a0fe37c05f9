package codec

import "fmt"

// Peeker is the read side of a gnet connection (gnet.Conn satisfies it) or
// any buffered reader adapted to it.
//
// Peek(n) returns the next n bytes without consuming them, or an error when
// fewer than n are buffered; the slice is valid until the next Discard or
// read. Discard(n) consumes n bytes. InboundBuffered reports how many bytes
// are buffered.
type Peeker interface {
	Peek(n int) ([]byte, error)
	Discard(n int) (int, error)
	InboundBuffered() int
}

// Frame is one decoded frame. Body aliases the buffer it was decoded from
// (the Peeker's, or the slice given to ParseFrame): it is valid only until
// the frame is discarded, that is until the handler that received it
// returns. Anything kept longer must be copied; the serializers in this
// package copy every string and byte field they decode.
type Frame struct {
	Header
	Body []byte
}

// Decoder validates and slices frames. The zero value uses DefaultMaxBody.
// A Decoder holds no state between calls and is safe for concurrent use.
type Decoder struct {
	// MaxBody is the largest accepted body length; <= 0 means DefaultMaxBody.
	MaxBody int
}

func (d Decoder) maxBody() uint32 {
	if d.MaxBody <= 0 {
		return DefaultMaxBody
	}
	return uint32(d.MaxBody)
}

// Next peeks the next complete frame in p without consuming it. It returns
// ok=false with a nil error when the frame is not complete yet ("need
// more"). The header is validated (magic, version, serializer, and the body
// length against MaxBody) before the body is peeked, so an oversized length
// is rejected without waiting for or buffering the body. On an error the
// returned Frame's Header holds what could be read (see ParseHeader) and the
// stream cannot be resynchronised: the caller answers and closes.
//
// The caller must Discard(f.FrameSize()) once done with the frame. Next does
// not allocate.
func (d Decoder) Next(p Peeker) (f Frame, ok bool, err error) {
	if p.InboundBuffered() < HeaderSize {
		return Frame{}, false, nil
	}
	hb, err := p.Peek(HeaderSize)
	if err != nil {
		return Frame{}, false, nil
	}
	h, err := ParseHeader(hb)
	if err != nil {
		return Frame{Header: h}, false, err
	}
	if h.Length > d.maxBody() {
		return Frame{Header: h}, false, fmt.Errorf("%w: %d > %d", ErrFrameTooLarge, h.Length, d.maxBody())
	}
	size := h.FrameSize()
	if p.InboundBuffered() < size {
		return Frame{Header: h}, false, nil
	}
	fb, err := p.Peek(size)
	if err != nil {
		return Frame{Header: h}, false, nil
	}
	return Frame{Header: h, Body: fb[HeaderSize:size:size]}, true, nil
}

// Decode calls fn for every complete frame buffered in p, discarding each
// frame after fn returns. It stops at the first incomplete frame (returning
// nil), at the first decoding error, or when fn returns an error (the frame
// that fn rejected is discarded too). It returns how many frames fn saw.
func (d Decoder) Decode(p Peeker, fn func(Frame) error) (int, error) {
	n := 0
	for {
		f, ok, err := d.Next(p)
		if err != nil {
			return n, err
		}
		if !ok {
			return n, nil
		}
		n++
		ferr := fn(f)
		if _, err := p.Discard(f.FrameSize()); err != nil {
			return n, fmt.Errorf("codec: discard: %w", err)
		}
		if ferr != nil {
			return n, ferr
		}
	}
}

// ParseFrame decodes the frame at the start of b. It returns ok=false when b
// holds less than a whole frame. f.Body aliases b. The frame occupies the
// first f.FrameSize() bytes of b.
func (d Decoder) ParseFrame(b []byte) (f Frame, ok bool, err error) {
	if len(b) < HeaderSize {
		return Frame{}, false, nil
	}
	h, err := ParseHeader(b)
	if err != nil {
		return Frame{Header: h}, false, err
	}
	if h.Length > d.maxBody() {
		return Frame{Header: h}, false, fmt.Errorf("%w: %d > %d", ErrFrameTooLarge, h.Length, d.maxBody())
	}
	size := h.FrameSize()
	if len(b) < size {
		return Frame{Header: h}, false, nil
	}
	return Frame{Header: h, Body: b[HeaderSize:size:size]}, true, nil
}

// SlicePeeker adapts a byte slice to Peeker (tests, fuzzing, and callers
// that hold a whole buffer). It never copies.
type SlicePeeker struct{ B []byte }

// Peek implements Peeker.
func (s *SlicePeeker) Peek(n int) ([]byte, error) {
	if n > len(s.B) {
		return nil, fmt.Errorf("codec: peek %d of %d buffered", n, len(s.B))
	}
	return s.B[:n], nil
}

// Discard implements Peeker.
func (s *SlicePeeker) Discard(n int) (int, error) {
	if n > len(s.B) {
		n = len(s.B)
	}
	s.B = s.B[n:]
	return n, nil
}

// InboundBuffered implements Peeker.
func (s *SlicePeeker) InboundBuffered() int { return len(s.B) }
