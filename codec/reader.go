package codec

import (
	"bufio"
	"io"
)

// FrameReader reads whole frames from a blocking byte stream (a net.Conn
// behind a bufio.Reader): Decoder's counterpart for code that does not run
// on an event loop (the client library, mesh links, test servers). Each
// header is validated as Decoder validates it (magic, version, serializer,
// and the length against Dec.MaxBody) before the body is read, so an
// oversized length is refused without reading or buffering the body.
//
// A FrameReader is not safe for concurrent use.
type FrameReader struct {
	R   *bufio.Reader
	Dec Decoder
	buf []byte
}

// keepBuf bounds the buffer a FrameReader keeps between frames: one huge
// frame (a big SYNC page) does not pin its memory for the stream's life.
const keepBuf = 1 << 20

// Next reads the next frame. f.Body aliases the reader's buffer and is
// valid until the next call. A header that fails validation returns the
// error (wrapping this package's sentinels) with f.Header holding what was
// read, and the stream cannot be resynchronised; a stream that ends
// inside a frame returns io.ErrUnexpectedEOF, one that ends between frames
// io.EOF; other read errors pass through.
func (fr *FrameReader) Next() (f Frame, err error) {
	if cap(fr.buf) > keepBuf {
		fr.buf = nil
	}
	if cap(fr.buf) < HeaderSize {
		fr.buf = make([]byte, HeaderSize, 4<<10)
	}
	hb := fr.buf[:HeaderSize]
	if _, err := io.ReadFull(fr.R, hb); err != nil {
		return Frame{}, err
	}
	f, ok, err := fr.Dec.ParseFrame(hb)
	if err != nil || ok {
		return f, err
	}
	size := f.FrameSize()
	if cap(fr.buf) < size {
		nb := make([]byte, size)
		copy(nb, hb)
		fr.buf = nb
	}
	buf := fr.buf[:size]
	if _, err := io.ReadFull(fr.R, buf[HeaderSize:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return f, err
	}
	f, _, err = fr.Dec.ParseFrame(buf)
	return f, err
}
