package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/imgn/imgn/client/clienttest"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/internal/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaktest.Gnet()...) }

// result is one in-process invocation of imctl.
type result struct {
	code           int
	stdout, stderr string
}

// invoke runs imctl with args, the given environment and stdin.
func invoke(t *testing.T, environ map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	e := newEnv(func(k string) string { return environ[k] }, strings.NewReader(stdin), &out, &errb)
	e.loc = time.UTC
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	e.http = &http.Client{Transport: tr, Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code := run(ctx, args, e)
	return result{code, out.String(), errb.String()}
}

func TestUsageAndHelp(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{"no args", nil, exitUsage, "", "Commands:"},
		{"help", []string{"help"}, exitOK, "Commands:", ""},
		{"help cmd", []string{"help", "send"}, exitOK, "Usage: imctl send", ""},
		{"cmd -h", []string{"recv", "-h"}, exitOK, "\n  --count int\n", ""},
		{"group -h", []string{"group", "create", "-h"}, exitOK, "Usage: imctl group", ""},
		{"version", []string{"version"}, exitOK, "imctl ", ""},
		{"--version", []string{"--version"}, exitOK, "imctl ", ""},
		{"unknown command", []string{"frobnicate"}, exitUsage, "", `unknown command "frobnicate"`},
		{"unknown flag", []string{"send", "--bogus"}, exitUsage, "", "imctl send: unknown flag --bogus\nRun 'imctl send -h' for usage.\n"},
		{"bad duration", []string{"recv", "--timeout", "soon"}, exitUsage, "", `imctl recv: --timeout: invalid value "soon": want a duration with a unit`},
		{"bad count", []string{"recv", "--count", "x"}, exitUsage, "", `--count: invalid value "x": want an integer`},
		{"missing value", []string{"send", "--to"}, exitUsage, "", "--to needs a value"},
		{"send without target", []string{"send", "--text", "hi"}, exitUsage, "", "exactly one of --to and --group"},
		{"send with both targets", []string{"send", "--to", "a", "--group", "g", "hi"}, exitUsage, "", "exactly one"},
		{"send without text", []string{"send", "--to", "bob"}, exitUsage, "", "no message text"},
		{"send without credentials", []string{"send", "--to", "bob", "hi"}, exitUsage, "", "--user and --password"},
		{"password and token", []string{"send", "--to", "b", "--user", "a", "--password", "p", "--token", "t", "hi"}, exitUsage, "", "not both"},
		{"bad serializer", []string{"send", "--to", "b", "--user", "a", "--password", "p", "--serializer", "xml", "hi"}, exitUsage, "", "--serializer"},
		{"register without password", []string{"register", "--user", "a"}, exitUsage, "", "--user and --password"},
		{"recv negative count", []string{"recv", "--count", "-1"}, exitUsage, "", "--count"},
		{"recv bad after", []string{"recv", "--after", "-2"}, exitUsage, "", "--after must be a seq >= 0"},
		{"recv two starts", []string{"recv", "--after", "3", "--from-start"}, exitUsage, "", "at most one of --after, --from-start and --unread"},
		{"recv unread and start", []string{"recv", "--unread", "--from-start"}, exitUsage, "", "at most one of"},
		{"chat two starts", []string{"chat", "--after", "3", "--from-start"}, exitUsage, "", "at most one of"},
		{"register has no --token", []string{"register", "--user", "a", "--token", "t"}, exitUsage, "", "unknown flag --token"},
		{"send has no --device", []string{"send", "--to", "b", "--device", "d", "hi"}, exitUsage, "", "unknown flag --device"},
		{"group without action", []string{"group"}, exitUsage, "", "missing action"},
		{"group bad action", []string{"group", "explode"}, exitUsage, "", "unknown action"},
		{"group join without id", []string{"group", "join"}, exitUsage, "", "--group is required"},
		{"presence without users", []string{"presence"}, exitUsage, "", "no users"},
		{"token without secret", []string{"token", "--user", "a"}, exitUsage, "", "--secret"},
		{"token without user", []string{"token", "--secret", "s"}, exitUsage, "", "--user"},
		{"token bad user", []string{"token", "--secret", "s", "--user", "al ice"}, exitUsage, "", "want 1..64"},
		{"token bad ttl", []string{"token", "--secret", "s", "--user", "a", "--ttl", "-1h"}, exitUsage, "", "--ttl"},
		{"kick without user", []string{"kick"}, exitUsage, "", "--user"},
		{"sysmsg without to", []string{"sysmsg", "--text", "x"}, exitUsage, "", "--to and --text"},
		{"broadcast without text", []string{"broadcast"}, exitUsage, "", "--text"},
		{"bad admin url", []string{"online", "--user", "a", "--admin", "ftp://x"}, exitUsage, "", "--admin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := invoke(t, nil, "", tt.args...)
			if r.code != tt.code || !strings.Contains(r.stdout, tt.stdout) || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", r.code, tt.code, r.stdout, r.stderr)
			}
			// A usage error is one message and a pointer to help, never the
			// flag list.
			if r.code == exitUsage && len(tt.args) > 0 && lookup(tt.args[0]) != nil && (strings.Count(r.stderr, "\n") != 2 || r.stdout != "") {
				t.Fatalf("usage error of %d lines:\n%s\nstdout:\n%s", strings.Count(r.stderr, "\n"), r.stderr, r.stdout)
			}
		})
	}
}

