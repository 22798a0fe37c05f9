package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// cmdEvents runs `imctl events tail`: it reads the event stream a node
// publishes with --events redis (docs/events.md) and prints each event.
func cmdEvents(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] != "tail" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			return cmdEventsTail(ctx, e, args)
		}
		return usagef("events needs a subcommand: tail")
	}
	return cmdEventsTail(ctx, e, args[1:])
}

func cmdEventsTail(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "events", "tail [--redis HOST:PORT] [--stream S] [--from ID] [--group G] [--count N] [--timeout D]")
	var redis, stream, from, group, consumer string
	f.envString(&redis, "redis", "IM_EVENTS_REDIS", "127.0.0.1:6379", "Redis server(s) of the event stream, comma-separated")
	f.envString(&stream, "stream", "IM_EVENTS_STREAM", "imgn:events", "stream key (imd --events-stream)")
	f.StringVar(&from, "from", "$", "start after this stream entry id: $ for new events only, 0 for the whole stream")
	f.StringVar(&group, "group", "", "read as a member of this consumer group (created at the stream's end if missing), acknowledging (XACK) each event once printed")
	f.StringVar(&consumer, "consumer", "", "consumer name within --group (default imctl-<host>-<pid>)")
	count := f.Int("count", 0, "exit 0 after N events (exit 1 if --timeout ends first); 0 = until --timeout or Ctrl-C")
	timeout := f.Duration("timeout", 0, "stop after this long (0: no limit)")
	if err := f.parse(args); err != nil {
		return err
	}
	switch {
	case f.NArg() > 0:
		return usagef("unexpected arguments %q", f.Args())
	case *count < 0:
		return usagef("--count must not be negative")
	case group == "" && consumer != "":
		return usagef("--consumer needs --group")
	}
	if consumer == "" {
		host, _ := os.Hostname()
		consumer = fmt.Sprintf("imctl-%s-%d", host, os.Getpid())
	}
	ctx, cancel := withTimeout(ctx, *timeout)
	defer cancel()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: splitList(redis), DisableCache: true, ClientName: "imctl-events"})
	if err != nil {
		return fmt.Errorf("connect to Redis %s: %w", redis, err)
	}
	defer c.Close()
	if group != "" {
		err := c.Do(ctx, c.B().XgroupCreate().Key(stream).Group(group).Id("$").Mkstream().Build()).Error()
		if err != nil && !strings.Contains(err.Error(), "BUSYGROUP") {
			return fmt.Errorf("create consumer group %s: %w", group, err)
		}
		from = ">"
	}
	got := 0
	for *count == 0 || got < *count {
		block := int64(time.Second / time.Millisecond)
		var cmd rueidis.Completed
		if group != "" {
			cmd = c.B().Xreadgroup().Group(group, consumer).Count(100).Block(block).Streams().Key(stream).Id(from).Build()
		} else {
			cmd = c.B().Xread().Count(100).Block(block).Streams().Key(stream).Id(from).Build()
		}
		res, err := c.Do(ctx, cmd).AsXRead()
		switch {
		case ctx.Err() != nil, errors.Is(err, context.DeadlineExceeded) && deadlinePassed(ctx):
			if *count > 0 {
				return fmt.Errorf("printed %d of %d events: %w", got, *count, ctx.Err())
			}
			return nil // --timeout or Ctrl-C without --count: a normal end
		case rueidis.IsRedisNil(err):
			continue // nothing new within the block
		case err != nil:
			return fmt.Errorf("read %s: %w", stream, err)
		}
		for _, entry := range res[stream] {
			printEvent(e, entry, f.json)
			if group != "" {
				if err := c.Do(ctx, c.B().Xack().Key(stream).Group(group).Id(entry.ID).Build()).Error(); err != nil {
					return fmt.Errorf("acknowledge %s: %w", entry.ID, err)
				}
			} else {
				from = entry.ID
			}
			if got++; *count > 0 && got == *count {
				return nil
			}
		}
	}
	return nil
}

// printEvent writes one event: with --json its JSON with the stream entry
// id added, else one line of the fields that say what happened.
func printEvent(e *env, entry rueidis.XRangeEntry, asJSON bool) {
	var ev map[string]any
	if err := json.Unmarshal([]byte(entry.FieldValues["data"]), &ev); err != nil {
		ev = map[string]any{"error": "undecodable event", "data": entry.FieldValues["data"]}
	}
	ev["id"] = entry.ID
	if asJSON {
		writeJSON(e.stdout, ev)
		return
	}
	s := func(k string) string { v, _ := ev[k].(string); return v }
	n := func(k string) string {
		if v, ok := ev[k].(float64); ok {
			return strconv.FormatFloat(v, 'f', -1, 64)
		}
		return ""
	}
	line := entry.ID + " " + s("type") + " node=" + s("node")
	switch s("type") {
	case "message":
		from := s("from")
		if from == "" {
			from = "(system)"
		}
		to := s("to")
		if g := s("group_id"); g != "" {
			to = "group " + g
		}
		var refs []string
		if ins, ok := ev["inboxes"].([]any); ok {
			for _, in := range ins {
				if m, ok := in.(map[string]any); ok {
					refs = append(refs, fmt.Sprintf("%v:%v", m["user"], m["seq"]))
				}
			}
		}
		line += fmt.Sprintf(" msg=%s %s -> %s inboxes=[%s]", s("msg_id"), from, to, strings.Join(refs, " "))
		if ev["replayed"] == true {
			line += " (replayed)"
		}
	case "delivered":
		line += fmt.Sprintf(" %s/%s up to seq %s", s("user"), s("device"), n("seq"))
	default:
		line += fmt.Sprintf(" group=%s user=%s", s("group"), s("user"))
		if by := s("by"); by != "" {
			line += " by=" + by
		}
	}
	fmt.Fprintln(e.stdout, line)
}

// deadlinePassed reports whether ctx's deadline is (about) now: a blocking
// read may time out on the socket a moment before the context itself ends.
func deadlinePassed(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && time.Until(d) < 50*time.Millisecond
}
