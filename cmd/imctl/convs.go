package main

import (
	"context"
	"fmt"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec/pb"
)

// The chat commands of imctl: conversations (with unread counts), history
// and read (docs/protocol.md §4.8).

// convFlags are --peer and --group: the conversation a command is about.
type convFlags struct{ peer, group *string }

func (f *flags) conv() convFlags {
	return convFlags{
		peer:  f.String("peer", "", "the 1:1 conversation with this user"),
		group: f.String("group", "", "the conversation of this group (instead of --peer)"),
	}
}

func (cv convFlags) resolve() (client.Conv, error) {
	if (*cv.peer == "") == (*cv.group == "") {
		return client.Conv{}, usagef("give exactly one of --peer and --group")
	}
	if *cv.group != "" {
		return client.Group(*cv.group), nil
	}
	return client.Peer(*cv.peer), nil
}

// pageFlags are --before and --limit of a paged listing.
type pageFlags struct{ before, limit *uint64 }

func (f *flags) page(beforeHelp string) pageFlags {
	return pageFlags{
		before: f.Uint64("before", 0, beforeHelp),
		limit:  f.Uint64("limit", 0, "page size (0: the server's default, 50; at most 200)"),
	}
}

// check refuses positional arguments and an out-of-range page size.
func (pf pageFlags) check(f *flags) error {
	if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
	if *pf.limit > 1<<32-1 {
		return usagef("--limit out of range")
	}
	return nil
}

// withSender logs in as a send-only client (no inbox stream) for one
// request, runs fn and logs out.
func withSender(ctx context.Context, e *env, cf *connFlags, fn func(context.Context, *client.Client) error) error {
	ctx, cancel := withTimeout(ctx, cf.timeout)
	defer cancel()
	c, err := dialFor(ctx, e, cf, func(cfg *client.Config) { cfg.SendOnly = true })
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(ctx, c)
}

// jsonConv is the JSON line printed for a conversation.
type jsonConv struct {
	Peer    string       `json:"peer,omitempty"`
	GroupID string       `json:"group_id,omitempty"`
	LastSeq uint64       `json:"last_seq"`
	ReadSeq uint64       `json:"read_seq"`
	Unread  uint32       `json:"unread"`
	Last    *jsonMessage `json:"last,omitempty"`
}

func cmdConversations(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "conversations", "[--before SEQ] [--limit N]")
	cf := f.connection(defaultTimeout, withToken)
	pf := f.page("only conversations whose last message is below this seq (the next page)")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := pf.check(f); err != nil {
		return err
	}
	return withSender(ctx, e, cf, func(ctx context.Context, c *client.Client) error {
		page, err := c.Conversations(ctx, *pf.before, uint32(*pf.limit))
		if err != nil {
			return err
		}
		if f.json {
			list := make([]jsonConv, 0, len(page.GetConversations()))
			for _, cv := range page.GetConversations() {
				j := jsonConv{Peer: cv.GetPeer(), GroupID: cv.GetGroupId(), LastSeq: cv.GetLastSeq(), ReadSeq: cv.GetReadSeq(), Unread: cv.GetUnread()}
				if cv.GetLast() != nil {
					m := toJSONMessage(cv.GetLast())
					j.Last = &m
				}
				list = append(list, j)
			}
			writeJSON(e.stdout, map[string]any{"ok": true, "conversations": list, "has_more": page.GetHasMore()})
			return nil
		}
		for _, cv := range page.GetConversations() {
			fmt.Fprintln(e.stdout, convLine(cv, c.User(), e))
		}
		if n := len(page.GetConversations()); page.GetHasMore() && n > 0 {
			fmt.Fprintf(e.stdout, "(more: --before %d)\n", page.GetConversations()[n-1].GetLastSeq())
		}
		return nil
	})
}

// convLine formats a conversation:
//
//	@bob      2 unread  [12:03:01] bob: see you
//	#g1               [12:01:00] me #g1: done
func convLine(cv *pb.Conversation, self string, e *env) string {
	name := client.Conv{Peer: cv.GetPeer(), GroupID: cv.GetGroupId()}.String()
	unread := ""
	if n := cv.GetUnread(); n > 0 {
		unread = fmt.Sprintf("%d unread", n)
	}
	last := "(no message kept)"
	if m := cv.GetLast(); m != nil {
		last = chatLine(m, self, e.loc)
	}
	return fmt.Sprintf("%-20s %-10s %s", name, unread, last)
}

func cmdHistory(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "history", "(--peer U | --group G) [--before SEQ] [--limit N]")
	cf := f.connection(defaultTimeout, withToken)
	conv := f.conv()
	pf := f.page("only messages below this seq of your inbox (the next page back)")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := pf.check(f); err != nil {
		return err
	}
	cv, err := conv.resolve()
	if err != nil {
		return err
	}
	return withSender(ctx, e, cf, func(ctx context.Context, c *client.Client) error {
		page, err := c.History(ctx, cv, *pf.before, uint32(*pf.limit))
		if err != nil {
			return err
		}
		if f.json {
			list := make([]jsonMessage, 0, len(page.GetMessages()))
			for _, m := range page.GetMessages() {
				list = append(list, toJSONMessage(m))
			}
			writeJSON(e.stdout, map[string]any{"ok": true, "messages": list, "has_more": page.GetHasMore()})
			return nil
		}
		if msgs := page.GetMessages(); page.GetHasMore() && len(msgs) > 0 {
			fmt.Fprintf(e.stdout, "(older: --before %d)\n", msgs[0].GetSeq())
		}
		for _, m := range page.GetMessages() {
			fmt.Fprintln(e.stdout, chatLine(m, c.User(), e.loc))
		}
		return nil
	})
}

func cmdRead(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "read", "(--peer U | --group G) [--seq SEQ]")
	cf := f.connection(defaultTimeout, withToken)
	conv := f.conv()
	seq := f.Uint64("seq", 0, "mark read up to this seq of your inbox (0: everything so far)")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
	cv, err := conv.resolve()
	if err != nil {
		return err
	}
	return withSender(ctx, e, cf, func(ctx context.Context, c *client.Client) error {
		ok, err := c.Read(ctx, cv, *seq)
		if err != nil {
			return err
		}
		if f.json {
			writeJSON(e.stdout, map[string]any{"ok": true, "peer": ok.GetPeer(), "group_id": ok.GetGroupId(), "read_seq": ok.GetReadSeq(), "unread": ok.GetUnread()})
		} else {
			fmt.Fprintf(e.stdout, "%s read up to seq %d; %d unread\n", cv, ok.GetReadSeq(), ok.GetUnread())
		}
		return nil
	})
}