func TestHelpDoesNotLeakSecrets(t *testing.T) {
	r := invoke(t, map[string]string{"IM_PASSWORD": "hunter22", "IM_TOKEN": "tok123"}, "", "send", "-h")
	if r.code != exitOK || !strings.Contains(r.stdout, "--password") || strings.Contains(r.stdout, "hunter22") || strings.Contains(r.stdout, "tok123") {
		t.Fatalf("help shows a secret:\n%s", r.stdout)
	}
}

// TestHelpSpelling: every subcommand's help spells flags --name and lists
// only flags that apply to it.
func TestHelpSpelling(t *testing.T) {
	for _, c := range commands {
		args := []string{c.name, "-h"}
		if c.name == "group" {
			args = []string{"group", "create", "-h"}
		}
		r := invoke(t, nil, "", args...)
		if r.code != exitOK || !strings.Contains(r.stdout, "\n  --json\n") {
			t.Fatalf("%s -h: %+v", c.name, r)
		}
		if regexp.MustCompile(`(?m)^\s+-[a-z]`).MatchString(r.stdout) {
			t.Errorf("%s -h spells a flag -name:\n%s", c.name, r.stdout)
		}
		wantDevice := c.name == "recv" || c.name == "chat" || c.name == "kick" // kick: the device to end
		if strings.Contains(r.stdout, "--device") != wantDevice {
			t.Errorf("%s -h: --device listed: %v", c.name, !wantDevice)
		}
		if c.name == "register" && strings.Contains(r.stdout, "--token") {
			t.Errorf("register -h lists --token")
		}
	}
	r := invoke(t, nil, "", "help")
	if regexp.MustCompile(`(?m)(^|\s)-[a-z]{2,}`).MatchString(r.stdout) {
		t.Errorf("imctl help spells a flag -name:\n%s", r.stdout)
	}
}

