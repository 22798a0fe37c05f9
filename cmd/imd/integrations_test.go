package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/imgn/imgn/events"
	"github.com/imgn/imgn/internal/testsvc"
)

func TestIntegrationOptions(t *testing.T) {
	key := "0123456789abcdef0123"
	o, err := parseOptions([]string{"--api-key", key, "--api-key", "fedcba9876543210fedc,aaaaaaaaaaaaaaaaaaaa", "--events", "redis",
		"--events-redis", "r1:6379,r2:6379", "--webhook-url", "https://app.example/push", "--webhook-secret", "s"}, envOf(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.integ.apiKeys, []string{key, "fedcba9876543210fedc", "aaaaaaaaaaaaaaaaaaaa"}) || o.integ.eventsRedis != "r1:6379,r2:6379" {
		t.Fatalf("%+v", o.integ)
	}
	// Cluster mode: the event stream defaults to the cluster's Redis.
	o, err = parseOptions([]string{"--zk", "z:2181", "--redis", "r:6379", "--mongo-uri", "mongodb://m", "--events", "redis", "--events-recover-nodes", "n3, n4"}, envOf(nil), io.Discard)
	if err != nil || o.integ.eventsRedis != "r:6379" || !slices.Equal(o.integ.eventsRecover, []string{"n3", "n4"}) {
		t.Fatalf("cluster default: %+v %v", o, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--api-key", "short"}, "--api-key: API key 1 is 5 characters long"},
		{[]string{"--events", "kafka"}, "--events must be redis or empty"},
		{[]string{"--events", "redis"}, "--events redis needs --events-redis"},
		{[]string{"--events", "redis", "--events-redis", "r:1", "--events-maxlen", "0"}, "--events-maxlen must be positive"},
		{[]string{"--events-recover-nodes", "n3"}, "--events-recover-nodes needs --events redis"},
		{[]string{"--webhook-url", "https://x"}, "--webhook-url needs --webhook-secret"},
		{[]string{"--webhook-url", "x.example", "--webhook-secret", "s"}, "--webhook-url must be an http:// or https:// URL"},
		{[]string{"--webhook-attempts", "0"}, "must be positive"},
	} {
		r := invoke(nil, tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	r := invoke(map[string]string{"IM_API_KEY": key, "IM_WEBHOOK_SECRET": "hook-secret-value"}, "config", "check")
	if r.code != 0 || strings.Contains(r.stdout, key) || strings.Contains(r.stdout, "hook-secret-value") ||
		!strings.Contains(r.stdout, `api-key = "REDACTED"  # env IM_API_KEY`) {
		t.Fatalf("config check shows a secret or lacks the key:\n%s", r.stdout)
	}
}

// streamEvents reads the whole stream.
func streamEvents(t *testing.T, c rueidis.Client, stream string) []events.Event {
	t.Helper()
	entries, err := c.Do(context.Background(), c.B().Xrange().Key(stream).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]events.Event, len(entries))
	for i, e := range entries {
		if err := json.Unmarshal([]byte(e.FieldValues["data"]), &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestEventsSurviveSIGKILL runs a real imd on the embedded store with the
// event stream, under open-loop load. Redis is paused (SIGSTOP), so
// acknowledged messages pile up in the publisher's queue, and imd is killed
// with SIGKILL with sends in flight; Redis resumes and imd restarts on the
// same data. Then, reading the stream the way docs/events.md tells a
// consumer to (drop the seqs of an inbox it has seen), every inbox's
// events are exactly its stored messages, seq 1 to the last, in order:
// the replay from the store covered the window between ack and publish.
func TestEventsSurviveSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs imd")
	}
	rs := testsvc.StartRedis(t)
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rs.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	bin := buildImd(t)
	data, addr := t.TempDir(), freePort(t)
	// A short replay margin, so that the restart replays the last moments
	// only: what came before must have reached the stream live.
	args := []string{"--events", "redis", "--events-redis", rs.Addr, "--node-id", "evnode", "--events-replay-margin", "1s"}
	l := &ledger{msgs: map[string]*sentMsg{}}
	recipients := []string{"sink0", "sink1"}
	senders := []string{"s0", "s1", "s2", "s3"}
	p := startImd(t, bin, data, addr, args...)
	for _, r := range recipients {
		c, err := connectLogin(addr, r)
		if err != nil {
			t.Fatal(err)
		}
		c.nc.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, s := range senders {
		wg.Go(func() { openLoopSender(ctx, t, addr, s, recipients, 4*time.Millisecond, l) })
	}
	time.Sleep(2500 * time.Millisecond) // published live, well before the margin
	if err := rs.Pause(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // acked, stuck in the queue
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	cancel()
	wg.Wait()
	if err := rs.Resume(); err != nil {
		t.Fatal(err)
	}
	acked := 0
	for _, m := range l.msgs {
		if m.acked {
			acked++
		}
	}
	before := len(streamEvents(t, rc, events.DefaultStream))
	t.Logf("%d messages sent, %d acked; %d events in the stream at the kill", len(l.msgs), acked, before)

	startImd(t, bin, data, addr, args...)
	resendUnacked(t, addr, l)
	inboxes := map[string][]string{} // user -> msg ids by seq
	for _, u := range append(slices.Clone(senders), recipients...) {
		for _, m := range readAll(t, addr, u) {
			if m.Seq != uint64(len(inboxes[u])+1) {
				t.Fatalf("%s: seq %d at position %d", u, m.Seq, len(inboxes[u]))
			}
			inboxes[u] = append(inboxes[u], strconv.FormatUint(m.MsgId, 10))
		}
	}
	stored := 0
	for _, ids := range inboxes {
		stored += len(ids)
	}
	// The consumer's rule: per inbox, drop a seq at or below the highest
	// seen; a seq above highest+1 would be a lost event.
	var got map[string][]string
	var replayed int
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, replayed = map[string][]string{}, 0
		evs := streamEvents(t, rc, events.DefaultStream)
		gap := ""
		for _, e := range evs {
			if e.Type != events.TypeMessage {
				continue
			}
			if e.Replayed {
				replayed++
			}
			for _, in := range e.Inboxes {
				have := uint64(len(got[in.User]))
				switch {
				case in.Seq <= have:
				case in.Seq == have+1:
					got[in.User] = append(got[in.User], e.MsgID)
				default:
					gap = fmt.Sprintf("%s: event for seq %d after %d", in.User, in.Seq, have)
				}
			}
		}
		n := 0
		for _, ids := range got {
			n += len(ids)
		}
		if n == stored && gap == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restart: %d inbox entries have an event, %d are stored; %s", n, stored, gap)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for u, ids := range inboxes {
		if !slices.Equal(got[u], ids) {
			t.Fatalf("%s: events name messages %v, the inbox holds %v", u, got[u], ids)
		}
	}
	if replayed == 0 || replayed >= stored/2 {
		t.Fatalf("%d events replayed of %d stored entries: want the last moments only", replayed, stored)
	}
	t.Logf("every one of %d inbox entries has its event in order; %d events replayed", stored, replayed)
}

// TestServerAPIAndWebhookInImd: imd with --api-key serves the API on
// --api-listen (refusing other keys), and with --webhook-url posts a
// signed request for a message to an offline user.
func TestServerAPIAndWebhookInImd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs imd")
	}
	type hook struct {
		sig  string
		body []byte
	}
	hooks := make(chan hook, 10)
	ep := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		hooks <- hook{r.Header.Get("X-Imgn-Signature"), b}
	})}
	epAddr := freePort(t)
	ln, err := listen(epAddr)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = ep.Serve(ln) }()
	defer ep.Close()
	key, apiAddr := "integration-test-key-0123", freePort(t)
	startImd(t, buildImd(t), t.TempDir(), freePort(t), "--api-key", key, "--api-listen", apiAddr,
		"--webhook-url", "http://"+epAddr+"/push", "--webhook-secret", "hooksecret")
	call := func(key, method, path, body string) (int, map[string]any) {
		req, _ := http.NewRequest(method, "http://"+apiAddr+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		var resp *http.Response
		var err error
		for range 100 { // the API listener comes up right after the client one
			if resp, err = http.DefaultClient.Do(req); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
			req, _ = http.NewRequest(method, "http://"+apiAddr+path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+key)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if status, _ := call("wrong-key-0123456789abc", "GET", "/v1/presence?user=a", ""); status != 401 {
		t.Fatalf("wrong key: %d", status)
	}
	for _, u := range []string{"alice", "bob"} {
		if status, out := call(key, "POST", "/v1/users", `{"user":"`+u+`"}`); status != 201 {
			t.Fatalf("create %s: %d %v", u, status, out)
		}
	}
	status, out := call(key, "POST", "/v1/messages", `{"from":"alice","to":"bob","text":"ping"}`)
	if status != 200 {
		t.Fatalf("send: %d %v", status, out)
	}
	select {
	case h := <-hooks:
		var p struct {
			MsgID      string `json:"msg_id"`
			Recipients []struct{ User string }
		}
		if err := json.Unmarshal(h.body, &p); err != nil || p.MsgID != out["msg_id"] || len(p.Recipients) != 1 || p.Recipients[0].User != "bob" ||
			!strings.HasPrefix(h.sig, "t=") {
			t.Fatalf("webhook %s (%v), sig %q", h.body, err, h.sig)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no webhook for a message to an offline user")
	}
}

func listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
