package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/childproc"
	"github.com/imgn/imgn/internal/ports"
	"google.golang.org/protobuf/proto"
)

const durSecret = "durability-secret"

func freePort(t testing.TB) string {
	t.Helper()
	p, err := ports.Free()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}

type imdProc struct {
	cmd  *exec.Cmd
	addr string
}

func startImd(t *testing.T, bin, dataDir, addr string, extra ...string) *imdProc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--listen", addr, "--admin", "", "--data", dataDir, "--jwt-secret", durSecret,
		"--send-rate", "100000", "--send-burst", "100000", "--log-level", "warn"}, extra...)...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = childproc.Attr(false)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &imdProc{cmd: cmd, addr: addr}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("imd did not listen on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncClient is a minimal blocking protocol client.
type syncClient struct {
	nc  net.Conn
	r   *bufio.Reader
	seq uint32
}

func connectLogin(addr, user string) (*syncClient, error) {
	nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	return loginOver(nc, user)
}

// loginOver logs user in with a token on nc (closed on failure).
func loginOver(nc net.Conn, user string) (*syncClient, error) {
	c := &syncClient{nc: nc, r: bufio.NewReader(nc)}
	tok, _ := auth.MintToken([]byte(durSecret), user, time.Hour)
	if _, err := c.call(codec.CmdLogin, &pb.LoginRequest{Token: tok, Device: "d"}, &pb.LoginOK{}); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// readFrame reads one frame.
func (c *syncClient) readFrame() (codec.Header, []byte, error) {
	hb := make([]byte, codec.HeaderSize)
	if _, err := io.ReadFull(c.r, hb); err != nil {
		return codec.Header{}, nil, err
	}
	h, err := codec.ParseHeader(hb)
	if err != nil {
		return codec.Header{}, nil, err
	}
	body := make([]byte, h.Length)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return codec.Header{}, nil, err
	}
	return h, body, nil
}

// call returns the reply command; ERROR replies are returned as an error.
func (c *syncClient) call(cmd codec.Command, req, out proto.Message) (codec.Command, error) {
	c.seq++
	b, _ := codec.AppendFrame(nil, codec.Protobuf, cmd, 0, c.seq, req)
	_ = c.nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		return 0, err
	}
	for {
		h, body, err := c.readFrame()
		if err != nil {
			return 0, err
		}
		if h.Seq != c.seq {
			continue // pushes
		}
		if h.Command == codec.CmdError {
			var e pb.Error
			_ = codec.Unmarshal(h.Serializer, body, &e)
			return h.Command, fmt.Errorf("%s: %s", codec.ErrorCode(e.Code), e.Message)
		}
		return h.Command, codec.Unmarshal(h.Serializer, body, out)
	}
}

// crashConfig sizes TestAckedMessagesSurviveSIGKILL. The defaults are the
// short run of `make test`; `make crash-embedded` sets IMD_CRASH_ROUNDS,
// IMD_CRASH_RATE and IMD_CRASH_SECONDS for the long one.
type crashConfig struct {
	rounds  int
	rate    int           // messages per second offered, over all senders
	per     time.Duration // load before each kill
	senders int
}

func loadCrashConfig(t *testing.T) crashConfig {
	c := crashConfig{rounds: 2, rate: 2000, per: 1500 * time.Millisecond, senders: 8}
	for _, v := range []struct {
		name string
		dst  *int
	}{{"IMD_CRASH_ROUNDS", &c.rounds}, {"IMD_CRASH_RATE", &c.rate}} {
		if s := os.Getenv(v.name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				t.Fatalf("%s=%q: want a positive number", v.name, s)
			}
			*v.dst = n
		}
	}
	if s := os.Getenv("IMD_CRASH_SECONDS"); s != "" {
		n, err := strconv.ParseFloat(s, 64)
		if err != nil || n <= 0 {
			t.Fatalf("IMD_CRASH_SECONDS=%q: want a positive number", s)
		}
		c.per = time.Duration(n * float64(time.Second))
	}
	c.senders = max(c.senders, c.rate/1000) // well below the 256 requests in flight a connection may have
	return c
}

