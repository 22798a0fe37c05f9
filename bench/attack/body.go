package attack

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// The body-level attacks: well-framed requests whose bodies break the rules
// of docs/protocol.md §3 and §4.2 (invalid UTF-8 in each serializer,
// MessagePack arrays and lying lengths, wrong Protobuf wire types, deep
// JSON, out-of-range numbers, oversized lists) and a GROUP_CREATE storm.
// Each is answered with its documented code on a connection that stays
// usable; the SENDs among them target one inbox, which must stay empty and
// answer SYNC (an accepted invalid string once wedged a Protobuf
// recipient's SYNC for good).

// inboxVictim is the user the refused SENDs are addressed to.
const inboxVictim = "inbox-victim"

// poisonBody is the body of the refused SENDs.
const poisonBody = "hi"

// refusedSend sends body as a SEND in ser after logging in, expects
// BAD_BODY on a connection that stays usable, and then checks that the
// victim's inbox is still empty and answers SYNC.
func (e *env) refusedSend(ser codec.SerializerID, body []byte) Result {
	r := e.loggedInBytes("BAD_BODY", false, "poisoner", bodyFrame(ser, codec.CmdSend, 2, body))
	if err := e.victimSyncs(); err != nil {
		r.OK = false
		r.Detail += "; victim: " + err.Error()
	} else {
		r.Detail += "; the victim's inbox is empty and answers SYNC"
	}
	return r
}

// victimSyncs logs in as the victim over Protobuf and checks that SYNC is
// answered with an empty inbox (head_seq 0: nothing was stored).
func (e *env) victimSyncs() error {
	c, err := dialRaw(e.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.login(*e.token(inboxVictim), "d"); err != nil {
		return err
	}
	if _, err := c.frame(codec.CmdSync, &pb.SyncRequest{}); err != nil {
		return err
	}
	f, err := c.replyFrame(5 * time.Second)
	if err != nil {
		return fmt.Errorf("SYNC unanswered: %w", err)
	}
	if f.cmd != codec.CmdSyncOK {
		return fmt.Errorf("SYNC answered %v", f.cmd)
	}
	var ok pb.SyncOK
	if err := proto.Unmarshal(f.body, &ok); err != nil {
		return fmt.Errorf("SYNC_OK: %w", err)
	}
	if ok.HeadSeq != 0 {
		return fmt.Errorf("a refused SEND was stored: head_seq %d", ok.HeadSeq)
	}
	return nil
}

// mpStr is a MessagePack str (fixstr or str 8) holding s's bytes as they
// are, valid UTF-8 or not.
func mpStr(s string) []byte {
	if len(s) < 32 {
		return append([]byte{0xa0 | byte(len(s))}, s...)
	}
	return append([]byte{0xd9, byte(len(s))}, s...)
}

// mpBin is a MessagePack bin 8.
func mpBin(b []byte) []byte { return append([]byte{0xc4, byte(len(b))}, b...) }

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// pbString is a Protobuf length-delimited field with b's bytes as they are.
func pbString(num protowire.Number, b string) []byte {
	return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), b)
}

var bodyAttacks = []attack{
	{"invalid-utf8-json", func(e *env) Result {
		return e.refusedSend(codec.JSON, []byte(`{"client_msg_id":"x`+"\xff\xfe"+`","to":"`+inboxVictim+`","body":"aGk="}`))
	}},
	{"invalid-utf8-msgpack-str", func(e *env) Result {
		return e.refusedSend(codec.MsgPack, cat([]byte{0x83}, mpStr("client_msg_id"), mpStr("x\xff\xfe"),
			mpStr("to"), mpStr(inboxVictim), mpStr("body"), mpBin([]byte(poisonBody))))
	}},
	{"invalid-utf8-msgpack-bin", func(e *env) Result {
		// bin where a string belongs is accepted, but its bytes must be UTF-8 too.
		return e.refusedSend(codec.MsgPack, cat([]byte{0x83}, mpStr("client_msg_id"), mpBin([]byte("x\xff\xfe")),
			mpStr("to"), mpStr(inboxVictim), mpStr("body"), mpBin([]byte(poisonBody))))
	}},
	{"invalid-utf8-protobuf", func(e *env) Result {
		return e.refusedSend(codec.Protobuf, cat(pbString(1, "x\xff\xfe"), pbString(2, inboxVictim), pbString(4, poisonBody)))
	}},
	{"msgpack-array-send", func(e *env) Result {
		// SendRequest's fields by position: client_msg_id, to, kind, body.
		return e.refusedSend(codec.MsgPack, cat([]byte{0x94}, mpStr("positional"), mpStr(inboxVictim), []byte{0x00}, mpBin([]byte(poisonBody))))
	}},
	{"msgpack-array-sync", func(e *env) Result {
		return e.loggedInBytes("BAD_BODY", false, "arrays", bodyFrame(codec.MsgPack, codec.CmdSync, 2, []byte{0x92, 0x00, 0x02}))
	}},
	{"protobuf-wrong-wire-type", func(e *env) Result {
		// client_msg_id (a string, field 1) sent as a varint.
		wrong := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 7)
		return e.refusedSend(codec.Protobuf, cat(wrong, pbString(2, inboxVictim), pbString(4, poisonBody)))
	}},
	{"deep-json", func(e *env) Result {
		// 30,000 nested arrays in an unknown key: unknown values are
		// checked too, and nothing recurses that deep.
		const depth = 30000
		body := `{"name":"deep","nest":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`
		return e.loggedInBytes("BAD_BODY", false, "deep", bodyFrame(codec.JSON, codec.CmdGroupCreate, 2, []byte(body)))
	}},
	{"msgpack-declared-array", func(e *env) Result {
		// GROUP_CREATE whose members array declares 2^32-1 elements in a 14-byte body.
		body := cat([]byte{0x81}, mpStr("members"), []byte{0xdd, 0xff, 0xff, 0xff, 0xff})
		return e.loggedInBytes("BAD_BODY", false, "liar", bodyFrame(codec.MsgPack, codec.CmdGroupCreate, 2, body))
	}},
	{"msgpack-declared-str", func(e *env) Result {
		// GROUP_CREATE whose name declares a 4 GiB string in an 11-byte body.
		body := cat([]byte{0x81}, mpStr("name"), []byte{0xdb, 0xff, 0xff, 0xff, 0xff}, []byte("dd"))
		return e.loggedInBytes("BAD_BODY", false, "liar2", bodyFrame(codec.MsgPack, codec.CmdGroupCreate, 2, body))
	}},
	{"sync-limit-overflow", func(e *env) Result {
		// limit is a uint32: 2^32 is out of range.
		return e.loggedInBytes("BAD_BODY", false, "overflow", bodyFrame(codec.JSON, codec.CmdSync, 2, []byte(`{"after_seq":0,"limit":4294967296}`)))
	}},
	{"sync-limit-huge", func(e *env) Result { return e.hugeSync() }},
	{"presence-oversized", func(e *env) Result {
		users := make([]string, 4000)
		for i := range users {
			users[i] = fmt.Sprintf("u%04d", i)
		}
		b, _ := codec.AppendFrame(nil, codec.Protobuf, codec.CmdPresence, 0, 2, &pb.PresenceRequest{Users: users})
		return e.loggedInBytes("INVALID_ARGUMENT", false, "watcher", b)
	}},
	{"group-create-storm", func(e *env) Result { return e.groupStorm() }},
}