func TestConnFlagsFromEnvironment(t *testing.T) {
	e := newEnv(func(k string) string {
		return map[string]string{"IM_SERVER": "10.0.0.1:9", "IM_USER": "alice", "IM_PASSWORD": "pw-from-env"}[k]
	}, nil, io.Discard, io.Discard)
	f := newFlags(e, "x", "")
	cf := f.connection(time.Second, withToken)
	if err := f.parse([]string{"--user", "bob", "--serializer", "json"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := cf.config(e, true)
	if err != nil {
		t.Fatal(err)
	}
	// The flag wins over the environment; unset flags fall back to it.
	if cfg.Addr != "10.0.0.1:9" || cfg.User != "bob" || cfg.Password != "pw-from-env" || cfg.Serializer != codec.JSON || cfg.Token != "" {
		t.Fatalf("config %+v", cfg)
	}
	e2 := newEnv(func(k string) string { return map[string]string{"IM_TOKEN": "jwt"}[k] }, nil, io.Discard, io.Discard)
	f2 := newFlags(e2, "x", "")
	cf2 := f2.connection(time.Second, withToken)
	if err := f2.parse(nil); err != nil {
		t.Fatal(err)
	}
	if cfg, err := cf2.config(e2, true); err != nil || cfg.Token != "jwt" || cfg.Addr != "127.0.0.1:9090" || cfg.Serializer != codec.Protobuf {
		t.Fatalf("token config %+v %v", cfg, err)
	}
}

func TestTokenVerifies(t *testing.T) {
	for _, viaEnv := range []bool{false, true} {
		args := []string{"token", "--user", "alice", "--ttl", "2h"}
		environ := map[string]string{}
		if viaEnv {
			environ["IM_JWT_SECRET"] = "s3cret"
		} else {
			args = append(args, "--secret", "s3cret")
		}
		r := invoke(t, environ, "", args...)
		if r.code != exitOK {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		raw := strings.TrimSpace(r.stdout)
		tok, err := jwt.Parse(raw, func(*jwt.Token) (any, error) { return []byte("s3cret"), nil },
			jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired())
		if err != nil || !tok.Valid {
			t.Fatalf("token %q does not verify: %v", raw, err)
		}
		sub, _ := tok.Claims.GetSubject()
		exp, _ := tok.Claims.GetExpirationTime()
		if sub != "alice" || time.Until(exp.Time) < 119*time.Minute || time.Until(exp.Time) > 2*time.Hour {
			t.Fatalf("sub %q exp %v", sub, exp)
		}
		if _, err := jwt.Parse(raw, func(*jwt.Token) (any, error) { return []byte("wrong"), nil }); err == nil {
			t.Fatal("token verifies with the wrong secret")
		}
	}
	r := invoke(t, nil, "", "token", "--user", "bob", "--secret", "k", "--json")
	var out struct {
		OK        bool   `json:"ok"`
		Token     string `json:"token"`
		User      string `json:"user"`
		ExpiresAt int64  `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || !out.OK || out.User != "bob" || out.Token == "" || out.ExpiresAt <= time.Now().Unix() {
		t.Fatalf("json %q: %+v %v", r.stdout, out, err)
	}
}

func TestJSONMessageLine(t *testing.T) {
	var buf bytes.Buffer
	writeJSON(&buf, toJSONMessage(&pb.Message{Seq: 7, MsgId: 1152921504606846977, From: "alice", To: "bob", ClientMsgId: "c1", Body: []byte("hi \"bob\""), Time: 1700000000000}))
	want := `{"seq":7,"msg_id":1152921504606846977,"from":"alice","to":"bob","client_msg_id":"c1","kind":0,"body":"hi \"bob\"","time":1700000000000}` + "\n"
	if buf.String() != want {
		t.Fatalf("got  %s\nwant %s", buf.String(), want)
	}
	buf.Reset()
	writeJSON(&buf, toJSONMessage(&pb.Message{Seq: 8, To: "g1", GroupId: "g1", Kind: 2, Body: []byte{0xff, 0x00}}))
	want = `{"seq":8,"msg_id":0,"from":"","to":"g1","group_id":"g1","kind":2,"body_b64":"/wA=","time":0}` + "\n"
	if buf.String() != want {
		t.Fatalf("got  %s\nwant %s", buf.String(), want)
	}
}

func TestChatFormatting(t *testing.T) {
	ts := time.Date(2024, 5, 1, 12, 3, 1, 0, time.UTC).UnixMilli()
	tests := []struct {
		m    *pb.Message
		want string
	}{
		{&pb.Message{From: "alice", To: "bob", Body: []byte("hello"), Time: ts}, "[12:03:01] alice: hello"},
		{&pb.Message{From: "alice", To: "g1", GroupId: "g1", Body: []byte("hi all"), Time: ts}, "[12:03:01] alice #g1: hi all"},
		{&pb.Message{From: "bob", To: "alice", Body: []byte("mine"), Time: ts}, "[12:03:01] me -> alice: mine"},
		{&pb.Message{From: "bob", To: "g1", GroupId: "g1", Body: []byte("x"), Time: ts}, "[12:03:01] me #g1: x"},
		{&pb.Message{To: "bob", Body: []byte("maintenance"), Time: ts}, "[12:03:01] system: maintenance"},
		{&pb.Message{From: "alice", Body: []byte("a\x1b[2Jb\n"), Time: ts}, "[12:03:01] alice: a?[2Jb?"},
		{&pb.Message{From: "alice", Body: []byte{0xff, 0xfe}, Time: ts}, "[12:03:01] alice: <2 bytes of binary>"},
	}
	for _, tt := range tests {
		if got := chatLine(tt.m, "bob", time.UTC); got != tt.want {
			t.Errorf("chatLine = %q, want %q", got, tt.want)
		}
	}
}

func TestParseChatLine(t *testing.T) {
	bob := chatTarget{name: "bob"}
	g1 := chatTarget{name: "g1", group: true}
	tests := []struct {
		line    string
		cur     chatTarget
		action  chatAction
		dest    chatTarget
		text    string
		wantErr bool
	}{
		{"@bob hello there", chatTarget{}, chatSend, bob, "hello there", false},
		{"#g1  hi ", bob, chatGroup, g1, "hi", false},
		{"again", bob, chatSend, bob, "again", false},
		{"again", g1, chatGroup, g1, "again", false},
		{"orphan", chatTarget{}, chatNone, chatTarget{}, "", true},
		{"@", bob, chatNone, bob, "", true},
		{"@carol", bob, chatNone, chatTarget{name: "carol"}, "", true},
		{"   ", bob, chatNone, bob, "", false},
		{"/quit", bob, chatQuit, bob, "", false},
		{"/help", bob, chatHelpAction, bob, "", false},
		{"/nope", bob, chatNone, bob, "", true},
	}
	for _, tt := range tests {
		action, dest, text, err := parseChatLine(tt.line, tt.cur)
		if action != tt.action || dest != tt.dest || text != tt.text || (err != nil) != tt.wantErr {
			t.Errorf("parseChatLine(%q) = %v %+v %q %v", tt.line, action, dest, text, err)
		}
	}
}

func TestAdminCommands(t *testing.T) {
	type call struct{ method, path, query, body string }
	calls := make(chan call, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		calls <- call{r.Method, r.URL.Path, r.URL.RawQuery, string(b)}
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/admin/online":
			if r.URL.Query().Get("user") == "nobody" {
				w.WriteHeader(http.StatusNotFound)
				io.WriteString(w, `{"error":"no such user","user":"nobody"}`)
				return
			}
			io.WriteString(w, `{"user":"alice","online":true,"devices":["phone","laptop"]}`)
		case "/admin/kick":
			io.WriteString(w, `{"kicked":2}`)
		case "/admin/broadcast":
			io.WriteString(w, `{"delivered":5,"nodes":{"n2":3,"n1":2},"failed":{"n3":"unreachable"}}`)
		case "/admin/message":
			io.WriteString(w, `{"msg_id":1152921504606846977,"seq":3}`)
		default:
			http.Error(w, "no such endpoint", http.StatusNotFound)
		}
	}))
	defer srv.Close()
	env := map[string]string{"IM_ADMIN": srv.URL}
	tests := []struct {
		args  []string
		call  call
		human string
		json  string
	}{
		{[]string{"online", "--user", "alice"}, call{"GET", "/admin/online", "user=alice", ""},
			"alice online (phone, laptop)", `{"devices":["phone","laptop"],"online":true,"user":"alice"}`},
		{[]string{"kick", "--user", "alice", "--device", "phone"}, call{"POST", "/admin/kick", "device=phone&user=alice", ""},
			"kicked 2 session(s) of alice", `{"kicked":2}`},
		{[]string{"broadcast", "--text", "hello all"}, call{"POST", "/admin/broadcast", "", `{"text":"hello all"}`},
			"notice delivered to 5 connection(s) (n1 2, n2 3); n3 not reached: unreachable", `{"delivered":5,"failed":{"n3":"unreachable"},"nodes":{"n1":2,"n2":3}}`},
		{[]string{"sysmsg", "--to", "bob", "welcome", "aboard"}, call{"POST", "/admin/message", "", `{"text":"welcome aboard","to":"bob"}`},
			"stored msg_id=1152921504606846977 seq=3 in bob's inbox", `{"msg_id":1152921504606846977,"seq":3}`},
	}
	for _, tt := range tests {
		r := invoke(t, env, "", tt.args...)
		if r.code != exitOK || strings.TrimSpace(r.stdout) != tt.human {
			t.Fatalf("%v: exit %d stdout %q stderr %q", tt.args, r.code, r.stdout, r.stderr)
		}
		if got := <-calls; got != tt.call {
			t.Fatalf("%v: server saw %+v, want %+v", tt.args, got, tt.call)
		}
		r = invoke(t, env, "", append(tt.args, "--json")...)
		<-calls
		if r.code != exitOK || strings.TrimSpace(r.stdout) != tt.json {
			t.Fatalf("%v --json: exit %d stdout %q", tt.args, r.code, r.stdout)
		}
	}
	// An unknown user is an error.
	r := invoke(t, env, "", "online", "--user", "nobody")
	<-calls
	if r.code != exitFail || r.stderr != "imctl online: no such user: nobody\n" {
		t.Fatalf("online of an unknown user: %+v", r)
	}
	// --admin overrides the environment; an HTTP error is exit 1.
	r = invoke(t, env, "", "online", "--user", "x", "--admin", srv.URL+"/nope")
	if r.code != exitFail || !strings.Contains(r.stderr, "404") || !strings.Contains(r.stderr, "no such endpoint") {
		t.Fatalf("exit %d stderr %q", r.code, r.stderr)
	}
}

// TestAgainstFakeServer runs the client subcommands end to end against
// the in-memory server of client/clienttest.
func TestAgainstFakeServer(t *testing.T) {
	s := clienttest.Start(t)
	s.AddUser("bob", "secret123")
	env := map[string]string{"IM_SERVER": s.Addr, "IM_PASSWORD": "secret123", "XDG_CONFIG_HOME": t.TempDir()}

	r := invoke(t, env, "", "register", "--user", "alice", "--serializer", "json")
	if r.code != exitOK || r.stdout != "registered alice\n" {
		t.Fatalf("register: %+v", r)
	}
	r = invoke(t, env, "", "register", "--user", "alice", "--json")
	if r.code != exitFail || !strings.Contains(r.stderr, "USER_EXISTS") {
		t.Fatalf("register again: %+v", r)
	}
	var jerr struct {
		OK       bool   `json:"ok"`
		Code     int    `json:"code"`
		CodeName string `json:"code_name"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &jerr); err != nil || jerr.OK || jerr.Code != 12 || jerr.CodeName != "USER_EXISTS" {
		t.Fatalf("json error %q: %+v %v", r.stdout, jerr, err)
	}

	r = invoke(t, env, "", "send", "--user", "alice", "--to", "bob", "--json", "--", "hello", "bob")
	var ack struct {
		OK    bool   `json:"ok"`
		Seq   uint64 `json:"sender_seq"`
		MsgID uint64 `json:"msg_id"`
		ID    string `json:"client_msg_id"`
		To    string `json:"to"`
	}
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &ack) != nil || !ack.OK || ack.Seq != 1 || ack.ID == "" || ack.To != "bob" {
		t.Fatalf("send: %+v", r)
	}
	// Same client_msg_id again: stored once, reported as a duplicate.
	r = invoke(t, env, "", "send", "--user", "alice", "--to", "bob", "--id", ack.ID, "--text", "hello bob")
	if r.code != exitOK || r.stdout != "sent to bob: msg_id="+strconv.FormatUint(ack.MsgID, 10)+" (bob's inbox); your copy is seq 1 in your inbox; "+
		"already stored by an earlier send with client_msg_id "+ack.ID+" (not stored twice)\n" {
		t.Fatalf("resend: %+v", r)
	}
	r = invoke(t, env, "", "send", "--user", "alice", "--to", "nobody", "hi")
	if r.code != exitFail || !strings.Contains(r.stderr, "UNKNOWN_RECIPIENT") {
		t.Fatalf("send to unknown: %+v", r)
	}
	r = invoke(t, env, "", "send", "--user", "alice", "--password", "wrong-pw", "--to", "bob", "hi")
	if r.code != exitFail || !strings.Contains(r.stderr, "AUTH_FAILED") {
		t.Fatalf("bad password: %+v", r)
	}

	r = invoke(t, env, "", "group", "create", "--user", "alice", "--name", "team", "--members", "bob", "--json")
	var g struct {
		GroupID string   `json:"group_id"`
		Members []string `json:"members"`
	}
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &g) != nil || g.GroupID == "" || len(g.Members) != 2 {
		t.Fatalf("group create: %+v", r)
	}
	r = invoke(t, env, "", "group", "members", "--user", "bob", "--group", g.GroupID)
	if r.code != exitOK || !strings.Contains(r.stdout, "members: alice, bob") {
		t.Fatalf("group members: %+v", r)
	}
	r = invoke(t, env, "", "send", "--user", "alice", "--group", g.GroupID, "--text", "team msg")
	if r.code != exitOK {
		t.Fatalf("group send: %+v", r)
	}

	// Chat: lines from stdin; end of input ends the chat.
	r = invoke(t, env, "@bob from chat\n#"+g.GroupID+" to the team\nand again\n/quit\n", "chat", "--user", "alice", "--after", "100")
	if r.code != exitOK || !strings.Contains(r.stderr, "logged in as alice") {
		t.Fatalf("chat: %+v", r)
	}
	inbox := s.Inbox("bob")
	if len(inbox) != 5 || string(inbox[3].GetBody()) != "to the team" || string(inbox[4].GetBody()) != "and again" || inbox[4].GetGroupId() != g.GroupID {
		t.Fatalf("bob's inbox after chat: %v", inbox)
	}

	// recv: whole inbox as JSON lines.
	r = invoke(t, env, "", "recv", "--user", "bob", "--from-start", "--count", "5", "--serializer", "msgpack")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != exitOK || len(lines) != 5 {
		t.Fatalf("recv: %+v", r)
	}
	var first jsonMessage
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil || first.Seq != 1 || first.From != "alice" || first.Body != "hello bob" {
		t.Fatalf("first line %q: %+v %v", lines[0], first, err)
	}
	// --count not reached before --timeout: exit 1.
	r = invoke(t, env, "", "recv", "--user", "bob", "--after", "0", "--count", "9", "--timeout", "300ms")
	if r.code != exitFail || strings.Count(r.stdout, "\n") != 5 || !strings.Contains(r.stderr, "received 5 of 9") {
		t.Fatalf("recv timeout: %+v", r)
	}
	// No --count: runs until --timeout and exits 0. By default only new
	// messages: none arrive.
	r = invoke(t, env, "", "recv", "--user", "bob", "--device", "d1", "--timeout", "1s")
	if r.code != exitOK || r.stdout != "" {
		t.Fatalf("recv of new messages: %+v", r)
	}
	// --unread: what this device has not received yet, then the cursor
	// has moved and the next run of d2 has nothing unread.
	r = invoke(t, env, "", "recv", "--user", "bob", "--device", "d2", "--unread", "--timeout", "1s")
	if r.code != exitOK || strings.Count(r.stdout, "\n") != 5 {
		t.Fatalf("recv --unread: %+v", r)
	}
	r = invoke(t, env, "", "recv", "--user", "bob", "--device", "d2", "--unread", "--timeout", "1s")
	if r.code != exitOK || r.stdout != "" {
		t.Fatalf("recv --unread again: %+v", r)
	}

	r = invoke(t, env, "", "presence", "--user", "alice", "bob", "--json")
	var pres struct {
		OK    bool `json:"ok"`
		Users []struct {
			User    string   `json:"user"`
			Online  bool     `json:"online"`
			Devices []string `json:"devices"`
		} `json:"users"`
	}
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &pres) != nil || !pres.OK || len(pres.Users) != 1 ||
		pres.Users[0].User != "bob" || pres.Users[0].Online || pres.Users[0].Devices == nil {
		t.Fatalf("presence: %+v", r)
	}
	r = invoke(t, env, "", "presence", "--user", "alice", "--users", "alice")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "alice online (") {
		t.Fatalf("presence self: %+v", r)
	}
	// An unknown user is an error, not "offline".
	r = invoke(t, env, "", "presence", "--user", "alice", "bob", "nobody")
	if r.code != exitFail || r.stdout != "bob offline\n" || r.stderr != "imctl presence: no such user: nobody\n" {
		t.Fatalf("presence of an unknown user: %+v", r)
	}
	r = invoke(t, env, "", "presence", "--user", "alice", "nobody", "--json")
	if r.code != exitFail || strings.TrimSpace(r.stdout) != `{"error":"no such user: nobody","ok":false,"users":[{"devices":[],"online":false,"unknown":true,"user":"nobody"}]}` {
		t.Fatalf("presence --json of an unknown user: %+v", r)
	}
}

