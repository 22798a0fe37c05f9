// The ordering state of protocol.md §6.6: shown, a bounded buffer of
// messages that arrived above a gap, and the rule that shows each seq
// once, in order.

import type { Message } from "./gen/imgn_pb.js";

/**
 * Inbox delivers each seq of a user's inbox once and in ascending order,
 * whatever mix of PUSH, SYNC_OK and SEND_ACK brings it. Not safe for use
 * from several event loops (JavaScript has one).
 */
export class Inbox {
  private buffer = new Map<bigint, Message>();

  /**
   * @param shown the highest seq already delivered with every seq below it
   * @param deliver called once per seq, in order
   * @param maxBuffer messages kept above a gap; the excess is dropped (SYNC brings it back)
   */
  constructor(
    public shown: bigint,
    private readonly deliver: (m: Message) => void,
    private readonly maxBuffer = 10_000,
  ) {}

  /** accept takes one message; it returns true when a gap is open (a SYNC is needed). */
  accept(m: Message): boolean {
    if (m.seq <= this.shown) return this.gap();
    if (m.seq === this.shown + 1n) {
      this.shown = m.seq;
      this.deliver(m);
      this.drain();
    } else if (this.buffer.size < this.maxBuffer) {
      this.buffer.set(m.seq, m);
    }
    return this.gap();
  }

  /**
   * skipTo moves shown to first-1 when retention removed the seqs below
   * first (SyncOK.first_seq), and drops what is buffered below it.
   */
  skipTo(first: bigint): void {
    if (first <= this.shown + 1n) return;
    this.shown = first - 1n;
    for (const s of this.buffer.keys()) if (s <= this.shown) this.buffer.delete(s);
    this.drain();
  }

  /** gap reports whether buffered messages wait above a missing seq. */
  gap(): boolean {
    return this.buffer.size > 0;
  }

  private drain(): void {
    for (;;) {
      const next = this.buffer.get(this.shown + 1n);
      if (!next) break;
      this.buffer.delete(next.seq);
      this.shown = next.seq;
      this.deliver(next);
    }
    for (const s of this.buffer.keys()) if (s <= this.shown) this.buffer.delete(s);
  }
}
