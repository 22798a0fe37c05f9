package conformance

import (
	"errors"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// TestSection2Examples sends the byte examples of §2.2 exactly as the
// document writes them and checks the server's answers, and that the
// document's own server example decodes as it says.
func TestSection2Examples(t *testing.T) {
	blocks := hexBlocks(spec(t, "### 2.2"))
	if len(blocks) != 5 {
		t.Fatalf("§2.2 has %d hex byte strings, want 5 (heartbeat, heartbeat_ok, login, protobuf and msgpack login bodies)", len(blocks))
	}
	hb, hbOK, login, pbBody, mpBody := blocks[0], blocks[1], blocks[2], blocks[3], blocks[4]

	// The document's HEARTBEAT_OK is a well-formed frame of the server.
	h, err := codec.ParseHeader(hbOK)
	if err != nil || h.Command != codec.CmdHeartbeatOK || h.Seq != 1 || h.FrameSize() != len(hbOK) {
		t.Fatalf("§2.2 HEARTBEAT_OK example: %+v %v (%d bytes)", h, err, len(hbOK))
	}
	var beat pb.Heartbeat
	if err := codec.Unmarshal(h.Serializer, hbOK[codec.HeaderSize:], &beat); err != nil || beat.Time != 1700000000000 {
		t.Fatalf("§2.2 HEARTBEAT_OK body: %v %v", &beat, err)
	}

	c := dial(t, sharedNode, codec.JSON)
	c.write(hb)
	f := c.reply(1)
	if f.Command != codec.CmdHeartbeatOK || f.Serializer != codec.JSON {
		t.Fatalf("the HEARTBEAT example got %s in %s", f.Command, f.Serializer)
	}
	decode(t, f, &beat)
	if beat.Time <= 0 {
		t.Fatalf("HEARTBEAT_OK time %d", beat.Time)
	}

	// The LOGIN examples log in alice (registered with the example's
	// password), in each serializer.
	reg := dial(t, sharedNode, codec.JSON)
	if r := reg.reply(reg.send(codec.CmdRegister, &pb.RegisterRequest{User: "alice", Password: "secret123"})); r.Command == codec.CmdError {
		if e := errorOf(t, r); codec.ErrorCode(e.Code) != codec.CodeUserExists {
			t.Fatalf("register alice: %s", codec.ErrorCode(e.Code))
		}
	}
	frames := map[codec.SerializerID][]byte{codec.JSON: login}
	for ser, body := range map[codec.SerializerID][]byte{codec.Protobuf: pbBody, codec.MsgPack: mpBody} {
		frames[ser] = codec.AppendRawFrame(nil, ser, codec.CmdLogin, 0, 2, body)
		if string(frames[ser][:codec.HeaderSize-4]) != string(header("IMGN", 1, byte(ser), 2, 0, 2, 0)[:codec.HeaderSize-4]) {
			t.Fatal("rebuilt header differs")
		}
	}
	for _, ser := range serializers {
		c := dial(t, sharedNode, ser)
		c.write(frames[ser])
		f := c.reply(2)
		if f.Command != codec.CmdLoginOK || f.Serializer != ser {
			if f.Command == codec.CmdError {
				t.Fatalf("%s LOGIN example: ERROR %s", ser, codec.ErrorCode(errorOf(t, f).Code))
			}
			t.Fatalf("%s LOGIN example: %s in %s", ser, f.Command, f.Serializer)
		}
		var ok pb.LoginOK
		decode(t, f, &ok)
		if ok.User != "alice" || ok.Device != "phone" {
			t.Fatalf("%s LOGIN example: %v", ser, &ok)
		}
	}
}

// noAnswer checks that nothing arrives on c for a moment: the server waits
// for the rest of a frame.
func (c *conn) noAnswer() {
	c.t.Helper()
	f, err := c.read(300 * time.Millisecond)
	if err == nil {
		c.t.Fatalf("the server answered an incomplete frame: %s", f.Command)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		c.t.Fatalf("read: %v", err)
	}
}

// step is a scenario for one row of the §2.3 table: it returns the error
// code the server answered (empty for "wait").
type step func(t *testing.T) string

// fatalFrame sends b on a new connection and returns the ERROR's code
// after checking serializer, seq, fatal and the close.
func fatalFrame(t *testing.T, b []byte, wantSer codec.SerializerID, wantSeq uint32) string {
	t.Helper()
	c := dial(t, sharedNode, codec.JSON)
	c.write(b)
	frames := c.closed()
	if len(frames) != 1 {
		t.Fatalf("want one ERROR and the close, got %v", commands(frames))
	}
	f := frames[0]
	e := errorOf(t, f)
	if f.Serializer != wantSer || f.Seq != wantSeq || !e.Fatal {
		t.Fatalf("%s in %s seq %d fatal=%v; want %s seq %d fatal", codec.ErrorCode(e.Code), f.Serializer, f.Seq, e.Fatal, wantSer, wantSeq)
	}
	return codec.ErrorCode(e.Code).String()
}

var validationSteps = map[int]step{
	1: func(t *testing.T) string {
		c := dial(t, sharedNode, codec.JSON)
		b := encode(t, codec.JSON, codec.CmdHeartbeat, 0, 7, &pb.Heartbeat{})
		c.write(b[:codec.HeaderSize-1])
		c.noAnswer()
		c.write(b[codec.HeaderSize-1:])
		if f := c.reply(7); f.Command != codec.CmdHeartbeatOK {
			t.Fatalf("got %s", f.Command)
		}
		return ""
	},
	2: func(t *testing.T) string {
		// An HTTP request: nothing in it is a header; JSON, seq 0.
		return fatalFrame(t, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), codec.JSON, 0)
	},
	3: func(t *testing.T) string {
		code := fatalFrame(t, header("IMGN", 9, byte(codec.Protobuf), 2, 0, 5, 0), codec.Protobuf, 5)
		// An unknown serializer as well: answered in JSON, still step 3.
		if c2 := fatalFrame(t, header("IMGN", 2, 7, 2, 0, 6, 0), codec.JSON, 6); c2 != code {
			t.Fatalf("version 2 with serializer 7: %s", c2)
		}
		return code
	},
	4: func(t *testing.T) string {
		// Serializer 7 with an oversized length: step 4 comes first.
		return fatalFrame(t, header("IMGN", 1, 7, 2, 0, 8, 1<<30), codec.JSON, 8)
	},
	5: func(t *testing.T) string {
		// 8193 bytes declared (the shared node's max body is 8192), no body
		// sent: answered from the header.
		return fatalFrame(t, header("IMGN", 1, byte(codec.MsgPack), byte(codec.CmdSend), 0, 9, 8193), codec.MsgPack, 9)
	},
	6: func(t *testing.T) string {
		c := dial(t, sharedNode, codec.JSON)
		b := codec.AppendRawFrame(nil, codec.JSON, codec.CmdHeartbeat, 0, 3, []byte(`{"time":1}`))
		c.write(b[:codec.HeaderSize+4])
		c.noAnswer()
		c.write(b[codec.HeaderSize+4:])
		if f := c.reply(3); f.Command != codec.CmdHeartbeatOK {
			t.Fatalf("got %s", f.Command)
		}
		return ""
	},
	7: func(t *testing.T) string {
		// An undefined code and a mesh code before login are step 7 too.
		for _, cmd := range []byte{0x66, 0xC1, byte(codec.CmdLoginOK)} {
			if code := fatalFrame(t, header("IMGN", 1, byte(codec.Protobuf), cmd, 0, 4, 0), codec.Protobuf, 4); code != "NOT_LOGGED_IN" {
				t.Fatalf("command %#x before login: %s", cmd, code)
			}
		}
		return fatalFrame(t, encode(t, codec.MsgPack, codec.CmdSync, 0, 11, &pb.SyncRequest{}), codec.MsgPack, 11)
	},
	8: func(t *testing.T) string {
		c := loggedIn(t, sharedNode, codec.JSON, uniq("step8u"))
		var code string
		// Undefined, a reply code, a server-only code, a mesh code; a body
		// that does not decode does not matter (step 8 comes first).
		for _, cmd := range []codec.Command{0x66, codec.CmdLoginOK, codec.CmdPush, codec.CmdError, 0xC4} {
			seq := c.sendBody(codec.JSON, cmd, []byte("{not json"))
			e := c.failsFrame(c.reply(seq), cmd, codec.CodeUnknownCommand)
			if e.Fatal {
				t.Fatalf("%s: UNKNOWN_COMMAND marked fatal", cmd)
			}
			code = codec.ErrorCode(e.Code).String()
		}
		c.call(codec.CmdHeartbeat, &pb.Heartbeat{}, codec.CmdHeartbeatOK, nil) // the connection stays
		return code
	},
	9: func(t *testing.T) string {
		c := loggedIn(t, sharedNode, codec.Protobuf, uniq("step9u"))
		// Undecodable, and with a field that would also break a field rule.
		e := c.failsFrame(c.reply(c.sendBody(codec.JSON, codec.CmdSend, []byte(`{"to":"bad id","kind":-1}`))), codec.CmdSend, codec.CodeBadBody)
		if e.Fatal {
			t.Fatal("BAD_BODY marked fatal")
		}
		c.call(codec.CmdHeartbeat, &pb.Heartbeat{}, codec.CmdHeartbeatOK, nil)
		return codec.ErrorCode(e.Code).String()
	},
	10: func(t *testing.T) string {
		c := loggedIn(t, sharedNode, codec.MsgPack, uniq("step10u"))
		e := c.fails(codec.CmdSend, &pb.SendRequest{ClientMsgId: "c", To: "bad id"}, codec.CodeInvalidArgument)
		return codec.ErrorCode(e.Code).String()
	},
}