func TestChatShowsIncoming(t *testing.T) {
	s := clienttest.Start(t)
	s.AddUser("alice", "secret123")
	s.AddUser("bob", "secret123")
	s.Deliver("alice", "bob", []byte("history"))
	stdinR, stdinW := io.Pipe()
	var out, errb testutil.Buffer
	e := newEnv(func(k string) string { return map[string]string{"IM_SERVER": s.Addr}[k] }, stdinR, &out, &errb)
	e.loc = time.UTC
	done := make(chan int, 1)
	go func() {
		done <- run(context.Background(), []string{"chat", "--user", "bob", "--password", "secret123", "--after", "0", "--to", "alice"}, e)
	}()
	waitOut := func(what string) {
		t.Helper()
		testutil.Eventually(t, 5*time.Second, fmt.Sprintf("%q in the output", what), func() error {
			if !strings.Contains(out.String(), what) {
				return fmt.Errorf("output:\n%s\nstderr:\n%s", out.String(), errb.String())
			}
			return nil
		})
	}
	waitOut("alice: history")
	testutil.Until(t, 5*time.Second, "bob online", func() bool { return s.Online("bob") == 1 })
	s.Deliver("alice", "bob", []byte("live one"))
	waitOut("alice: live one")
	s.Notice("server restarts soon")
	waitOut("NOTICE: server restarts soon")
	io.WriteString(stdinW, "reply to alice\n")
	waitOut("me -> alice: reply to alice") // our own message, echoed from the ack
	io.WriteString(stdinW, "/nonsense\n")
	stdinW.Close()
	if code := <-done; code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "unknown command") {
		t.Fatalf("stderr %s", errb.String())
	}
	if in := s.Inbox("alice"); len(in) != 1 || string(in[0].GetBody()) != "reply to alice" {
		t.Fatalf("alice's inbox %v", in)
	}
}

// TestAdminToken: --admin-token (or IM_ADMIN_TOKEN) is sent as a bearer
// token; without it a protected node's 401 is reported.
func TestAdminToken(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer s3cret-admin-token" {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"a valid admin token is required"}`)
			return
		}
		io.WriteString(w, `{"kicked":1}`)
	}))
	defer srv.Close()
	env := map[string]string{"IM_ADMIN": srv.URL}
	r := invoke(t, env, "", "kick", "--user", "alice")
	if r.code != exitFail || !strings.Contains(r.stderr, "401") || !strings.Contains(r.stderr, "admin token") {
		t.Fatalf("without a token: %+v", r)
	}
	r = invoke(t, env, "", "kick", "--user", "alice", "--admin-token", "s3cret-admin-token")
	if r.code != exitOK || strings.TrimSpace(r.stdout) != "kicked 1 session(s) of alice" {
		t.Fatalf("--admin-token: %+v", r)
	}
	env["IM_ADMIN_TOKEN"] = "s3cret-admin-token"
	if r = invoke(t, env, "", "kick", "--user", "alice"); r.code != exitOK {
		t.Fatalf("IM_ADMIN_TOKEN: %+v", r)
	}
}
