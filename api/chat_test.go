package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
	"github.com/imgn/imgn/persist/pebblestore"
)

// chatStores are the single-node stores that keep conversations.
var chatStores = []struct {
	name string
	open func(t *testing.T) persist.Store
}{
	{"memory", func(*testing.T) persist.Store { return memstore.New() }},
	{"embedded", func(t *testing.T) persist.Store {
		st, err := pebblestore.Open(pebblestore.Options{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}},
}

// online logs user in over the protocol (device dev) with a minted token.
func (f *fixture) online(user, dev string) *client.Client {
	f.t.Helper()
	tok := f.must(200, "POST", "/v1/users/"+user+"/tokens", nil)
	c, err := f.dial(user, client.Config{Token: tok["token"].(string), Device: dev, StartAtHead: true})
	if err != nil {
		f.t.Fatalf("%s logs in: %v", user, err)
	}
	return c
}

// sendText sends a text through the API and returns its message id.
func (f *fixture) sendText(from, to, cmid, text string) string {
	f.t.Helper()
	m := map[string]any{"from": from, "to": to, "client_msg_id": cmid, "text": text}
	if g := convOf(to); g.Group {
		delete(m, "to")
		m["group_id"] = g.ID
	}
	return f.must(200, "POST", "/v1/messages", m)["msg_id"].(string)
}

// list returns out[field] as a list of JSON objects.
func list(out map[string]any, field string) []map[string]any {
	raw, _ := out[field].([]any)
	l := make([]map[string]any, len(raw))
	for i, v := range raw {
		l[i], _ = v.(map[string]any)
	}
	return l
}

// seqs returns the seq of each message of l.
func seqs(l []map[string]any) []uint64 {
	s := make([]uint64, len(l))
	for i, m := range l {
		s[i] = uint64(m["seq"].(float64))
	}
	return s
}

// receipt waits for a RECEIPT on c matching want's peer, group and user.
func receipt(t *testing.T, c *client.Client, want *pb.Receipt) *pb.Receipt {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case e := <-c.ChatEvents():
			r := e.Receipt
			if r != nil && r.Peer == want.Peer && r.GroupId == want.GroupId && r.User == want.User {
				return r
			}
		case <-timeout:
			t.Fatalf("%s got no receipt like %v", c.User(), want)
		}
	}
}

// event waits for an event entry (kind) about message target on c.
func event(t *testing.T, c *client.Client, kind uint32, target uint64) *pb.Message {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m := <-c.Messages():
			if m.Event == kind && m.TargetMsgId == target {
				return m
			}
		case <-timeout:
			t.Fatalf("%s got no event %d about message %d", c.User(), kind, target)
		}
	}
}

