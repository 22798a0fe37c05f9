// Client: one logged-in session of one (user, device), kept alive across
// connection losses, node restarts and GO_AWAY, with the delivery rules of
// docs/protocol.md §6 (sync on login and on gaps, cumulative PUSH_ACK,
// sends retried with the same client_msg_id until acknowledged).

import { create } from "@bufbuild/protobuf";
import { base64Decode, base64Encode } from "@bufbuild/protobuf/wire";
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import * as pb from "./gen/imgn_pb.js";
import { decodeBody, encodeBody } from "./codec.js";
import { ClientClosed, Code, ConnectionLost, ImgnError } from "./errors.js";
import { Cmd, FLAG_RESENT, FrameError, FrameReader, Serializer, encodeFrame } from "./frame.js";
import type { Frame } from "./frame.js";
import { groupEventOf } from "./groupevent.js";
import type { GroupEvent } from "./groupevent.js";
import { Inbox } from "./inbox.js";
import { openSocket } from "./socket.js";
import type { Socket, WebSocketConstructor } from "./socket.js";

/** A conversation, named from the caller's side (protocol.md §4.8). */
export type Conv = { peer: string; groupId?: undefined } | { groupId: string; peer?: undefined };

/** convOf returns the conversation a message of userId's inbox belongs to; undefined for system messages. */
export function convOf(userId: string, m: pb.Message): Conv | undefined {
  if (m.groupId) return { groupId: m.groupId };
  if (!m.from) return undefined;
  return { peer: m.from === userId ? m.to : m.from };
}

/** convKey is a string naming a conversation, for maps: "u:<peer>" or "g:<group>". */
export function convKey(c: Conv): string {
  return c.groupId ? "g:" + c.groupId : "u:" + c.peer;
}

/** An answer of imrouter's GET /v1/route (docs/router.md). */
export interface Route {
  node_id: string;
  addr: string;
}

/** An unacknowledged send as an Outbox keeps it: body in standard base64. */
export interface OutboxEntry {
  clientMsgId: string;
  to?: string;
  groupId?: string;
  kind: number;
  body: string;
}

/**
 * Outbox is durable storage for unacknowledged sends (protocol.md §6.4: a
 * client_msg_id is kept with its unsent message so that a retry after a
 * restart reuses it). The client puts each send before transmitting it and
 * removes it once stored or finally refused; connect() resends what it
 * lists. Calls are synchronous (localStorage fits).
 */
export interface Outbox {
  list(): OutboxEntry[];
  put(e: OutboxEntry): void;
  remove(clientMsgId: string): void;
}

/** Where to connect: fixed WebSocket URLs, tried in turn, or imrouter. */
export interface RouterOptions {
  /** imrouter's base URL, e.g. "http://127.0.0.1:9080". */
  url: string;
  /**
   * toWebSocket maps a route answer (a node's client address) to that
   * node's WebSocket URL: the router publishes the raw-protocol address
   * only, and the WebSocket port is deployment configuration.
   */
  toWebSocket: (r: Route) => string;
}

export interface ClientOptions {
  /** WebSocket URL(s) of nodes, tried in turn on failure. Either this or router. */
  url?: string | string[];
  router?: RouterOptions;
  user?: string;
  password?: string;
  /** A JWT, or a function that fetches a fresh one (called at every login and on TOKEN_EXPIRED). */
  token?: string | (() => Promise<string>);
  /** Device id (user id rule); one live session per (user, device). */
  device: string;
  /** REGISTER the user with password before the first login. */
  register?: boolean;
  /** Body encoding of the frames this client sends; replies come in the same one. Default "json". */
  serializer?: "json" | "protobuf";
  /**
   * Where the message stream starts: the highest seq the application has
   * already shown (with everything below it). Default: the device's
   * acknowledged position at the first login (LoginOK.cursor).
   */
  shown?: bigint;
  /** WebSocket implementation; default the global one, else npm "ws". */
  webSocket?: WebSocketConstructor;
  /** Reconnect backoff: full jitter between 0 and min(maxMs, initialMs·2^attempt). Defaults 250 and 10000. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** A request without a reply for this long fails (sends are retried). Default 10000. */
  requestTimeoutMs?: number;
  /** Delay before a cumulative PUSH_ACK. Default 500. */
  pushAckDelayMs?: number;
  /** SYNC page size. Default 200. */
  syncLimit?: number;
  /** Durable storage of unacknowledged sends; connect() resends what it holds. Default: none (memory only). */
  outbox?: Outbox;
}

/** Connection state, reported by the "state" event. */
export type State = "connecting" | "online" | "reconnecting" | "kicked" | "closed";

/** Where a send stands, reported by the "send" event. */
export type SendState =
  | { clientMsgId: string; state: "sending" }
  | { clientMsgId: string; state: "stored"; ack: pb.SendAck }
  | { clientMsgId: string; state: "retrying"; error: Error; attempt: number }
  | { clientMsgId: string; state: "failed"; error: Error };

