package conformance

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// nodes of the error scenarios that need settings of their own; each is
// started on first use and stopped when TestEveryErrorCode ends.
type errorNodes struct {
	t    *testing.T
	mu   sync.Mutex
	made map[string]*node
}

// nodeArgs are the flags of those nodes, by name.
var nodeArgs = map[string][]string{
	// Per-user sends and per-address password attempts: a burst of 2,
	// then one more every 1000 s, so RATE_LIMITED's third attempt finds
	// the bucket empty however slowly the machine runs (at 1/s, two
	// argon2id hashes or a few round trips taking a second on a loaded
	// machine refilled it). And a per-connection request queue of 300
	// bytes.
	"limits": {"--send-rate", "0.001", "--send-burst", "2", "--login-rate-per-ip", "0.001", "--login-burst-per-ip", "2", "--max-conn-inbound", "300"},
	"caps":   {"--max-conns", "2"},
	"timers": {"--login-timeout", "1s", "--heartbeat", "1s", "--idle-timeout", "2s"},
}

func (e *errorNodes) get(name string) *node {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n := e.made[name]; n != nil {
		return n
	}
	n := startNode(e.t, nodeArgs[name]...)
	e.made[name] = n
	return n
}

// observed is what a scenario saw: the frame carrying the code (an ERROR,
// or a KICK) and whether the server then closed the connection.
type observed struct {
	f      frame
	closed bool
	c      *conn // the connection, to check it still works when not closed
	// counted is set instead of f when the frame could not arrive (a
	// best-effort ERROR to a client that does not read) and the scenario
	// saw the server count this code in /metrics.
	counted codec.ErrorCode
}

// errorScenario provokes one code and returns what the client saw.
type errorScenario func(t *testing.T, e *errorNodes) observed

// answered sends req on c and returns its ERROR answer, then whether c
// closes (fatal) or stays usable.
func answered(t *testing.T, c *conn, f frame) observed {
	t.Helper()
	return observed{f: f, c: c}
}

// fatalOn writes b on a new connection to n and returns the frame before
// the close.
func fatalOn(t *testing.T, n *node, ser codec.SerializerID, b []byte) observed {
	t.Helper()
	c := dial(t, n, ser)
	if b != nil {
		c.write(b)
	}
	frames := c.closed()
	if len(frames) == 0 {
		t.Fatal("closed without a frame")
	}
	return observed{f: frames[len(frames)-1], closed: true}
}