// TestValidationOrder runs one scenario per row of the §2.3 table and
// checks the server answers with the code the row names (or waits), in
// the order the table gives when a frame breaks two rules.
func TestValidationOrder(t *testing.T) {
	codeIn := regexp.MustCompile("`?([A-Z_]{4,})`? \\(\\d+\\)")
	rows := table(t, spec(t, "### 2.3"))
	for _, r := range rows {
		n, err := strconv.Atoi(r[0])
		if err != nil {
			t.Fatalf("§2.3 row %q", r)
		}
		want := ""
		if m := codeIn.FindStringSubmatch(r[2]); m != nil {
			want = m[1]
		} else if r[2] != "wait" && !regexp.MustCompile(`^wait\b`).MatchString(r[2]) {
			t.Fatalf("§2.3 step %d: no code in %q", n, r[2])
		}
		scenario := validationSteps[n]
		if scenario == nil {
			t.Errorf("§2.3 step %d (%s) has no scenario", n, r[1])
			continue
		}
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			if got := scenario(t); got != want {
				t.Fatalf("§2.3 step %d (%s): got %q, want %q", n, r[1], got, want)
			}
		})
	}
	if len(rows) != len(validationSteps) {
		t.Errorf("§2.3 has %d steps, the suite %d scenarios", len(rows), len(validationSteps))
	}
}

