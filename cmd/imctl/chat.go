package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/imgn/imgn/client"
)

const chatHelp = `Type a line to send it:
  @bob hello      to user bob (bob becomes the current target)
  #g1 hello       to group g1 (g1 becomes the current target)
  hello           to the current target
  /read           mark the current target's conversation read
  /unread         list conversations with unread messages
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
	chatRead   // mark the current target's conversation read
	chatUnread // list unread counts
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
	case line == "/unread":
		return chatUnread, cur, "", nil
	case line == "/read":
		if cur.name == "" {
			return chatNone, cur, "", errors.New("no target yet: start with @user or #group")
		}
		return chatRead, cur, "", nil
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
	showUnread(ctx, e, c, false)

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
		case ev, ok := <-c.ChatEvents():
			if ok {
				showChatEvent(e, f.json, c.User(), ev)
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
			case chatUnread:
				showUnread(ctx, e, c, true)
			case chatRead:
				conv := client.Peer(target.name)
				if target.group {
					conv = client.Group(target.name)
				}
				rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
				ok, err := c.Read(rctx, conv, 0)
				rcancel()
				if err != nil {
					fmt.Fprintf(e.stderr, "! %v\n", err)
				} else {
					fmt.Fprintf(e.stderr, "(%s read up to seq %d)\n", conv, ok.GetReadSeq())
				}
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

// showUnread prints the conversations with unread messages on stderr:
//
//	unread: @bob 3, #g1 1
//
// A server without conversations (UNSUPPORTED) is skipped silently unless
// asked (always: the /unread command).
func showUnread(ctx context.Context, e *env, c *client.Client, always bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	page, err := c.Conversations(ctx, 0, 200)
	if err != nil {
		if always {
			fmt.Fprintf(e.stderr, "! unread counts: %v\n", err)
		}
		return
	}
	var parts []string
	for _, cv := range page.GetConversations() {
		if n := cv.GetUnread(); n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", client.Conv{Peer: cv.GetPeer(), GroupID: cv.GetGroupId()}, n))
		}
	}
	switch {
	case len(parts) > 0:
		fmt.Fprintf(e.stderr, "unread: %s\n", strings.Join(parts, ", "))
	case always:
		fmt.Fprintln(e.stderr, "unread: none")
	}
}

// showChatEvent prints a receipt or a typing indication:
//
//	(bob read up to seq 17)            (bob read your 1:1 conversation)
//	(@bob read on another device up to seq 42)
//	(alice is typing in #g1...)
//
// Typing stops by itself (nothing is printed when it does).
func showChatEvent(e *env, asJSON bool, self string, ev client.ChatEvent) {
	switch {
	case ev.Receipt != nil:
		r := ev.Receipt
		if asJSON {
			writeJSON(e.stdout, map[string]any{"receipt": map[string]any{"peer": r.GetPeer(), "group_id": r.GetGroupId(),
				"user": r.GetUser(), "read_seq": r.GetReadSeq(), "msg_id": r.GetMsgId()}})
			return
		}
		conv := client.Conv{Peer: r.GetPeer(), GroupID: r.GetGroupId()}
		if r.GetUser() == self {
			fmt.Fprintf(e.stdout, "(%s read on another device up to seq %d)\n", conv, r.GetReadSeq())
		} else {
			fmt.Fprintf(e.stdout, "(%s read up to seq %d)\n", r.GetUser(), r.GetReadSeq())
		}
	case ev.Typing != nil:
		te := ev.Typing
		if asJSON {
			writeJSON(e.stdout, map[string]any{"typing": map[string]any{"peer": te.GetPeer(), "group_id": te.GetGroupId(),
				"user": te.GetUser(), "on": te.GetOn(), "expires_ms": te.GetExpiresMs()}})
			return
		}
		if !te.GetOn() {
			return
		}
		where := ""
		if te.GetGroupId() != "" {
			where = " in #" + te.GetGroupId()
		}
		fmt.Fprintf(e.stdout, "(%s is typing%s...)\n", te.GetUser(), where)
	}
}