var errorScenarios = map[string]errorScenario{
	"BAD_MAGIC": func(t *testing.T, _ *errorNodes) observed {
		return fatalOn(t, sharedNode, codec.JSON, header("IMGX", 1, 1, 4, 0, 3, 0))
	},
	"UNSUPPORTED_VERSION": func(t *testing.T, _ *errorNodes) observed {
		return fatalOn(t, sharedNode, codec.JSON, header("IMGN", 2, 3, 4, 0, 3, 0))
	},
	"UNKNOWN_SERIALIZER": func(t *testing.T, _ *errorNodes) observed {
		return fatalOn(t, sharedNode, codec.JSON, header("IMGN", 1, 0, 4, 0, 3, 0))
	},
	"FRAME_TOO_LARGE": func(t *testing.T, _ *errorNodes) observed {
		return fatalOn(t, sharedNode, codec.JSON, header("IMGN", 1, 2, 4, 0, 3, 0xFFFFFFFF))
	},
	"BAD_BODY": func(t *testing.T, _ *errorNodes) observed {
		c := loggedIn(t, sharedNode, codec.MsgPack, uniq("badbody"))
		return answered(t, c, c.reply(c.sendBody(codec.MsgPack, codec.CmdSync, []byte{0x92, 0x00, 0x02})))
	},
	"UNKNOWN_COMMAND": func(t *testing.T, _ *errorNodes) observed {
		c := loggedIn(t, sharedNode, codec.JSON, uniq("unkcmd"))
		return answered(t, c, c.reply(c.send(0x7E, nil)))
	},
	"NOT_LOGGED_IN": func(t *testing.T, _ *errorNodes) observed {
		return fatalOn(t, sharedNode, codec.JSON, encode(t, codec.JSON, codec.CmdPresence, 0, 3, &pb.PresenceRequest{}))
	},
	"ALREADY_LOGGED_IN": func(t *testing.T, _ *errorNodes) observed {
		user := uniq("twice")
		c := loggedIn(t, sharedNode, codec.Protobuf, user)
		c.fails(codec.CmdRegister, &pb.RegisterRequest{User: uniq("r"), Password: "secret123"}, codec.CodeAlreadyLoggedIn)
		return answered(t, c, c.reply(c.send(codec.CmdLogin, &pb.LoginRequest{Token: token(jwtSecret, user, time.Now().Add(time.Hour)), Device: "e"})))
	},
	"INVALID_ARGUMENT": func(t *testing.T, _ *errorNodes) observed {
		c := dial(t, sharedNode, codec.JSON)
		// The outside client's report: a malformed user id, or neither
		// password nor token, is not AUTH_FAILED.
		c.fails(codec.CmdLogin, &pb.LoginRequest{Device: "d"}, codec.CodeInvalidArgument)
		return answered(t, c, c.reply(c.send(codec.CmdLogin, &pb.LoginRequest{User: "bad id", Password: "secret123", Device: "d"})))
	},
	"AUTH_FAILED": func(t *testing.T, _ *errorNodes) observed {
		c := dial(t, sharedNode, codec.MsgPack)
		c.fails(codec.CmdLogin, &pb.LoginRequest{Token: token("another-secret", "mallory", time.Now().Add(time.Hour)), Device: "d"}, codec.CodeAuthFailed)
		return answered(t, c, c.reply(c.send(codec.CmdLogin, &pb.LoginRequest{User: uniq("nobody"), Password: "secret123", Device: "d"})))
	},
	"TOKEN_EXPIRED": func(t *testing.T, _ *errorNodes) observed {
		c := dial(t, sharedNode, codec.JSON)
		return answered(t, c, c.reply(c.send(codec.CmdLogin, &pb.LoginRequest{Token: token(jwtSecret, "late", time.Now().Add(-time.Minute)), Device: "d"})))
	},
	"USER_EXISTS": func(t *testing.T, _ *errorNodes) observed {
		c := dial(t, sharedNode, codec.Protobuf)
		user := uniq("exists")
		c.call(codec.CmdRegister, &pb.RegisterRequest{User: user, Password: "secret123"}, codec.CmdRegisterOK, nil)
		return answered(t, c, c.reply(c.send(codec.CmdRegister, &pb.RegisterRequest{User: user, Password: "other-password"})))
	},
	"UNKNOWN_RECIPIENT": func(t *testing.T, _ *errorNodes) observed {
		c := loggedIn(t, sharedNode, codec.JSON, uniq("lonely"))
		c.fails(codec.CmdGroupCreate, &pb.GroupCreateRequest{Members: []string{uniq("ghost")}}, codec.CodeUnknownRecipient)
		return answered(t, c, c.reply(c.send(codec.CmdSend, &pb.SendRequest{ClientMsgId: "c", To: uniq("ghost")})))
	},
	"UNKNOWN_GROUP": func(t *testing.T, _ *errorNodes) observed {
		c := loggedIn(t, sharedNode, codec.MsgPack, uniq("nogroup"))
		return answered(t, c, c.reply(c.send(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: "gnone"})))
	},
	"NOT_GROUP_MEMBER": func(t *testing.T, _ *errorNodes) observed {
		w := newWorld(t, codec.Protobuf)
		g := w.group(t)
		return answered(t, w.b, w.b.reply(w.b.send(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "c", GroupId: g, Body: []byte("x")})))
	},
	"GROUP_FULL": func(t *testing.T, _ *errorNodes) observed {
		// The shared node's groups hold 4 members.
		c := loggedIn(t, sharedNode, codec.JSON, uniq("crowd"))
		var members []string
		for range 4 {
			u := uniq("m")
			loggedIn(t, sharedNode, codec.JSON, u)
			members = append(members, u)
		}
		c.fails(codec.CmdGroupCreate, &pb.GroupCreateRequest{Members: members}, codec.CodeGroupFull)
		var g pb.GroupInfo
		c.call(codec.CmdGroupCreate, &pb.GroupCreateRequest{Members: members[:3], Open: true}, codec.CmdGroupInfo, &g)
		late := loggedIn(t, sharedNode, codec.JSON, uniq("late"))
		return answered(t, late, late.reply(late.send(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: g.GroupId})))
	},
	"NOT_GROUP_ADMIN": func(t *testing.T, _ *errorNodes) observed {
		w := newWorld(t, codec.JSON)
		g := w.group(t, w.ub)
		return answered(t, w.b, w.b.reply(w.b.send(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: g, Users: []string{w.ua}})))
	},
	"NOT_GROUP_OWNER": func(t *testing.T, _ *errorNodes) observed {
		w := newWorld(t, codec.MsgPack)
		g := w.group(t, w.ub)
		w.a.call(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: g, User: w.ub, Admin: true}, codec.CmdGroupInfo, nil)
		// An admin may not remove the owner, nor name admins.
		w.b.fails(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: g, User: w.ub}, codec.CodeNotGroupOwner)
		return answered(t, w.b, w.b.reply(w.b.send(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: g, Users: []string{w.ua}})))
	},
	"GROUP_INVITE_ONLY": func(t *testing.T, _ *errorNodes) observed {
		w := newWorld(t, codec.Protobuf)
		return answered(t, w.b, w.b.reply(w.b.send(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: w.group(t)})))
	},
	"RATE_LIMITED": func(t *testing.T, e *errorNodes) observed {
		n := e.get("limits")
		user := uniq("fast")
		c := loggedIn(t, n, codec.JSON, user)
		c.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: "1", To: user}, codec.CmdSendAck, nil)
		c.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: "2", To: user}, codec.CmdSendAck, nil)
		// Password attempts from one address are limited too (burst 2).
		p := dial(t, n, codec.Protobuf)
		var last *pb.Error
		for range 3 {
			last = errorOf(t, p.reply(p.send(codec.CmdLogin, &pb.LoginRequest{User: "victim", Password: "guess-guess", Device: "d"})))
		}
		if codec.ErrorCode(last.Code) != codec.CodeRateLimited || last.RetryAfterMs == 0 {
			t.Fatalf("third password attempt: %v", last)
		}
		f := c.reply(c.send(codec.CmdSend, &pb.SendRequest{ClientMsgId: "3", To: user}))
		if e := errorOf(t, f); e.RetryAfterMs == 0 {
			t.Fatalf("RATE_LIMITED without retry_after_ms: %v", e)
		}
		return answered(t, c, f)
	},
	"SLOW_CONSUMER": func(t *testing.T, _ *errorNodes) observed {
		// The shared node closes a connection with 64 KiB of output it
		// cannot send. The sink does not read while it is flooded with
		// pushes: the kernel buffers on both sides fill (a few MB), then
		// the node's 64 KiB. The sink's receive buffer is left as the
		// kernel sizes it: shrinking it after the handshake (it once was
		// set to 4 KiB here) left a window larger than the buffer, so the
		// kernel dropped pushes, the node's TCP backed off its
		// retransmissions, and the window stayed a few KB: the backlog then
		// crawled in at tens of KB/s and the close came after the wait.
		sinkUser := uniq("sink")
		nc, err := net.DialTimeout("tcp", sharedNode.addr, wait)
		if err != nil {
			t.Fatal(err)
		}
		sink := &conn{t: t, nc: nc, r: bufio.NewReaderSize(nc, 64<<10), ser: codec.Protobuf}
		t.Cleanup(func() { nc.Close() })
		sink.login(sinkUser, "d")
		before := errorsCounted(t, sharedNode, "SLOW_CONSUMER")
		flood := loggedIn(t, sharedNode, codec.Protobuf, uniq("flood"))
		body := make([]byte, 7000)
		for i := 0; errorsCounted(t, sharedNode, "SLOW_CONSUMER") == before; i++ {
			if i == 5000 {
				t.Fatal("no SLOW_CONSUMER after 5000 pushes of 7 KB to a reader that does not read")
			}
			flood.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint(i), To: sinkUser, Body: body}, codec.CmdSendAck, nil)
		}
		// Now read: pushes, then (best effort) the ERROR, then the close.
		frames := sink.closed()
		if last := frames[len(frames)-1]; last.Command == codec.CmdError {
			return observed{f: last, closed: true}
		}
		// The final ERROR is best effort (§7): the close cut it off. The
		// server counted the code; that is what is checked then.
		t.Logf("SLOW_CONSUMER: the ERROR frame did not arrive (best effort); %d pushes read before the close", len(frames))
		return observed{counted: codec.CodeSlowConsumer, closed: true}
	},
	"TOO_MANY_CONNECTIONS": func(t *testing.T, e *errorNodes) observed {
		n := e.get("caps")
		dial(t, n, codec.JSON).call(codec.CmdHeartbeat, nil, codec.CmdHeartbeatOK, nil)
		dial(t, n, codec.JSON).call(codec.CmdHeartbeat, nil, codec.CmdHeartbeatOK, nil)
		if overWS {
			// A WebSocket refused at accept gets no frame (§10.2); the
			// code itself is seen on TCP, where the cap counts the same.
			refusedWS(t, n)
			tcpOnly(t)
		}
		return fatalOn(t, n, codec.JSON, nil)
	},
	"LOGIN_TIMEOUT": func(t *testing.T, e *errorNodes) observed {
		n := e.get("timers")
		c := dial(t, n, codec.JSON)
		// A HEARTBEAT does not extend the login deadline.
		c.call(codec.CmdHeartbeat, nil, codec.CmdHeartbeatOK, nil)
		frames := c.closed()
		return observed{f: frames[len(frames)-1], closed: true}
	},
	"IDLE_TIMEOUT": func(t *testing.T, e *errorNodes) observed {
		c := loggedIn(t, e.get("timers"), codec.MsgPack, uniq("quiet"))
		frames := c.closed()
		return observed{f: frames[len(frames)-1], closed: true}
	},
	"SHUTTING_DOWN": func(t *testing.T, _ *errorNodes) observed {
		n := startNode(t, "--goaway-window", "1s")
		in := loggedIn(t, n, codec.JSON, uniq("stayer"))
		waiting := dial(t, n, codec.Protobuf) // connected, not logged in
		waiting.call(codec.CmdHeartbeat, nil, codec.CmdHeartbeatOK, nil)
		n.terminate()
		in.next(codec.CmdGoAway)
		// A LOGIN on a stopping node is refused, retryable and not fatal;
		// a new connection gets GO_AWAY (§6.9).
		f := waiting.reply(waiting.send(codec.CmdLogin, &pb.LoginRequest{Token: token(jwtSecret, uniq("u"), time.Now().Add(time.Hour)), Device: "d"}))
		if overWS {
			refusedWS(t, n) // no frame before the handshake (§10.2)
		} else if frames := dial(t, n, codec.JSON).closed(); len(frames) != 1 || frames[0].Command != codec.CmdGoAway || frames[0].Seq != 0 {
			t.Fatalf("a connection accepted during shutdown got %v", commands(frames))
		}
		return answered(t, waiting, f)
	},
	"BUSY": func(t *testing.T, e *errorNodes) observed {
		// REGISTERs wait for a worker (password hashing); the limits node
		// queues at most 300 bytes of them per connection.
		c := dial(t, e.get("limits"), codec.JSON)
		var b []byte
		for i := range 20 {
			b = append(b, encode(t, codec.JSON, codec.CmdRegister, 0, uint32(i+1), &pb.RegisterRequest{User: uniq("busy"), Password: strings.Repeat("p", 100)})...)
		}
		c.write(b)
		for i := range 20 {
			f := c.reply(uint32(i + 1))
			if f.Command == codec.CmdError && codec.ErrorCode(errorOf(t, f).Code) == codec.CodeBusy {
				if e := errorOf(t, f); e.RetryAfterMs == 0 {
					t.Fatalf("BUSY without retry_after_ms: %v", e)
				}
				return answered(t, c, f)
			}
		}
		t.Fatal("twenty pipelined REGISTERs and no BUSY")
		return observed{}
	},
	"KICK_DUPLICATE_LOGIN": func(t *testing.T, _ *errorNodes) observed {
		user := uniq("dup")
		old := loggedIn(t, sharedNode, codec.MsgPack, user)
		loggedIn(t, sharedNode, codec.JSON, user)
		frames := old.closed()
		return observed{f: frames[len(frames)-1], closed: true}
	},
	"KICK_ADMIN": func(t *testing.T, _ *errorNodes) observed {
		user := uniq("kicked")
		c := loggedIn(t, sharedNode, codec.Protobuf, user)
		sharedNode.post(t, "/admin/kick?user="+user, "")
		frames := c.closed()
		return observed{f: frames[len(frames)-1], closed: true}
	},
}

