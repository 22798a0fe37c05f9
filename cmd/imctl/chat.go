package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

const chatHelp = `Type a line to send it:
  @bob hello      to user bob (bob becomes the current target)
  #g1 hello       to group g1 (g1 becomes the current target)
  hello           to the current target
  /help           this help
  /quit           leave (end of input does too)`

// chatAction is what one input line asks for.
type chatAction int

const (
	chatNone  chatAction = iota // empty line
	chatSend                    // send text to a user
	chatGroup                   // send text to a group
	chatHelpAction
	chatQuit
)

// chatTarget is where plain lines go: a user, or a group when group is set.
type chatTarget struct {
	name  string
	group bool
}

// parseChatLine interprets one input line given the current target. It
// returns the action, the destination (which becomes the new target) and
// the text; err explains a line that cannot be sent.
func parseChatLine(line string, cur chatTarget) (chatAction, chatTarget, string, error) {
	line = strings.TrimSpace(line)
	switch {
	case line == "":
		return chatNone, cur, "", nil
	case line == "/quit" || line == "/exit":
		return chatQuit, cur, "", nil
	case line == "/help" || line == "/?":
		return chatHelpAction, cur, "", nil
	case strings.HasPrefix(line, "/"):
		return chatNone, cur, "", fmt.Errorf("unknown command %q (try /help)", line)
	case line[0] == '@' || line[0] == '#':
		dest, text, _ := strings.Cut(line[1:], " ")
		text = strings.TrimSpace(text)
		t := chatTarget{name: dest, group: line[0] == '#'}
		switch {
		case dest == "":
			return chatNone, cur, "", fmt.Errorf("missing name after %q", line[:1])
		case text == "":
			return chatNone, t, "", fmt.Errorf("nothing to send to %s", line[:1]+dest)
		}
		if t.group {
			return chatGroup, t, text, nil
		}
		return chatSend, t, text, nil
	case cur.name == "":
		return chatNone, cur, "", errors.New("no target yet: start with @user or #group")
	case cur.group:
		return chatGroup, cur, line, nil
	default:
		return chatSend, cur, line, nil
	}
}

// connPoll is how often the chat checks whether its connection is up, to
// tell the user when it is lost and on which node it came back.
const connPoll = 200 * time.Millisecond

func cmdChat(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "chat", "[--to U | --group G] [--after SEQ | --from-start]")
	cf := f.connection(0, withToken|withDevice)
	to := f.String("to", "", "initial target user")
	group := f.String("group", "", "initial target group")
	start := f.start("show the inbox after this seq first (default: what this device has not shown yet)")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
	if *to != "" && *group != "" {
		return usagef("give at most one of --to and --group")
	}
	startAt, err := start.resolve("cursor")
	if err != nil {
		return err
	}
	target := chatTarget{name: *to}
	if *group != "" {
		target = chatTarget{name: *group, group: true}
	}
	ctx, cancel := withTimeout(ctx, cf.timeout)
	defer cancel()
	c, err := dialFor(ctx, e, cf, startAt)
	if err != nil {
		return err
	}
	defer c.Close()
	node := c.NodeID()
	fmt.Fprintf(e.stderr, "logged in as %s on node %s (device %s). /help for help.\n", c.User(), node, c.Device())

	lines := make(chan string)
	stop := make(chan struct{})
	defer close(stop)
	// The reader ends at end of input or, after chat returns, at its next
	// line; a read blocked on a terminal is abandoned when the process exits.
	go readLines(e.stdin, lines, stop)
	poll := time.NewTicker(connPoll)
	defer poll.Stop()

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.Done():
			return c.Err()
		case <-poll.C:
			node = reportConn(e, node, c.NodeID())
		case n, ok := <-c.Notices():
			if ok {
				ts := time.UnixMilli(n.GetTime()).In(e.loc).Format("15:04:05")
				if f.json {
					writeJSON(e.stdout, map[string]any{"notice": n.GetText(), "time": n.GetTime()})
				} else {
					fmt.Fprintf(e.stdout, "[%s] NOTICE: %s\n", ts, printable([]byte(n.GetText())))
				}
			}
		case m, ok := <-c.Messages():
			if !ok {
				return c.Err()
			}
			if f.json {
				writeJSON(e.stdout, toJSONMessage(m))
			} else {
				fmt.Fprintln(e.stdout, chatLine(m, c.User(), e.loc))
			}
		case line, ok := <-lines:
			if !ok {
				return nil
			}
			action, dest, text, perr := parseChatLine(line, target)
			if perr != nil {
				fmt.Fprintf(e.stderr, "! %v\n", perr)
				target = dest
				continue
			}
			switch action {
			case chatQuit:
				return nil
			case chatHelpAction:
				fmt.Fprintln(e.stderr, chatHelp)
			case chatSend, chatGroup:
				target = dest
				if c.NodeID() == "" {
					fmt.Fprintln(e.stderr, "! not connected: the message is sent once the connection is back")
				}
				sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
				if action == chatGroup {
					_, err = c.SendGroup(sctx, dest.name, []byte(text))
				} else {
					_, err = c.Send(sctx, dest.name, []byte(text))
				}
				scancel()
				if err != nil {
					fmt.Fprintf(e.stderr, "! %v\n", err)
				}
			}
		}
	}
}

// reportConn tells the user about a change of the connection: was is the
// node the chat was on at the last check ("" while reconnecting), now the
// node it is on. It returns now.
func reportConn(e *env, was, now string) string {
	switch {
	case was == now:
	case now == "":
		fmt.Fprintf(e.stderr, "! connection to node %s lost; reconnecting...\n", was)
	case was == "":
		fmt.Fprintf(e.stderr, "! reconnected, on node %s\n", now)
	default:
		fmt.Fprintf(e.stderr, "! reconnected, now on node %s (was %s)\n", now, was)
	}
	return now
}

// readLines sends each line of r to out until r ends or stop is closed,
// then closes out.
func readLines(r io.Reader, out chan<- string, stop <-chan struct{}) {
	defer close(out)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		select {
		case out <- sc.Text():
		case <-stop:
			return
		}
	}
}
