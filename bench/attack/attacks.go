package attack

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/clusterkit"
	"google.golang.org/protobuf/proto"
)

var magic = codec.Magic

// KnownIssues are attacks whose documented outcome the server does not
// produce yet, with the reason; they are reported, and the package test
// logs instead of failing on them until the server is fixed.
var KnownIssues = map[string]string{}

// attacks are every attack, in the order Run performs them.
var attacks = slices.Concat(wireAttacks, bodyAttacks, groupAttacks)

// wireAttacks attack the framing, the session rules, the login and the
// connection limits.
var wireAttacks = []attack{
	{"random-bytes", func(e *env) Result {
		b := make([]byte, 4096)
		_, _ = rand.Read(b)
		b[0] = 'X' // never a valid magic
		return e.fatalBytes("BAD_MAGIC", b)
	}},
	{"bad-magic", func(e *env) Result {
		return e.fatalBytes("BAD_MAGIC", header([4]byte{'H', 'T', 'T', 'P'}, 1, 2, byte(codec.CmdLogin), 1, 0))
	}},
	{"bad-version", func(e *env) Result {
		return e.fatalBytes("UNSUPPORTED_VERSION", header(magic, 9, 2, byte(codec.CmdLogin), 1, 0))
	}},
	{"bad-serializer", func(e *env) Result {
		return e.fatalBytes("UNKNOWN_SERIALIZER", header(magic, 1, 7, byte(codec.CmdLogin), 1, 0))
	}},
	{"oversized-length", func(e *env) Result {
		// 1 MiB declared, no body sent: the node must answer from the header.
		return e.fatalBytes("FRAME_TOO_LARGE", header(magic, 1, 2, byte(codec.CmdLogin), 1, 1<<20))
	}},
	{"negative-length", func(e *env) Result {
		// 0xFFFFFFF0 is -16 as an int32.
		return e.fatalBytes("FRAME_TOO_LARGE", header(magic, 1, 2, byte(codec.CmdLogin), 1, 0xFFFFFFF0))
	}},
	{"truncated-before-login", func(e *env) Result {
		b := append(header(magic, 1, 2, byte(codec.CmdLogin), 1, 100), make([]byte, 10)...)
		return e.fatalBytes("LOGIN_TIMEOUT", b)
	}},
	{"send-before-login", func(e *env) Result {
		b, _ := codec.AppendFrame(nil, codec.Protobuf, codec.CmdSend, 0, 1, &pb.SendRequest{ClientMsgId: "x", To: "legit0", Body: []byte("x")})
		return e.fatalBytes("NOT_LOGGED_IN", b)
	}},
	{"undefined-cmd-before-login", func(e *env) Result {
		return e.fatalBytes("NOT_LOGGED_IN", header(magic, 1, 2, 0x66, 1, 0))
	}},
	{"slowloris-login", func(e *env) Result {
		// A valid LOGIN frame at 1 byte per second: the login deadline
		// (2s) must close it long before the frame completes.
		tok, _ := auth.MintToken([]byte(clusterkit.Secret), "slow", time.Hour)
		b, _ := codec.AppendFrame(nil, codec.Protobuf, codec.CmdLogin, 0, 1, &pb.LoginRequest{Token: tok, Device: "d"})
		return e.trickle("LOGIN_TIMEOUT", nil, b)
	}},
	{"slowloris-after-login", func(e *env) Result {
		b, _ := codec.AppendFrame(nil, codec.Protobuf, codec.CmdHeartbeat, 0, 2, &pb.Heartbeat{})
		return e.trickle("IDLE_TIMEOUT", e.token("slow2"), b)
	}},
	{"truncated-after-login", func(e *env) Result {
		b := append(header(magic, 1, 2, byte(codec.CmdSend), 2, 200), make([]byte, 20)...)
		return e.loggedInBytes("IDLE_TIMEOUT", true, "trunc", b)
	}},
	{"second-login", func(e *env) Result {
		b, _ := codec.AppendFrame(nil, codec.Protobuf, codec.CmdLogin, 0, 2, &pb.LoginRequest{Token: *e.token("twice"), Device: "d2"})
		return e.loggedInBytes("ALREADY_LOGGED_IN", false, "twice", b)
	}},
	{"bad-body-after-login", func(e *env) Result {
		b := append(header(magic, 1, 2, byte(codec.CmdSend), 2, 8), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
		return e.loggedInBytes("BAD_BODY", false, "badbody", b)
	}},
	{"unknown-cmd-after-login", func(e *env) Result {
		return e.loggedInBytes("UNKNOWN_COMMAND", false, "unk", header(magic, 1, 2, 0x66, 2, 0))
	}},
	{"wrong-password-flood", func(e *env) Result { return e.loginFlood() }},
	{"forged-token", func(e *env) Result {
		tok, _ := auth.MintToken([]byte("not-the-secret"), "forger", time.Hour)
		return e.badLogin("AUTH_FAILED", tok)
	}},
	{"alg-none-token", func(e *env) Result {
		enc := base64.RawURLEncoding.EncodeToString
		tok := enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
			enc([]byte(fmt.Sprintf(`{"sub":"forger","exp":%d}`, time.Now().Add(time.Hour).Unix()))) + "."
		return e.badLogin("AUTH_FAILED", tok)
	}},
	{"expired-token", func(e *env) Result {
		tok, _ := auth.MintToken([]byte(clusterkit.Secret), "late", -time.Minute)
		return e.badLogin("TOKEN_EXPIRED", tok)
	}},
	{"random-frames", func(e *env) Result { return e.randomFrames() }},
	{"idle-conn-flood", func(e *env) Result { return e.connFlood() }},
	{"slow-consumer", func(e *env) Result { return e.slowConsumer() }},
}

func (e *env) token(user string) *string {
	t, _ := auth.MintToken([]byte(clusterkit.Secret), user, time.Hour)
	return &t
}

func (e *env) metric(name string, labels ...string) float64 {
	m, err := e.cfg.Node.Metrics(e.ctx)
	if err != nil {
		return -1
	}
	return m.Get(name, labels...)
}

func errLabel(code string) string { return `code="` + code + `"` }

// counted waits (at most 3s) until imgn_errors_total{code} grew by want
// since before, and returns the growth.
func (e *env) counted(code string, before, want float64) float64 {
	var d float64
	_ = clusterkit.Poll(e.ctx, 3*time.Second, "metric", func() bool {
		d = e.metric("imgn_errors_total", errLabel(code)) - before
		return d >= want
	})
	return d
}

func gotName(e *pb.Error) string {
	if e == nil {
		return "none"
	}
	return codec.ErrorCode(e.Code).String()
}

// fatalBytes sends b on a fresh connection and expects ERROR want, then a
// close.
func (e *env) fatalBytes(want string, b []byte) Result {
	r := Result{Want: want, Fatal: true, Metric: "imgn_errors_total{" + errLabel(want) + "}"}
	before := e.metric("imgn_errors_total", errLabel(want))
	c, err := dialRaw(e.addr)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer c.Close()
	start := time.Now()
	if err := c.write(b); err != nil {
		r.Detail = err.Error()
	}
	closed, first := c.closed(6 * time.Second)
	r.Took = time.Since(start)
	r.Closed, r.Got = closed, gotName(first)
	r.Counted = e.counted(want, before, 1)
	r.OK = r.Closed && r.Got == want && r.Counted >= 1
	return r
}

// trickle writes b one byte per second (after logging in when tok is set)
// and expects the node to close with want before the frame completes.
func (e *env) trickle(want string, tok *string, b []byte) Result {
	r := Result{Want: want, Fatal: true, Metric: "imgn_errors_total{" + errLabel(want) + "}"}
	before := e.metric("imgn_errors_total", errLabel(want))
	c, err := dialRaw(e.addr)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer c.Close()
	if tok != nil {
		if err := c.login(*tok, "d"); err != nil {
			r.Detail = err.Error()
			return r
		}
	}
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range b {
			if c.write(b[i:i+1]) != nil {
				return
			}
			select {
			case <-time.After(time.Second):
			case <-e.ctx.Done():
				return
			}
		}
	}()
	closed, first := c.closed(10 * time.Second)
	r.Took = time.Since(start)
	c.Close()
	<-done
	r.Closed, r.Got = closed, gotName(first)
	r.Counted = e.counted(want, before, 1)
	r.OK = r.Closed && r.Got == want && r.Counted >= 1
	r.Detail = fmt.Sprintf("closed after %.1fs of a %d-byte frame", r.Took.Seconds(), len(b))
	return r
}

