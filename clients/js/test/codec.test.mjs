// Framing and body encoding, checked against the byte examples of
// docs/protocol.md §2.2 and the ordering rule of §6.6.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Cmd, FrameError, FrameReader, Inbox, KIND_GROUP_EVENT, Serializer, decodeBody, encodeBody, encodeFrame, groupEventOf, parseLossless, pb } from "../dist/index.js";

const hex = (b) => Buffer.from(b).toString("hex");

test("LOGIN frames match protocol.md §2.2 in JSON and Protobuf", () => {
  const login = create(pb.LoginRequestSchema, { user: "alice", password: "secret123", device: "phone" });
  const json = encodeFrame(Serializer.JSON, Cmd.LOGIN, 0, 2, encodeBody(Serializer.JSON, pb.LoginRequestSchema, login));
  assert.equal(hex(json), "494d474e01010200000000020000003" + "8" + Buffer.from('{"user":"alice","password":"secret123","device":"phone"}').toString("hex"));
  const body = encodeBody(Serializer.Protobuf, pb.LoginRequestSchema, login);
  assert.equal(hex(body), "0a05616c6963651209736563726574313233220570686f6e65");
});

test("HEARTBEAT with an empty body and 64-bit numbers written bare", () => {
  const hb = encodeFrame(Serializer.JSON, Cmd.HEARTBEAT, 0, 1, encodeBody(Serializer.JSON, pb.HeartbeatSchema, create(pb.HeartbeatSchema)));
  assert.equal(hex(hb), "494d474e010104000000000100000002" + "7b7d");
  const sync = encodeBody(Serializer.JSON, pb.SyncRequestSchema, create(pb.SyncRequestSchema, { afterSeq: 9007199254740993n, limit: 5 }));
  assert.equal(Buffer.from(sync).toString(), '{"after_seq":9007199254740993,"limit":5}');
  const send = encodeBody(Serializer.JSON, pb.SendRequestSchema, create(pb.SendRequestSchema, { clientMsgId: "c1", to: "bob", body: new Uint8Array([104, 105]) }));
  assert.equal(Buffer.from(send).toString(), '{"client_msg_id":"c1","to":"bob","body":"aGk="}');
  const group = encodeBody(Serializer.JSON, pb.GroupCreateRequestSchema, create(pb.GroupCreateRequestSchema, { name: "t", members: ["a", "b"] }));
  assert.equal(Buffer.from(group).toString(), '{"name":"t","members":["a","b"]}');
});

test("JSON bodies keep msg_id above 2^53 exactly, ignore unknown keys, accept null", () => {
  const text = '{"client_msg_id":"5f0c","msg_id":1152921504606846977,"seq":7,"time":1700000000000,"future":[1,{"x":"\\"12345678901234567890"}],"duplicate":null}';
  const ack = decodeBody(Serializer.JSON, pb.SendAckSchema, Buffer.from(text));
  assert.equal(ack.msgId, 1152921504606846977n);
  assert.equal(ack.seq, 7n);
  assert.equal(ack.duplicate, false);
  assert.deepEqual(parseLossless('{"s":"99999999999999999999","n":-12345678901234567890,"f":1.5e3}'),
    { s: "99999999999999999999", n: "-12345678901234567890", f: 1500 });
  const pushText = '{"messages":[{"seq":3,"msg_id":18446744073709551615,"from":"a","to":"b","body":"aGk=","time":5}]}';
  const push = decodeBody(Serializer.JSON, pb.PushSchema, Buffer.from(pushText));
  assert.equal(push.messages[0].msgId, 18446744073709551615n);
  assert.equal(Buffer.from(push.messages[0].body).toString(), "hi");
  assert.throws(() => decodeBody(Serializer.JSON, pb.PushSchema, Buffer.from("{")));
});

test("FrameReader reassembles frames split and joined at any byte", () => {
  const frames = [1, 2, 3].map((i) =>
    encodeFrame(Serializer.JSON, Cmd.HEARTBEAT_OK, 0, i, Buffer.from(`{"time":${i}}`)));
  const all = Buffer.concat(frames);
  for (let cut = 1; cut < all.length; cut++) {
    const r = new FrameReader();
    const got = [...r.push(all.subarray(0, cut)), ...r.push(all.subarray(cut))];
    assert.deepEqual(got.map((f) => f.seq), [1, 2, 3], `cut at ${cut}`);
    assert.equal(Buffer.from(got[2].body).toString(), '{"time":3}');
  }
  const bad = Buffer.from(all);
  bad[0] = 0x48;
  assert.throws(() => new FrameReader().push(bad), FrameError);
  const big = encodeFrame(Serializer.JSON, Cmd.PUSH, 0, 0, new Uint8Array(0));
  new DataView(big.buffer).setUint32(12, 100);
  assert.throws(() => new FrameReader(50).push(big), FrameError);
});

test("Inbox shows each seq once and in order, whatever the arrival order", () => {
  const seen = [];
  const inbox = new Inbox(10n, (m) => seen.push(m.seq));
  const m = (s) => create(pb.MessageSchema, { seq: BigInt(s) });
  assert.equal(inbox.accept(m(9)), false);   // below shown: dropped
  assert.equal(inbox.accept(m(13)), true);   // gap: buffered
  assert.equal(inbox.accept(m(11)), true);
  assert.equal(inbox.accept(m(11)), true);   // duplicate
  assert.equal(inbox.accept(m(12)), false);  // fills the gap: 12 and 13 follow
  assert.deepEqual(seen, [11n, 12n, 13n]);
  inbox.accept(m(20));
  inbox.skipTo(20n);                         // retention removed 14..19
  assert.deepEqual(seen, [11n, 12n, 13n, 20n]);
  assert.equal(inbox.shown, 20n);
});

test("groupEventOf reads membership events and leaves everything else alone", () => {
  const m = (o) => create(pb.MessageSchema, { seq: 7n, msgId: 9n, groupId: "g1", to: "g1", kind: KIND_GROUP_EVENT, ...o,
    body: typeof o.body === "string" ? Buffer.from(o.body) : o.body });
  const e = groupEventOf(m({ body: '{"type":"members_added","users":["bob","carol"],"by":"alice","later":1}' }));
  assert.deepEqual([e.groupId, e.type, e.users, e.by, e.seq, e.msgId], ["g1", "members_added", ["bob", "carol"], "alice", 7n, 9n]);
  assert.equal(groupEventOf(m({ body: '{"type":"owner_changed","users":["bob"]}' })).by, ""); // a hand-off: no "by"
  for (const [why, o] of [
    ["an application message", { from: "alice", body: '{"type":"members_added"}' }],
    ["a 1:1 system message", { groupId: "", to: "bob", body: '{"type":"members_added"}' }],
    ["another kind", { kind: 0, body: '{"type":"members_added"}' }],
    ["a recall event", { event: 1, body: '{"type":"members_added"}' }],
    ["not JSON", { body: "members_added" }],
    ["not UTF-8", { body: new Uint8Array([0xff, 0xfe]) }],
    ["no type", { body: '{"users":["bob"]}' }],
    ["users not strings", { body: '{"type":"members_added","users":[1]}' }],
    ["by not a string", { body: '{"type":"members_added","by":{}}' }],
    ["null", { body: "null" }],
  ]) assert.equal(groupEventOf(m(o)), undefined, why);
});
