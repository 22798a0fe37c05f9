// The browser chat app served by imd --web: one page, no framework, on the
// TypeScript client of clients/js. It keeps the whole inbox of the
// logged-in user in memory (synced from seq 0 at every page load) and
// draws the conversation list and the open chat from it. Groups follow
// their membership events: each is a notice in the group's timeline, and
// makes the app ask for the group's members again.

import { Client, Code, ImgnError, convKey, convOf, groupEventOf, newClientMsgId } from "../../clients/js/src/index.js";
import type { Conv, GroupEvent, Outbox, OutboxEntry, SendState, State, pb } from "../../clients/js/src/index.js";

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
  /** A membership event, shown as a notice in the timeline (body is its text), not as a chat bubble. */
  notice?: boolean;
  /** A notice of this user's own change: read, as an own message is (the server raised the cursor to it). */
  mine?: boolean;
}

/** What the app knows of a group: from GROUPS (no member list) or GROUP_MEMBERS and the replies of changes. */
interface GroupView {
  owner: string;
  admins: string[];
  members?: string[];
  size: number;
  open: boolean;
  /** The user is no member (left, removed, or the group is gone): no composer, no actions. */
  left: boolean;
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
  group?: GroupView;
  refreshTimer?: ReturnType<typeof setTimeout>;
  refreshForced?: boolean;
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
    if (conv.groupId) scheduleGroupRefresh(c, false);
  }
  return c;
}

// ---- groups ----------------------------------------------------------------

function applyGroupInfo(c: ConvState, g: pb.GroupInfo): void {
  c.name = g.name || "group " + g.groupId.slice(0, 8);
  c.group = { owner: g.owner, admins: [...g.admins], members: [...g.members], size: g.members.length, open: g.open, left: false };
  render();
}

function applySummary(c: ConvState, s: pb.GroupSummary): void {
  c.name = s.name || "group " + s.groupId.slice(0, 8);
  const admins = c.group?.admins.filter((a) => a !== me) ?? [];
  if (s.admin) admins.push(me);
  c.group = { owner: s.owner, admins: admins.sort(), members: c.group?.members, size: s.size, open: s.open, left: false };
}

function markLeft(c: ConvState): void {
  c.group = { owner: c.group?.owner ?? "", admins: [], members: undefined, size: 0, open: c.group?.open ?? false, left: true };
  render();
}

/**
 * scheduleGroupRefresh asks for the group's members a moment later, once
 * for a burst of events (a page load syncs them all); unless force, only
 * when nothing is known of the group by then (GROUPS may have told).
 */
function scheduleGroupRefresh(c: ConvState, force: boolean): void {
  c.refreshForced = c.refreshForced || force;
  if (c.refreshTimer) return;
  c.refreshTimer = setTimeout(() => {
    c.refreshTimer = undefined;
    const forced = c.refreshForced;
    c.refreshForced = false;
    if (forced || !c.group) void refreshGroup(c);
  }, 150);
}

async function refreshGroup(c: ConvState): Promise<void> {
  if (client?.state !== "online" || c.group?.left) return;
  try {
    applyGroupInfo(c, await client.groupMembers(c.conv.groupId!));
  } catch (e) {
    if (e instanceof ImgnError && (e.code === Code.NOT_GROUP_MEMBER || e.code === Code.UNKNOWN_GROUP)) markLeft(c);
  }
}

/** loadGroups lists the user's groups (GROUPS), so that groups without messages show too. */
async function loadGroups(): Promise<void> {
  try {
    for (const s of await client!.allGroups()) {
      const c = convFor({ groupId: s.groupId });
      applySummary(c, s);
    }
  } catch {
    // the list fills from the message stream alone
  }
  render();
}

const who = (u: string) => (u === me ? "you" : u);
const names = (us: string[]) => us.map(who).join(", ");

/** noticeText is what the timeline says of a membership event. */
function noticeText(e: GroupEvent): string {
  const by = e.by ? who(e.by) : "";
  const users = names(e.users);
  let t: string;
  switch (e.type) {
    case "members_added":
      t = e.by && e.users.length === 1 && e.users[0] === e.by ? `${by} joined` : by ? `${by} added ${users}` : `${users} added`;
      break;
    case "members_removed":
      t = e.by && e.users.length === 1 && e.users[0] === e.by ? `${by} left` : by ? `${by} removed ${users}` : `${users} removed`;
      break;
    case "owner_changed":
      t = by ? `${by} made ${users} the owner` : `${users} now own${e.users[0] === me ? "" : "s"} the group`;
      break;
    case "admin_added":
      t = by ? `${by} made ${users} an admin` : `${users} made an admin`;
      break;
    case "admin_removed":
      t = by ? `${by} took the admin role from ${users}` : `${users} no longer an admin`;
      break;
    default:
      t = `the group changed (${e.type})`;
  }
  return t.startsWith("you ") ? "Y" + t.slice(1) : t; // user ids keep their case
}

