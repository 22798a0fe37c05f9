// The browser chat app served by imd --web: one page, no framework, on the
// TypeScript client of clients/js. It keeps the whole inbox of the
// logged-in user in memory (synced from seq 0 at every page load) and
// draws the conversation list and the open chat from it.

import { Client, Code, ImgnError, convKey, convOf, newClientMsgId } from "../../clients/js/src/index.js";
import type { Conv, Outbox, OutboxEntry, SendState, State, pb } from "../../clients/js/src/index.js";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const text = (b: Uint8Array) => new TextDecoder().decode(b);

/** A message as the chat view shows it: stored (seq) or still being sent (pending). */
interface Item {
  key: string; // client_msg_id for own messages, else "s<seq>"
  seq?: bigint;
  msgId?: bigint;
  from: string;
  body: string;
  time: number;
  state?: SendState["state"];
  recalled?: boolean;
}

interface ConvState {
  conv: Conv;
  key: string;
  name: string;
  items: Item[];
  byKey: Map<string, Item>;
  readSeq: bigint;
  // unread from CONVERSATIONS (server) as of serverSeq; messages above it are counted here
  serverUnread?: number;
  serverSeq: bigint;
  lastSeq: bigint;
  peerReadSeq: bigint; // 1:1: the peer has read my messages up to this seq of my inbox
  typingUntil: number;
  typingUser: string;
  online?: boolean;
}

let client: Client | undefined;
let me = "";
let convs = new Map<string, ConvState>();
let current: ConvState | undefined;
let conversationsSupported: boolean | undefined;
let presenceTimer: ReturnType<typeof setInterval> | undefined;
let typingTimer: ReturnType<typeof setInterval> | undefined;
let lastTypingSent = 0;
const byMsgId = new Map<bigint, { c: ConvState; item: Item }>();

function wsURL(): string {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
}