// TestFrameStream: frames split at every byte, many frames in one write,
// empty bodies, any seq (0 and 2^32-1 included) echoed, request flags
// ignored, and replies in the request's serializer while server-initiated
// frames use the LOGIN's.
func TestFrameStream(t *testing.T) {
	c := dial(t, sharedNode, codec.Protobuf)
	user := uniq("streamu")
	// One byte per write: a LOGIN, then a HEARTBEAT with an empty body.
	b := encode(t, codec.MsgPack, codec.CmdLogin, 0, 1, &pb.LoginRequest{Token: token(jwtSecret, user, time.Now().Add(time.Hour)), Device: "d"})
	b = append(b, codec.AppendRawFrame(nil, codec.Protobuf, codec.CmdHeartbeat, 0, 2, nil)...)
	for i := range b {
		c.write(b[i : i+1])
	}
	if f := c.reply(1); f.Command != codec.CmdLoginOK || f.Serializer != codec.MsgPack {
		t.Fatalf("byte-wise LOGIN: %s in %s", f.Command, f.Serializer)
	}
	if f := c.reply(2); f.Command != codec.CmdHeartbeatOK || f.Serializer != codec.Protobuf {
		t.Fatalf("empty HEARTBEAT: %s in %s", f.Command, f.Serializer)
	}
	// Fifty requests in one write, odd seqs and flags included: each is
	// answered once, with its seq; flags are ignored, replies carry 0.
	var batch []byte
	seqs := []uint32{0xFFFFFFFF, 12345}
	for i := range 48 {
		seqs = append(seqs, uint32(100+i))
	}
	for i, seq := range seqs {
		flags := codec.Flags(0)
		switch i % 3 {
		case 1:
			flags = codec.FlagResent
		case 2:
			flags = 0xFE // reserved bits
		}
		batch = append(batch, codec.AppendRawFrame(nil, serializers[i%3], codec.CmdSync, flags, seq, nil)...)
	}
	c.write(batch)
	for i, seq := range seqs {
		f := c.reply(seq)
		if f.Command != codec.CmdSyncOK || f.Serializer != serializers[i%3] {
			t.Fatalf("seq %d: %s in %s", seq, f.Command, f.Serializer)
		}
	}
	for _, f := range c.pending {
		t.Fatalf("unexpected frame %s seq %d", f.Command, f.Seq)
	}
	// A request with seq 0 is processed; its reply carries 0.
	c.write(codec.AppendRawFrame(nil, codec.JSON, codec.CmdHeartbeat, 0, 0, nil))
	if f := c.next(codec.CmdHeartbeatOK); f.Serializer != codec.JSON {
		t.Fatalf("seq 0 heartbeat answered in %s", f.Serializer)
	}
	// Server-initiated frames use the LOGIN's serializer (MessagePack).
	peer := loggedIn(t, sharedNode, codec.JSON, uniq("streampeer"))
	peer.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: "m1", To: user, Body: []byte("x")}, codec.CmdSendAck, nil)
	if f := c.next(codec.CmdPush); f.Serializer != codec.MsgPack {
		t.Fatalf("PUSH in %s, logged in with msgpack", f.Serializer)
	}
	// An ERROR answering a request uses the request's serializer.
	seq := c.sendBody(codec.JSON, codec.CmdSync, []byte("[]"))
	if f := c.reply(seq); f.Command != codec.CmdError || f.Serializer != codec.JSON {
		t.Fatalf("bad JSON body answered %s in %s", f.Command, f.Serializer)
	}
}
