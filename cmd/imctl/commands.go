package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/envflag"
)

const defaultTimeout = 10 * time.Second

func cmdRegister(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "register", "--user U --password P")
	cf := f.connection(defaultTimeout, 0)
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
	cfg, err := cf.config(e, false)
	if err != nil {
		return err
	}
	ctx, cancel := withTimeout(ctx, cf.timeout)
	defer cancel()
	ok, err := client.Register(ctx, cfg)
	if err != nil {
		return err
	}
	if f.json {
		writeJSON(e.stdout, map[string]any{"ok": true, "user": ok.GetUser()})
	} else {
		fmt.Fprintf(e.stdout, "registered %s\n", ok.GetUser())
	}
	return nil
}

// dialFor logs in for a one-shot command.
func dialFor(ctx context.Context, e *env, cf *connFlags, mutate func(*client.Config)) (*client.Client, error) {
	cfg, err := cf.config(e, true)
	if err != nil {
		return nil, err
	}
	if mutate != nil {
		mutate(&cfg)
	}
	return client.Dial(ctx, cfg)
}

func cmdSend(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "send", "(--to U | --group G) [--text T | TEXT...]")
	cf := f.connection(defaultTimeout, withToken)
	to := f.String("to", "", "recipient user id")
	group := f.String("group", "", "group id (instead of --to)")
	text := f.String("text", "", "message text (default: the remaining arguments)")
	kind := f.Uint("kind", 0, "application-defined content kind (0 = text)")
	id := f.String("id", "", "client_msg_id to use (default random; reuse one to retry safely)")
	if err := f.parse(args); err != nil {
		return err
	}
	body := *text
	if body == "" {
		body = strings.Join(f.Args(), " ")
	} else if f.NArg() > 0 {
		return usagef("give the text with --text or as arguments, not both")
	}
	switch {
	case (*to == "") == (*group == ""):
		return usagef("give exactly one of --to and --group")
	case body == "":
		return usagef("no message text")
	case *kind > 1<<32-1:
		return usagef("--kind out of range")
	}
	return withSender(ctx, e, cf, func(ctx context.Context, c *client.Client) error {
		var err error
		opts := []client.SendOption{client.WithKind(uint32(*kind))}
		if *id != "" {
			opts = append(opts, client.WithClientMsgID(*id))
		}
		var ack *pb.SendAck
		if *to != "" {
			ack, err = c.Send(ctx, *to, []byte(body), opts...)
		} else {
			ack, err = c.SendGroup(ctx, *group, []byte(body), opts...)
		}
		if err != nil {
			return err
		}
		printSendAck(e, f.json, *to, *group, ack)
		return nil
	})
}

// printSendAck says what each side sees of a sent message: both find it
// under the same msg_id; the recipient's inbox numbers it in its own
// sequence (not known to the sender), and the sender's own copy has the
// seq in the ack, in the sender's inbox.
//
//	sent to bob: msg_id=1152921504606846977 (bob's inbox); your copy is seq 5 in your inbox
func printSendAck(e *env, asJSON bool, to, group string, ack *pb.SendAck) {
	if asJSON {
		out := map[string]any{"ok": true, "client_msg_id": ack.GetClientMsgId(), "msg_id": ack.GetMsgId(),
			"sender_seq": ack.GetSeq(), "time": ack.GetTime(), "duplicate": ack.GetDuplicate()}
		if group != "" {
			out["group_id"] = group
		} else {
			out["to"] = to
		}
		writeJSON(e.stdout, out)
		return
	}
	where := to + "'s inbox"
	dest := to
	if group != "" {
		where, dest = "the inbox of every member of "+group, "group "+group
	}
	dup := ""
	if ack.GetDuplicate() {
		dup = "; already stored by an earlier send with client_msg_id " + ack.GetClientMsgId() + " (not stored twice)"
	}
	fmt.Fprintf(e.stdout, "sent to %s: msg_id=%d (%s); your copy is seq %d in your inbox%s\n",
		dest, ack.GetMsgId(), where, ack.GetSeq(), dup)
}

