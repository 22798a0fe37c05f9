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
	"syscall"
	"testing"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/ports"
	"google.golang.org/protobuf/proto"
)

const durSecret = "durability-secret"

func freePort(t *testing.T) string {
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

func startImd(t *testing.T, bin, dataDir, addr string) *imdProc {
	t.Helper()
	cmd := exec.Command(bin, "--listen", addr, "--admin", "", "--data", dataDir, "--jwt-secret", durSecret,
		"--send-rate", "100000", "--send-burst", "100000", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
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
	c := &syncClient{nc: nc, r: bufio.NewReader(nc)}
	tok, _ := auth.MintToken([]byte(durSecret), user, time.Hour)
	if _, err := c.call(codec.CmdLogin, &pb.LoginRequest{Token: tok, Device: "d"}, &pb.LoginOK{}); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
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
		hb := make([]byte, codec.HeaderSize)
		if _, err := io.ReadFull(c.r, hb); err != nil {
			return 0, err
		}
		h, err := codec.ParseHeader(hb)
		if err != nil {
			return 0, err
		}
		body := make([]byte, h.Length)
		if _, err := io.ReadFull(c.r, body); err != nil {
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

// TestAckedMessagesSurviveSIGKILL runs a real imd on the embedded store,
// kills it with SIGKILL while four senders stream messages, restarts it on
// the same data, and checks that every acknowledged message is in the
// sender's and the recipient's inbox, with no gap and no duplicate.
func TestAckedMessagesSurviveSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs imd")
	}
	bin := buildImd(t)
	data := t.TempDir()
	addr := freePort(t)
	p := startImd(t, bin, data, addr)

	type acked struct {
		cmid string
		seq  uint64
	}
	const senders = 4
	results := make(chan []acked, senders)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for s := range senders {
		go func() {
			var got []acked
			defer func() { results <- got }()
			c, err := connectLogin(addr, fmt.Sprint("sender", s))
			if err != nil {
				return
			}
			defer c.nc.Close()
			for i := 0; ctx.Err() == nil; i++ {
				cmid := fmt.Sprintf("s%d-%d", s, i)
				var ack pb.SendAck
				if _, err := c.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: cmid, To: "sink", Body: []byte(cmid)}, &ack); err != nil {
					return // the node died: this message was not acknowledged
				}
				got = append(got, acked{cmid, ack.Seq})
			}
		}()
	}
	// Let the senders get going, then kill the node mid-stream.
	sink, err := connectLogin(addr, "sink")
	if err != nil {
		t.Fatal(err)
	}
	sink.nc.Close()
	time.Sleep(1500 * time.Millisecond)
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	cancel()
	all := map[string]acked{}
	perSender := map[int][]acked{}
	for range senders {
		r := <-results
		for _, a := range r {
			all[a.cmid] = a
		}
		if len(r) > 0 {
			var n int
			fmt.Sscanf(r[0].cmid, "s%d-", &n)
			perSender[n] = r
		}
	}
	if len(all) < 20 {
		t.Fatalf("only %d messages acked before the kill; the test needs a stream", len(all))
	}
	t.Logf("%d messages acknowledged before SIGKILL", len(all))

	startImd(t, bin, data, addr)
	readAll := func(user string) []*pb.Message {
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
	checkGapFree := func(user string, msgs []*pb.Message) map[string]uint64 {
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
	sinkInbox := checkGapFree("sink", readAll("sink"))
	for cmid := range all {
		if _, ok := sinkInbox[cmid]; !ok {
			t.Errorf("acked message %s lost from the recipient's inbox", cmid)
		}
	}
	for s, acks := range perSender {
		user := fmt.Sprint("sender", s)
		inbox := checkGapFree(user, readAll(user))
		for _, a := range acks {
			if seq, ok := inbox[a.cmid]; !ok || seq != a.seq {
				t.Errorf("%s: acked %s at seq %d, inbox has %d (present %v)", user, a.cmid, a.seq, seq, ok)
			}
		}
	}
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatal("test must stay on loopback")
	}
}
