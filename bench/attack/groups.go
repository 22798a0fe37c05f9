package attack

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// groupAttacks go after group access control (docs/protocol.md §4.5).
var groupAttacks = []attack{
	{"join-invite-only-group", func(e *env) Result { return e.joinInviteOnly() }},
}

// joinInviteOnly: an outsider who learned an invite-only group's id tries
// to get in and to read it: GROUP_JOIN is GROUP_INVITE_ONLY, GROUP_ADD of
// itself and GROUP_MEMBERS are NOT_GROUP_MEMBER, and a message sent to the
// group afterwards is not in the outsider's inbox.
func (e *env) joinInviteOnly() Result {
	want := "GROUP_INVITE_ONLY"
	r := Result{Want: want + ", no member list, no messages", Metric: "imgn_errors_total{" + errLabel(want) + "}"}
	before := e.metric("imgn_errors_total", errLabel(want))
	owner, err := e.loggedInRaw("acl-owner")
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer owner.Close()
	outsider, err := e.loggedInRaw("acl-outsider")
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer outsider.Close()
	var g pb.GroupInfo
	if err := owner.call(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "private"}, codec.CmdGroupInfo, &g); err != nil {
		r.Detail = "creating the group: " + err.Error()
		return r
	}
	start := time.Now()
	got := make([]string, 0, 3)
	for _, req := range []struct {
		cmd codec.Command
		m   proto.Message
	}{
		{codec.CmdGroupJoin, &pb.GroupRequest{GroupId: g.GroupId}},
		{codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: g.GroupId, Users: []string{"acl-outsider"}}},
		{codec.CmdGroupMembers, &pb.GroupRequest{GroupId: g.GroupId}},
	} {
		if _, err := outsider.frame(req.cmd, req.m); err != nil {
			r.Detail = err.Error()
			return r
		}
		cmd, perr, err := outsider.reply(5 * time.Second)
		if err != nil {
			r.Detail = err.Error()
			return r
		}
		if perr == nil {
			got = append(got, cmd.String())
		} else {
			got = append(got, gotName(perr))
		}
	}
	r.Took = time.Since(start)
	r.Got = fmt.Sprint(got)
	if err := owner.call(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: fmt.Sprintf("secret-%d", time.Now().UnixNano()), GroupId: g.GroupId, Body: []byte("secret")}, codec.CmdSendAck, nil); err != nil {
		r.Detail = "sending to the group: " + err.Error()
		return r
	}
	var page pb.SyncOK
	if err := outsider.call(codec.CmdSync, &pb.SyncRequest{}, codec.CmdSyncOK, &page); err != nil {
		r.Detail = "outsider's SYNC: " + err.Error()
		return r
	}
	leaked := 0
	for _, m := range page.Messages {
		if m.GroupId == g.GroupId {
			leaked++
		}
	}
	r.Detail = fmt.Sprintf("group messages in the outsider's inbox: %d", leaked)
	r.Counted = e.counted(want, before, 1)
	r.OK = leaked == 0 && r.Counted >= 1 && got[0] == want && got[1] == "NOT_GROUP_MEMBER" && got[2] == "NOT_GROUP_MEMBER"
	return r
}

// loggedInRaw dials and logs user in by token.
func (e *env) loggedInRaw(user string) (*raw, error) {
	c, err := dialRaw(e.addr)
	if err != nil {
		return nil, err
	}
	if err := c.login(*e.token(user), "d"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// call sends m and decodes the reply into out (when not nil), which must
// be want.
func (c *raw) call(cmd codec.Command, m proto.Message, want codec.Command, out proto.Message) error {
	if _, err := c.frame(cmd, m); err != nil {
		return err
	}
	f, err := c.replyFrame(10 * time.Second)
	if err != nil {
		return err
	}
	if f.cmd != want {
		pe, _ := errOf(f)
		return fmt.Errorf("%s answered %s %s", cmd, f.cmd, gotName(pe))
	}
	if out == nil {
		return nil
	}
	return proto.Unmarshal(f.body, out)
}
