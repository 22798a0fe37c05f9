package api

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/persist"
)

// The JSON shapes of the API (docs/api.md). 64-bit message ids are
// decimal strings: they exceed the integers JSON parsers keep exactly.

type userJSON struct {
	User     string    `json:"user"`
	Created  int64     `json:"created"`
	Disabled bool      `json:"disabled"`
	Online   *bool     `json:"online,omitempty"`
	Devices  *[]string `json:"devices,omitempty"`
}

func userOut(u persist.User) userJSON {
	return userJSON{User: u.ID, Created: u.Created, Disabled: u.Disabled()}
}

type groupJSON struct {
	GroupID string   `json:"group_id"`
	Name    string   `json:"name"`
	Owner   string   `json:"owner"`
	Members []string `json:"members"`
	Admins  []string `json:"admins"`
	Open    bool     `json:"open"`
	Created int64    `json:"created"`
}

func groupOut(g persist.Group) groupJSON {
	if g.Members == nil {
		g.Members = []string{}
	}
	if g.Admins == nil {
		g.Admins = []string{}
	}
	return groupJSON{GroupID: g.ID, Name: g.Name, Owner: g.Owner, Members: g.Members, Admins: g.Admins, Open: g.Open, Created: g.Created}
}

type messageJSON struct {
	Seq         uint64 `json:"seq"`
	MsgID       string `json:"msg_id"`
	From        string `json:"from"`
	To          string `json:"to"`
	GroupID     string `json:"group_id,omitempty"`
	ClientMsgID string `json:"client_msg_id"`
	Kind        uint32 `json:"kind"`
	Body        []byte `json:"body"` // standard base64
	Time        int64  `json:"time"`
	// Chat fields (docs/protocol.md §4.8), left out when unset: an event
	// entry (1 recall, 2 delete) and the message it is about; a recalled
	// message (no body); an entry the inbox's owner deleted (no body).
	Event       uint32 `json:"event,omitempty"`
	TargetMsgID string `json:"target_msg_id,omitempty"`
	Recalled    bool   `json:"recalled,omitempty"`
	Deleted     bool   `json:"deleted,omitempty"`
}

// messageOut is an inbox entry as the API shows it.
func messageOut(e *persist.InboxEntry) messageJSON {
	m := &e.Msg
	out := messageJSON{Seq: e.Seq, MsgID: strconv.FormatUint(m.ID, 10), From: m.From, To: m.To,
		ClientMsgID: m.ClientMsgID, Kind: m.Kind, Body: m.Body, Time: m.Timestamp,
		Event: m.Event, Recalled: m.Recalled, Deleted: e.Deleted}
	if m.Group {
		out.GroupID = m.To
	}
	if m.Target != 0 {
		out.TargetMsgID = strconv.FormatUint(m.Target, 10)
	}
	if out.Body == nil {
		out.Body = []byte{}
	}
	return out
}

// messagesOut is messageOut of each entry.
func messagesOut(entries []persist.InboxEntry) []messageJSON {
	msgs := make([]messageJSON, len(entries))
	for i := range entries {
		msgs[i] = messageOut(&entries[i])
	}
	return msgs
}

// groupConvPrefix marks a group in a {conv} path value: "group:g5yc1d2k3".
// Ids never contain a colon, so the name is never a user's.
const groupConvPrefix = "group:"

// convName is how the API names a conversation in paths and answers.
func convName(id persist.ConvID) string {
	if id.Group {
		return groupConvPrefix + id.ID
	}
	return id.ID
}

// convOf parses a {conv} path value (the engine checks the id).
func convOf(name string) persist.ConvID {
	if g, ok := strings.CutPrefix(name, groupConvPrefix); ok {
		return persist.ConvID{ID: g, Group: true}
	}
	return persist.ConvID{ID: name}
}

type conversationJSON struct {
	Conv    string       `json:"conv"`
	Peer    string       `json:"peer,omitempty"`
	GroupID string       `json:"group_id,omitempty"`
	LastSeq uint64       `json:"last_seq"`
	ReadSeq uint64       `json:"read_seq"`
	Unread  int          `json:"unread"`
	Last    *messageJSON `json:"last,omitempty"`
}