// loggedInBytes logs in as user, sends b and expects ERROR want; fatal
// ones must close, others must leave the connection usable (a HEARTBEAT
// is answered).
func (e *env) loggedInBytes(want string, fatal bool, user string, b []byte) Result {
	r := Result{Want: want, Fatal: fatal, Metric: "imgn_errors_total{" + errLabel(want) + "}"}
	before := e.metric("imgn_errors_total", errLabel(want))
	c, err := dialRaw(e.addr)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer c.Close()
	if err := c.login(*e.token(user), "d"); err != nil {
		r.Detail = err.Error()
		return r
	}
	start := time.Now()
	if err := c.write(b); err != nil {
		r.Detail = err.Error()
		return r
	}
	if fatal {
		closed, first := c.closed(10 * time.Second)
		r.Took = time.Since(start)
		r.Closed, r.Got = closed, gotName(first)
		r.Counted = e.counted(want, before, 1)
		r.OK = r.Closed && r.Got == want && r.Counted >= 1
		return r
	}
	_, perr, err := c.reply(5 * time.Second)
	r.Took = time.Since(start)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	r.Got = gotName(perr)
	_, _ = c.frame(codec.CmdHeartbeat, &pb.Heartbeat{})
	cmd, _, err := c.reply(5 * time.Second)
	stays := err == nil && cmd == codec.CmdHeartbeatOK
	r.Detail = fmt.Sprintf("connection stays usable: %v", stays)
	r.Counted = e.counted(want, before, 1)
	r.OK = stays && r.Got == want && r.Counted >= 1
	return r
}