/** The events of a Client and their arguments. */
export interface ClientEvents {
  /** Each entry of the user's inbox, once, in ascending seq: messages and recall/delete events (Message.event). */
  message: (m: pb.Message) => void;
  /**
   * A membership event of a group (protocol.md §4.5), emitted right after
   * the "message" event of the same inbox entry, so in seq order with the
   * group's messages.
   */
  groupEvent: (e: GroupEvent) => void;
  receipt: (r: pb.Receipt) => void;
  typing: (t: pb.TypingEvent) => void;
  notice: (n: pb.Notice) => void;
  state: (s: State, detail?: string) => void;
  send: (s: SendState) => void;
  kick: (k: pb.Kick) => void;
  goaway: (g: pb.GoAway) => void;
  /** Unsolicited ERROR frames, and errors of requests without a reply (TYPING). */
  error: (e: ImgnError) => void;
  login: (ok: pb.LoginOK) => void;
}

interface Outstanding {
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface PendingSend {
  clientMsgId: string;
  cmd: number;
  req: pb.SendRequest | pb.GroupSendRequest;
  attempt: number;
  inFlight: boolean;
  timer?: ReturnType<typeof setTimeout>;
  resolve: (ack: pb.SendAck) => void;
  reject: (e: Error) => void;
}

const replySchemas = new Map<number, DescMessage>([
  [Cmd.REGISTER_OK, pb.RegisterOKSchema], [Cmd.LOGIN_OK, pb.LoginOKSchema], [Cmd.LOGOUT_OK, pb.EmptySchema],
  [Cmd.HEARTBEAT_OK, pb.HeartbeatSchema], [Cmd.SEND_ACK, pb.SendAckSchema], [Cmd.SYNC_OK, pb.SyncOKSchema],
  [Cmd.GROUP_INFO, pb.GroupInfoSchema], [Cmd.GROUPS_OK, pb.GroupsOKSchema], [Cmd.PRESENCE_OK, pb.PresenceOKSchema],
  [Cmd.CONVERSATIONS_OK, pb.ConversationsOKSchema], [Cmd.READ_OK, pb.ReadOKSchema],
  [Cmd.RECALL_OK, pb.EventOKSchema], [Cmd.DELETE_OK, pb.EventOKSchema], [Cmd.HISTORY_OK, pb.HistoryOKSchema],
  [Cmd.READ_COUNT_OK, pb.ReadCountOKSchema],
]);

let idCounter = 0;

/** newClientMsgId returns a fresh client_msg_id: random, unique per sender in practice. */
export function newClientMsgId(): string {
  const c = globalThis.crypto;
  if (c?.randomUUID) return c.randomUUID();
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2) + "-" + (idCounter++).toString(36);
}

/**
 * Client keeps one session of (user, device) alive. All methods are to be
 * called from the one JavaScript thread; events are emitted synchronously
 * from the socket's callbacks, and a listener that throws does not stop
 * the client (the exception is reported with console.error).
 */
export class Client {
  private readonly opts: Required<Pick<ClientOptions, "requestTimeoutMs" | "pushAckDelayMs" | "syncLimit">> & ClientOptions;
  private readonly ser: number;
  private listeners = new Map<keyof ClientEvents, Set<(...a: never[]) => void>>();
  private sock?: Socket;
  private reader = new FrameReader();
  private nextSeq = 1;
  private outstanding = new Map<number, Outstanding>();
  private sends = new Map<string, PendingSend>();
  private inbox?: Inbox;
  private syncing = false;
  private syncAgain = false;
  private ackTimer?: ReturnType<typeof setTimeout>;
  private acked = 0n;
  private hbTimer?: ReturnType<typeof setInterval>;
  private lastSent = 0;
  private lastReceived = 0;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private attempt = 0;
  private urlIndex = 0;
  private exclude = new Set<string>();
  private registered = false;
  private closed = false;
  private onlineWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private firstLogin?: { resolve: (ok: pb.LoginOK) => void; reject: (e: Error) => void };
  private generation = 0;

  /** state is the connection state now. */
  state: State = "closed";
  /** login is the last LOGIN_OK (undefined before the first). */
  login?: pb.LoginOK;
  /** user is the logged-in user id (from LOGIN_OK; before it, the configured one). */
  get user(): string {
    return this.login?.user ?? this.opts.user ?? "";
  }
  /** shown is the highest seq the message stream has delivered, with every seq below it. */
  get shown(): bigint {
    return this.inbox?.shown ?? this.opts.shown ?? 0n;
  }

  constructor(opts: ClientOptions) {
    if (!opts.url && !opts.router) throw new Error("imgn: ClientOptions needs url or router");
    if (!opts.device) throw new Error("imgn: ClientOptions needs device");
    if (!opts.password && !opts.token) throw new Error("imgn: ClientOptions needs password or token");
    this.opts = { requestTimeoutMs: 10_000, pushAckDelayMs: 500, syncLimit: 200, ...opts };
    this.ser = opts.serializer === "protobuf" ? Serializer.Protobuf : Serializer.JSON;
    if (opts.shown !== undefined) this.inbox = new Inbox(opts.shown, (m) => this.deliver(m));
  }

