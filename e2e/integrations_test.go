package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/events"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/webhook"
)

const apiKey = "e2e-api-key-0123456789abcdef"

// apiCall sends an authenticated server-API request to addr.
func apiCall(t *testing.T, addr, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+addr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestIntegrationsInACluster: two nodes with the server API, the event
// stream and the webhook. Sends through either node's API are stored by
// the inbox owners; each owner publishes the events of its inboxes, in seq
// order, and only the recipient's owner posts the webhook, once per
// message; chat reads and writes (read count and delete-for-me included)
// answer through either node; a kick through one node ends a session on
// the other; presence is cluster-wide.
func TestIntegrationsInACluster(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster")
	}
	type hook struct {
		node       string
		msgID      string
		recipients []string
	}
	var mu sync.Mutex
	var hooks []hook
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify([]byte("hook-secret"), r.Header.Get(webhook.HeaderSignature), body, time.Now(), time.Minute); err != nil {
			t.Errorf("webhook signature: %v", err)
		}
		var p webhook.Payload
		_ = json.Unmarshal(body, &p)
		h := hook{node: p.Node, msgID: p.MsgID}
		for _, r := range p.Recipients {
			h.recipients = append(h.recipients, r.User)
		}
		mu.Lock()
		hooks = append(hooks, h)
		mu.Unlock()
	})}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()

	c := newCluster(t, "direct")
	apis := map[string]string{}
	var nodes []*node
	for _, id := range []string{"n1", "n2"} {
		apis[id] = freeAddr(t)
		nodes = append(nodes, c.addNode(id, "--api-key", apiKey, "--api-listen", apis[id], "--events", "redis",
			"--webhook-url", "http://"+ln.Addr().String()+"/push", "--webhook-secret", "hook-secret"))
	}
	c.waitMembers(2, nodes...)
	// Users owned by each node.
	owned := map[string][]string{}
	for i := 0; len(owned["n1"]) < 2 || len(owned["n2"]) < 2; i++ {
		u := fmt.Sprint("u", i)
		if o := nodes[0].owner(u); len(owned[o]) < 2 {
			owned[o] = append(owned[o], u)
			if status, out := apiCall(t, apis["n1"], "POST", "/v1/users", map[string]string{"user": u}); status != 201 {
				t.Fatalf("create %s: %d %v", u, status, out)
			}
		}
	}
	a, b := owned["n1"][0], owned["n2"][0] // a's inbox lives on n1, b's on n2
	const perNode = 20
	var msgIDs []string
	for i := range 2 * perNode {
		via := apis[[]string{"n1", "n2"}[i%2]] // any node answers
		status, out := apiCall(t, via, "POST", "/v1/messages", map[string]any{"from": a, "to": b, "client_msg_id": fmt.Sprint("m", i), "text": fmt.Sprint(i)})
		if status != 200 {
			t.Fatalf("send %d: %d %v", i, status, out)
		}
		msgIDs = append(msgIDs, out["msg_id"].(string))
	}

	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{c.redis.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	// Each inbox's events come from its owner, in seq order, one per message.
	testutil.Until(t, 20*time.Second, "every event in the stream", func() bool {
		entries, err := rc.Do(context.Background(), rc.B().Xrange().Key(events.DefaultStream).Start("-").End("+").Build()).AsXRange()
		if err != nil {
			return false
		}
		seqs := map[string][]uint64{}
		for _, en := range entries {
			var e events.Event
			if err := json.Unmarshal([]byte(en.FieldValues["data"]), &e); err != nil || e.Type != events.TypeMessage {
				continue
			}
			for _, in := range e.Inboxes {
				if want := nodes[0].owner(in.User); e.Node != want {
					t.Fatalf("the event of %s's inbox came from %s; its owner is %s", in.User, e.Node, want)
				}
				seqs[in.User] = append(seqs[in.User], in.Seq)
			}
		}
		for _, u := range []string{a, b} {
			if len(seqs[u]) != 2*perNode {
				return false
			}
			for i, s := range seqs[u] {
				if s != uint64(i+1) {
					t.Fatalf("%s's events: seqs %v", u, seqs[u])
				}
			}
		}
		return true
	})
	// One webhook per message, from b's owner, naming b.
	testutil.Until(t, 20*time.Second, "a webhook per message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(hooks) >= 2*perNode
	})
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show up
	mu.Lock()
	seen := map[string]bool{}
	for _, h := range hooks {
		if h.node != "n2" || len(h.recipients) != 1 || h.recipients[0] != b || seen[h.msgID] {
			t.Errorf("webhook %+v (seen before: %v)", h, seen[h.msgID])
		}
		seen[h.msgID] = true
	}
	mu.Unlock()
	for _, id := range msgIDs {
		if !seen[id] {
			t.Errorf("no webhook for message %s", id)
		}
	}

	// Chat through the API, any node answering from the shared store: a's
	// device is on n2; b reads through n1 and a's device gets the receipt
	// over the mesh; a recalls through n1 and the event reaches it too.
	acl := dialNode(t, a, "tablet", nodes[1].listen)
	status, out := apiCall(t, apis["n2"], "GET", "/v1/users/"+b+"/conversations", nil)
	convs, _ := out["conversations"].([]any)
	if status != 200 || len(convs) != 1 || fmt.Sprint(convs[0].(map[string]any)["conv"]) != a || convs[0].(map[string]any)["unread"] != float64(2*perNode) {
		t.Fatalf("b's conversations through n2: %d %v", status, out)
	}
	status, out = apiCall(t, apis["n1"], "GET", "/v1/users/"+b+"/conversations/"+a+"/history?limit=5", nil)
	if msgs, _ := out["messages"].([]any); status != 200 || len(msgs) != 5 || out["has_more"] != true || msgs[4].(map[string]any)["msg_id"] != msgIDs[2*perNode-1] {
		t.Fatalf("b's history through n1: %d %v", status, out)
	}
	if status, out := apiCall(t, apis["n1"], "POST", "/v1/users/"+b+"/conversations/"+a+"/read", nil); status != 200 || out["read_seq"] != float64(2*perNode) || out["moved"] != true {
		t.Fatalf("b reads through n1: %d %v", status, out)
	}
	waitChat(t, acl, func(e client.ChatEvent) bool {
		return e.Receipt != nil && e.Receipt.Peer == b && e.Receipt.User == b && e.Receipt.ReadSeq == 2*perNode
	})
	last := msgIDs[2*perNode-1]
	if status, out := apiCall(t, apis["n1"], "POST", "/v1/messages/"+last+"/recall", map[string]string{"user": a}); status != 200 || out["duplicate"] != false {
		t.Fatalf("a recalls through n1: %d %v", status, out)
	}
	testutil.Until(t, 10*time.Second, "the recall event on a's device", func() bool {
		for {
			select {
			case m := <-acl.Messages():
				if m.Event == 1 && fmt.Sprint(m.TargetMsgId) == last {
					return true
				}
			default:
				return false
			}
		}
	})
	status, out = apiCall(t, apis["n2"], "GET", "/v1/users/"+b+"/conversations/"+a+"/history?limit=1", nil)
	if msgs, _ := out["messages"].([]any); status != 200 || len(msgs) != 1 || msgs[0].(map[string]any)["recalled"] != true {
		t.Fatalf("b's history after the recall: %d %v", status, out)
	}

	// Read count and delete-for-me through the API. a's first message
	// (a's seq 1) was read by b; b's inbox lives on n2, and b deletes the
	// message through n1 (the delete event is appended by b's owner).
	if status, out := apiCall(t, apis["n1"], "GET", "/v1/users/"+a+"/conversations/"+b+"/read-count?seq=1", nil); status != 200 || out["read"] != float64(1) || out["members"] != float64(1) {
		t.Fatalf("read count through n1: %d %v", status, out)
	}
	status, out = apiCall(t, apis["n1"], "POST", "/v1/users/"+b+"/messages/"+msgIDs[0]+"/delete", nil)
	if status != 200 || out["duplicate"] != false || out["seq"] != float64(2*perNode+2) { // after the messages and the recall event
		t.Fatalf("b deletes through n1: %d %v", status, out)
	}
	status, out = apiCall(t, apis["n2"], "GET", "/v1/users/"+b+"/inbox?limit=1", nil)
	if msgs, _ := out["messages"].([]any); status != 200 || len(msgs) != 1 || msgs[0].(map[string]any)["deleted"] != true {
		t.Fatalf("b's inbox after the delete, through n2: %d %v", status, out)
	}
	status, out = apiCall(t, apis["n2"], "GET", "/v1/users/"+a+"/inbox?limit=1", nil)
	if msgs, _ := out["messages"].([]any); status != 200 || len(msgs) != 1 || msgs[0].(map[string]any)["deleted"] == true {
		t.Fatalf("a's inbox after b's delete: %d %v", status, out)
	}

	// Presence and kick across nodes: b connects to n1, n2's API sees and
	// ends the session.
	tok := func(u string) string {
		_, out := apiCall(t, apis["n2"], "POST", "/v1/users/"+u+"/tokens", nil)
		return out["token"].(string)
	}
	_ = tok(b)
	cl := dialNode(t, b, "phone", nodes[0].listen)
	testutil.Until(t, 10*time.Second, "b online through n2", func() bool {
		_, out := apiCall(t, apis["n2"], "GET", "/v1/presence?user="+b, nil)
		return strings.Contains(fmt.Sprint(out["users"]), "online:true")
	})
	if status, out := apiCall(t, apis["n2"], "POST", "/v1/users/"+b+"/kick", nil); status != 200 || out["kicked"] != float64(1) {
		t.Fatalf("kick through n2: %d %v", status, out)
	}
	select {
	case <-cl.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the session on n1 survived a kick through n2")
	}
}

// waitChat waits for a chat event on c that match accepts.
func waitChat(t *testing.T, c *client.Client, match func(client.ChatEvent) bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-c.ChatEvents():
			if match(e) {
				return
			}
		case <-timeout:
			t.Fatalf("%s got no such chat event", c.User())
		}
	}
}