// badLogin sends LOGIN with tok and expects ERROR want (not fatal).
func (e *env) badLogin(want, tok string) Result {
	r := Result{Want: want, Metric: "imgn_errors_total{" + errLabel(want) + "}"}
	before := e.metric("imgn_errors_total", errLabel(want))
	c, err := dialRaw(e.addr)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer c.Close()
	start := time.Now()
	_, _ = c.frame(codec.CmdLogin, &pb.LoginRequest{Token: tok, Device: "d"})
	_, perr, err := c.reply(5 * time.Second)
	r.Took = time.Since(start)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	r.Got = gotName(perr)
	r.Counted = e.counted(want, before, 1)
	r.OK = r.Got == want && r.Counted >= 1
	return r
}

// loginFlood: conns connections from one IP each pipeline per wrong-password
// LOGINs for a registered user; each must get AUTH_FAILED, or RATE_LIMITED
// once the address has used its password-attempt budget (the node's per-IP
// limit, checked before hashing).
func (e *env) loginFlood() Result {
	conns, per := 40, max(1, int(5*e.cfg.Scale))
	want := "AUTH_FAILED"
	r := Result{Want: want, Metric: "imgn_errors_total{" + errLabel(want) + "}"}
	_, err := client.Register(e.ctx, client.Config{Addr: e.addr, User: "victim", Password: "right-password"})
	if err != nil && !isCode(err, codec.CodeUserExists) {
		r.Detail = "register: " + err.Error()
		return r
	}
	before := e.metric("imgn_errors_total", errLabel(want))
	start := time.Now()
	got := e.pipelined(conns, per, nil, func(i, k int) (codec.Command, proto.Message) {
		return codec.CmdLogin, &pb.LoginRequest{User: "victim", Password: fmt.Sprintf("guess-%d-%d", i, k), Device: "d"}
	})
	r.Took = time.Since(start)
	total := conns * per
	r.Counted = e.counted(want, before, float64(total))
	r.Got = fmt.Sprintf("%d/%d %s %v", got[want], total, want, got)
	rate := float64(total) / r.Took.Seconds()
	r.Detail = fmt.Sprintf("%d wrong passwords from one IP in %.2fs (%.0f/s answered; %d hashed, %d refused by the per-IP limit before hashing)",
		total, r.Took.Seconds(), rate, got[want], got["RATE_LIMITED"])
	// Every attempt must get a documented answer: AUTH_FAILED (hashed and
	// wrong), RATE_LIMITED (the address's password-attempt budget is
	// spent), BUSY (the connection's request queue is full) or, when the
	// queue outlasts the login deadline, a LOGIN_TIMEOUT close.
	r.OK = got[want] > 0 && got["RATE_LIMITED"] > 0 &&
		got[want]+got["RATE_LIMITED"]+got["BUSY"]+got["LOGIN_TIMEOUT"]+got["conn-error"] == total && r.Counted >= float64(got[want])
	if lt := got["LOGIN_TIMEOUT"] + got["conn-error"]; lt > 0 {
		r.Detail += fmt.Sprintf("; %d attempts cut by the login deadline", lt)
	}
	return r
}

