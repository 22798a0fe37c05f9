// The client against a real imd over WebSocket: login, send and receive in
// order exactly once, offline catch-up, groups, presence, the chat
// commands, retries with the same client_msg_id, restarts, GO_AWAY,
// router failover, token login and KICK.
import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { Client, Code, ImgnError, convKey, convOf } from "../dist/index.js";
import { freePort, startImd, startRouter, until } from "./imd.mjs";

const text = (m) => Buffer.from(m.body).toString();
let uniq = 0;
const uid = (p) => `${p}${process.pid}x${uniq++}`;

/** collect subscribes to c's message stream and returns the array it fills. */
function collect(c) {
  const got = [];
  c.on("message", (m) => got.push(m));
  return got;
}

async function open(node, user, opts = {}) {
  const c = new Client({ url: node.url, user, password: "secret123", device: opts.device ?? "d1", register: opts.register ?? true,
    backoff: { initialMs: 50, maxMs: 500 }, pushAckDelayMs: 50, ...opts });
  const got = collect(c);
  await c.connect();
  return { c, got };
}

for (const serializer of ["json", "protobuf"]) {
  describe(`client over WebSocket (${serializer})`, () => {
    let node;
    const clients = [];
    const o = (extra = {}) => ({ serializer, ...extra });
    before(async () => (node = await startImd({ store: "memory" })));
    after(async () => {
      for (const c of clients) await c.close();
      await node?.close();
    });

    test("1:1 messages arrive once, in order, on both sides; 64-bit ids intact", async () => {
      const a = uid("alice"), b = uid("bob");
      const A = await open(node, a, o());
      const B = await open(node, b, { serializer: serializer === "json" ? "protobuf" : "json" });
      clients.push(A.c, B.c);
      const it = B.c.messages();
      const acks = [];
      for (let i = 0; i < 20; i++) acks.push(A.c.send(b, `m${i}`)); // pipelined
      const done = await Promise.all(acks);
      await until(() => B.got.length === 20, 10_000, "bob's 20 messages");
      assert.deepEqual(B.got.map(text), done.map((_, i) => `m${i}`));
      assert.deepEqual(B.got.map((m) => m.seq), B.got.map((_, i) => BigInt(i + 1)));
      const viaIterator = [];
      for await (const m of it) {
        viaIterator.push(m.seq);
        if (viaIterator.length === 20) break; // ends the iterator
      }
      assert.deepEqual(viaIterator, B.got.map((m) => m.seq));
      assert.deepEqual(B.got.map((m) => m.msgId), done.map((k) => k.msgId)); // same ids through JSON and Protobuf
      assert.ok(done.some((k) => k.msgId > 2n ** 53n), "msg ids use the high bits");
      // the sender's own stream holds its messages at SEND_ACK.seq
      assert.deepEqual(A.got.map((m) => m.seq), done.map((k) => k.seq));
      assert.deepEqual(convOf(b, B.got[0]), { peer: a });
      assert.equal(convKey(convOf(a, A.got[0])), "u:" + b);
      // the device's cursor follows (cumulative PUSH_ACK)
      await new Promise((r) => setTimeout(r, 150));
      const B2 = await open(node, b, { serializer, device: "d2", register: false });
      clients.push(B2.c);
      assert.equal(B2.c.login.headSeq, 20n);
      assert.equal(B2.c.login.cursor, 0n); // another device: nothing acknowledged
      await until(() => B2.got.length === 20, 10_000, "a new device's full sync");
    });

    test("a client that was offline gets what it missed, then live messages", async () => {
      const a = uid("alice"), b = uid("bob");
      const A = await open(node, a, o());
      const B = await open(node, b, o());
      await A.c.send(b, "first");
      await until(() => B.got.length === 1);
      const shown = B.c.shown;
      await new Promise((r) => setTimeout(r, 200)); // the coalesced PUSH_ACK (50 ms) goes out
      await B.c.close();
      for (let i = 0; i < 5; i++) await A.c.send(b, `missed${i}`);
      const B2 = new Client({ url: node.url, user: b, password: "secret123", device: "d1", serializer, shown, syncLimit: 2 });
      const got = collect(B2);
      const ok = await B2.connect();
      assert.equal(ok.cursor, shown); // the device's acknowledged position
      clients.push(A.c, B2);
      await until(() => got.length === 5, 10_000, "the 5 missed messages");
      await A.c.send(b, "live");
      await until(() => got.length === 6);
      assert.deepEqual(got.map(text), ["missed0", "missed1", "missed2", "missed3", "missed4", "live"]);
    });

    test("groups: an open group is joined by id, messages reach all members, a leave answers the id only", async () => {
      const [a, b, c] = [uid("a"), uid("b"), uid("c")];
      const A = await open(node, a, o()), B = await open(node, b, o()), C = await open(node, c, o());
      clients.push(A.c, B.c, C.c);
      const g = await A.c.groupCreate("team", [b], { open: true });
      assert.deepEqual([g.members, g.owner, g.open, g.admins], [[a, b].sort(), a, true, []]);
      const joined = await C.c.groupJoin(g.groupId);
      assert.deepEqual(joined.members, [a, b, c].sort());
      assert.equal((await B.c.groupMembers(g.groupId)).owner, a);
      await B.c.sendGroup(g.groupId, "hello team");
      for (const X of [A, B, C]) await until(() => X.got.some((m) => m.groupId === g.groupId && text(m) === "hello team"));
      const left = await C.c.groupLeave(g.groupId);
      assert.deepEqual([left.groupId, left.members, left.owner], [g.groupId, [], ""]);
      await assert.rejects(C.c.sendGroup(g.groupId, "x"), (e) => e instanceof ImgnError && e.code === Code.NOT_GROUP_MEMBER);
    });

    test("group access control: invite-only by default, owner and admins add and remove, transfer, refusals", async () => {
      const [a, b, c, d] = [uid("a"), uid("b"), uid("c"), uid("d")];
      const A = await open(node, a, o()), B = await open(node, b, o()), C = await open(node, c, o()), D = await open(node, d, o());
      clients.push(A.c, B.c, C.c, D.c);
      const refused = (code) => (e) => e instanceof ImgnError && e.code === code;
      const g = await A.c.groupCreate("private", [b]);
      const id = g.groupId;
      assert.equal(g.open, false);
      await assert.rejects(C.c.groupJoin(id), refused(Code.GROUP_INVITE_ONLY));
      await assert.rejects(C.c.groupMembers(id), refused(Code.NOT_GROUP_MEMBER)); // outsiders see no member list
      await assert.rejects(B.c.addGroupMembers(id, [c]), refused(Code.NOT_GROUP_ADMIN));
      let gi = await A.c.addGroupMembers(id, [c]);
      assert.deepEqual(gi.members, [a, b, c].sort());
      assert.deepEqual((await A.c.addGroupMembers(id, [c])).members, gi.members); // idempotent
      await assert.rejects(B.c.setGroupAdmin(id, c, true), refused(Code.NOT_GROUP_OWNER));
      gi = await A.c.setGroupAdmin(id, b, true);
      assert.deepEqual(gi.admins, [b]);
      gi = await B.c.addGroupMembers(id, [d]); // an admin adds
      assert.equal(gi.members.length, 4);
      await assert.rejects(B.c.removeGroupMembers(id, [a]), refused(Code.NOT_GROUP_OWNER)); // not the owner
      await assert.rejects(A.c.removeGroupMembers(id, [a]), refused(Code.INVALID_ARGUMENT)); // one leaves instead
      await assert.rejects(A.c.addGroupMembers(id, ["nobody" + process.pid]), refused(Code.UNKNOWN_RECIPIENT));
      gi = await B.c.removeGroupMembers(id, [d]);
      assert.deepEqual(gi.members, [a, b, c].sort());
      await assert.rejects(D.c.sendGroup(id, "still here?"), refused(Code.NOT_GROUP_MEMBER));
      await assert.rejects(C.c.transferGroup(id, c), refused(Code.NOT_GROUP_OWNER));
      gi = await A.c.transferGroup(id, c);
      assert.deepEqual([gi.owner, gi.admins], [c, [a, b].sort()]); // the former owner stays on as an admin
      gi = await C.c.setGroupAdmin(id, b, false);
      assert.deepEqual(gi.admins, [a]);
      await assert.rejects(A.c.setGroupAdmin(id, b, true), refused(Code.NOT_GROUP_OWNER));
      await assert.rejects(A.c.groupJoin("no-such-group" + process.pid), refused(Code.UNKNOWN_GROUP));
      // an invite-only group's member joins again without a refusal
      assert.equal((await B.c.groupJoin(id)).groupId, id);
    });

    test("membership events: typed groupEvent in seq order with the group's messages, to members and the removed", async () => {
      const [a, b, c] = [uid("a"), uid("b"), uid("c")];
      const A = await open(node, a, o()), B = await open(node, b, o()), C = await open(node, c, o());
      clients.push(A.c, B.c, C.c);
      const events = { [a]: [], [b]: [], [c]: [] };
      for (const [u, X] of [[a, A], [b, B], [c, C]]) X.c.on("groupEvent", (e) => events[u].push(e));
      const g = await A.c.groupCreate("events", []);
      const id = g.groupId;
      await A.c.addGroupMembers(id, [b, c]);
      await A.c.sendGroup(id, "welcome");
      await A.c.setGroupAdmin(id, b, true);
      await B.c.removeGroupMembers(id, [c]);
      await A.c.transferGroup(id, b);
      await A.c.groupLeave(id);
      const brief = (e) => [e.type, e.users, e.by];
      await until(() => events[b].length === 5, 10_000, "bob's 5 events");
      assert.deepEqual(events[b].map(brief), [
        ["members_added", [b, c].sort(), a],
        ["admin_added", [b], a],
        ["members_removed", [c], b],
        ["owner_changed", [b], a],
        ["members_removed", [a], a],
      ]);
      for (const e of events[b]) {
        assert.equal(e.groupId, id);
        assert.equal(e.message.kind, 2);
        assert.equal(e.message.from, "");
        assert.ok(e.msgId > 0n && e.time > 0n);
      }
      // the events sit in bob's stream at their seqs, in order with the group's messages
      const stream = B.got.filter((m) => m.groupId === id).map((m) => (m.from ? "msg:" + text(m) : "event"));
      assert.deepEqual(stream, ["event", "msg:welcome", "event", "event", "event", "event"]);
      assert.deepEqual(events[b].map((e) => e.seq), B.got.filter((m) => m.groupId === id && !m.from).map((m) => m.seq));
      // carol gets the events up to and including her removal, and nothing after
      await until(() => events[c].length === 3, 10_000, "carol's 3 events");
      assert.deepEqual(events[c].map(brief).at(-1), ["members_removed", [c], b]);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(events[c].length, 3);
      // alice, who left, gets her own leave
      await until(() => events[a].at(-1)?.type === "members_removed", 10_000, "alice's leave");
      assert.deepEqual(brief(events[a].at(-1)), ["members_removed", [a], a]);
    });

    test("groups: the caller's groups paged by id with policy, owner, size and the admin flag", async () => {
      const [a, b] = [uid("a"), uid("b")];
      const A = await open(node, a, o()), B = await open(node, b, o());
      clients.push(A.c, B.c);
      const made = [];
      for (let i = 0; i < 3; i++) made.push(await A.c.groupCreate(`g${i}`, [b], { open: i === 0 }));
      await A.c.setGroupAdmin(made[1].groupId, b, true);
      const first = await B.c.groups({ limit: 2 });
      assert.equal(first.groups.length, 2);
      assert.equal(first.hasMore, true);
      const rest = await B.c.groups({ after: first.groups[1].groupId, limit: 2 });
      assert.equal(rest.hasMore, false);
      const all = await B.c.allGroups();
      assert.deepEqual(all.map((x) => x.groupId), [...first.groups, ...rest.groups].map((x) => x.groupId));
      assert.deepEqual(all.map((x) => x.groupId), made.map((x) => x.groupId).sort());
      const byId = new Map(all.map((x) => [x.groupId, x]));
      assert.deepEqual(made.map((m) => { const x = byId.get(m.groupId); return [x.name, x.owner, x.size, x.open, x.admin]; }),
        [["g0", a, 2, true, false], ["g1", a, 2, false, true], ["g2", a, 2, false, false]]);
      await assert.rejects(B.c.groups({ after: "not a group id!" }), (e) => e.code === Code.INVALID_ARGUMENT);
    });

    test("presence: online devices, offline, unknown", async () => {
      const a = uid("a"), b = uid("b");
      const A = await open(node, a, o());
      const B = await open(node, b, o());
      await B.c.close();
      clients.push(A.c);
      // the session ends when the node has closed the connection: a moment after LOGOUT_OK
      const p = await until(async () => {
        const r = await A.c.presence([a, b, "nobody" + process.pid]);
        return r[1].online ? undefined : r;
      }, 5000, "bob offline");
      assert.deepEqual(p.map((u) => [u.user, u.online, u.unknown]), [[a, true, false], [b, false, false], ["nobody" + process.pid, false, true]]);
      assert.deepEqual(p[0].devices, ["d1"]);
    });

    test("chat: conversations, read with receipts, typing, recall, delete, history", async () => {
      const a = uid("a"), b = uid("b");
      const A = await open(node, a, o()), B = await open(node, b, o());
      clients.push(A.c, B.c);
      const receipts = [], typing = [];
      A.c.on("receipt", (r) => receipts.push(r));
      A.c.on("typing", (t) => typing.push(t));
      const k1 = await A.c.send(b, "one");
      await A.c.send(b, "two");
      await until(() => B.got.length === 2);
      let convs = await B.c.conversations();
      assert.equal(convs.conversations[0].peer, a);
      assert.equal(convs.conversations[0].unread, 2);
      const r = await B.c.read({ peer: a });
      assert.equal(r.unread, 0);
      await until(() => receipts.length === 1, 5000, "a receipt");
      assert.equal(receipts[0].user, b);
      assert.equal(receipts[0].readSeq, 2n); // in alice's inbox
      convs = await B.c.conversations();
      assert.equal(convs.conversations[0].unread, 0);
      B.c.typing({ peer: a }, true);
      await until(() => typing.length === 1, 5000, "a typing event");
      assert.deepEqual([typing[0].user, typing[0].on, typing[0].expiresMs > 0], [b, true, true]);
      const rc = await A.c.recall(k1.msgId);
      await until(() => B.got.some((m) => m.event === 1 && m.targetMsgId === k1.msgId), 5000, "the recall event");
      assert.ok(rc.seq > 0n);
      const h = await B.c.history({ peer: a });
      assert.deepEqual(h.messages.map((m) => [m.recalled, text(m)]), [[true, ""], [false, "two"]]);
      await B.c.delete(h.messages[1].msgId);
      assert.equal((await B.c.history({ peer: a })).messages.length, 1);
    });

    test("a retried client_msg_id is stored once: the same seq, duplicate set", async () => {
      const a = uid("a"), b = uid("b");
      const A = await open(node, a, o()), B = await open(node, b, o());
      clients.push(A.c, B.c);
      const first = await A.c.send(b, "once", { clientMsgId: "fixed-" + a });
      const again = await A.c.send(b, "once", { clientMsgId: "fixed-" + a });
      assert.equal(again.duplicate, true);
      assert.equal(again.seq, first.seq);
      assert.equal(again.msgId, first.msgId);
      await A.c.send(b, "after");
      await until(() => B.got.length === 2);
      assert.deepEqual(B.got.map(text), ["once", "after"]); // the re-push was dropped as a shown seq
      await assert.rejects(A.c.send("nobody" + process.pid, "x"), (e) => e.code === Code.UNKNOWN_RECIPIENT);
      await assert.rejects(new Client({ url: node.url, user: a, password: "wrong-pass", device: "dx", serializer }).connect(),
        (e) => e instanceof ImgnError && e.code === Code.AUTH_FAILED);
    });

    test("KICK: a second login of the same device ends the first, which does not come back", async () => {
      const a = uid("a");
      const A = await open(node, a, o());
      const kicks = [];
      A.c.on("kick", (k) => kicks.push(k));
      const A2 = await open(node, a, { ...o(), register: false });
      clients.push(A2.c);
      await until(() => kicks.length === 1, 5000, "the kick");
      assert.equal(kicks[0].code, Code.KICK_DUPLICATE_LOGIN);
      assert.equal(A.c.state, "kicked");
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(A.c.state, "kicked");
      assert.equal(A2.c.state, "online");
    });
  });
}