// hugeSyncFill is how many messages hugeSync puts in the inbox it reads:
// more than the server's SYNC cap (500 by default).
const hugeSyncFill = 600

// hugeSync fills an inbox with more messages than a SYNC page may hold,
// then asks for 2^32-1 of them: the answer is a page of the server's cap
// (500) with has_more, not an error and not the whole inbox.
func (e *env) hugeSync() Result {
	r := Result{Want: "SYNC_OK, 500 messages, has_more", Metric: "-"}
	// The reader logs in first: the recipient of a SEND must exist.
	c, err := dialRaw(e.addr)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer c.Close()
	if err := c.login(*e.token("big-inbox"), "d"); err != nil {
		r.Detail = err.Error()
		return r
	}
	feeder, err := dialRaw(e.addr)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer feeder.Close()
	if err := feeder.login(*e.token("sync-feeder"), "d"); err != nil {
		r.Detail = err.Error()
		return r
	}
	run := time.Now().UnixNano()
	for i := range hugeSyncFill {
		if _, err := feeder.frame(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprintf("fill-%d-%d", run, i), To: "big-inbox", Body: []byte("x")}); err != nil {
			r.Detail = err.Error()
			return r
		}
	}
	for range hugeSyncFill {
		cmd, perr, err := feeder.reply(10 * time.Second)
		if err != nil || cmd != codec.CmdSendAck {
			r.Detail = fmt.Sprintf("filling the inbox: %v %s %v", cmd, gotName(perr), err)
			return r
		}
	}
	start := time.Now()
	if _, err := c.frame(codec.CmdSync, &pb.SyncRequest{Limit: 1<<32 - 1}); err != nil {
		r.Detail = err.Error()
		return r
	}
	f, err := c.replyFrame(10 * time.Second)
	r.Took = time.Since(start)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	if f.cmd != codec.CmdSyncOK {
		pe, _ := errOf(f)
		r.Got = fmt.Sprintf("%v %s", f.cmd, gotName(pe))
		return r
	}
	var ok pb.SyncOK
	if err := proto.Unmarshal(f.body, &ok); err != nil {
		r.Detail = err.Error()
		return r
	}
	r.Got = fmt.Sprintf("SYNC_OK, %d messages, has_more %v", len(ok.Messages), ok.HasMore)
	r.Detail = fmt.Sprintf("inbox of %d, limit 2^32-1, a %d-byte page", ok.HeadSeq, len(f.body))
	r.OK = len(ok.Messages) == 500 && ok.HasMore && ok.HeadSeq >= hugeSyncFill
	return r
}

// groupStorm: one user, on several devices, pipelines thousands of
// GROUP_CREATEs, more than its send budget (NodeArgs: 1000/s, burst 2000).
// Every request must be answered, GROUP_INFO or RATE_LIMITED (or BUSY,
// when a request queue is full), and the budget must bite.
func (e *env) groupStorm() Result {
	const conns, per = 8, 625
	want := "RATE_LIMITED"
	r := Result{Want: "GROUP_INFO, then RATE_LIMITED", Metric: "imgn_errors_total{" + errLabel(want) + "}"}
	before := e.metric("imgn_errors_total", errLabel(want))
	start := time.Now()
	got := e.pipelined(conns, per, func(c *raw, i int) error {
		return c.login(*e.token("stormer"), fmt.Sprintf("d%d", i))
	}, func(int, int) (codec.Command, proto.Message) {
		return codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "storm"}
	})
	r.Took = time.Since(start)
	total := conns * per
	r.Counted = e.counted(want, before, float64(got[want]))
	r.Got = fmt.Sprint(got)
	r.Detail = fmt.Sprintf("%d GROUP_CREATEs by one user on %d connections in %.2fs", total, conns, r.Took.Seconds())
	r.OK = got["GROUP_INFO"] > 0 && got[want] > 0 && got["GROUP_INFO"]+got[want]+got["BUSY"] == total &&
		r.Counted >= float64(got[want])
	return r
}
