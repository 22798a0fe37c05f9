package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/client/clienttest"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/testutil"
)

// devicesSeen records the device of every LOGIN the server receives.
func devicesSeen(s *clienttest.Server) func() []string {
	var mu sync.Mutex
	var seen []string
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool {
		if r.Command == codec.CmdLogin {
			mu.Lock()
			seen = append(seen, r.Body.(interface{ GetDevice() string }).GetDevice())
			mu.Unlock()
		}
		return false
	})
	return func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), seen...) }
}

// TestStableDevice: recv and chat log in with this machine's device id,
// kept in the user's config directory, so each run resumes where the last
// one stopped instead of replaying the inbox.
func TestStableDevice(t *testing.T) {
	s := clienttest.Start(t)
	s.AddUser("bob", "secret123")
	cfgDir := t.TempDir()
	env := map[string]string{"IM_SERVER": s.Addr, "IM_USER": "bob", "IM_PASSWORD": "secret123", "XDG_CONFIG_HOME": cfgDir}
	seen := devicesSeen(s)
	for range 3 {
		s.Store("bob", "alice", []byte("old"))
	}

	// chat shows what this device has not shown yet: all three, then on
	// the next run only what arrived since.
	r := chatWhile(t, env, func(out *testutil.Buffer) {
		testutil.Until(t, 5*time.Second, "history", func() bool { return strings.Count(out.String(), "alice: old") == 3 })
	})
	b, err := os.ReadFile(filepath.Join(cfgDir, "imgn", "device"))
	id := strings.TrimSpace(string(b))
	if err != nil || !regexp.MustCompile(`^m-[0-9a-f]{12}$`).MatchString(id) {
		t.Fatalf("device file: %q %v", b, err)
	}
	if !strings.Contains(r.stderr, "(device "+id+")") {
		t.Fatalf("chat does not name its device %s: %s", id, r.stderr)
	}
	testutil.Until(t, 5*time.Second, "the chat's cursor", func() bool { return s.Cursor("bob", id) == 3 })
	r = chatWhile(t, env, func(out *testutil.Buffer) {
		testutil.Until(t, 5*time.Second, "bob online", func() bool { return s.Online("bob") == 1 })
		s.Deliver("alice", "bob", []byte("new"))
		testutil.Until(t, 5*time.Second, "the new message", func() bool { return strings.Contains(out.String(), "alice: new") })
	})
	if strings.Contains(r.stdout, "alice: old") {
		t.Fatalf("second chat replayed the inbox: %+v", r)
	}

	// recv keeps its own place (it may run beside a chat without the
	// server closing either as a duplicate login).
	r = invoke(t, env, "", "recv", "--unread", "--timeout", "1s")
	if r.code != exitOK || strings.Count(r.stdout, "\n") != 4 {
		t.Fatalf("recv --unread: %+v", r)
	}
	want := []string{id, id, id + "-recv"}
	if got := seen(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("devices %v, want %v", got, want)
	}
	// --device and IM_DEVICE override it.
	invoke(t, env, "", "recv", "--device", "laptop", "--timeout", "1s")
	env["IM_DEVICE"] = "desk"
	invoke(t, env, "", "recv", "--timeout", "1s")
	if got := seen(); len(got) != 5 || got[3] != "laptop" || got[4] != "desk" {
		t.Fatalf("devices %v", got)
	}

	// A corrupt device file is reported and the run goes on with a
	// one-off device.
	delete(env, "IM_DEVICE")
	if err := os.WriteFile(filepath.Join(cfgDir, "imgn", "device"), []byte("not an id!"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = invoke(t, env, "", "recv", "--timeout", "1s")
	if r.code != exitOK || !strings.Contains(r.stderr, "no stable device id") || !strings.Contains(r.stderr, "delete the file") {
		t.Fatalf("corrupt device file: %+v", r)
	}
}

// chatWhile runs `imctl chat` with env until body returns, then ends its
// input.
func chatWhile(t *testing.T, env map[string]string, body func(out *testutil.Buffer)) result {
	t.Helper()
	stdinR, stdinW := io.Pipe()
	var out, errb testutil.Buffer
	e := newEnv(envOf(env), stdinR, &out, &errb)
	done := make(chan int, 1)
	go func() { done <- run(context.Background(), []string{"chat"}, e) }()
	body(&out)
	stdinW.Close()
	code := <-done
	return result{code, out.String(), errb.String()}
}

// TestRecvWaitsForNew: recv --count 1 prints the next message to arrive,
// not the oldest in the inbox; --from-start replays.
func TestRecvWaitsForNew(t *testing.T) {
	s := clienttest.Start(t)
	s.AddUser("bob", "secret123")
	env := map[string]string{"IM_SERVER": s.Addr, "IM_USER": "bob", "IM_PASSWORD": "secret123", "XDG_CONFIG_HOME": t.TempDir()}
	for range 3 {
		s.Store("bob", "alice", []byte("old"))
	}
	done := make(chan result, 1)
	go func() { done <- invoke(t, env, "", "recv", "--count", "1", "--timeout", "5s") }()
	testutil.Until(t, 5*time.Second, "recv online", func() bool { return s.Online("bob") == 1 })
	s.Deliver("alice", "bob", []byte("fresh"))
	r := <-done
	var m jsonMessage
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &m) != nil || m.Seq != 4 || m.Body != "fresh" {
		t.Fatalf("recv --count 1: %+v", r)
	}
	r = invoke(t, env, "", "recv", "--count", "1", "--from-start")
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &m) != nil || m.Seq != 1 || m.Body != "old" {
		t.Fatalf("recv --from-start: %+v", r)
	}
	r = invoke(t, env, "", "recv", "--count", "1", "--after", "2")
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &m) != nil || m.Seq != 3 {
		t.Fatalf("recv --after 2: %+v", r)
	}
}