// notProvoked are the codes of §5 a client cannot provoke on a healthy
// single node, and where each is tested instead.
var notProvoked = map[string]string{
	"OK":                "never sent (no error)",
	"STORE_UNAVAILABLE": "needs a failing store: engine tests (storeError) and e2e TestMongoDownGivesRetryableErrorsAndNoFalseAck",
	"FORWARD_FAILED":    "needs a cluster with an unreachable owner: e2e and mesh tests",
	"INTERNAL":          "a server bug by definition: engine TestUnencodableReplyAnswersInternal injects one",
	"KICK_LOGOUT":       "reserved: never sent by version 1 servers",
}

// errorsCounted reads imgn_errors_total{code} from n's /metrics.
func errorsCounted(t *testing.T, n *node, code string) string {
	t.Helper()
	resp, err := http.Get("http://" + n.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	prefix := `imgn_errors_total{code="` + code + `"} `
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			return v
		}
	}
	return "0"
}

// TestEveryErrorCode provokes every code of the §5 table with the input
// the document names, and checks the frame against the table: the code,
// fatal and retryable as the table says, a fatal code followed by the
// close and any other leaving the connection usable. Codes no client can
// provoke on a single node are listed in notProvoked, with where they are
// tested.
func TestEveryErrorCode(t *testing.T) {
	e := &errorNodes{t: t, made: map[string]*node{}}
	rows := errorTable(t)
	for _, r := range rows {
		if why, ok := notProvoked[r.name]; ok {
			t.Logf("%s: not provoked here: %s", r.name, why)
			continue
		}
		scenario := errorScenarios[r.name]
		if scenario == nil {
			t.Errorf("§5: no scenario for %s", r.name)
			continue
		}
		t.Run(r.name, func(t *testing.T) {
			o := scenario(t, e)
			var code codec.ErrorCode
			switch o.f.Command {
			case 0:
				if o.counted == 0 {
					t.Fatalf("%s: no frame", r.name)
				}
				code = o.counted
			case codec.CmdKick:
				var k pb.Kick
				decode(t, o.f, &k)
				code = codec.ErrorCode(k.Code)
			case codec.CmdError:
				er := errorOf(t, o.f)
				code = codec.ErrorCode(er.Code)
				if er.Fatal != r.fatal || er.Retryable != r.retryable {
					t.Fatalf("%s: fatal=%v retryable=%v, §5 says %v %v", r.name, er.Fatal, er.Retryable, r.fatal, r.retryable)
				}
			default:
				t.Fatalf("%s: got %s", r.name, o.f.Command)
			}
			if code != r.code {
				t.Fatalf("want %s (%d), got %s", r.name, r.code, code)
			}
			if r.code >= 50 && o.f.Command != codec.CmdKick {
				t.Fatalf("%s in an ERROR frame: §5 says KICK only", r.name)
			}
			switch {
			case r.fatal && !o.closed:
				t.Fatalf("%s is fatal but the connection stayed", r.name)
			case !r.fatal && o.closed:
				t.Fatalf("%s is not fatal but the connection closed", r.name)
			case !r.fatal:
				o.c.call(codec.CmdHeartbeat, nil, codec.CmdHeartbeatOK, nil)
			}
		})
	}
	for name := range errorScenarios {
		found := false
		for _, r := range rows {
			found = found || r.name == name
		}
		if !found {
			t.Errorf("scenario %s is not a code of §5", name)
		}
	}
}
