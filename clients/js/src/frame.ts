// The 16-byte frame header of docs/protocol.md §2 and a reader that cuts
// a byte stream (WebSocket message payloads, concatenated) into frames.

/** Length of the frame header in bytes. */
export const HEADER_LEN = 16;
/** Protocol version spoken by this client. */
export const VERSION = 1;
const MAGIC = [0x49, 0x4d, 0x47, 0x4e]; // "IMGN"

/** Body serializers (protocol.md §3). MessagePack (3) is not implemented here. */
export const Serializer = { JSON: 1, Protobuf: 2 } as const;
export type SerializerId = (typeof Serializer)[keyof typeof Serializer];

/** Command codes (protocol.md §4.1). */
export const Cmd = {
  REGISTER: 0x01, LOGIN: 0x02, LOGOUT: 0x03, HEARTBEAT: 0x04,
  SEND: 0x10, PUSH: 0x11, PUSH_ACK: 0x12, SYNC: 0x13,
  GROUP_CREATE: 0x20, GROUP_JOIN: 0x21, GROUP_LEAVE: 0x22, GROUP_MEMBERS: 0x23, GROUP_ADD: 0x24, GROUP_REMOVE: 0x25,
  GROUP_TRANSFER: 0x26, GROUP_ADMIN: 0x27, GROUP_SEND: 0x28, GROUPS: 0x29,
  PRESENCE: 0x30, CONVERSATIONS: 0x31, READ: 0x32, TYPING: 0x33, RECALL: 0x34, DELETE: 0x35,
  HISTORY: 0x36, READ_COUNT: 0x37,
  KICK: 0x40, GO_AWAY: 0x41, NOTICE: 0x42, RECEIPT: 0x43, TYPING_EVENT: 0x44, ERROR: 0x7f,
  REGISTER_OK: 0x81, LOGIN_OK: 0x82, LOGOUT_OK: 0x83, HEARTBEAT_OK: 0x84, SEND_ACK: 0x90,
  SYNC_OK: 0x93, GROUP_INFO: 0xa0, GROUPS_OK: 0xa9, PRESENCE_OK: 0xb0, CONVERSATIONS_OK: 0xb1, READ_OK: 0xb2,
  RECALL_OK: 0xb4, DELETE_OK: 0xb5, HISTORY_OK: 0xb6, READ_COUNT_OK: 0xb7,
} as const;

/** Flag bit RESENT (protocol.md §2.4): informational, set on retried sends. */
export const FLAG_RESENT = 0x01;

/** One decoded frame. body may view a buffer the reader shares with other frames; the reader never writes into a buffer once it has handed out a view of it. */
export interface Frame {
  serializer: number;
  command: number;
  flags: number;
  seq: number;
  body: Uint8Array;
}

/** A frame the client cannot parse: the connection must be closed (protocol.md §2.3). */
export class FrameError extends Error {}

/** encodeFrame returns header and body as one buffer, ready to send. */
export function encodeFrame(serializer: number, command: number, flags: number, seq: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_LEN + body.length);
  out.set(MAGIC, 0);
  out[4] = VERSION;
  out[5] = serializer;
  out[6] = command;
  out[7] = flags;
  const dv = new DataView(out.buffer);
  dv.setUint32(8, seq >>> 0);
  dv.setUint32(12, body.length);
  out.set(body, HEADER_LEN);
  return out;
}

/**
 * FrameReader reassembles frames from chunks of a byte stream: WebSocket
 * message boundaries mean nothing (protocol.md §10.3). It holds at most one
 * incomplete frame; a header announcing more than maxBody bytes is an error.
 */
export class FrameReader {
  private buf = new Uint8Array(0);
  constructor(private readonly maxBody = 16 << 20) {}

  /** push appends a chunk and returns the frames it completes, in order. */
  push(chunk: Uint8Array): Frame[] {
    if (this.buf.length === 0) {
      this.buf = chunk.slice();
    } else {
      const b = new Uint8Array(this.buf.length + chunk.length);
      b.set(this.buf, 0);
      b.set(chunk, this.buf.length);
      this.buf = b;
    }
    const frames: Frame[] = [];
    let off = 0;
    while (this.buf.length - off >= HEADER_LEN) {
      const h = this.buf.subarray(off, off + HEADER_LEN);
      for (let i = 0; i < 4; i++) {
        if (h[i] !== MAGIC[i]) throw new FrameError("bad magic in a server frame");
      }
      if (h[4] !== VERSION) throw new FrameError(`server frame of version ${h[4]}`);
      const dv = new DataView(h.buffer, h.byteOffset, HEADER_LEN);
      const len = dv.getUint32(12);
      if (len > this.maxBody) throw new FrameError(`server frame body of ${len} bytes is over ${this.maxBody}`);
      if (this.buf.length - off < HEADER_LEN + len) break;
      frames.push({
        serializer: h[5], command: h[6], flags: h[7], seq: dv.getUint32(8),
        body: this.buf.subarray(off + HEADER_LEN, off + HEADER_LEN + len),
      });
      off += HEADER_LEN + len;
    }
    this.buf = off === this.buf.length ? new Uint8Array(0) : this.buf.slice(off);
    return frames;
  }
}