// startFlags are the options that pick where a receiving command's
// stream starts.
type startFlags struct {
	after     int64
	fromStart bool
	unread    bool
}

func (f *flags) start(afterHelp string) *startFlags {
	sf := &startFlags{}
	f.Int64Var(&sf.after, "after", -1, afterHelp)
	f.BoolVar(&sf.fromStart, "from-start", false, "start at the beginning of the inbox (same as --after 0)")
	return sf
}

// resolve checks the start flags and returns what sets the start of the
// stream on a client.Config. def is what happens with no start flag:
// "head" (only messages arriving from now on) or "cursor" (where this
// device stopped last time).
func (sf *startFlags) resolve(def string) (func(*client.Config), error) {
	n := 0
	for _, set := range []bool{sf.after != -1, sf.fromStart, sf.unread} {
		if set {
			n++
		}
	}
	switch {
	case n > 1:
		return nil, usagef("give at most one of --after, --from-start and --unread")
	case sf.after < -1:
		return nil, usagef("--after must be a seq >= 0")
	case sf.after >= 0:
		v := uint64(sf.after)
		return func(cfg *client.Config) { cfg.AfterSeq = &v }, nil
	case sf.fromStart:
		v := uint64(0)
		return func(cfg *client.Config) { cfg.AfterSeq = &v }, nil
	case sf.unread || def == "cursor":
		return func(cfg *client.Config) { cfg.AfterSeq = nil }, nil // the device's server cursor
	}
	return func(cfg *client.Config) { cfg.StartAtHead = true }, nil
}

func cmdRecv(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "recv", "[--count N] [--timeout D] [--from-start | --after SEQ | --unread]")
	cf := f.connection(0, withToken|withDevice)
	cf.deviceSuffix = "-recv"
	count := f.Int("count", 0, "exit 0 after N messages (exit 1 if --timeout ends first); 0 = run until --timeout or Ctrl-C")
	start := f.start("start after this inbox seq instead of at new messages")
	f.BoolVar(&start.unread, "unread", false, "start where recv on this device (--device) last stopped")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
	if *count < 0 {
		return usagef("--count must not be negative")
	}
	startAt, err := start.resolve("head")
	if err != nil {
		return err
	}
	ctx, cancel := withTimeout(ctx, cf.timeout)
	defer cancel()
	c, err := dialFor(ctx, e, cf, startAt)
	if err != nil {
		return err
	}
	defer c.Close()
	got := 0
	for *count == 0 || got < *count {
		select {
		case m, ok := <-c.Messages():
			if !ok {
				return fmt.Errorf("after %d messages: %w", got, c.Err())
			}
			writeJSON(e.stdout, toJSONMessage(m))
			got++
		case n, ok := <-c.Notices():
			if ok {
				fmt.Fprintf(e.stderr, "notice: %s\n", n.GetText())
			}
		case <-ctx.Done():
			if *count > 0 {
				return fmt.Errorf("received %d of %d messages: %w", got, *count, ctx.Err())
			}
			return nil // --timeout or Ctrl-C without --count: a normal end
		}
	}
	return nil
}

func cmdToken(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "token", "--user U [--secret S] [--ttl D]")
	var secret, user string
	f.envString(&secret, "secret", "IM_JWT_SECRET", "", "HS256 secret shared with the server")
	f.envString(&user, "user", "IM_USER", "", "user id (the token's subject)")
	ttl := f.Duration("ttl", 24*time.Hour, "lifetime of the token")
	if err := f.parse(args); err != nil {
		return err
	}
	switch {
	case f.NArg() > 0:
		return usagef("unexpected arguments %q", f.Args())
	case secret == "":
		return usagef("--secret (or IM_JWT_SECRET) is required")
	case user == "":
		return usagef("--user is required")
	case !auth.ValidID(user):
		return usagef("--user %q: want 1..64 of [A-Za-z0-9_.-]", user)
	case *ttl <= 0:
		return usagef("--ttl must be positive")
	}
	now := e.now()
	tok, err := auth.MintTokenAt([]byte(secret), user, now, *ttl)
	if err != nil {
		return err
	}
	exp := now.Add(*ttl).Truncate(time.Second)
	if f.json {
		writeJSON(e.stdout, map[string]any{"ok": true, "token": tok, "user": user, "expires_at": exp.Unix()})
	} else {
		fmt.Fprintln(e.stdout, tok)
	}
	return nil
}