// TestChat: conversations, history, read cursors and recall through the
// API, on the memory and the embedded store, with the receipts and the
// recall events reaching connected clients.
func TestChat(t *testing.T) {
	for _, sc := range chatStores {
		t.Run(sc.name, func(t *testing.T) {
			f := startWith(t, sc.open(t))
			for _, u := range []string{"alice", "bob", "carol", "dave"} {
				f.must(201, "POST", "/v1/users", map[string]string{"user": u})
			}
			alice, bob := f.online("alice", "phone"), f.online("bob", "pc")

			// alice: a1 to bob (1), bob's three (2..4), carol's (5), then
			// the group's creation and message.
			f.sendText("alice", "bob", "a1", "hi bob")
			var fromBob []string
			for i := range 3 {
				fromBob = append(fromBob, f.sendText("bob", "alice", fmt.Sprint("b", i), fmt.Sprint("hello ", i)))
			}
			f.sendText("carol", "alice", "c1", "from carol")
			gid := f.must(201, "POST", "/v1/groups", map[string]any{"owner": "bob", "name": "team", "members": []string{"alice"}})["group_id"].(string)
			f.sendText("bob", "group:"+gid, "g1", "hi team")

			all := f.must(200, "GET", "/v1/users/alice/conversations", nil)
			convs := list(all, "conversations")
			if len(convs) != 3 || all["has_more"] != false {
				t.Fatalf("conversations: %v", all)
			}
			g, c, b := convs[0], convs[1], convs[2]
			if g["conv"] != "group:"+gid || g["group_id"] != gid || g["peer"] != nil || g["last"].(map[string]any)["body"] != "aGkgdGVhbQ==" {
				t.Fatalf("group conversation: %v", g)
			}
			if c["conv"] != "carol" || c["peer"] != "carol" || c["last_seq"] != float64(5) || c["unread"] != float64(1) || c["read_seq"] != float64(0) {
				t.Fatalf("carol's conversation: %v", c)
			}
			// alice's own message raised her cursor to 1.
			if b["peer"] != "bob" || b["last_seq"] != float64(4) || b["read_seq"] != float64(1) || b["unread"] != float64(3) ||
				b["last"].(map[string]any)["msg_id"] != fromBob[2] {
				t.Fatalf("bob's conversation: %v", b)
			}
			// Paging one at a time walks the same list.
			var walked []any
			before := ""
			for range 4 {
				page := f.must(200, "GET", "/v1/users/alice/conversations?limit=1"+before, nil)
				l := list(page, "conversations")
				if len(l) != 1 {
					t.Fatalf("page after %q: %v", before, page)
				}
				walked = append(walked, l[0]["conv"])
				if page["has_more"] == false {
					break
				}
				before = "&before_seq=" + strconv.FormatFloat(l[0]["last_seq"].(float64), 'f', -1, 64)
			}
			if fmt.Sprint(walked) != fmt.Sprint([]any{"group:" + gid, "carol", "bob"}) {
				t.Fatalf("paged conversations: %v", walked)
			}

			// History backwards, newest page first, ascending within.
			h := f.must(200, "GET", "/v1/users/alice/conversations/bob/history?limit=3", nil)
			if got := seqs(list(h, "messages")); fmt.Sprint(got) != "[2 3 4]" || h["has_more"] != true || h["conv"] != "bob" {
				t.Fatalf("history: %v", h)
			}
			h = f.must(200, "GET", "/v1/users/alice/conversations/bob/history?limit=3&before_seq=2", nil)
			if got := list(h, "messages"); fmt.Sprint(seqs(got)) != "[1]" || h["has_more"] != false || got[0]["body"] != "aGkgYm9i" {
				t.Fatalf("older history: %v", h)
			}
			h = f.must(200, "GET", "/v1/users/alice/conversations/bob/history?before_msg_id="+fromBob[1], nil)
			if got := seqs(list(h, "messages")); fmt.Sprint(got) != "[1 2]" {
				t.Fatalf("history below %s: %v", fromBob[1], h)
			}
			h = f.must(200, "GET", "/v1/users/alice/conversations/group:"+gid+"/history", nil)
			if got := list(h, "messages"); len(got) == 0 || got[len(got)-1]["body"] != "aGkgdGVhbQ==" || got[len(got)-1]["group_id"] != gid {
				t.Fatalf("group history: %v", h)
			}
			if h := f.must(200, "GET", "/v1/users/alice/conversations/dave/history", nil); len(list(h, "messages")) != 0 {
				t.Fatalf("history of no conversation: %v", h)
			}

			// Bad parameters and unknown users.
			for _, path := range []string{"/v1/users/alice/conversations?limit=-1", "/v1/users/alice/conversations?before_seq=x",
				"/v1/users/alice/conversations/bob/history?limit=ten", "/v1/users/alice/conversations/bob/history?before_msg_id=-3"} {
				f.wantError(400, "BAD_REQUEST", "GET", path, nil)
			}
			f.wantError(400, "INVALID_ARGUMENT", "GET", "/v1/users/alice/conversations/bob/history?before_seq=3&before_msg_id="+fromBob[0], nil)
			f.wantError(400, "INVALID_ARGUMENT", "GET", "/v1/users/alice/conversations/group:/history", nil)
			f.wantError(400, "INVALID_ARGUMENT", "GET", "/v1/users/alice/conversations/b%20b/history", nil)
			f.wantError(404, "UNKNOWN_MESSAGE", "GET", "/v1/users/alice/conversations/bob/history?before_msg_id=12345", nil)
			f.wantError(404, "UNKNOWN_RECIPIENT", "GET", "/v1/users/nobody/conversations", nil)
			f.wantError(404, "UNKNOWN_RECIPIENT", "GET", "/v1/users/nobody/conversations/bob/history", nil)
			f.wantError(404, "UNKNOWN_RECIPIENT", "POST", "/v1/users/nobody/conversations/bob/read", nil)
			f.wantError(404, "UNKNOWN_RECIPIENT", "POST", "/v1/messages/"+fromBob[0]+"/recall", map[string]string{"user": "nobody"})
			for _, req := range [][2]string{{"GET", "/v1/users/alice/conversations"}, {"GET", "/v1/users/alice/conversations/bob/history"},
				{"POST", "/v1/users/alice/conversations/bob/read"}, {"POST", "/v1/messages/" + fromBob[0] + "/recall"}} {
				if status, out := f.do(req[0], req[1], "wrong-key-0123456789abcdef", nil); status != http.StatusUnauthorized || out["code"] != "UNAUTHENTICATED" {
					t.Errorf("%s %s with a wrong key: %d %v", req[0], req[1], status, out)
				}
			}

			// Reading up to bob's second message: alice's devices and bob's
			// get a receipt, bob's in his own seqs (his message b1 is his 3).
			r := f.must(200, "POST", "/v1/users/alice/conversations/bob/read", map[string]any{"up_to": 3})
			if r["read_seq"] != float64(3) || r["unread"] != float64(1) || r["moved"] != true {
				t.Fatalf("read: %v", r)
			}
			if got := receipt(t, alice, &pb.Receipt{Peer: "bob", User: "alice"}); got.ReadSeq != 3 || strconv.FormatUint(got.MsgId, 10) != fromBob[1] {
				t.Fatalf("alice's receipt: %v", got)
			}
			if got := receipt(t, bob, &pb.Receipt{Peer: "alice", User: "alice"}); got.ReadSeq != 3 || strconv.FormatUint(got.MsgId, 10) != fromBob[1] {
				t.Fatalf("bob's receipt: %v", got)
			}
			if r := f.must(200, "POST", "/v1/users/alice/conversations/bob/read", map[string]any{"up_to": 2}); r["read_seq"] != float64(3) || r["moved"] != false {
				t.Fatalf("read backwards: %v", r)
			}
			if r := f.must(200, "POST", "/v1/users/alice/conversations/bob/read", nil); r["read_seq"] != float64(4) || r["unread"] != float64(0) {
				t.Fatalf("read all: %v", r)
			}
			if r := f.must(200, "POST", "/v1/users/alice/conversations/group:"+gid+"/read", map[string]any{}); r["unread"] != float64(0) || r["conv"] != "group:"+gid {
				t.Fatalf("read the group: %v", r)
			}
			f.wantError(404, "UNKNOWN_MESSAGE", "POST", "/v1/users/alice/conversations/dave/read", nil)
			f.wantError(400, "BAD_REQUEST", "POST", "/v1/users/alice/conversations/bob/read", map[string]any{"upto": 1})
			if c := list(f.must(200, "GET", "/v1/users/alice/conversations", nil), "conversations"); c[2]["read_seq"] != float64(4) || c[2]["unread"] != float64(0) {
				t.Fatalf("bob's conversation after reading: %v", c[2])
			}

			// Recall: the event reaches both, the message keeps no body.
			id := f.sendText("alice", "bob", "a2", "oops")
			target, _ := strconv.ParseUint(id, 10, 64)
			rc := f.must(200, "POST", "/v1/messages/"+id+"/recall", map[string]string{"user": "alice"})
			if rc["msg_id"] != id || rc["duplicate"] != false || len(list(rc, "inboxes")) != 2 || list(rc, "inboxes")[0]["user"] != "alice" {
				t.Fatalf("recall: %v", rc)
			}
			ev := event(t, bob, persist.EventRecall, target)
			if strconv.FormatUint(ev.MsgId, 10) != rc["event_msg_id"] || ev.Seq != uint64(list(rc, "inboxes")[1]["seq"].(float64)) {
				t.Fatalf("bob's recall event %v, recall %v", ev, rc)
			}
			event(t, alice, persist.EventRecall, target)
			h = f.must(200, "GET", "/v1/users/bob/conversations/alice/history", nil)
			last := list(h, "messages")[len(list(h, "messages"))-1]
			if last["msg_id"] != id || last["recalled"] != true || last["body"] != "" {
				t.Fatalf("recalled message in bob's history: %v", last)
			}
			if again := f.must(200, "POST", "/v1/messages/"+id+"/recall", map[string]string{"user": "alice"}); again["duplicate"] != true || again["event_msg_id"] != rc["event_msg_id"] {
				t.Fatalf("repeated recall: %v", again)
			}
			f.wantError(403, "NOT_SENDER", "POST", "/v1/messages/"+fromBob[0]+"/recall", map[string]string{"user": "alice"})
			f.wantError(404, "UNKNOWN_MESSAGE", "POST", "/v1/messages/12345/recall", map[string]string{"user": "alice"})
			f.wantError(400, "BAD_REQUEST", "POST", "/v1/messages/abc/recall", map[string]string{"user": "alice"})
			f.wantError(400, "BAD_REQUEST", "POST", "/v1/messages/"+id+"/recall", map[string]string{})
			f.wantError(400, "BAD_REQUEST", "POST", "/v1/messages/"+id+"/recall", nil)

			// A message older than the recall window (2 minutes), stored
			// an hour ago, cannot be recalled.
			old := persist.Message{ID: 77, From: "alice", To: "bob", ClientMsgID: "old-1", Timestamp: time.Now().Add(-time.Hour).UnixMilli(), Body: []byte("old")}
			if _, err := f.st.Append(context.Background(), old, []string{"alice", "bob"}); err != nil {
				t.Fatal(err)
			}
			f.wantError(409, "RECALL_EXPIRED", "POST", "/v1/messages/77/recall", map[string]string{"user": "alice"})
			if h := list(f.must(200, "GET", "/v1/users/bob/conversations/alice/history?limit=1", nil), "messages"); h[0]["msg_id"] != "77" || h[0]["recalled"] == true {
				t.Fatalf("the old message after a refused recall: %v", h)
			}
		})
	}
}

