package wstest

import (
	"bytes"
	"io"
	"testing"

	"github.com/gobwas/ws"
)

// TestAppendMaskedReadsBack: gobwas/ws reads every length class back as
// one final masked frame of the opcode, whose unmasked payload is the
// input, with the zero key and with a browser-like one.
func TestAppendMaskedReadsBack(t *testing.T) {
	for _, n := range []int{0, 125, 126, 0xffff, 0x10000} {
		payload := bytes.Repeat([]byte{0xA5, 0x01, 0x7f}, n/3+1)[:n]
		for _, key := range [][4]byte{{}, {0x12, 0x34, 0x56, 0x78}} {
			prefix := []byte("keep")
			out := AppendMasked(prefix, ws.OpBinary, payload, key)
			if !bytes.HasPrefix(out, []byte("keep")) {
				t.Fatal("dst's bytes were overwritten")
			}
			r := bytes.NewReader(out[4:])
			h, err := ws.ReadHeader(r)
			if err != nil {
				t.Fatal(err)
			}
			if !h.Fin || !h.Masked || h.OpCode != ws.OpBinary || h.Mask != key || h.Length != int64(n) {
				t.Fatalf("n=%d key=%x: header %+v", n, key, h)
			}
			got, _ := io.ReadAll(r)
			ws.Cipher(got, h.Mask, 0)
			if !bytes.Equal(got, payload) {
				t.Fatalf("n=%d key=%x: payload does not unmask to the input", n, key)
			}
		}
	}
}