describe("restarts, GO_AWAY, router and token", () => {
  let node;
  after(async () => node?.close());

  test("sends survive a node restart: retried until stored, stream continues without gaps or repeats", async () => {
    node = await startImd({ store: "embedded" });
    const a = uid("a"), b = uid("b");
    const A = await open(node, a), B = await open(node, b);
    const aStates = [], goaways = [];
    A.c.on("state", (s) => aStates.push(s));
    A.c.on("goaway", (g) => goaways.push(g));
    await A.c.send(b, "before");
    await until(() => B.got.length === 1);
    await node.stop(); // SIGTERM: GO_AWAY, then the node is gone
    await until(() => A.c.state !== "online", 5000, "alice notices");
    const pending = [A.c.send(b, "during1"), A.c.send(b, "during2")];
    const states = [];
    A.c.on("send", (s) => states.push(s.state));
    await node.start();
    const acks = await Promise.all(pending);
    assert.equal(acks.length, 2);
    await A.c.send(b, "after");
    await until(() => B.got.length === 4, 15_000, "bob's 4 messages");
    assert.deepEqual(B.got.map(text), ["before", "during1", "during2", "after"]);
    assert.deepEqual(B.got.map((m) => m.seq), [1n, 2n, 3n, 4n]);
    assert.ok(goaways.length >= 1, "GO_AWAY seen");
    assert.ok(aStates.includes("reconnecting") && aStates.at(-1) === "online", aStates.join(","));
    // a SIGKILL (no GO_AWAY) is noticed through the closed socket
    await node.stop(true);
    await node.start();
    await A.c.send(b, "after kill");
    await until(() => B.got.length === 5, 15_000, "the message after SIGKILL");
    await A.c.close();
    await B.c.close();
  });

  test("an outbox keeps unacknowledged sends across clients: resent with their ids, stored once", async () => {
    const a = uid("a"), b = uid("b");
    const kept = new Map();
    const outbox = { list: () => [...kept.values()], put: (e) => kept.set(e.clientMsgId, e), remove: (id) => kept.delete(id) };
    const A = await open(node, a, { outbox });
    const B = await open(node, b);
    await A.c.send(b, "first");
    assert.equal(kept.size, 0);
    await node.stop();
    await until(() => A.c.state !== "online", 5000, "alice notices");
    const lost = A.c.send(b, "kept", { clientMsgId: "kept-" + a });
    assert.deepEqual([...kept.keys()], ["kept-" + a]);
    await A.c.close(); // the page is gone: the send is not acknowledged
    await assert.rejects(lost, { name: "ClientClosed" });
    assert.equal(kept.size, 1);
    await node.start();
    const A2 = new Client({ url: node.url, user: a, password: "secret123", device: "d1", outbox, backoff: { initialMs: 50, maxMs: 500 } });
    const states = [];
    A2.on("send", (x) => states.push(x.state));
    await A2.connect();
    await until(() => kept.size === 0, 10_000, "the outbox to empty");
    await until(() => B.got.length === 2, 15_000, "bob's 2 messages");
    assert.deepEqual(B.got.map(text), ["first", "kept"]);
    assert.deepEqual(states, ["sending", "stored"]);
    await A2.close();
    await B.c.close();
  });

  test("router: a node that cannot be reached is excluded and the next one used", async () => {
    const dead = await freePort();
    const router = await startRouter(`ndead=127.0.0.1:${dead},nlive=${node.addr}`);
    try {
      // find a user the router sends to the dead node first
      let user;
      for (let i = 0; i < 200 && !user; i++) {
        const u = uid("r");
        const r = await (await fetch(`${router.url}/v1/route?uid=${u}`)).json();
        if (r.node_id === "ndead") user = u;
      }
      assert.ok(user, "some user hashes to the dead node");
      const wsOf = { [`127.0.0.1:${dead}`]: `ws://127.0.0.1:${dead}/`, [node.addr]: node.url };
      const c = new Client({ router: { url: router.url, toWebSocket: (r) => wsOf[r.addr] }, user, password: "secret123",
        device: "d1", register: true, backoff: { initialMs: 20, maxMs: 100 } });
      const ok = await c.connect();
      assert.equal(ok.nodeId, `n${node.port}`);
      await c.close();
    } finally {
      await router.close();
    }
  });

  test("token login (HS256), refreshed through the token function", async () => {
    const secret = randomBytes(16).toString("hex");
    const tnode = await startImd({ store: "memory", args: ["--jwt-secret", secret] });
    try {
      const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
      const mint = (sub, exp) => {
        const h = b64({ alg: "HS256", typ: "JWT" }) + "." + b64({ sub, exp });
        return h + "." + createHmac("sha256", secret).update(h).digest("base64url");
      };
      const user = uid("t");
      let calls = 0;
      const c = new Client({ url: tnode.url, device: "web", token: async () => (calls++ === 0 ? mint(user, 1) : mint(user, Math.floor(Date.now() / 1000) + 60)) });
      const ok = await c.connect();
      assert.equal(ok.user, user);
      assert.equal(calls, 2); // the expired token was replaced
      await c.close();
    } finally {
      await tnode.close();
    }
  });
});