type inboxRefJSON struct {
	User string `json:"user"`
	Seq  uint64 `json:"seq"`
}

// refsOut lists where a message or event is: users[i] at seqs[i].
func refsOut(users []string, seqs []uint64) []inboxRefJSON {
	refs := make([]inboxRefJSON, len(users))
	for i, u := range users {
		refs[i] = inboxRefJSON{User: u, Seq: seqs[i]}
	}
	return refs
}

// routes registers every endpoint. Path values are ids; the Backend
// checks them.
func (a *API) routes() {
	a.handle("POST /v1/users", a.createUser)
	a.handle("GET /v1/users/{user}", a.getUser)
	a.handle("PUT /v1/users/{user}/password", a.setPassword)
	a.handle("POST /v1/users/{user}/disable", a.setDisabled(true))
	a.handle("POST /v1/users/{user}/enable", a.setDisabled(false))
	a.handle("POST /v1/users/{user}/tokens", a.mintToken)
	a.handle("POST /v1/users/{user}/kick", a.kick)
	a.handle("GET /v1/users/{user}/inbox", a.inbox)
	a.handle("GET /v1/users/{user}/conversations", a.conversations)
	a.handle("GET /v1/users/{user}/conversations/{conv}/history", a.history)
	a.handle("POST /v1/users/{user}/conversations/{conv}/read", a.markRead)
	a.handle("GET /v1/users/{user}/conversations/{conv}/read-count", a.readCount)
	a.handle("POST /v1/users/{user}/messages/{msg_id}/delete", a.deleteForMe)
	a.handle("GET /v1/presence", a.presence)
	a.handle("POST /v1/groups", a.createGroup)
	a.handle("GET /v1/groups/{group}", a.getGroup)
	a.handle("PUT /v1/groups/{group}/members/{user}", a.member(true))
	a.handle("DELETE /v1/groups/{group}/members/{user}", a.member(false))
	a.handle("POST /v1/messages", a.send)
	a.handle("POST /v1/messages/{msg_id}/recall", a.recall)
}

func (a *API) createUser(ctx context.Context, r *http.Request) (int, any, error) {
	var in struct {
		User     string `json:"user"`
		Password string `json:"password"`
	}
	if err := decode(r, &in); err != nil {
		return 0, nil, err
	}
	u, err := a.b.CreateUser(ctx, in.User, in.Password)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, userOut(u), nil
}

func (a *API) getUser(ctx context.Context, r *http.Request) (int, any, error) {
	id := r.PathValue("user")
	u, err := a.b.User(ctx, id)
	if err != nil {
		return 0, nil, err
	}
	out := userOut(u)
	p := a.b.Presence(ctx, []string{id})[0]
	out.Online, out.Devices = &p.Online, &p.Devices
	return http.StatusOK, out, nil
}

func (a *API) setPassword(ctx context.Context, r *http.Request) (int, any, error) {
	var in struct {
		Password string `json:"password"`
	}
	if err := decode(r, &in); err != nil {
		return 0, nil, err
	}
	id := r.PathValue("user")
	if err := a.b.SetPassword(ctx, id, in.Password); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]string{"user": id}, nil
}

func (a *API) setDisabled(disabled bool) handler {
	return func(ctx context.Context, r *http.Request) (int, any, error) {
		id := r.PathValue("user")
		kicked, err := a.b.SetDisabled(ctx, id, disabled)
		if err != nil {
			return 0, nil, err
		}
		out := map[string]any{"user": id, "disabled": disabled}
		if disabled {
			out["kicked"] = kicked
		}
		return http.StatusOK, out, nil
	}
}

func (a *API) mintToken(ctx context.Context, r *http.Request) (int, any, error) {
	var in struct {
		TTL string `json:"ttl"`
	}
	if r.ContentLength != 0 {
		if err := decode(r, &in); err != nil {
			return 0, nil, err
		}
	}
	ttl := DefaultTokenTTL
	if in.TTL != "" {
		d, err := time.ParseDuration(in.TTL)
		if err != nil {
			return 0, nil, badRequest(`ttl must be a duration such as "24h" or "90m"`)
		}
		ttl = d
	}
	id := r.PathValue("user")
	tok, exp, err := a.b.MintToken(ctx, id, ttl)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"user": id, "token": tok, "expires_at": exp.UnixMilli()}, nil
}