function onGroupEvent(e: GroupEvent): void {
  const c = convFor({ groupId: e.groupId });
  const key = "s" + e.seq;
  if (!c.byKey.has(key)) {
    const item: Item = { key, seq: e.seq, msgId: e.msgId, from: "", body: noticeText(e), time: Number(e.time), notice: true, mine: e.by === me };
    c.byKey.set(key, item);
    c.items.push(item);
  }
  if (e.seq > c.lastSeq) c.lastSeq = e.seq;
  const mine = e.users.includes(me);
  if (e.type === "members_removed" && mine) {
    markLeft(c);
  } else {
    if (e.type === "members_added" && mine && c.group) c.group.left = false;
    scheduleGroupRefresh(c, true);
  }
  if (c === current && document.visibilityState === "visible") markRead(c);
  render();
}

/** describe turns a refusal into a sentence for the user. */
function describe(e: unknown): string {
  if (!(e instanceof ImgnError)) return e instanceof Error ? e.message : String(e);
  switch (e.code) {
    case Code.GROUP_INVITE_ONLY: return "This group is invite-only: ask its owner or an admin to add you.";
    case Code.NOT_GROUP_ADMIN: return "Only the group's owner and admins can add or remove members.";
    case Code.NOT_GROUP_OWNER: return "Only the group's owner can do that (an admin cannot remove the owner or another admin).";
    case Code.NOT_GROUP_MEMBER: return "You are not a member of this group (or that user is not).";
    case Code.UNKNOWN_GROUP: return "There is no group with that id.";
    case Code.UNKNOWN_RECIPIENT: return "No such user" + (e.detail ? ": " + e.detail : ".");
    case Code.GROUP_FULL: return "The group is full.";
    case Code.RATE_LIMITED: return "Too many changes at once: try again in a moment.";
    case Code.INVALID_ARGUMENT: return "Not accepted: " + e.detail;
    default: return e.message;
  }
}

function unread(c: ConvState): number {
  let n = 0;
  for (const it of c.items) {
    if (it.seq === undefined || it.from === me || it.mine || it.seq <= c.readSeq) continue;
    if (conversationsSupported && c.serverUnread !== undefined && it.seq <= c.serverSeq) continue;
    n++;
  }
  return n + (conversationsSupported ? c.serverUnread ?? 0 : 0);
}