// pipelined opens conns connections, runs setup on each (nil: none), writes
// per requests made by req on each without waiting for answers, then reads
// the per answers. It returns how many answers of each kind arrived: the
// code's name for an ERROR, the command's name (upper case) otherwise;
// "conn-error" counts the requests of a connection that failed first.
func (e *env) pipelined(conns, per int, setup func(c *raw, i int) error, req func(i, k int) (codec.Command, proto.Message)) map[string]int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int{}
	tally := func(k string, n int) {
		mu.Lock()
		got[k] += n
		mu.Unlock()
	}
	for i := range conns {
		wg.Go(func() {
			c, err := dialRaw(e.addr)
			if err != nil {
				tally("conn-error", per)
				return
			}
			defer c.Close()
			if setup != nil {
				if err := setup(c, i); err != nil {
					tally("conn-error", per)
					return
				}
			}
			for k := range per {
				if _, err := c.frame(req(i, k)); err != nil {
					tally("conn-error", per)
					return
				}
			}
			for k := range per {
				cmd, perr, err := c.reply(30 * time.Second)
				switch {
				case err != nil:
					tally("conn-error", per-k)
					return
				case cmd == codec.CmdError:
					tally(gotName(perr), 1)
				default:
					tally(strings.ToUpper(cmd.String()), 1)
				}
			}
		})
	}
	wg.Wait()
	return got
}

func isCode(err error, code codec.ErrorCode) bool {
	var ce *client.Error
	return errors.As(err, &ce) && ce.Code == code
}

// randomFrames: many connections, each a valid magic followed by a random
// header and body. The node must close or answer every one with a
// documented code and stay up.
func (e *env) randomFrames() Result {
	n := int(200 * e.cfg.Scale)
	r := Result{Want: "documented code or close", Fatal: true, Metric: "(any framing code)"}
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[string]int{}
	sem := make(chan struct{}, 32)
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := dialRaw(e.addr)
			if err != nil {
				mu.Lock()
				codes["dial-error"]++
				mu.Unlock()
				return
			}
			defer c.Close()
			b := make([]byte, 16+mrand.IntN(256))
			_, _ = rand.Read(b)
			copy(b, magic[:])
			if mrand.IntN(2) == 0 {
				b[4] = 1 // valid version half the time, to reach deeper checks
				b[5] = byte(1 + mrand.IntN(3))
			}
			_ = c.write(b)
			closed, first := c.closed(5 * time.Second)
			k := gotName(first)
			if !closed {
				k += "/open"
			}
			mu.Lock()
			codes[k]++
			mu.Unlock()
		})
	}
	wg.Wait()
	r.Took = time.Since(start)
	r.OK = true
	for k := range codes {
		if k == "dial-error" {
			r.OK = false
		}
	}
	r.Closed = true
	r.Got = fmt.Sprint(codes)
	r.Counted = float64(n)
	r.Detail = fmt.Sprintf("%d connections", n)
	return r
}