// TestDeleteAndReadCount: delete-for-me and a group message's read count
// through the API, on the memory and the embedded store: the delete event
// reaches the user's device and hides the message from the user only; the
// read count follows the members' read cursors.
func TestDeleteAndReadCount(t *testing.T) {
	for _, sc := range chatStores {
		t.Run(sc.name, func(t *testing.T) {
			f := startWith(t, sc.open(t))
			for _, u := range []string{"alice", "bob", "carol"} {
				f.must(201, "POST", "/v1/users", map[string]string{"user": u})
			}
			alice := f.online("alice", "phone")

			// bob's message to alice (alice 1, bob 1); alice deletes it.
			id := f.sendText("bob", "alice", "b1", "delete me")
			target, _ := strconv.ParseUint(id, 10, 64)
			del := f.must(200, "POST", "/v1/users/alice/messages/"+id+"/delete", nil)
			if del["user"] != "alice" || del["msg_id"] != id || del["duplicate"] != false || del["seq"] != float64(2) || del["event_msg_id"] == nil {
				t.Fatalf("delete: %v", del)
			}
			if ev := event(t, alice, persist.EventDelete, target); ev.Seq != 2 || strconv.FormatUint(ev.MsgId, 10) != del["event_msg_id"] {
				t.Fatalf("alice's delete event %v, delete %v", ev, del)
			}
			if h := list(f.must(200, "GET", "/v1/users/alice/conversations/bob/history", nil), "messages"); len(h) != 0 {
				t.Fatalf("alice's history after the delete: %v", h)
			}
			in := list(f.must(200, "GET", "/v1/users/alice/inbox", nil), "messages")
			if len(in) != 2 || in[0]["deleted"] != true || in[0]["body"] != "" || in[1]["event"] != float64(persist.EventDelete) || in[1]["target_msg_id"] != id {
				t.Fatalf("alice's inbox after the delete: %v", in)
			}
			// bob keeps it, and gets no event.
			if h := list(f.must(200, "GET", "/v1/users/bob/conversations/alice/history", nil), "messages"); len(h) != 1 || h[0]["msg_id"] != id || h[0]["body"] != "ZGVsZXRlIG1l" {
				t.Fatalf("bob's history after alice's delete: %v", h)
			}
			if in := list(f.must(200, "GET", "/v1/users/bob/inbox", nil), "messages"); len(in) != 1 {
				t.Fatalf("bob's inbox after alice's delete: %v", in)
			}
			if again := f.must(200, "POST", "/v1/users/alice/messages/"+id+"/delete", nil); again["duplicate"] != true || again["seq"] != float64(0) || (again["event_msg_id"] != nil && again["event_msg_id"] != del["event_msg_id"]) {
				t.Fatalf("repeated delete: %v", again)
			}
			f.wantError(404, "UNKNOWN_MESSAGE", "POST", "/v1/users/carol/messages/"+id+"/delete", nil)
			f.wantError(404, "UNKNOWN_MESSAGE", "POST", "/v1/users/alice/messages/12345/delete", nil)
			f.wantError(404, "UNKNOWN_RECIPIENT", "POST", "/v1/users/nobody/messages/"+id+"/delete", nil)
			f.wantError(400, "BAD_REQUEST", "POST", "/v1/users/alice/messages/abc/delete", nil)
			f.wantError(400, "BAD_REQUEST", "POST", "/v1/users/alice/messages/0/delete", nil)

			// A group message of alice's: nobody has read it, then bob,
			// then carol. alice's seq of it is 4 (after the delete event
			// and the event announcing the group's members).
			gid := f.must(201, "POST", "/v1/groups", map[string]any{"owner": "alice", "name": "team", "members": []string{"bob", "carol"}})["group_id"].(string)
			f.sendText("alice", "group:"+gid, "g1", "read me")
			conv := "/v1/users/alice/conversations/group:" + gid
			gh := list(f.must(200, "GET", conv+"/history", nil), "messages")
			seq := gh[len(gh)-1]["seq"].(float64)
			path := conv + "/read-count?seq=" + strconv.FormatFloat(seq, 'f', -1, 64)
			if rc := f.must(200, "GET", path, nil); rc["read"] != float64(0) || rc["members"] != float64(2) || rc["seq"] != seq || rc["conv"] != "group:"+gid || rc["user"] != "alice" {
				t.Fatalf("read count before any read: %v", rc)
			}
			f.must(200, "POST", "/v1/users/bob/conversations/group:"+gid+"/read", nil)
			if rc := f.must(200, "GET", path, nil); rc["read"] != float64(1) || rc["members"] != float64(2) {
				t.Fatalf("read count after bob read: %v", rc)
			}
			f.must(200, "POST", "/v1/users/carol/conversations/group:"+gid+"/read", nil)
			if rc := f.must(200, "GET", path, nil); rc["read"] != float64(2) || rc["members"] != float64(2) {
				t.Fatalf("read count after carol read: %v", rc)
			}
			// bob asks about the same message at his own seq.
			bh := list(f.must(200, "GET", "/v1/users/bob/conversations/group:"+gid+"/history", nil), "messages")
			bseq := bh[len(bh)-1]["seq"].(float64)
			if rc := f.must(200, "GET", "/v1/users/bob/conversations/group:"+gid+"/read-count?seq="+strconv.FormatFloat(bseq, 'f', -1, 64), nil); rc["read"] != float64(2) {
				t.Fatalf("read count through bob: %v", rc)
			}
			f.wantError(400, "BAD_REQUEST", "GET", conv+"/read-count", nil)
			f.wantError(400, "BAD_REQUEST", "GET", conv+"/read-count?seq=x", nil)
			f.wantError(404, "UNKNOWN_MESSAGE", "GET", "/v1/users/alice/conversations/carol/read-count?seq="+strconv.FormatFloat(seq, 'f', -1, 64), nil)
			f.wantError(404, "UNKNOWN_MESSAGE", "GET", conv+"/read-count?seq=999", nil)
			f.wantError(400, "INVALID_ARGUMENT", "GET", "/v1/users/alice/conversations/group:/read-count?seq=1", nil)
			f.wantError(404, "UNKNOWN_RECIPIENT", "GET", "/v1/users/nobody/conversations/group:"+gid+"/read-count?seq=1", nil)

			for _, req := range [][2]string{{"POST", "/v1/users/alice/messages/" + id + "/delete"}, {"GET", path}} {
				for _, key := range []string{"", "wrong-key-0123456789abcdef"} {
					if status, out := f.do(req[0], req[1], key, nil); status != http.StatusUnauthorized || out["code"] != "UNAUTHENTICATED" {
						t.Errorf("%s %s with key %q: %d %v", req[0], req[1], key, status, out)
					}
				}
			}
		})
	}
}

// TestChatUnsupported: a store without the chat seam (the memory store
// seen only as a persist.Store) answers 501 UNSUPPORTED.
func TestChatUnsupported(t *testing.T) {
	f := startWith(t, struct{ persist.Store }{memstore.New()})
	f.must(201, "POST", "/v1/users", map[string]string{"user": "alice"})
	f.must(200, "POST", "/v1/messages", map[string]any{"from": "alice", "to": "alice", "text": "note"})
	for _, req := range [][2]string{{"GET", "/v1/users/alice/conversations"}, {"GET", "/v1/users/alice/conversations/alice/history"},
		{"POST", "/v1/users/alice/conversations/alice/read"}} {
		f.wantError(501, "UNSUPPORTED", req[0], req[1], nil)
	}
	f.wantError(501, "UNSUPPORTED", "POST", "/v1/messages/1/recall", map[string]string{"user": "alice"})
	f.wantError(501, "UNSUPPORTED", "POST", "/v1/users/alice/messages/1/delete", nil)
	f.wantError(501, "UNSUPPORTED", "GET", "/v1/users/alice/conversations/alice/read-count?seq=1", nil)
}