function onMessage(m: pb.Message): void {
  const conv = convOf(me, m);
  if (!conv || groupEventOf(m)) return; // membership events come as "groupEvent"
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
    c.items[c.items.length - 1]?.recalled, c.group?.left].join("|")).join("\n");
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
    else if (c.group?.left) name.append(el("span", "last", "not a member"));
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
  const sig = [c.key, c.name, c.online, c.peerReadSeq, Math.floor(now / 10_000), JSON.stringify(c.group ?? null),
    ...c.items.map((it) => [it.key, it.state, it.recalled, it.seq].join(","))].join("|");
  if (sig === chatSig) return;
  chatSig = sig;
  $("chat-title").textContent = c.name;
  $("chat-sub").textContent = c.conv.groupId ? groupSub(c) : "";
  drawGroupPanel(c);
  $("composer").hidden = !!c.group?.left;
  const pres = $("chat-presence");
  pres.hidden = !c.conv.peer;
  pres.className = "dot" + (c.online ? " online" : "");
  pres.setAttribute("aria-label", c.online ? "online" : "offline");
  pres.setAttribute("role", "img");
  const ol = $("messages");
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  ol.replaceChildren(...c.items.map((it) => {
    const mine = it.from === me;
    if (it.notice) {
      const li = el("li", "msg notice", it.body);
      li.dataset.key = it.key;
      return li;
    }
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

/** groupSub is the line under a group's name: policy, owner, admins, size, id. */
function groupSub(c: ConvState): string {
  const g = c.group;
  if (!g) return "id " + c.conv.groupId;
  if (g.left) return "you are not a member · id " + c.conv.groupId;
  const parts = [g.open ? "open" : "invite-only", "owner " + who(g.owner)];
  if (g.admins.length) parts.push("admins " + names(g.admins));
  const n = g.members?.length ?? g.size;
  parts.push(`${n} member${n === 1 ? "" : "s"}`, "id " + c.conv.groupId);
  return parts.join(" · ");
}

function roleOf(g: GroupView, u: string): "owner" | "admin" | "member" {
  return u === g.owner ? "owner" : g.admins.includes(u) ? "admin" : "member";
}

function drawGroupPanel(c: ConvState): void {
  const panel = $("group-panel");
  const g = c.group;
  panel.hidden = !c.conv.groupId || !g || g.left;
  if (panel.hidden || !g) return;
  const mine = roleOf(g, me);
  $("group-summary").textContent = `Members (${g.members?.length ?? g.size})`;
  $("group-add-form").hidden = mine === "member";
  const act = (label: string, run: () => Promise<pb.GroupInfo>) => {
    const b = el("button", "link", label);
    b.type = "button";
    b.addEventListener("click", () => {
      $("chat-error").textContent = "";
      run().then((info) => applyGroupInfo(c, info), (e) => ($("chat-error").textContent = describe(e)));
    });
    return b;
  };
  const id = c.conv.groupId!;
  $("group-members").replaceChildren(...(g.members ?? []).map((u) => {
    const li = el("li");
    li.dataset.member = u;
    li.append(el("span", "name", who(u)));
    const role = roleOf(g, u);
    if (role !== "member") li.append(el("span", "role", role));
    if (u !== me && role !== "owner") {
      if (mine === "owner" || (mine === "admin" && role === "member")) li.append(act("Remove", () => client!.removeGroupMembers(id, [u])));
      if (mine === "owner") {
        li.append(act(role === "admin" ? "Remove admin" : "Make admin", () => client!.setGroupAdmin(id, u, role !== "admin")));
        li.append(act("Make owner", () => client!.transferGroup(id, u)));
      }
    }
    return li;
  }));
}

function openConv(c: ConvState): void {
  current = c;
  $("composer").hidden = !!c.group?.left;
  $("chat-error").textContent = "";
  if (c.conv.groupId) void refreshGroup(c);
  $("chat-view").classList.add("in-chat");
  markRead(c);
  render();
  void refreshPresence();
  $("composer-input").focus();
}

function showError(e: unknown): void {
  $("side-error").textContent = describe(e);
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
  c.on("groupEvent", onGroupEvent);
  c.on("send", onSend);
  c.on("state", (s, d) => {
    setBanner(s, d);
    if (s === "online") {
      void loadGroups();
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
    $("chat-error").textContent = describe(e);
    render();
  });
  render();
}

/** openGroup opens a group just created or joined, clearing the form that asked. */
function openGroup(g: pb.GroupInfo, form: HTMLFormElement): void {
  form.reset();
  form.closest("details")?.removeAttribute("open");
  const c = convFor({ groupId: g.groupId });
  applyGroupInfo(c, g);
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
    const open = $<HTMLInputElement>("new-group-open").checked;
    $("side-error").textContent = "";
    client?.groupCreate(name, members, { open }).then((g) => openGroup(g, ev.target as HTMLFormElement), showError);
  });
  $("join-group-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $<HTMLInputElement>("join-group-id").value.trim();
    $("side-error").textContent = "";
    client?.groupJoin(id).then((g) => openGroup(g, ev.target as HTMLFormElement), showError);
  });
  $("group-add-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const c = current;
    const input = $<HTMLInputElement>("group-add-users");
    const users = input.value.split(/[\s,]+/).filter(Boolean);
    if (!client || !c?.conv.groupId || !users.length) return;
    $("chat-error").textContent = "";
    client.addGroupMembers(c.conv.groupId, users).then((g) => {
      input.value = "";
      applyGroupInfo(c, g);
    }, (e) => ($("chat-error").textContent = describe(e)));
  });
  $("group-leave").addEventListener("click", () => {
    const c = current;
    if (!client || !c?.conv.groupId) return;
    $("chat-error").textContent = "";
    client.groupLeave(c.conv.groupId).then(() => markLeft(c), (e) => ($("chat-error").textContent = describe(e)));
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