func cmdGroup(ctx context.Context, e *env, args []string) error {
	const synopsis = "create --name N [--members a,b] [--open] | join|leave|members --group G |\n" +
		"       add|remove --group G --members a,b | admin|unadmin|transfer --group G --member U"
	const actions = "create, join, leave, members, add, remove, admin, unadmin or transfer"
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		f := newFlags(e, "group", synopsis)
		if err := f.parse(args); err != nil {
			return err
		}
		return usagef("missing action: %s", actions)
	}
	action := args[0]
	f := newFlags(e, "group "+action, "[flags]")
	f.help = func(w io.Writer) {
		fmt.Fprintf(w, "Usage: imctl group %s\n\nFlags:\n", synopsis)
		envflag.PrintDefaults(w, f.FlagSet)
	}
	cf := f.connection(defaultTimeout, withToken)
	name := f.String("name", "", "group name (create)")
	members := f.String("members", "", "comma-separated users: initial members besides you (create), or those to add or remove")
	open := f.Bool("open", false, "anyone who knows the group id may join (create); groups are invite-only otherwise")
	member := f.String("member", "", "the member to make admin, unadmin or owner (admin, unadmin, transfer)")
	group := f.String("group", "", "group id (every action but create)")
	if err := f.parse(args[1:]); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
	switch action {
	case "create":
	case "join", "leave", "members", "add", "remove", "admin", "unadmin", "transfer":
		if *group == "" {
			return usagef("--group is required")
		}
	default:
		return usagef("unknown action %q: want %s", action, actions)
	}
	switch {
	case (action == "add" || action == "remove") && len(splitList(*members)) == 0:
		return usagef("--members is required")
	case (action == "admin" || action == "unadmin" || action == "transfer") && *member == "":
		return usagef("--member is required")
	}
	return withSender(ctx, e, cf, func(ctx context.Context, c *client.Client) error {
		var err error
		var gi *pb.GroupInfo
		switch action {
		case "create":
			if *open {
				gi, err = c.CreateOpenGroup(ctx, *name, splitList(*members)...)
			} else {
				gi, err = c.CreateGroup(ctx, *name, splitList(*members)...)
			}
		case "join":
			gi, err = c.JoinGroup(ctx, *group)
		case "leave":
			gi, err = c.LeaveGroup(ctx, *group)
		case "members":
			gi, err = c.GroupMembers(ctx, *group)
		case "add":
			gi, err = c.AddGroupMembers(ctx, *group, splitList(*members)...)
		case "remove":
			gi, err = c.RemoveGroupMembers(ctx, *group, splitList(*members)...)
		case "admin", "unadmin":
			gi, err = c.SetGroupAdmin(ctx, *group, *member, action == "admin")
		case "transfer":
			gi, err = c.TransferGroup(ctx, *group, *member)
		}
		if err != nil {
			return err
		}
		if f.json {
			writeJSON(e.stdout, map[string]any{"ok": true, "group_id": gi.GetGroupId(), "name": gi.GetName(), "owner": gi.GetOwner(),
				"members": nonNil(gi.GetMembers()), "admins": nonNil(gi.GetAdmins()), "open": gi.GetOpen()})
		} else if action == "leave" {
			fmt.Fprintf(e.stdout, "left group %s\n", gi.GetGroupId())
		} else {
			policy := "invite-only"
			if gi.GetOpen() {
				policy = "open"
			}
			fmt.Fprintf(e.stdout, "group %s %q (%s) owner %s admins: %s members: %s\n", gi.GetGroupId(), gi.GetName(), policy, gi.GetOwner(),
				strings.Join(gi.GetAdmins(), ", "), strings.Join(gi.GetMembers(), ", "))
		}
		return nil
	})
}