// sentMsg is one message handed to the node, acknowledged or not.
type sentMsg struct {
	sender, to string
	acked      bool
	seq        uint64 // the sender's inbox seq, from SEND_ACK
}

// ledger records every message sent by the test, by client_msg_id.
type ledger struct {
	mu   sync.Mutex
	msgs map[string]*sentMsg
}

func (l *ledger) sent(cmid, sender, to string) {
	l.mu.Lock()
	l.msgs[cmid] = &sentMsg{sender: sender, to: to}
	l.mu.Unlock()
}

// ack records a SEND_ACK; a second ack of one message (a retry) must carry
// the same seq.
func (l *ledger) ack(t *testing.T, cmid string, seq uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.msgs[cmid]
	if m.acked && m.seq != seq {
		t.Errorf("%s acked at seq %d, and at %d by a retry", cmid, m.seq, seq)
	}
	m.acked, m.seq = true, seq
}

func (l *ledger) unacked() map[string][]string { // sender -> cmids
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string][]string{}
	for cmid, m := range l.msgs {
		if !m.acked {
			out[m.sender] = append(out[m.sender], cmid)
		}
	}
	return out
}

// openLoopSender sends SENDs on one connection at a fixed rate without
// waiting for their acks, until ctx ends or the connection breaks.
func openLoopSender(ctx context.Context, t *testing.T, addr, sender string, recipients []string, every time.Duration, l *ledger) {
	c, err := connectLogin(addr, sender)
	if err != nil {
		return
	}
	defer c.nc.Close()
	var mu sync.Mutex
	pending := map[uint32]string{} // request seq -> client_msg_id
	readerDone := make(chan struct{})
	go func() { // the acks, as they come
		defer close(readerDone)
		for {
			h, body, err := c.readFrame()
			if err != nil {
				return
			}
			if h.Command != codec.CmdSendAck {
				continue // pushes; errors leave the message unacknowledged
			}
			var ack pb.SendAck
			if err := codec.Unmarshal(h.Serializer, body, &ack); err != nil {
				t.Errorf("bad SEND_ACK: %v", err)
				return
			}
			mu.Lock()
			cmid := pending[h.Seq]
			mu.Unlock()
			if cmid != ack.ClientMsgId {
				t.Errorf("SEND_ACK for request %d carries %q, sent %q", h.Seq, ack.ClientMsgId, cmid)
				return
			}
			l.ack(t, cmid, ack.Seq)
		}
	}()
	start := time.Now()
	for i := 0; ctx.Err() == nil; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(i) * every)))
		cmid := fmt.Sprintf("%s-%d-%d", sender, start.UnixNano(), i)
		to := recipients[i%len(recipients)]
		c.seq++
		b, _ := codec.AppendFrame(nil, codec.Protobuf, codec.CmdSend, 0, c.seq, &pb.SendRequest{ClientMsgId: cmid, To: to, Body: []byte(cmid)})
		mu.Lock()
		pending[c.seq] = cmid
		mu.Unlock()
		l.sent(cmid, sender, to) // from here on it may be stored
		_ = c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.nc.Write(b); err != nil {
			break
		}
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(2 * time.Second)) // collect the acks in flight
	<-readerDone
}

