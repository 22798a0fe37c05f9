package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/events"
	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/persist/memstore"
)

// TestConsumerOnARealNode: a node publishes to a real Redis; the example
// consumer handles every message once per inbox, skips a republished
// event, and on a restart first handles what it had read but not
// acknowledged.
func TestConsumerOnARealNode(t *testing.T) {
	rs := testsvc.StartRedis(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	pub, err := events.New(events.Config{Addrs: []string{rs.Addr}, NodeID: "n1", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	pub.Start()
	st := memstore.New()
	srv, err := engine.New(engine.Config{Addr: "127.0.0.1:0", Store: st, Observer: pub, EventLoops: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = srv.Shutdown(context.Background())
		_ = pub.Close(context.Background())
		_ = st.Close()
	}()
	ctx := t.Context()
	for _, u := range []string{"alice", "bob"} {
		if _, err := srv.CreateUser(ctx, u, ""); err != nil {
			t.Fatal(err)
		}
	}
	send := func(cmid, text string) {
		if _, err := srv.Send(ctx, engine.Outgoing{From: "alice", To: "bob", ClientMsgID: cmid, Body: []byte(text)}); err != nil {
			t.Fatal(err)
		}
	}
	send("1", "first")
	send("2", "second")
	send("1", "first") // a retry: published again as a duplicate
	cfg := Config{Redis: rs.Addr, Stream: events.DefaultStream, Group: "g", Consumer: "c1", From: "0", Count: 3}
	var out bytes.Buffer
	runCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := run(runCtx, cfg, &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{`bob: message `, ` from alice at seq 1 (conversation "alice"): "first"`, ` from alice at seq 2 (conversation "alice"): "second"`,
		`alice: message `, `at seq 2 (conversation "bob"): "second"`} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "\n"); n != 4 { // 2 messages x 2 inboxes; the retry skipped
		t.Fatalf("%d lines, want 4:\n%s", n, got)
	}

	// Read one event as c2 without acknowledging it (a consumer that died
	// while handling it): the next run of c2 handles it first.
	send("3", "third")
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rs.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	testutil.Eventually(t, 10*time.Second, "the third message's event", func() error {
		res, err := rc.Do(ctx, rc.B().Xreadgroup().Group("g", "c2").Count(1).Streams().Key(events.DefaultStream).Id(">").Build()).AsXRead()
		if err == nil && len(res[events.DefaultStream]) != 1 {
			err = fmt.Errorf("%d events", len(res[events.DefaultStream]))
		}
		return err
	})
	out.Reset()
	cfg.Consumer, cfg.Count = "c2", 1
	if err := run(runCtx, cfg, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"third"`) {
		t.Fatalf("the unacknowledged event was not handled again:\n%s", out.String())
	}
}
