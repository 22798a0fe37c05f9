package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/redis/rueidis"

	"github.com/imgn/imgn/internal/testsvc"
)

// TestEventsTail: imctl events tail prints the stream's events as JSON
// lines or one summary line each; with --group it reads as a consumer
// group member and acknowledges, so a second run gets nothing again.
func TestEventsTail(t *testing.T) {
	rs := testsvc.StartRedis(t)
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rs.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	add := func(typ, data string) {
		t.Helper()
		if err := c.Do(context.Background(), c.B().Xadd().Key("imgn:events").Id("*").FieldValue().FieldValue("type", typ).FieldValue("data", data).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	add("message", `{"v":1,"type":"message","node":"n1","time":1,"msg_id":"42","from":"alice","to":"bob","inboxes":[{"user":"alice","seq":3,"conversation":"bob"},{"user":"bob","seq":7,"conversation":"alice"}]}`)
	add("delivered", `{"v":1,"type":"delivered","node":"n1","time":2,"user":"bob","device":"phone","seq":7}`)
	add("group.member_added", `{"v":1,"type":"group.member_added","node":"n1","time":3,"group":"g1","user":"carol","by":"carol"}`)
	env := map[string]string{"IM_EVENTS_REDIS": rs.Addr}

	r := invoke(t, env, "", "events", "tail", "--from", "0", "--count", "3", "--json")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 3 {
		t.Fatalf("json: %+v", r)
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil || first["msg_id"] != "42" || first["id"] == "" {
		t.Fatalf("first event %q: %v", lines[0], err)
	}

	r = invoke(t, env, "", "events", "tail", "--from", "0", "--count", "3")
	for _, want := range []string{" message node=n1 msg=42 alice -> bob inboxes=[alice:3 bob:7]\n", " delivered node=n1 bob/phone up to seq 7\n",
		" group.member_added node=n1 group=g1 user=carol by=carol\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("text output lacks %q:\n%s", want, r.stdout)
		}
	}

	// A consumer group created at the end sees only what comes after.
	r = invoke(t, env, "", "events", "tail", "--group", "g", "--timeout", "1500ms")
	if r.code != 0 || r.stdout != "" {
		t.Fatalf("new group, nothing new: %+v", r)
	}
	add("delivered", `{"v":1,"type":"delivered","node":"n1","time":4,"user":"bob","device":"phone","seq":8}`)
	r = invoke(t, env, "", "events", "tail", "--group", "g", "--count", "1", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"seq":8`) {
		t.Fatalf("group read: %+v", r)
	}
	r = invoke(t, env, "", "events", "tail", "--group", "g", "--count", "1", "--timeout", "1500ms")
	if r.code != 1 || r.stdout != "" {
		t.Fatalf("acknowledged event delivered again: %+v", r)
	}

	for _, args := range [][]string{{"events"}, {"events", "head"}, {"events", "tail", "--consumer", "x"}, {"events", "tail", "--count", "-1"}} {
		if r := invoke(t, env, "", args...); r.code != exitUsage {
			t.Errorf("%v: %+v", args, r)
		}
	}
}
