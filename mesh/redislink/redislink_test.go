package redislink_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/goleak"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/meshpb"
	"github.com/imgn/imgn/mesh/redislink"
	"github.com/imgn/imgn/mesh/transporttest"
	"github.com/imgn/imgn/persist"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(leaktest.Gnet(),
		// rueidis sleeps out a reconnect backoff (under a second) in a goroutine
		// that outlives Close and then exits on its own.
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"))...)
}

func testLogger() *slog.Logger {
	if os.Getenv("MESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// suite returns a conformance suite over the Redis at addr. Every test
// (and subtest) gets its own channel prefix, so that nodes of different
// tests never hear each other.
func suite(addr string) transporttest.Suite {
	return transporttest.Suite{
		New: func(t testing.TB, p transporttest.Params) mesh.Transport {
			tr, err := redislink.New(redislink.Config{
				Addrs:          []string{addr},
				ChannelPrefix:  "im:mesh:" + t.Name() + ":",
				RequestTimeout: p.RequestTimeout,
				QueueSize:      p.QueueSize,
				MaxInflight:    p.MaxInflight,
				Logger:         testLogger(),
			})
			if err != nil {
				t.Fatal(err)
			}
			return tr
		},
	}
}

func TestConformance(t *testing.T) {
	svc := testsvc.StartRedis(t)
	transporttest.Run(t, suite(svc.Addr))
}

func TestConfig(t *testing.T) {
	if _, err := redislink.New(redislink.Config{}); err == nil {
		t.Error("New without an address succeeded")
	}
	if _, err := redislink.New(redislink.Config{Addrs: []string{"127.0.0.1:1"}, QueueSize: -1}); err == nil {
		t.Error("negative QueueSize accepted")
	}
	if _, err := redislink.New(redislink.Config{Addrs: []string{"127.0.0.1:1"}}); err == nil {
		t.Error("New with an unreachable Redis succeeded")
	}
}

// TestGarbage: messages that are not mesh frames, published to a node's
// channel, are dropped; the node keeps serving.
func TestGarbage(t *testing.T) {
	svc := testsvc.StartRedis(t)
	s := suite(svc.Addr)
	a := transporttest.StartNode(t, s, transporttest.DefaultParams, "node-a", "", nil)
	b := transporttest.StartNode(t, s, transporttest.DefaultParams, "node-b", "", nil)
	transporttest.Connect(a, b)
	transporttest.WaitLinked(t, a, b)

	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{svc.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	channel := "im:mesh:" + t.Name() + ":node-b"
	client := func(cmd codec.Command) string {
		b, _ := codec.AppendFrame(nil, codec.Protobuf, cmd, 0, 1, nil)
		return string(b)
	}
	truncated := client(meshpb.CmdAppend)
	truncated = truncated[:len(truncated)-4] + "\x00\x00\x00\x09"
	for _, junk := range []string{
		"", "hello", strings.Repeat("\xff", 100), client(codec.CmdLogin), truncated,
		string(codec.AppendRawFrame(nil, codec.Protobuf, meshpb.CmdAppend, 0, 1, []byte{0xff, 0xff})),
		string(codec.AppendRawFrame(nil, codec.Protobuf, meshpb.CmdPush, 0, 1, []byte{0x0a, 0x50})),
		string(codec.AppendRawFrame(nil, codec.Protobuf, meshpb.CmdAppendResult, 0, 1, []byte{0x0a, 0x50})),
		client(meshpb.CmdAppend), // no reply_to: nowhere to answer
		client(meshpb.CmdHello),
	} {
		if err := c.Do(context.Background(), c.B().Publish().Channel(channel).Message(junk).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.T.Append(context.Background(), "node-b", persist.Message{ID: 3}, []string{"u"}); err != nil {
		t.Fatalf("node stopped serving after garbage: %v", err)
	}
}

// TestUnsubscribedFailsFast: an Append to a node that is not subscribed
// fails as soon as Redis reports no receiver, not at the deadline.
func TestUnsubscribedFailsFast(t *testing.T) {
	svc := testsvc.StartRedis(t)
	s := suite(svc.Addr)
	p := transporttest.DefaultParams
	p.RequestTimeout = time.Minute
	a := transporttest.StartNode(t, s, p, "node-a", "", nil)
	b := transporttest.StartNode(t, s, p, "node-b", "", nil)
	transporttest.Connect(a, b)
	transporttest.WaitLinked(t, a, b)
	b.Close(t)
	_, err := a.T.Append(context.Background(), "node-b", persist.Message{ID: 1}, []string{"u"})
	if !errors.Is(err, cluster.ErrForward) || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "nobody subscribed") {
		t.Fatalf("append to an unsubscribed node: %v (want an immediate failure, not the deadline)", err)
	}
}

// TestRedisRestart: while Redis is down, Appends fail with ErrForward
// within the timeout; once it is back, subscriptions are renewed and
// Appends succeed again.
func TestRedisRestart(t *testing.T) {
	svc := testsvc.StartRedis(t)
	s := suite(svc.Addr)
	p := transporttest.DefaultParams
	p.RequestTimeout = 500 * time.Millisecond
	a := transporttest.StartNode(t, s, p, "node-a", "", nil)
	b := transporttest.StartNode(t, s, p, "node-b", "", nil)
	transporttest.Connect(a, b)
	transporttest.WaitLinked(t, a, b)
	if err := svc.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := a.T.Append(context.Background(), "node-b", persist.Message{ID: 1}, []string{"u"})
	if !errors.Is(err, cluster.ErrForward) {
		t.Fatalf("append with Redis down: %v", err)
	}
	if d := time.Since(start); d > p.RequestTimeout+transporttest.Slack {
		t.Fatalf("append with Redis down took %s", d)
	}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, transporttest.Patience, "appends after the Redis restart", func() error {
		_, err := a.T.Append(context.Background(), "node-b", persist.Message{ID: 2}, []string{"u"})
		return err
	})
}

func BenchmarkAppend(b *testing.B) {
	svc := testsvc.StartRedis(b)
	transporttest.Bench(b, suite(svc.Addr))
}