// nonNil returns ss, or an empty slice for nil (a JSON [] rather than null).
func nonNil(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}

func cmdGroups(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "groups", "[--after G] [--limit N]")
	cf := f.connection(defaultTimeout, withToken)
	after := f.String("after", "", "list the groups after this group id (the next page)")
	limit := f.Int("limit", 0, "groups per page (0: the server's default, 50)")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
	if *limit < 0 {
		return usagef("--limit must not be negative")
	}
	return withSender(ctx, e, cf, func(ctx context.Context, c *client.Client) error {
		gs, more, err := c.Groups(ctx, *after, *limit)
		if err != nil {
			return err
		}
		if f.json {
			type jsonGroup struct {
				GroupID string `json:"group_id"`
				Name    string `json:"name"`
				Owner   string `json:"owner"`
				Size    uint32 `json:"size"`
				Open    bool   `json:"open"`
				Admin   bool   `json:"admin"`
			}
			out := make([]jsonGroup, 0, len(gs))
			for _, g := range gs {
				out = append(out, jsonGroup{g.GetGroupId(), g.GetName(), g.GetOwner(), g.GetSize(), g.GetOpen(), g.GetAdmin()})
			}
			writeJSON(e.stdout, map[string]any{"ok": true, "has_more": more, "groups": out})
			return nil
		}
		for _, g := range gs {
			role := "member"
			switch {
			case g.GetOwner() == c.User():
				role = "owner"
			case g.GetAdmin():
				role = "admin"
			}
			fmt.Fprintf(e.stdout, "#%s %q %d members, owner %s, you: %s\n", g.GetGroupId(), g.GetName(), g.GetSize(), g.GetOwner(), role)
		}
		if more && len(gs) > 0 {
			fmt.Fprintf(e.stdout, "(more: --after %s)\n", gs[len(gs)-1].GetGroupId())
		}
		return nil
	})
}

func cmdPresence(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "presence", "[--users a,b] [USER...]")
	cf := f.connection(defaultTimeout, withToken)
	users := f.String("users", "", "comma-separated user ids")
	if err := f.parse(args); err != nil {
		return err
	}
	list := append(splitList(*users), f.Args()...)
	if len(list) == 0 {
		return usagef("no users given")
	}
	return withSender(ctx, e, cf, func(ctx context.Context, c *client.Client) error {
		ps, err := c.Presence(ctx, list...)
		if err != nil {
			return err
		}
		var unknown []string
		for _, p := range ps {
			if p.GetUnknown() {
				unknown = append(unknown, p.GetUser())
			}
		}
		var failed error
		if len(unknown) > 0 {
			failed = fmt.Errorf("no such user: %s", strings.Join(unknown, ", "))
		}
		if f.json {
			out := make([]map[string]any, 0, len(ps))
			for _, p := range ps {
				devices := p.GetDevices()
				if devices == nil {
					devices = []string{}
				}
				u := map[string]any{"user": p.GetUser(), "online": p.GetOnline(), "devices": devices}
				if p.GetUnknown() {
					u["unknown"] = true
				}
				out = append(out, u)
			}
			res := map[string]any{"ok": failed == nil, "users": out}
			if failed != nil {
				res["error"] = failed.Error()
				failed = &reportedError{failed}
			}
			writeJSON(e.stdout, res)
			return failed
		}
		for _, p := range ps {
			switch {
			case p.GetUnknown():
				// reported as the command's error
			case p.GetOnline():
				fmt.Fprintf(e.stdout, "%s online (%s)\n", p.GetUser(), strings.Join(p.GetDevices(), ", "))
			default:
				fmt.Fprintf(e.stdout, "%s offline\n", p.GetUser())
			}
		}
		return failed
	})
}
