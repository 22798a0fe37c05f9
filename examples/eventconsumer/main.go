// Command eventconsumer is an example consumer of the event stream that imd
// publishes with --events redis (docs/events.md). It reads the stream as a
// member of a consumer group, handles each event, and acknowledges it
// (XACK) only afterwards, so that an event is handled at least once even if
// the consumer dies mid-way: on start it first handles again the events it
// had been given but had not acknowledged.
//
// The stream itself may repeat an event (a node republishes the last
// moments before a crash), so the consumer keeps, per inbox, the highest
// seq it has handled and skips anything at or below it: each inbox's
// messages are then handled exactly once, in order. A real consumer keeps
// that table with its own data (in the same transaction as its work); this
// example keeps it in memory.
//
//	go run ./examples/eventconsumer --redis 127.0.0.1:6379 --group pushsvc
//
// It depends on nothing of imgn: the event type below follows the
// documented JSON schema.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/redis/rueidis"
)

// Event is an event of the stream (docs/events.md, schema version 1).
type Event struct {
	V    int    `json:"v"`
	Type string `json:"type"`
	Node string `json:"node"`
	Time int64  `json:"time"`

	MsgID       string `json:"msg_id"`
	From        string `json:"from"` // empty: a system message
	To          string `json:"to"`
	GroupID     string `json:"group_id"`
	ClientMsgID string `json:"client_msg_id"`
	Kind        uint32 `json:"kind"`
	Body        []byte `json:"body"`
	SentAt      int64  `json:"sent_at"`
	Duplicate   bool   `json:"duplicate"`
	Replayed    bool   `json:"replayed"`
	Inboxes     []struct {
		User         string `json:"user"`
		Seq          uint64 `json:"seq"`
		Conversation string `json:"conversation"`
	} `json:"inboxes"`

	User    string   `json:"user"`
	Device  string   `json:"device"`
	Seq     uint64   `json:"seq"`
	Group   string   `json:"group"`
	By      string   `json:"by"`
	Name    string   `json:"name"`
	Owner   string   `json:"owner"`
	Members []string `json:"members"`
}

// Config is what the consumer reads and as whom.
type Config struct {
	Redis, Stream, Group, Consumer string
	// From is where a new group starts: "$" (new events) or "0" (the
	// whole stream).
	From string
	// Count stops after this many events handled (0: run until ctx ends).
	Count int
}

// consumer handles events, skipping inbox entries it has handled.
type consumer struct {
	out     io.Writer
	highest map[string]uint64 // inbox -> highest seq handled
	handled int
}

// handle does the work for one event. Here it prints what happened; a
// push-notification service would look up the recipients' devices, an
// indexer would index the body, and so on.
func (c *consumer) handle(e *Event) {
	c.handled++
	switch e.Type {
	case "message":
		for _, in := range e.Inboxes {
			if in.Seq <= c.highest[in.User] {
				continue // seen already (a republished event, or a retried send)
			}
			c.highest[in.User] = in.Seq
			from := e.From
			if from == "" {
				from = "the system"
			}
			fmt.Fprintf(c.out, "%s: message %s from %s at seq %d (conversation %q): %q\n",
				in.User, e.MsgID, from, in.Seq, in.Conversation, e.Body)
		}
	case "delivered":
		fmt.Fprintf(c.out, "%s: device %s has everything up to seq %d\n", e.User, e.Device, e.Seq)
	case "group.created":
		fmt.Fprintf(c.out, "group %s (%q) created by %s with %s\n", e.Group, e.Name, e.Owner, strings.Join(e.Members, ", "))
	case "group.member_added", "group.member_removed":
		fmt.Fprintf(c.out, "group %s: %s %s\n", e.Group, strings.TrimPrefix(e.Type, "group."), e.User)
	default:
		// Newer servers may add types: skip what you do not know.
	}
}

// run consumes until ctx ends or cfg.Count events are handled.
func run(ctx context.Context, cfg Config, out io.Writer) error {
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: strings.Split(cfg.Redis, ","), DisableCache: true})
	if err != nil {
		return fmt.Errorf("connect to Redis: %w", err)
	}
	defer rc.Close()
	err = rc.Do(ctx, rc.B().XgroupCreate().Key(cfg.Stream).Group(cfg.Group).Id(cfg.From).Mkstream().Build()).Error()
	if err != nil && !strings.Contains(err.Error(), "BUSYGROUP") { // BUSYGROUP: it exists
		return fmt.Errorf("create group: %w", err)
	}
	c := &consumer{out: out, highest: map[string]uint64{}}
	// "0" first: the events this consumer was given before and did not
	// acknowledge (it died while handling them); then ">" for new ones.
	next := "0"
	for cfg.Count == 0 || c.handled < cfg.Count {
		res, err := rc.Do(ctx, rc.B().Xreadgroup().Group(cfg.Group, cfg.Consumer).Count(100).Block(5000).
			Streams().Key(cfg.Stream).Id(next).Build()).AsXRead()
		if ctx.Err() != nil {
			return nil
		}
		if rueidis.IsRedisNil(err) {
			continue // nothing within the block time
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		entries := res[cfg.Stream]
		if next == "0" && len(entries) == 0 {
			next = ">" // the pending ones are done
			continue
		}
		for _, entry := range entries {
			var e Event
			if err := json.Unmarshal([]byte(entry.FieldValues["data"]), &e); err != nil {
				log.Printf("skipping undecodable entry %s: %v", entry.ID, err)
			} else {
				c.handle(&e)
			}
			// Acknowledge only once handled: a crash before this line
			// hands the event over again.
			if err := rc.Do(ctx, rc.B().Xack().Key(cfg.Stream).Group(cfg.Group).Id(entry.ID).Build()).Error(); err != nil {
				return fmt.Errorf("ack %s: %w", entry.ID, err)
			}
			if cfg.Count > 0 && c.handled == cfg.Count {
				return nil
			}
		}
	}
	return nil
}

func main() {
	var cfg Config
	host, _ := os.Hostname()
	flag.StringVar(&cfg.Redis, "redis", "127.0.0.1:6379", "Redis server(s), comma-separated")
	flag.StringVar(&cfg.Stream, "stream", "imgn:events", "stream key (imd --events-stream)")
	flag.StringVar(&cfg.Group, "group", "example", "consumer group")
	flag.StringVar(&cfg.Consumer, "consumer", host, "this consumer's name in the group (keep it across restarts)")
	flag.StringVar(&cfg.From, "from", "$", "where a new group starts: $ (new events) or 0 (the whole stream)")
	flag.IntVar(&cfg.Count, "count", 0, "stop after this many events (0: run until interrupted)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		log.Fatal(err)
	}
}