// TestSendSaysWhatEachSideSees: the msg_id is shared; the seq in the ack
// is the sender's own copy.
func TestSendSaysWhatEachSideSees(t *testing.T) {
	s := clienttest.Start(t)
	s.AddUser("alice", "secret123")
	s.AddUser("bob", "secret123")
	env := map[string]string{"IM_SERVER": s.Addr, "IM_USER": "alice", "IM_PASSWORD": "secret123"}
	r := invoke(t, env, "", "send", "--to", "bob", "hi")
	m := regexp.MustCompile(`^sent to bob: msg_id=(\d+) \(bob's inbox\); your copy is seq 1 in your inbox\n$`).FindStringSubmatch(r.stdout)
	if r.code != exitOK || m == nil {
		t.Fatalf("send: %+v", r)
	}
	if in := s.Inbox("bob"); len(in) != 1 || strconvU(in[0].GetMsgId()) != m[1] {
		t.Fatalf("bob's inbox %v does not hold msg_id %s", in, m[1])
	}
	r = invoke(t, env, "", "group", "create", "--name", "team", "--members", "bob", "--json")
	var g struct {
		GroupID string `json:"group_id"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &g); err != nil {
		t.Fatal(err)
	}
	r = invoke(t, env, "", "send", "--group", g.GroupID, "all")
	if r.code != exitOK || !regexp.MustCompile(`^sent to group `+g.GroupID+`: msg_id=\d+ \(the inbox of every member of `+g.GroupID+`\); your copy is seq 2 in your inbox\n$`).MatchString(r.stdout) {
		t.Fatalf("group send: %+v", r)
	}
}

func strconvU(v uint64) string { b, _ := json.Marshal(v); return string(b) }

// TestTokenLoginError: a refused token login says so instead of naming an
// empty user.
func TestTokenLoginError(t *testing.T) {
	s := clienttest.Start(t)
	r := invoke(t, map[string]string{"IM_SERVER": s.Addr}, "", "send", "--token", "forged", "--to", "bob", "hi")
	if r.code != exitFail || !strings.Contains(r.stderr, "login with a token at "+s.Addr+": ") || strings.Contains(r.stderr, "login  at") {
		t.Fatalf("%+v", r)
	}
}

// TestChatShowsConnectionState: the chat says which node it is on, when
// the connection is lost, and where it came back.
func TestChatShowsConnectionState(t *testing.T) {
	s := clienttest.Start(t)
	s.AddUser("bob", "secret123")
	s.SetNodeID("n1")
	stdinR, stdinW := io.Pipe()
	var out, errb testutil.Buffer
	e := newEnv(envOf(map[string]string{"IM_SERVER": s.Addr, "XDG_CONFIG_HOME": t.TempDir()}), stdinR, &out, &errb)
	done := make(chan int, 1)
	go func() {
		done <- run(context.Background(), []string{"chat", "--user", "bob", "--password", "secret123"}, e)
	}()
	waitErr := func(what string) {
		t.Helper()
		testutil.Until(t, 5*time.Second, what+" in "+errb.String(), func() bool { return strings.Contains(errb.String(), what) })
	}
	waitErr("logged in as bob on node n1 (device m-")
	testutil.Until(t, 5*time.Second, "bob online", func() bool { return s.Online("bob") == 1 })

	// Logins are refused while "the node restarts".
	var refuse sync.Mutex
	refusing := true
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool {
		refuse.Lock()
		defer refuse.Unlock()
		if r.Command == codec.CmdLogin && refusing {
			c.Error(r, codec.CodeShuttingDown, "restarting", 0)
			return true
		}
		return false
	})
	s.Disconnect("bob")
	waitErr("! connection to node n1 lost; reconnecting...")
	s.SetNodeID("n2")
	refuse.Lock()
	refusing = false
	refuse.Unlock()
	waitErr("! reconnected, on node n2\n")
	stdinW.Close()
	if code := <-done; code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
}

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