// TestAckedMessagesSurviveSIGKILL runs a real imd on the embedded store
// under open-loop load and kills it with SIGKILL, several times on the same
// data. After each restart the senders resend what was not acknowledged
// (same client_msg_id, as a client does). At the end every message sent is
// in its recipient's inbox exactly once, every acknowledged one in its
// sender's inbox at the acknowledged seq, and no inbox has a gap.
func TestAckedMessagesSurviveSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs imd")
	}
	cfg := loadCrashConfig(t)
	bin := buildImd(t)
	data := t.TempDir()
	addr := freePort(t)
	l := &ledger{msgs: map[string]*sentMsg{}}
	recipients := []string{"sink0", "sink1", "sink2"}
	senders := make([]string, cfg.senders)
	for i := range senders {
		senders[i] = fmt.Sprint("sender", i)
	}
	every := time.Duration(float64(time.Second) * float64(cfg.senders) / float64(cfg.rate))
	for round := range cfg.rounds {
		p := startImd(t, bin, data, addr)
		if round == 0 {
			for _, r := range recipients { // a token login creates the user
				c, err := connectLogin(addr, r)
				if err != nil {
					t.Fatal(err)
				}
				c.nc.Close()
			}
		}
		resendUnacked(t, addr, l)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for _, s := range senders {
			wg.Go(func() { openLoopSender(ctx, t, addr, s, recipients, every, l) })
		}
		time.Sleep(cfg.per)
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil { // with sends in flight
			t.Fatal(err)
		}
		_ = p.cmd.Wait()
		cancel()
		wg.Wait()
		un := 0
		for _, c := range l.unacked() {
			un += len(c)
		}
		t.Logf("round %d: %d messages sent so far, %d unacknowledged at the kill", round, len(l.msgs), un)
		if un == len(l.msgs) {
			t.Fatalf("round %d: nothing acknowledged: the test needs a stream", round)
		}
	}
	startImd(t, bin, data, addr)
	resendUnacked(t, addr, l)

	recvd := map[string]map[string]uint64{} // recipient -> cmid -> seq
	for _, r := range recipients {
		recvd[r] = checkGapFree(t, r, readAll(t, addr, r))
	}
	for cmid, m := range l.msgs {
		if _, ok := recvd[m.to][cmid]; !ok {
			t.Errorf("%s (acked %v) missing from %s's inbox", cmid, m.acked, m.to)
		}
	}
	for _, s := range senders {
		inbox := checkGapFree(t, s, readAll(t, addr, s))
		for cmid, m := range l.msgs {
			if m.sender != s {
				continue
			}
			if seq, ok := inbox[cmid]; !ok || seq != m.seq {
				t.Errorf("%s: acked %s at seq %d, inbox has %d (present %v)", s, cmid, m.seq, seq, ok)
			}
		}
	}
	t.Logf("%d messages over %d rounds: every one stored once, every ack kept", len(l.msgs), cfg.rounds)
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatal("test must stay on loopback")
	}
}

// resendUnacked resends every unacknowledged message with its
// client_msg_id, one sender at a time, until each is acknowledged.
func resendUnacked(t *testing.T, addr string, l *ledger) {
	t.Helper()
	for sender, cmids := range l.unacked() {
		c, err := connectLogin(addr, sender)
		if err != nil {
			t.Fatal(err)
		}
		for _, cmid := range cmids {
			var ack pb.SendAck
			l.mu.Lock()
			to := l.msgs[cmid].to
			l.mu.Unlock()
			if _, err := c.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: cmid, To: to, Body: []byte(cmid)}, &ack); err != nil {
				t.Fatalf("resend %s: %v", cmid, err)
			}
			l.ack(t, cmid, ack.Seq)
		}
		c.nc.Close()
	}
}

// readAll reads user's whole inbox by SYNC pages.
func readAll(t *testing.T, addr, user string) []*pb.Message {
	t.Helper()
	c, err := connectLogin(addr, user)
	if err != nil {
		t.Fatal(err)
	}
	defer c.nc.Close()
	var msgs []*pb.Message
	after := uint64(0)
	for {
		var page pb.SyncOK
		if _, err := c.call(codec.CmdSync, &pb.SyncRequest{AfterSeq: after, Limit: 500}, &page); err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, page.Messages...)
		if !page.HasMore {
			return msgs
		}
		after = page.Messages[len(page.Messages)-1].Seq
	}
}

// checkGapFree asserts msgs are seqs 1, 2, ... with no client_msg_id twice,
// and returns client_msg_id -> seq.
func checkGapFree(t *testing.T, user string, msgs []*pb.Message) map[string]uint64 {
	t.Helper()
	bySeq := map[string]uint64{}
	for i, m := range msgs {
		if m.Seq != uint64(i+1) {
			t.Fatalf("%s: inbox position %d has seq %d: gap or duplicate", user, i, m.Seq)
		}
		if _, dup := bySeq[m.ClientMsgId]; dup {
			t.Fatalf("%s: message %s twice", user, m.ClientMsgId)
		}
		bySeq[m.ClientMsgId] = m.Seq
	}
	return bySeq
}