/** deviceId is kept per browser tab, so two tabs of one user are two devices. */
function deviceId(): string {
  let d = sessionStorage.getItem("imgn.device");
  if (!d) {
    const r = new Uint8Array(6);
    crypto.getRandomValues(r);
    d = "web-" + Array.from(r, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("imgn.device", d);
  }
  return d;
}

// ---- read cursors kept locally when the server has no conversations ------

function localReads(): Record<string, string> {
  try {
    return JSON.parse(localStorage.getItem("imgn.read." + me) ?? "{}") as Record<string, string>;
  } catch {
    return {};
  }
}

function saveLocalRead(key: string, seq: bigint): void {
  const r = localReads();
  r[key] = seq.toString();
  localStorage.setItem("imgn.read." + me, JSON.stringify(r));
}

/**
 * outboxFor keeps user's unacknowledged sends in localStorage, so that a
 * message typed while the node was unreachable is still sent, with its
 * client_msg_id, after the page is closed and opened again.
 */
function outboxFor(user: string): Outbox {
  const key = "imgn.outbox." + user;
  const read = (): Record<string, OutboxEntry> => {
    try {
      return JSON.parse(localStorage.getItem(key) ?? "{}") as Record<string, OutboxEntry>;
    } catch {
      return {};
    }
  };
  const write = (m: Record<string, OutboxEntry>) => localStorage.setItem(key, JSON.stringify(m));
  return {
    list: () => Object.values(read()),
    put: (e) => write({ ...read(), [e.clientMsgId]: e }),
    remove: (id) => {
      const m = read();
      delete m[id];
      write(m);
    },
  };
}

// ---- state -------------------------------------------------------------

function convFor(conv: Conv): ConvState {
  const key = convKey(conv);
  let c = convs.get(key);
  if (!c) {
    const saved = localReads()[key];
    c = {
      conv, key, name: conv.groupId ? "group " + conv.groupId.slice(0, 8) : conv.peer!, items: [], byKey: new Map(),
      readSeq: saved ? BigInt(saved) : 0n, serverSeq: 0n, lastSeq: 0n, peerReadSeq: 0n, typingUntil: 0, typingUser: "",
    };
    convs.set(key, c);
    if (conv.groupId) void nameGroup(c);
  }
  return c;
}

async function nameGroup(c: ConvState): Promise<void> {
  try {
    const g = await client!.groupMembers(c.conv.groupId!);
    c.name = g.name || "group " + g.groupId.slice(0, 8);
    render();
  } catch {
    // not a member any more: keep the short id
  }
}

function unread(c: ConvState): number {
  let n = 0;
  for (const it of c.items) {
    if (it.seq === undefined || it.from === me || it.seq <= c.readSeq) continue;
    if (conversationsSupported && c.serverUnread !== undefined && it.seq <= c.serverSeq) continue;
    n++;
  }
  return n + (conversationsSupported ? c.serverUnread ?? 0 : 0);
}

function onMessage(m: pb.Message): void {
  const conv = convOf(me, m);
  if (!conv) return;
  const c = convFor(conv);
  if (m.event === 1 || m.event === 2) {
    const t = byMsgId.get(m.targetMsgId);
    if (t) {
      if (m.event === 1) {
        t.item.recalled = true;
        t.item.body = "";
      } else {
        t.c.items = t.c.items.filter((x) => x !== t.item);
      }
    }
    render();
    return;
  }
  if (m.deleted) return;
  const key = m.from === me && m.clientMsgId ? m.clientMsgId : "s" + m.seq;
  let item = c.byKey.get(key);
  if (!item) {
    item = { key, from: m.from, body: "", time: 0 };
    c.byKey.set(key, item);
    c.items.push(item);
  }
  Object.assign(item, { seq: m.seq, msgId: m.msgId, body: text(m.body), time: Number(m.time), recalled: m.recalled });
  if (m.from === me) item.state = "stored";
  byMsgId.set(m.msgId, { c, item });
  if (m.seq > c.lastSeq) c.lastSeq = m.seq;
  if (m.from === me && m.seq > c.readSeq) c.readSeq = m.seq; // sending implies having read
  if (m.from !== me && c.typingUser === m.from) c.typingUntil = 0; // a message ends typing
  if (c === current && document.visibilityState === "visible" && m.from !== me) markRead(c);
  render();
}

function onSend(s: SendState): void {
  for (const c of convs.values()) {
    const it = c.byKey.get(s.clientMsgId);
    if (it) {
      if (it.state !== "stored") it.state = s.state;
      render();
      return;
    }
  }
}

function markRead(c: ConvState): void {
  if (c.lastSeq <= c.readSeq && (c.serverUnread ?? 0) === 0) return;
  c.readSeq = c.lastSeq;
  c.serverUnread = conversationsSupported ? 0 : undefined;
  c.serverSeq = c.lastSeq;
  saveLocalRead(c.key, c.readSeq);
  if (conversationsSupported && client?.state === "online") {
    client.read(c.conv, c.lastSeq).then((ok) => {
      c.serverUnread = ok.unread;
      c.serverSeq = c.lastSeq;
      render();
    }, () => undefined);
  }
  render();
}

async function loadConversations(): Promise<void> {
  try {
    let before = 0n;
    for (let page = 0; page < 20; page++) {
      const ok = await client!.conversations({ beforeSeq: before, limit: 200 });
      conversationsSupported = true;
      document.body.dataset.unread = "server";
      for (const cv of ok.conversations) {
        const c = convFor(cv.groupId ? { groupId: cv.groupId } : { peer: cv.peer });
        c.readSeq = cv.readSeq > c.readSeq ? cv.readSeq : c.readSeq;
        c.serverUnread = cv.unread;
        c.serverSeq = cv.lastSeq;
        if (cv.lastSeq > c.lastSeq) c.lastSeq = cv.lastSeq;
      }
      if (!ok.hasMore || ok.conversations.length === 0) break;
      before = ok.conversations[ok.conversations.length - 1].lastSeq;
    }
  } catch (e) {
    if (e instanceof ImgnError && e.code === Code.UNSUPPORTED) {
      conversationsSupported = false; // count from what SYNC brings
      document.body.dataset.unread = "client";
    }
  }
  render();
}

async function refreshPresence(): Promise<void> {
  if (client?.state !== "online") return;
  const self = convs.get(convKey({ peer: me }));
  if (self) self.online = true; // notes to self: this page is the proof
  const peers = [...convs.values()].filter((c) => c.conv.peer && c.conv.peer !== me).slice(0, 500);
  if (!peers.length) return;
  try {
    const p = await client.presence(peers.map((c) => c.conv.peer!));
    p.forEach((u, i) => (peers[i].online = u.online));
    render();
  } catch {
    // shown as before; the next round tries again
  }
}

// ---- drawing -------------------------------------------------------------

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, txt?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (txt !== undefined) e.textContent = txt;
  return e;
}

function sortedConvs(): ConvState[] {
  const last = (c: ConvState) => c.items.length ? c.items[c.items.length - 1].seq ?? 1n << 62n : c.lastSeq;
  return [...convs.values()].sort((a, b) => (last(b) > last(a) ? 1 : last(b) < last(a) ? -1 : a.key < b.key ? -1 : 1));
}

let renderQueued = false;
function render(): void {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    draw();
  });
}

// Signatures of what the list and the chat show: they are redrawn only
// when these change, so focus and pointer targets survive idle renders.
let listSig = "";
let chatSig = "";