func (a *API) kick(ctx context.Context, r *http.Request) (int, any, error) {
	id := r.PathValue("user")
	if _, err := a.b.User(ctx, id); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"user": id, "kicked": a.b.KickEverywhere(ctx, id)}, nil
}

func (a *API) inbox(ctx context.Context, r *http.Request) (int, any, error) {
	q, err := queryUints(r, "after_seq", "limit")
	if err != nil {
		return 0, nil, err
	}
	id := r.PathValue("user")
	p, err := a.b.Inbox(ctx, id, q[0], limitArg(q[1]))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"user": id, "messages": messagesOut(p.Entries), "head_seq": p.HeadSeq, "first_seq": p.FirstSeq, "has_more": p.HasMore}, nil
}

func (a *API) presence(ctx context.Context, r *http.Request) (int, any, error) {
	var users []string
	for _, v := range r.URL.Query()["user"] {
		for u := range strings.SplitSeq(v, ",") {
			if u != "" {
				users = append(users, u)
			}
		}
	}
	switch {
	case len(users) == 0:
		return 0, nil, badRequest("give at least one user: ?user=alice&user=bob (or user=alice,bob)")
	case len(users) > maxPresence:
		return 0, nil, badRequest("at most " + strconv.Itoa(maxPresence) + " users per request")
	}
	return http.StatusOK, map[string]any{"users": a.b.Presence(ctx, users)}, nil
}

func (a *API) createGroup(ctx context.Context, r *http.Request) (int, any, error) {
	var in struct {
		Owner   string   `json:"owner"`
		Name    string   `json:"name"`
		Members []string `json:"members"`
		Open    bool     `json:"open"`
	}
	if err := decode(r, &in); err != nil {
		return 0, nil, err
	}
	g, err := a.b.CreateGroup(ctx, in.Owner, in.Name, in.Members, in.Open)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, groupOut(g), nil
}

func (a *API) getGroup(ctx context.Context, r *http.Request) (int, any, error) {
	g, err := a.b.Group(ctx, r.PathValue("group"))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, groupOut(g), nil
}

func (a *API) member(add bool) handler {
	return func(ctx context.Context, r *http.Request) (int, any, error) {
		change := a.b.RemoveGroupMember
		if add {
			change = a.b.AddGroupMember
		}
		g, err := change(ctx, r.PathValue("group"), r.PathValue("user"))
		if err != nil {
			return 0, nil, err
		}
		return http.StatusOK, groupOut(g), nil
	}
}

func (a *API) send(ctx context.Context, r *http.Request) (int, any, error) {
	var in struct {
		From        string  `json:"from"`
		To          string  `json:"to"`
		GroupID     string  `json:"group_id"`
		ClientMsgID string  `json:"client_msg_id"`
		Kind        uint32  `json:"kind"`
		Text        *string `json:"text"`
		Body        []byte  `json:"body"`
	}
	if err := decode(r, &in); err != nil {
		return 0, nil, err
	}
	m := engine.Outgoing{From: in.From, To: in.To, ClientMsgID: in.ClientMsgID, Kind: in.Kind, Body: in.Body}
	switch {
	case (in.To == "") == (in.GroupID == ""):
		return 0, nil, badRequest("give exactly one of to (a user) and group_id")
	case in.Text != nil && in.Body != nil:
		return 0, nil, badRequest("give text or body, not both")
	case in.Text != nil:
		m.Body = []byte(*in.Text)
	}
	if in.GroupID != "" {
		m.To, m.Group = in.GroupID, true
	}
	sent, err := a.b.Send(ctx, m)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"msg_id": strconv.FormatUint(sent.Msg.ID, 10), "client_msg_id": sent.Msg.ClientMsgID,
		"time": sent.Msg.Timestamp, "duplicate": sent.Duplicate, "inboxes": refsOut(sent.Inboxes, sent.Seqs)}, nil
}