  /** on subscribes to an event; the returned function unsubscribes. */
  on<E extends keyof ClientEvents>(ev: E, fn: ClientEvents[E]): () => void {
    let set = this.listeners.get(ev);
    if (!set) this.listeners.set(ev, (set = new Set()));
    set.add(fn as (...a: never[]) => void);
    return () => set!.delete(fn as (...a: never[]) => void);
  }

  /** deliver hands one inbox entry, in order, to the listeners. */
  private deliver(m: pb.Message): void {
    this.emit("message", m);
    if (!this.listeners.get("groupEvent")?.size) return;
    const e = groupEventOf(m);
    if (e) this.emit("groupEvent", e);
  }

  private emit<E extends keyof ClientEvents>(ev: E, ...args: Parameters<ClientEvents[E]>): void {
    const set = this.listeners.get(ev);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as unknown as (...a: Parameters<ClientEvents[E]>) => void)(...args);
      } catch (e) {
        console.error(`imgn: ${ev} listener threw`, e);
      }
    }
  }

  /**
   * connect opens the session and resolves with the first LOGIN_OK. It
   * keeps trying through connection failures (with backoff) and rejects
   * on an error that retrying cannot fix (AUTH_FAILED, USER_EXISTS, ...)
   * or on close().
   */
  connect(): Promise<pb.LoginOK> {
    if (this.state !== "closed" && this.state !== "kicked") throw new Error("imgn: already connecting or connected");
    this.closed = false;
    this.setState("connecting");
    for (const e of this.opts.outbox?.list() ?? []) {
      if (this.sends.has(e.clientMsgId)) continue;
      const body = base64Decode(e.body);
      const req = e.groupId
        ? create(pb.GroupSendRequestSchema, { clientMsgId: e.clientMsgId, groupId: e.groupId, kind: e.kind, body })
        : create(pb.SendRequestSchema, { clientMsgId: e.clientMsgId, to: e.to, kind: e.kind, body });
      // the outcome reaches the application through the "send" event
      this.enqueueSend(e.groupId ? Cmd.GROUP_SEND : Cmd.SEND, req).catch(() => undefined);
    }
    const p = new Promise<pb.LoginOK>((resolve, reject) => (this.firstLogin = { resolve, reject }));
    void this.dial();
    return p;
  }

  /**
   * close ends the session (LOGOUT when online) and fails everything
   * pending with ClientClosed; unacknowledged sends stay in the outbox.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.state === "online") {
      await this.request(Cmd.LOGOUT, pb.EmptySchema, {}).catch(() => undefined);
    }
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    this.dropConnection("closed by the application");
    const err = new ClientClosed();
    for (const s of this.sends.values()) {
      clearTimeout(s.timer);
      s.reject(err);
    }
    this.sends.clear();
    this.firstLogin?.reject(err);
    this.firstLogin = undefined;
    for (const w of this.onlineWaiters.splice(0)) w.reject(err);
    this.setState("closed");
  }

  private setState(s: State, detail?: string): void {
    if (this.state === s) return;
    this.state = s;
    this.emit("state", s, detail);
  }

  // ---- connecting -------------------------------------------------------

  private async pickURL(): Promise<{ url: string; node?: string }> {
    const r = this.opts.router;
    if (!r) {
      const urls = Array.isArray(this.opts.url) ? this.opts.url : [this.opts.url!];
      return { url: urls[this.urlIndex % urls.length] };
    }
    const q = new URL("/v1/route", r.url);
    q.searchParams.set("uid", this.opts.user ?? "anonymous");
    if (this.exclude.size) q.searchParams.set("exclude", [...this.exclude].join(","));
    const res = await fetch(q);
    if (res.status === 503 && this.exclude.size) {
      this.exclude.clear(); // every node was tried: start over
    }
    if (!res.ok) throw new Error(`router: HTTP ${res.status}: ${await res.text()}`);
    const route = (await res.json()) as Route;
    return { url: r.toWebSocket(route), node: route.node_id };
  }

  private async dial(): Promise<void> {
    const gen = ++this.generation;
    let node: string | undefined;
    try {
      const picked = await this.pickURL();
      node = picked.node;
      if (gen !== this.generation || this.closed) return;
      const sock = await openSocket(picked.url, this.opts.webSocket, {
        onData: (b) => gen === this.generation && this.onData(b),
        onClose: (why) => gen === this.generation && this.onLost(why),
      });
      if (gen !== this.generation || this.closed) {
        sock.close();
        return;
      }
      this.sock = sock;
      this.reader = new FrameReader();
      this.lastReceived = Date.now();
      await this.handshake();
    } catch (e) {
      if (gen !== this.generation || this.closed) return;
      const err = e as Error;
      if (err instanceof ImgnError && !err.retryable && err.code !== Code.TOKEN_EXPIRED) {
        // retrying cannot fix a refused login: report it and stop
        this.dropConnection(err.message);
        this.setState("closed", err.message);
        this.closed = true;
        this.firstLogin?.reject(err);
        this.firstLogin = undefined;
        for (const w of this.onlineWaiters.splice(0)) w.reject(err);
        return;
      }
      if (node) this.exclude.add(node);
      this.urlIndex++;
      this.dropConnection(err.message);
      this.scheduleReconnect(err.message, err instanceof ImgnError ? err.retryAfterMs : 0);
    }
  }

  private async handshake(): Promise<void> {
    const o = this.opts;
    if (o.register && !this.registered) {
      await this.request(Cmd.REGISTER, pb.RegisterRequestSchema, { user: o.user, password: o.password }, true);
      this.registered = true;
    }
    let ok: pb.LoginOK;
    for (let tries = 0; ; tries++) {
      const token = typeof o.token === "function" ? await o.token() : o.token;
      try {
        ok = await this.request(Cmd.LOGIN, pb.LoginRequestSchema,
          { user: o.user ?? "", password: token ? "" : o.password, token: token ?? "", device: o.device }, true);
        break;
      } catch (e) {
        if (e instanceof ImgnError && e.code === Code.TOKEN_EXPIRED && typeof o.token === "function" && tries === 0) continue;
        throw e;
      }
    }
    this.login = ok;
    this.attempt = 0;
    this.exclude.clear();
    if (!this.inbox) this.inbox = new Inbox(ok.cursor, (m) => this.deliver(m));
    this.acked = ok.cursor;
    this.startHeartbeat(ok);
    this.setState("online");
    this.emit("login", ok);
    for (const w of this.onlineWaiters.splice(0)) w.resolve();
    this.firstLogin?.resolve(ok);
    this.firstLogin = undefined;
    // protocol.md §6.3: LOGIN, then SYNC, then resend what is unacknowledged
    await this.sync().catch(() => undefined);
    for (const s of this.sends.values()) if (!s.inFlight && !s.timer) this.transmitSend(s);
  }

  private startHeartbeat(ok: pb.LoginOK): void {
    clearInterval(this.hbTimer);
    const every = Math.max(ok.heartbeatMs || 30_000, 200);
    const dead = ok.idleTimeoutMs || 3 * every;
    this.hbTimer = setInterval(() => {
      const now = Date.now();
      if (now - this.lastReceived > dead) {
        this.onLost("nothing received for " + (now - this.lastReceived) + " ms");
        return;
      }
      if (now - this.lastSent >= every / 2) {
        this.request(Cmd.HEARTBEAT, pb.HeartbeatSchema, { time: BigInt(now) }).catch(() => undefined);
      }
    }, Math.max(every / 4, 50));
  }

  private scheduleReconnect(why: string, atLeastMs = 0): void {
    if (this.closed || this.state === "kicked") return;
    this.setState(this.login ? "reconnecting" : "connecting", why);
    const b = this.opts.backoff ?? {};
    const cap = Math.min(b.maxMs ?? 10_000, (b.initialMs ?? 250) * 2 ** Math.min(this.attempt, 16));
    this.attempt++;
    const delay = Math.max(atLeastMs, Math.random() * cap);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.dial(), delay);
  }

  /** dropConnection closes the socket and fails the requests outstanding on it. */
  private dropConnection(why: string): void {
    this.generation++;
    clearInterval(this.hbTimer);
    this.hbTimer = undefined;
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.syncing = false;
    const sock = this.sock;
    this.sock = undefined;
    sock?.close();
    const err = new ConnectionLost(why);
    const out = [...this.outstanding.values()];
    this.outstanding.clear();
    for (const o of out) {
      clearTimeout(o.timer);
      o.reject(err);
    }
    for (const s of this.sends.values()) s.inFlight = false;
  }

  private onLost(why: string): void {
    if (this.closed) return;
    this.dropConnection(why);
    if (this.state === "kicked") return;
    this.scheduleReconnect(why);
  }

  // ---- frames in --------------------------------------------------------

  private onData(chunk: Uint8Array): void {
    this.lastReceived = Date.now();
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (e) {
      this.onLost((e as FrameError).message); // protocol.md §2.3: close and reconnect
      return;
    }
    for (const f of frames) {
      try {
        this.onFrame(f);
      } catch (e) {
        this.onLost("unparsable frame: " + (e as Error).message);
        return;
      }
    }
  }

  private onFrame(f: Frame): void {
    if (f.seq !== 0 || f.command === Cmd.ERROR) {
      const o = this.outstanding.get(f.seq);
      if (o && f.seq !== 0) {
        this.outstanding.delete(f.seq);
        clearTimeout(o.timer);
        o.resolve(f);
        return;
      }
    }
    switch (f.command) {
      case Cmd.PUSH: {
        const push = decodeBody(f.serializer, pb.PushSchema, f.body);
        for (const m of push.messages) this.take(m);
        return;
      }
      case Cmd.RECEIPT:
        this.emit("receipt", decodeBody(f.serializer, pb.ReceiptSchema, f.body));
        return;
      case Cmd.TYPING_EVENT:
        this.emit("typing", decodeBody(f.serializer, pb.TypingEventSchema, f.body));
        return;
      case Cmd.NOTICE:
        this.emit("notice", decodeBody(f.serializer, pb.NoticeSchema, f.body));
        return;
      case Cmd.KICK: {
        const k = decodeBody(f.serializer, pb.KickSchema, f.body);
        this.setState("kicked", k.reason);
        this.emit("kick", k);
        this.dropConnection("kicked: " + k.reason);
        return;
      }
      case Cmd.GO_AWAY: {
        const g = decodeBody(f.serializer, pb.GoAwaySchema, f.body);
        this.emit("goaway", g);
        if (g.nodeId) this.exclude.add(g.nodeId);
        this.urlIndex++;
        this.dropConnection("go away: " + g.reason);
        this.setState(this.login ? "reconnecting" : "connecting", "go away: " + g.reason);
        clearTimeout(this.reconnectTimer);
        // the server jittered delay_ms already; a little more spreads clients of one page load
        this.reconnectTimer = setTimeout(() => void this.dial(), g.delayMs + Math.random() * 100);
        return;
      }
      case Cmd.ERROR: {
        const e = toError(decodeBody(f.serializer, pb.ErrorSchema, f.body));
        this.emit("error", e);
        if (e.fatal) this.onLost(e.message);
        return;
      }
      default:
        return; // a reply nobody waits for any more, or a command this client does not know
    }
  }

  /** take runs one inbox entry through the ordering rule, syncing on a gap. */
  private take(m: pb.Message): void {
    if (!this.inbox) return;
    const before = this.inbox.shown;
    const gap = this.inbox.accept(m);
    if (this.inbox.shown !== before) this.scheduleAck();
    if (gap) void this.sync().catch(() => undefined);
  }

  private scheduleAck(): void {
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      const up = this.inbox?.shown ?? 0n;
      if (up > this.acked && this.state === "online") {
        this.acked = up;
        this.fire(Cmd.PUSH_ACK, pb.PushAckSchema, { upToSeq: up });
      }
    }, this.opts.pushAckDelayMs);
  }

  /**
   * sync pulls the inbox from shown until it is complete (protocol.md §6.6);
   * a call while one runs makes that one go round again.
   */
  private async sync(): Promise<void> {
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    this.syncing = true;
    try {
      do {
        this.syncAgain = false;
        const inbox = this.inbox!;
        let after = inbox.shown;
        for (;;) {
          const page: pb.SyncOK = await this.request(Cmd.SYNC, pb.SyncRequestSchema, { afterSeq: after, limit: this.opts.syncLimit });
          if (page.firstSeq > 0n) inbox.skipTo(page.firstSeq);
          const before = inbox.shown;
          for (const m of page.messages) inbox.accept(m);
          if (inbox.shown !== before) this.scheduleAck();
          if (!page.hasMore || page.messages.length === 0) break;
          after = page.messages[page.messages.length - 1].seq;
        }
      } while (this.syncAgain || this.inbox!.gap());
    } finally {
      this.syncing = false;
    }
  }

  // ---- frames out -------------------------------------------------------

  private allocSeq(): number {
    for (;;) {
      const s = this.nextSeq;
      this.nextSeq = s >= 0xffffffff ? 1 : s + 1;
      if (!this.outstanding.has(s)) return s;
    }
  }

  private write(cmd: number, flags: number, seq: number, body: Uint8Array): void {
    if (!this.sock) throw new ConnectionLost("not connected");
    this.sock.send(encodeFrame(this.ser, cmd, flags, seq, body));
    this.lastSent = Date.now();
  }

  /** fire sends a request that has no reply (PUSH_ACK, TYPING); an ERROR about it goes to the "error" event. */
  private fire<D extends DescMessage>(cmd: number, desc: D, init: MessageInitShape<D>): void {
    if (!this.sock) return;
    this.write(cmd, 0, this.allocSeq(), encodeBody(this.ser, desc, create(desc, init)));
  }

  /**
   * request sends one request on the current connection and resolves with
   * its decoded reply; it rejects with ImgnError on an ERROR reply and with
   * ConnectionLost when the connection goes first. Before login it is
   * only for REGISTER and LOGIN (beforeLogin).
   */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  private request<R = any, D extends DescMessage = DescMessage>(
    cmd: number, desc: D, init: MessageInitShape<D>, beforeLogin = false, flags = 0,
  ): Promise<R> {
    return new Promise((resolve, reject) => {
      if (!this.sock || (!beforeLogin && this.state !== "online")) {
        reject(new ConnectionLost("not online"));
        return;
      }
      const seq = this.allocSeq();
      const timer = setTimeout(() => {
        this.outstanding.delete(seq);
        reject(new ConnectionLost(`no reply within ${this.opts.requestTimeoutMs} ms`));
      }, this.opts.requestTimeoutMs);
      this.outstanding.set(seq, {
        timer,
        reject,
        resolve: (f) => {
          try {
            if (f.command === Cmd.ERROR) {
              const e = toError(decodeBody(f.serializer, pb.ErrorSchema, f.body));
              reject(e);
              if (e.fatal) this.onLost(e.message);
              return;
            }
            const schema = replySchemas.get(f.command);
            if (!schema) throw new Error(`unexpected reply command 0x${f.command.toString(16)}`);
            resolve(decodeBody(f.serializer, schema, f.body) as R);
          } catch (e) {
            reject(e as Error);
          }
        },
      });
      try {
        this.write(cmd, flags, seq, encodeBody(this.ser, desc, create(desc, init)));
      } catch (e) {
        clearTimeout(timer);
        this.outstanding.delete(seq);
        reject(e as Error);
      }
    });
  }

  /** whenOnline resolves once the client is logged in (at once if it is). */
  whenOnline(): Promise<void> {
    if (this.state === "online") return Promise.resolve();
    if (this.closed) return Promise.reject(new ClientClosed());
    return new Promise((resolve, reject) => this.onlineWaiters.push({ resolve, reject }));
  }

  /** call is request() once online, retried on a lost connection for commands that are safe to repeat. */
  private async call<D extends DescMessage>(cmd: number, desc: D, init: MessageInitShape<D>, idempotent = true): Promise<any> {
    for (let i = 0; ; i++) {
      await this.whenOnline();
      try {
        return await this.request(cmd, desc, init);
      } catch (e) {
        if (!(e instanceof ConnectionLost) || !idempotent || i >= 5) throw e;
      }
    }
  }

  // ---- sending ----------------------------------------------------------

  /**
   * send sends a 1:1 message and resolves with its SEND_ACK once it is
   * stored. It is retried with the same client_msg_id through retryable
   * errors, timeouts and reconnects until acknowledged, and rejects only
   * on a final error (UNKNOWN_RECIPIENT, ...) or close(). The "send" event
   * tells its state as it goes; the message also enters the message stream
   * at SEND_ACK.seq.
   */
  send(to: string, body: Uint8Array | string, opts: { kind?: number; clientMsgId?: string } = {}): Promise<pb.SendAck> {
    const clientMsgId = opts.clientMsgId ?? newClientMsgId();
    const req = create(pb.SendRequestSchema, { clientMsgId, to, kind: opts.kind ?? 0, body: bytes(body) });
    return this.enqueueSend(Cmd.SEND, req);
  }

  /** sendGroup is send for a group (GROUP_SEND). */
  sendGroup(groupId: string, body: Uint8Array | string, opts: { kind?: number; clientMsgId?: string } = {}): Promise<pb.SendAck> {
    const clientMsgId = opts.clientMsgId ?? newClientMsgId();
    const req = create(pb.GroupSendRequestSchema, { clientMsgId, groupId, kind: opts.kind ?? 0, body: bytes(body) });
    return this.enqueueSend(Cmd.GROUP_SEND, req);
  }

  /** pendingSends lists the client_msg_ids not acknowledged yet. */
  pendingSends(): string[] {
    return [...this.sends.keys()];
  }

  private enqueueSend(cmd: number, req: pb.SendRequest | pb.GroupSendRequest): Promise<pb.SendAck> {
    if (this.closed) return Promise.reject(new ClientClosed());
    const existing = this.sends.get(req.clientMsgId);
    if (existing) return new Promise((resolve, reject) => {
      const r0 = existing.resolve, j0 = existing.reject;
      existing.resolve = (a) => (r0(a), resolve(a));
      existing.reject = (e) => (j0(e), reject(e));
    });
    return new Promise((resolve, reject) => {
      const s: PendingSend = { clientMsgId: req.clientMsgId, cmd, req, attempt: 0, inFlight: false, resolve, reject };
      this.sends.set(s.clientMsgId, s);
      this.opts.outbox?.put({
        clientMsgId: req.clientMsgId, kind: req.kind, body: base64Encode(req.body, "std"),
        ...(cmd === Cmd.SEND ? { to: (req as pb.SendRequest).to } : { groupId: (req as pb.GroupSendRequest).groupId }),
      });
      this.emit("send", { clientMsgId: s.clientMsgId, state: "sending" });
      if (this.state === "online") this.transmitSend(s);
    });
  }

  private transmitSend(s: PendingSend): void {
    if (this.state !== "online" || s.inFlight) return;
    s.inFlight = true;
    s.timer = undefined;
    const desc = s.cmd === Cmd.SEND ? pb.SendRequestSchema : pb.GroupSendRequestSchema;
    const p = this.request(s.cmd, desc, s.req as never, false, s.attempt > 0 ? FLAG_RESENT : 0) as Promise<pb.SendAck>;
    p.then((ack) => {
      this.sends.delete(s.clientMsgId);
      this.opts.outbox?.remove(s.clientMsgId);
      this.emit("send", { clientMsgId: s.clientMsgId, state: "stored", ack });
      // protocol.md §6.4: the sending connection is not pushed its own message
      const req = s.req;
      this.take(create(pb.MessageSchema, {
        seq: ack.seq, msgId: ack.msgId, from: this.user, clientMsgId: s.clientMsgId, kind: req.kind, body: req.body,
        time: ack.time, ...(s.cmd === Cmd.SEND ? { to: (req as pb.SendRequest).to } : { to: (req as pb.GroupSendRequest).groupId, groupId: (req as pb.GroupSendRequest).groupId }),
      }));
      s.resolve(ack);
    }, (e: Error) => {
      s.inFlight = false;
      if (!this.sends.has(s.clientMsgId)) return;
      if (e instanceof ImgnError && !e.retryable) {
        this.sends.delete(s.clientMsgId);
        this.opts.outbox?.remove(s.clientMsgId);
        this.emit("send", { clientMsgId: s.clientMsgId, state: "failed", error: e });
        s.reject(e);
        return;
      }
      s.attempt++;
      this.emit("send", { clientMsgId: s.clientMsgId, state: "retrying", error: e, attempt: s.attempt });
      if (e instanceof ConnectionLost && this.state !== "online") return; // resent after the next login
      const b = this.opts.backoff ?? {};
      const cap = Math.min(b.maxMs ?? 10_000, (b.initialMs ?? 250) * 2 ** Math.min(s.attempt, 16));
      const wait = Math.max(e instanceof ImgnError ? e.retryAfterMs : 0, Math.random() * cap);
      s.timer = setTimeout(() => {
        s.timer = undefined;
        this.transmitSend(s);
      }, wait);
    });
  }

  // ---- groups, presence, chat -------------------------------------------

  /**
   * groupCreate creates a group with the caller as owner and members (each
   * must exist). It is invite-only unless opts.open: then anyone who knows
   * its id may join. Not idempotent, so not retried on a lost connection.
   */
  groupCreate(name: string, members: string[] = [], opts: { open?: boolean } = {}): Promise<pb.GroupInfo> {
    return this.call(Cmd.GROUP_CREATE, pb.GroupCreateRequestSchema, { name, members, open: opts.open ?? false }, false);
  }
  /** groupJoin joins an open group (an invite-only one refuses a non-member with GROUP_INVITE_ONLY). */
  groupJoin(groupId: string): Promise<pb.GroupInfo> {
    return this.call(Cmd.GROUP_JOIN, pb.GroupRequestSchema, { groupId });
  }
  /**
   * groupLeave leaves a group; the reply holds the group id only. An owner
   * leaving hands the group to its most senior admin (else member); the
   * last member's leave dissolves it.
   */
  groupLeave(groupId: string): Promise<pb.GroupInfo> {
    return this.call(Cmd.GROUP_LEAVE, pb.GroupRequestSchema, { groupId });
  }
  /** groupMembers answers a group's name, owner, admins, members and policy (members only). */
  groupMembers(groupId: string): Promise<pb.GroupInfo> {
    return this.call(Cmd.GROUP_MEMBERS, pb.GroupRequestSchema, { groupId });
  }
  /** addGroupMembers adds users (1..500, each existing) to a group: the owner and admins only. Idempotent. */
  addGroupMembers(groupId: string, users: string[]): Promise<pb.GroupInfo> {
    return this.call(Cmd.GROUP_ADD, pb.GroupMembersRequestSchema, { groupId, users });
  }
  /**
   * removeGroupMembers removes users (not the caller: it leaves) from a
   * group: the owner removes anyone, an admin only plain members. All or
   * nothing. Idempotent.
   */
  removeGroupMembers(groupId: string, users: string[]): Promise<pb.GroupInfo> {
    return this.call(Cmd.GROUP_REMOVE, pb.GroupMembersRequestSchema, { groupId, users });
  }
  /**
   * transferGroup makes user, a member, the owner; the caller, the owner
   * until then, becomes an admin. Not retried on a lost connection: a
   * repeat after an applied first attempt would get NOT_GROUP_OWNER.
   */
  transferGroup(groupId: string, user: string): Promise<pb.GroupInfo> {
    return this.call(Cmd.GROUP_TRANSFER, pb.GroupTransferRequestSchema, { groupId, user }, false);
  }
  /** setGroupAdmin gives a member the admin role (admin true) or takes it away: the owner only. Idempotent. */
  setGroupAdmin(groupId: string, user: string, admin: boolean): Promise<pb.GroupInfo> {
    return this.call(Cmd.GROUP_ADMIN, pb.GroupAdminRequestSchema, { groupId, user, admin });
  }
  /**
   * groups answers one page of the caller's groups, ascending by group id,
   * those after opts.after ("" first); limit 0 is the server's 50, at most
   * 200. Ask again with after = the last group id while has_more is set.
   */
  groups(opts: { after?: string; limit?: number } = {}): Promise<pb.GroupsOK> {
    return this.call(Cmd.GROUPS, pb.GroupsRequestSchema, { after: opts.after ?? "", limit: opts.limit ?? 0 });
  }
  /**
   * allGroups pages through groups() and returns every group of the
   * caller, at most maxPages pages of 200 (a bound against a server that
   * keeps answering has_more).
   */
  async allGroups(maxPages = 100): Promise<pb.GroupSummary[]> {
    const out: pb.GroupSummary[] = [];
    let after = "";
    for (let i = 0; i < maxPages; i++) {
      const page = await this.groups({ after, limit: 200 });
      out.push(...page.groups);
      if (!page.hasMore || page.groups.length === 0) break;
      after = page.groups[page.groups.length - 1].groupId;
    }
    return out;
  }
  /** presence answers one entry per user, in request order (at most 500 users). */
  async presence(users: string[]): Promise<pb.UserPresence[]> {
    const ok: pb.PresenceOK = await this.call(Cmd.PRESENCE, pb.PresenceRequestSchema, { users });
    return ok.users;
  }
  /** conversations pages the caller's conversations, newest first; UNSUPPORTED on stores without them. */
  conversations(opts: { beforeSeq?: bigint; limit?: number } = {}): Promise<pb.ConversationsOK> {
    return this.call(Cmd.CONVERSATIONS, pb.ConversationsRequestSchema, opts);
  }
  /** read moves the caller's read cursor of conv up to upToSeq (0: everything). */
  read(conv: Conv, upToSeq = 0n): Promise<pb.ReadOK> {
    return this.call(Cmd.READ, pb.ReadRequestSchema, { ...convInit(conv), upToSeq });
  }
  /** typing tells the others of conv that the user types (on) or stopped; best-effort, no reply. */
  typing(conv: Conv, on: boolean): void {
    if (this.state === "online") this.fire(Cmd.TYPING, pb.TypingRequestSchema, { ...convInit(conv), on });
  }
  recall(msgId: bigint): Promise<pb.EventOK> {
    return this.call(Cmd.RECALL, pb.MessageRequestSchema, { msgId });
  }
  delete(msgId: bigint): Promise<pb.EventOK> {
    return this.call(Cmd.DELETE, pb.MessageRequestSchema, { msgId });
  }
  /** history pages one conversation backwards; messages come in ascending seq. */
  history(conv: Conv, opts: { beforeSeq?: bigint; beforeMsgId?: bigint; limit?: number } = {}): Promise<pb.HistoryOK> {
    return this.call(Cmd.HISTORY, pb.HistoryRequestSchema, { ...convInit(conv), ...opts });
  }
  readCount(conv: Conv, seq: bigint): Promise<pb.ReadCountOK> {
    return this.call(Cmd.READ_COUNT, pb.ReadCountRequestSchema, { ...convInit(conv), seq });
  }

  /**
   * messages returns the message stream as an async iterator: each inbox
   * entry from now on, once and in order. At most maxQueued entries wait
   * for a slow consumer; past that the iterator fails instead of dropping.
   */
  messages(maxQueued = 10_000): AsyncIterableIterator<pb.Message> {
    const queue: pb.Message[] = [];
    let waiter: { resolve: (r: IteratorResult<pb.Message>) => void; reject: (e: Error) => void } | undefined;
    let failure: Error | undefined;
    let done = false;
    const off = this.on("message", (m) => {
      if (waiter) {
        const w = waiter;
        waiter = undefined;
        w.resolve({ value: m, done: false });
      } else if (queue.length >= maxQueued) {
        failure = new Error(`imgn: message iterator over ${maxQueued} unread entries`);
        off();
      } else {
        queue.push(m);
      }
    });
    const it: AsyncIterableIterator<pb.Message> = {
      next: () => {
        if (queue.length) return Promise.resolve({ value: queue.shift()!, done: false });
        if (failure) return Promise.reject(failure);
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => (waiter = { resolve, reject }));
      },
      return: () => {
        done = true;
        off();
        waiter?.resolve({ value: undefined, done: true });
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }
}

function convInit(c: Conv): { peer?: string; groupId?: string } {
  return c.groupId ? { groupId: c.groupId } : { peer: c.peer };
}

function bytes(b: Uint8Array | string): Uint8Array {
  return typeof b === "string" ? new TextEncoder().encode(b) : b;
}

function toError(e: pb.Error): ImgnError {
  return new ImgnError(e.code, e.message, e.retryable, e.retryAfterMs, e.fatal);
}