function draw(): void {
  const list = $("conv-list");
  const order = sortedConvs();
  const sig = order.map((c) => [c.key, c.name, c.online, unread(c), c === current, c.items.length,
    c.items[c.items.length - 1]?.recalled].join("|")).join("\n");
  if (sig !== listSig) {
    listSig = sig;
    drawList(list, order);
  }
  drawChat();
}

function drawList(list: HTMLElement, order: ConvState[]): void {
  list.replaceChildren(...order.map((c) => {
    const li = el("li");
    const b = el("button", "conv");
    b.type = "button";
    b.dataset.conv = c.key;
    if (c === current) b.setAttribute("aria-current", "true");
    const n = unread(c);
    const dot = el("span", "dot" + (c.online ? " online" : ""));
    if (c.conv.peer) dot.setAttribute("aria-label", c.online ? "online" : "offline");
    else dot.hidden = true;
    const name = el("span", "name", c.name);
    const lastItem = c.items[c.items.length - 1];
    if (lastItem) name.append(el("span", "last", lastItem.recalled ? "message recalled" : lastItem.body));
    b.append(dot, name);
    if (n > 0) {
      const badge = el("span", "badge", String(n));
      badge.setAttribute("aria-label", `${n} unread`);
      b.append(badge);
    }
    b.addEventListener("click", () => openConv(c));
    li.append(b);
    return li;
  }));
}

function drawChat(): void {
  const now = Date.now();
  if (!current) return;
  const c = current;
  $("typing").textContent = c.typingUntil > now ? `${c.typingUser} is typing…` : "";
  const sig = [c.key, c.name, c.online, c.peerReadSeq, Math.floor(now / 10_000),
    ...c.items.map((it) => [it.key, it.state, it.recalled, it.seq].join(","))].join("|");
  if (sig === chatSig) return;
  chatSig = sig;
  $("chat-title").textContent = c.name;
  $("chat-sub").textContent = c.conv.groupId ? "id " + c.conv.groupId : "";
  const pres = $("chat-presence");
  pres.hidden = !c.conv.peer;
  pres.className = "dot" + (c.online ? " online" : "");
  pres.setAttribute("aria-label", c.online ? "online" : "offline");
  pres.setAttribute("role", "img");
  const ol = $("messages");
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  ol.replaceChildren(...c.items.map((it) => {
    const mine = it.from === me;
    const li = el("li", "msg" + (mine ? " mine" : "") + (it.state && mine ? " " + it.state : "") + (it.recalled ? " recalled" : ""));
    li.dataset.key = it.key;
    if (!mine && c.conv.groupId) li.append(el("span", "from", it.from));
    li.append(el("span", "text", it.recalled ? "message recalled" : it.body));
    const meta = el("span", "meta");
    const time = it.time ? new Date(it.time).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
    let status = "";
    if (mine) {
      if (it.state === "sending") status = "sending…";
      else if (it.state === "retrying") status = "not sent, retrying…";
      else if (it.state === "failed") status = "failed";
      else if (c.conv.peer && c.conv.peer !== me && it.seq !== undefined && it.seq <= c.peerReadSeq) status = "read";
      else status = "sent";
    }
    meta.append(el("span", "status", [time, status].filter(Boolean).join(" · ")));
    if (mine && it.msgId !== undefined && !it.recalled && now - it.time < 110_000) {
      const rb = el("button", "link", "Recall");
      rb.type = "button";
      rb.addEventListener("click", () => void client?.recall(it.msgId!).catch((e) => showError(e)));
      meta.append(rb);
    }
    li.append(meta);
    return li;
  }));
  if (atBottom) ol.scrollTop = ol.scrollHeight;
}

function openConv(c: ConvState): void {
  current = c;
  $("composer").hidden = false;
  $("chat-view").classList.add("in-chat");
  markRead(c);
  render();
  void refreshPresence();
  $("composer-input").focus();
}

function showError(e: unknown): void {
  $("side-error").textContent = e instanceof Error ? e.message : String(e);
}

function setBanner(s: State, detail?: string): void {
  const b = $("banner");
  if (s === "online") {
    b.hidden = true;
    return;
  }
  b.hidden = false;
  b.textContent = s === "kicked" ? "Signed in elsewhere with this device; reload to continue."
    : s === "closed" ? "Disconnected." : `Reconnecting…${detail ? " (" + detail + ")" : ""}`;
}

// ---- actions -------------------------------------------------------------