// connFlood: connections that never log in must all be closed by the
// login deadline.
func (e *env) connFlood() Result {
	n := int(300 * e.cfg.Scale)
	want := "LOGIN_TIMEOUT"
	r := Result{Want: want, Fatal: true, Metric: "imgn_errors_total{" + errLabel(want) + "}"}
	before := e.metric("imgn_errors_total", errLabel(want))
	start := time.Now()
	cs := make([]*raw, 0, n)
	for range n {
		c, err := dialRaw(e.addr)
		if err != nil {
			break
		}
		cs = append(cs, c)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	closedN := 0
	for _, c := range cs {
		wg.Go(func() {
			defer c.Close()
			if ok, first := c.closed(8 * time.Second); ok && gotName(first) == want {
				mu.Lock()
				closedN++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	r.Took = time.Since(start)
	r.Closed = closedN == n
	r.Got = fmt.Sprintf("%d/%d closed with %s", closedN, n, want)
	r.Counted = e.counted(want, before, float64(n))
	r.OK = r.Closed && r.Counted >= float64(n)
	return r
}

// slowConsumer: a logged-in connection with a tiny receive buffer never
// reads while another user floods it; the node must close it as a slow
// consumer (imgn_slow_consumer_closes_total) and keep serving.
func (e *env) slowConsumer() Result {
	r := Result{Want: "SLOW_CONSUMER close", Fatal: true, Metric: "imgn_slow_consumer_closes_total"}
	before := e.metric("imgn_slow_consumer_closes_total")
	c, err := dialRaw(e.addr)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer c.Close()
	if tc, ok := c.c.(interface{ SetReadBuffer(int) error }); ok {
		_ = tc.SetReadBuffer(4096)
	}
	if err := c.login(*e.token("sink"), "d"); err != nil {
		r.Detail = err.Error()
		return r
	}
	fl, err := client.Dial(e.ctx, clusterkit.ClientConfig("", e.addr, "flooder", "d"))
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer fl.Close()
	go func() {
		for range fl.Messages() {
		}
	}()
	start := time.Now()
	body := make([]byte, 8192)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent int64
	var mu sync.Mutex
	for w := range 8 {
		wg.Go(func() {
			for k := 0; k < 600; k++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := fl.Send(e.ctx, "sink", body, client.WithClientMsgID(fmt.Sprintf("f%d-%d-%d", start.UnixNano(), w, k))); err != nil {
					return
				}
				mu.Lock()
				sent++
				mu.Unlock()
			}
		})
	}
	var d float64
	_ = clusterkit.Poll(e.ctx, 30*time.Second, "slow consumer close", func() bool {
		d = e.metric("imgn_slow_consumer_closes_total") - before
		return d >= 1
	})
	close(stop)
	wg.Wait()
	r.Took = time.Since(start)
	// The node has closed its side once it counted the close; the kernel
	// may still hold megabytes for the tiny receive window, so the proof of
	// the close is the node's own view (the session is gone), not our EOF.
	var online struct {
		Online bool `json:"online"`
	}
	_ = clusterkit.Poll(e.ctx, 5*time.Second, "sink offline", func() bool {
		return clusterkit.GetJSON(e.ctx, "http://"+e.admin+"/admin/online?user=sink", &online) == nil && !online.Online
	})
	closed := !online.Online
	r.Closed, r.Got, r.Counted = closed, "closed (node side)", d
	r.Detail = fmt.Sprintf("closed after %d pushes of 8 KiB to a reader that never reads", sent)
	r.OK = closed && d >= 1
	return r
}
