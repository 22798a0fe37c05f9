package codec

import (
	"github.com/valyala/bytebufferpool"
	"google.golang.org/protobuf/proto"
)

// Buffer is a pooled byte buffer for frames that must outlive the call that
// encoded them (for example until an asynchronous write completes). Get one
// with EncodeFrame or GetBuffer and return it with PutBuffer exactly once,
// after the last use of its bytes.
type Buffer = bytebufferpool.ByteBuffer

var bufPool bytebufferpool.Pool

// GetBuffer returns an empty pooled buffer.
func GetBuffer() *Buffer { return bufPool.Get() }

// PutBuffer returns b to the pool. b must not be used afterwards.
func PutBuffer(b *Buffer) { bufPool.Put(b) }

// EncodeFrame encodes one frame into a pooled buffer (see AppendFrame).
func EncodeFrame(ser SerializerID, cmd Command, flags Flags, seq uint32, msg proto.Message) (*Buffer, error) {
	b := bufPool.Get()
	var err error
	b.B, err = AppendFrame(b.B[:0], ser, cmd, flags, seq, msg)
	if err != nil {
		bufPool.Put(b)
		return nil, err
	}
	return b, nil
}