async function login(register: boolean): Promise<void> {
  const user = $<HTMLInputElement>("login-user").value.trim();
  const password = $<HTMLInputElement>("login-password").value;
  $("login-error").textContent = "";
  const outbox = outboxFor(user);
  const c = new Client({ url: wsURL(), user, password, device: deviceId(), register, shown: 0n, serializer: "protobuf", outbox });
  me = user;
  convs = new Map();
  current = undefined;
  for (const e of outbox.list()) { // sends of an earlier page, resent by connect()
    const conv = convFor(e.groupId ? { groupId: e.groupId } : { peer: e.to! });
    const item: Item = { key: e.clientMsgId, from: me, body: text(Uint8Array.from(atob(e.body), (ch) => ch.charCodeAt(0))), time: Date.now(), state: "sending" };
    conv.items.push(item);
    conv.byKey.set(item.key, item);
  }
  c.on("message", onMessage);
  c.on("send", onSend);
  c.on("state", (s, d) => {
    setBanner(s, d);
    if (s === "online") {
      void loadConversations();
      void refreshPresence();
    }
  });
  c.on("receipt", (r) => {
    const c2 = convs.get(convKey(r.groupId ? { groupId: r.groupId } : { peer: r.peer }));
    if (!c2) return;
    if (r.user === me) {
      if (r.readSeq > c2.readSeq) c2.readSeq = r.readSeq; // another of my devices read
    } else if (r.readSeq > c2.peerReadSeq) {
      c2.peerReadSeq = r.readSeq;
    }
    render();
  });
  c.on("typing", (t) => {
    const c2 = convFor(t.groupId ? { groupId: t.groupId } : { peer: t.peer });
    c2.typingUser = t.user;
    c2.typingUntil = t.on ? Date.now() + (t.expiresMs || 6000) : 0;
    render();
  });
  client = c; // the listeners above use it as soon as the login completes
  try {
    await c.connect();
  } catch (e) {
    client = undefined;
    $("login-error").textContent = e instanceof ImgnError && e.code === Code.USER_EXISTS ? "That user id is taken."
      : e instanceof ImgnError && e.code === Code.AUTH_FAILED ? "Wrong user id or password." : String((e as Error).message);
    return;
  }
  $("me-name").textContent = user;
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  presenceTimer = setInterval(() => void refreshPresence(), 5000);
  typingTimer = setInterval(render, 1000); // typing indications expire
  $("new-chat-user").focus();
}

function send(body: string): void {
  if (!client || !current || !body) return;
  const c = current;
  const id = newClientMsgId();
  const item: Item = { key: id, from: me, body, time: Date.now(), state: "sending" };
  c.items.push(item);
  c.byKey.set(id, item);
  const p = c.conv.groupId ? client.sendGroup(c.conv.groupId, body, { clientMsgId: id }) : client.send(c.conv.peer!, body, { clientMsgId: id });
  client.typing(c.conv, false);
  lastTypingSent = 0;
  p.catch((e) => {
    item.state = "failed";
    showError(e);
    render();
  });
  render();
}

/** openGroup opens a group just created or joined, clearing the form that asked. */
function openGroup(g: pb.GroupInfo, form: HTMLFormElement): void {
  form.reset();
  form.closest("details")?.removeAttribute("open");
  const c = convFor({ groupId: g.groupId });
  c.name = g.name || c.name;
  openConv(c);
}

function wire(): void {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const submitter = (ev as SubmitEvent).submitter as HTMLButtonElement | null;
    void login(submitter?.value === "register");
  });
  $("logout-button").addEventListener("click", () => {
    clearInterval(presenceTimer);
    clearInterval(typingTimer);
    void client?.close();
    client = undefined;
    $("chat-view").hidden = true;
    $("login-view").hidden = false;
    $("banner").hidden = true;
  });
  $("new-chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>("new-chat-user");
    const peer = input.value.trim();
    if (!peer) return;
    input.value = "";
    openConv(convFor({ peer }));
  });
  $("new-group-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $<HTMLInputElement>("new-group-name").value.trim();
    const members = $<HTMLInputElement>("new-group-members").value.split(/[\s,]+/).filter(Boolean);
    client?.groupCreate(name, members).then((g) => openGroup(g, ev.target as HTMLFormElement), showError);
  });
  $("join-group-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $<HTMLInputElement>("join-group-id").value.trim();
    client?.groupJoin(id).then((g) => openGroup(g, ev.target as HTMLFormElement), showError);
  });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>("composer-input");
    send(input.value.trim());
    input.value = "";
  });
  $("composer-input").addEventListener("input", () => {
    if (!client || !current) return;
    const now = Date.now();
    if (now - lastTypingSent > 3000) { // protocol.md §6.15: again every expires_ms/2
      lastTypingSent = now;
      client.typing(current.conv, true);
    }
  });
  $("back-button").addEventListener("click", () => {
    $("chat-view").classList.remove("in-chat");
    current = undefined;
    render();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && current) markRead(current);
  });
}

wire();