func (a *API) conversations(ctx context.Context, r *http.Request) (int, any, error) {
	q, err := queryUints(r, "before_seq", "limit")
	if err != nil {
		return 0, nil, err
	}
	id := r.PathValue("user")
	p, err := a.b.Conversations(ctx, id, q[0], limitArg(q[1]))
	if err != nil {
		return 0, nil, err
	}
	list := make([]conversationJSON, len(p.Conversations))
	for i := range p.Conversations {
		cv := &p.Conversations[i]
		list[i] = conversationJSON{Conv: convName(cv.Conv), LastSeq: cv.LastSeq, ReadSeq: cv.ReadSeq, Unread: cv.Unread}
		if cv.Conv.Group {
			list[i].GroupID = cv.Conv.ID
		} else {
			list[i].Peer = cv.Conv.ID
		}
		if cv.HasLast {
			m := messageOut(&cv.Last)
			list[i].Last = &m
		}
	}
	return http.StatusOK, map[string]any{"user": id, "conversations": list, "has_more": p.HasMore}, nil
}

func (a *API) history(ctx context.Context, r *http.Request) (int, any, error) {
	q, err := queryUints(r, "before_seq", "before_msg_id", "limit")
	if err != nil {
		return 0, nil, err
	}
	id, conv := r.PathValue("user"), convOf(r.PathValue("conv"))
	p, err := a.b.History(ctx, id, conv, q[0], q[1], limitArg(q[2]))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"user": id, "conv": convName(conv), "messages": messagesOut(p.Messages), "has_more": p.HasMore}, nil
}

func (a *API) markRead(ctx context.Context, r *http.Request) (int, any, error) {
	var in struct {
		UpTo uint64 `json:"up_to"`
	}
	if r.ContentLength != 0 {
		if err := decode(r, &in); err != nil {
			return 0, nil, err
		}
	}
	id, conv := r.PathValue("user"), convOf(r.PathValue("conv"))
	res, err := a.b.MarkRead(ctx, id, conv, in.UpTo)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"user": id, "conv": convName(conv), "read_seq": res.ReadSeq, "unread": res.Unread, "moved": res.Moved}, nil
}

// msgIDArg parses the {msg_id} path value.
func msgIDArg(r *http.Request) (uint64, error) {
	id, err := strconv.ParseUint(r.PathValue("msg_id"), 10, 64)
	if err != nil || id == 0 {
		return 0, badRequest("msg_id must be a message id: a positive decimal integer")
	}
	return id, nil
}

func (a *API) recall(ctx context.Context, r *http.Request) (int, any, error) {
	target, err := msgIDArg(r)
	if err != nil {
		return 0, nil, err
	}
	var in struct {
		User string `json:"user"`
	}
	if err := decode(r, &in); err != nil {
		return 0, nil, err
	}
	if in.User == "" {
		return 0, nil, badRequest("user (the message's sender) is required")
	}
	res, err := a.b.Recall(ctx, in.User, target)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"msg_id": strconv.FormatUint(target, 10), "event_msg_id": strconv.FormatUint(res.Event.ID, 10),
		"duplicate": res.Duplicate, "inboxes": refsOut(res.Inboxes, res.Seqs)}, nil
}

func (a *API) deleteForMe(ctx context.Context, r *http.Request) (int, any, error) {
	target, err := msgIDArg(r)
	if err != nil {
		return 0, nil, err
	}
	id := r.PathValue("user")
	res, err := a.b.DeleteForMe(ctx, id, target)
	if err != nil {
		return 0, nil, err
	}
	out := map[string]any{"user": id, "msg_id": strconv.FormatUint(target, 10), "duplicate": res.Duplicate, "seq": uint64(0)}
	if i := slices.Index(res.Inboxes, id); i >= 0 {
		out["seq"] = res.Seqs[i]
	}
	if res.Event.ID != 0 {
		out["event_msg_id"] = strconv.FormatUint(res.Event.ID, 10)
	}
	return http.StatusOK, out, nil
}

func (a *API) readCount(ctx context.Context, r *http.Request) (int, any, error) {
	q, err := queryUints(r, "seq")
	if err != nil {
		return 0, nil, err
	}
	if q[0] == 0 {
		return 0, nil, badRequest("seq (the message's seq in the user's inbox) is required")
	}
	id, conv := r.PathValue("user"), convOf(r.PathValue("conv"))
	read, members, err := a.b.ReadCount(ctx, id, conv, q[0])
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"user": id, "conv": convName(conv), "seq": q[0], "read": read, "members": members}, nil
}
