//go:build linux

package bench

import (
	"strconv"

	"github.com/imgn/imgn/codec"
)

// Roles of connections.
const (
	roleNone uint8 = iota
	roleSender
	roleReceiver
)

// users names the bench accounts. Names are stable across runs (repeated
// runs against one node reuse the accounts) and distinct per scenario;
// the device name carries the run tag so two runs never kick each other.
type users struct{ prefix string }

func (u users) conn(i int) string     { return u.prefix + "c" + strconv.Itoa(i) }
func (u users) sender(p int) string   { return u.prefix + "ps" + strconv.Itoa(p) }
func (u users) receiver(p int) string { return u.prefix + "pr" + strconv.Itoa(p) }
func (u users) member(g, k int) string {
	return u.prefix + "g" + strconv.Itoa(g) + "m" + strconv.Itoa(k)
}
func (u users) churner(slot int) string { return u.prefix + "ch" + strconv.Itoa(slot) }

// msgState is the per-phase sending and receiving state shared by the
// message scenarios (p2p, group).
type msgState struct {
	run      uint32
	ph       loopPhase
	running  bool
	sched    Schedule
	j        uint64 // next event index
	last     uint64 // events with intended < ph.end
	sendDone bool
	drainEnd int64
	cnt      phaseCounters
	hist     *Hist
	lag      *Hist // actual send time - intended send time
	errs     map[string]int64
	body     []byte
	cmid     []byte
	runStr   string
}

func newMsgState(run uint32, payloadSize int) msgState {
	if payloadSize < payloadMin {
		payloadSize = payloadMin
	}
	return msgState{run: run, body: make([]byte, payloadSize), cmid: make([]byte, 0, 64), runStr: strconv.FormatUint(uint64(run), 36)}
}

func (m *msgState) start(ph loopPhase) {
	m.ph = ph
	m.running = true
	m.sched = Schedule{Start: ph.start, Rate: ph.rate}
	m.j = 0
	m.last = 0
	if ph.rate > 0 {
		m.last = m.sched.Due(ph.end - 1)
	}
	m.sendDone = false
	m.cnt = phaseCounters{}
	m.hist = NewHist()
	m.lag = NewHist()
	m.errs = map[string]int64{}
}

// nextEvent prepares event j's payload and client_msg_id; it returns the
// intended time and whether it is in the window.
func (m *msgState) nextEvent() (intended int64, inWin bool) {
	intended = m.sched.Intended(m.j)
	inWin = m.ph.window.Contains(intended)
	putPayload(m.body, m.run, uint32(m.ph.id), inWin, intended)
	m.cmid = append(m.cmid[:0], m.runStr...)
	m.cmid = append(m.cmid, '.')
	m.cmid = strconv.AppendInt(m.cmid, int64(m.ph.id), 10)
	m.cmid = append(m.cmid, '.')
	m.cmid = strconv.AppendUint(m.cmid, m.j, 10)
	return intended, inWin
}

// due returns the event index to send up to now (exclusive), or the
// drain/finish decision. It returns done=true when the phase is over.
func (m *msgState) pace(l *loop, now int64, send func() bool) (next int64) {
	if !m.running {
		return 0
	}
	if !m.sendDone {
		target := m.last
		if d := m.sched.Due(now); d < target {
			target = d
		}
		burst := 0
		for m.j < target && burst < maxBurst {
			if send() {
				m.lag.RecordNs(now - m.sched.Intended(m.j))
			}
			m.j++
			burst++
		}
		if m.j >= m.last {
			m.sendDone = true
			m.drainEnd = max(now, m.ph.end) + m.ph.drain
		} else {
			if burst == maxBurst {
				return now
			}
			return m.sched.Intended(m.j)
		}
	}
	if m.cnt.delivered >= m.cnt.expected || now >= m.drainEnd {
		if lost := m.cnt.expected - m.cnt.delivered; lost > 0 {
			m.errs["lost: not delivered within the drain time"] += lost
		}
		m.running = false
		l.phaseDone(m.cnt, m.hist, m.errs, m.lag)
		return 0
	}
	return m.drainEnd
}

// onPush records the deliveries in a PUSH body received by c.
func (m *msgState) onPush(l *loop, c *gconn, body []byte) {
	now := nowNs()
	_ = eachPushed(body, func(seq uint64, b []byte) {
		l.pushed(c, seq, now)
		p, ok := readPayload(b)
		if !ok || p.run != m.run {
			return
		}
		if c.role != roleReceiver {
			m.cnt.selfPushes++
			return
		}
		if !m.running || p.phase != uint32(m.ph.id) {
			m.cnt.late++
			return
		}
		if m.ph.window.Contains(now) {
			m.cnt.inWindowRx++
		}
		if p.inWindow {
			m.cnt.delivered++
			m.hist.RecordNs(now - p.intended)
		}
	})
}

// onReply counts SEND_ACKs and errors answering sends.
func (m *msgState) onReply(h codec.Header, body []byte) {
	switch h.Command {
	case codec.CmdSendAck:
		m.cnt.acks++
	case codec.CmdError:
		if m.errs != nil {
			m.errs[errorCodeName(h, body)]++
		}
	}
}

// ---- conns and login: hold connections, heartbeat ----

type holdHandler struct {
	from, n, targets int
	u                users
	ph               loopPhase
	running          bool
}

func (h *holdHandler) rampCount() int { return h.n }
func (h *holdHandler) dialSpec(i int) dialSpec {
	g := h.from + i
	return dialSpec{target: g % h.targets, user: h.u.conn(g), unit: int32(g)}
}
func (h *holdHandler) setupDone(*loop) bool                        { return true }
func (h *holdHandler) onReady(*loop, *gconn)                       {}
func (h *holdHandler) onClose(*loop, *gconn, string)               {}
func (h *holdHandler) onFrame(*loop, *gconn, codec.Header, []byte) {}
func (h *holdHandler) active() int                                 { return h.n }
func (h *holdHandler) startPhase(_ *loop, ph loopPhase) {
	h.ph = ph
	h.running = true
}
func (h *holdHandler) tick(l *loop, now int64) int64 {
	if !h.running {
		return 0
	}
	if now < h.ph.end {
		return h.ph.end
	}
	h.running = false
	l.phaseDone(phaseCounters{}, NewHist(), nil, nil)
	return 0
}

// ---- p2p: sender/receiver pairs ----

type p2pHandler struct {
	from, n, targets int
	u                users
	senders          []*gconn
	receivers        []*gconn
	toUser           []string
	pairs            []int32 // pairs taking part in the phase
	m                msgState
}

func newP2P(from, n, targets int, u users, run uint32, payload int) *p2pHandler {
	h := &p2pHandler{from: from, n: n, targets: targets, u: u, senders: make([]*gconn, n), receivers: make([]*gconn, n),
		toUser: make([]string, n), m: newMsgState(run, payload)}
	for i := range n {
		h.toUser[i] = u.receiver(from + i)
	}
	return h
}

func (h *p2pHandler) rampCount() int { return 2 * h.n }
func (h *p2pHandler) dialSpec(i int) dialSpec {
	p := i / 2
	g := h.from + p
	if i%2 == 0 {
		return dialSpec{target: g % h.targets, user: h.u.receiver(g), role: roleReceiver, unit: int32(p)}
	}
	return dialSpec{target: g % h.targets, user: h.u.sender(g), role: roleSender, unit: int32(p)}
}
func (h *p2pHandler) setupDone(*loop) bool { return true }
func (h *p2pHandler) onReady(_ *loop, c *gconn) {
	if c.role == roleSender {
		h.senders[c.unit] = c
	} else {
		h.receivers[c.unit] = c
	}
}
func (h *p2pHandler) onClose(_ *loop, c *gconn, _ string) {
	if c.role == roleSender && h.senders[c.unit] == c {
		h.senders[c.unit] = nil
	}
	if c.role == roleReceiver && h.receivers[c.unit] == c {
		h.receivers[c.unit] = nil
	}
}
func (h *p2pHandler) active() int {
	n := 0
	for i := range h.n {
		if h.senders[i] != nil && h.receivers[i] != nil {
			n++
		}
	}
	return n
}
func (h *p2pHandler) onFrame(l *loop, c *gconn, hd codec.Header, body []byte) {
	if hd.Command == codec.CmdPush {
		h.m.onPush(l, c, body)
		return
	}
	h.m.onReply(hd, body)
}
func (h *p2pHandler) startPhase(l *loop, ph loopPhase) {
	h.pairs = h.pairs[:0]
	for i := range h.n {
		if h.senders[i] != nil && h.receivers[i] != nil {
			h.pairs = append(h.pairs, int32(i))
		}
	}
	if len(h.pairs) == 0 {
		ph.rate = 0
	}
	h.m.start(ph)
}
func (h *p2pHandler) tick(l *loop, now int64) int64 {
	return h.m.pace(l, now, func() bool {
		p := h.pairs[h.m.j%uint64(len(h.pairs))]
		s, r := h.senders[p], h.receivers[p]
		_, inWin := h.m.nextEvent()
		if s == nil || r == nil {
			h.m.errs["pair down (connection lost)"]++
			return false
		}
		l.send(s, appendSend(l.wbuf[:0], s.nextSeq(), h.m.cmid, h.toUser[p], h.m.body))
		h.m.cnt.sentTotal++
		if inWin {
			h.m.cnt.sent++
			h.m.cnt.expected++
		}
		return true
	})
}

// ---- group: fan-out to groups of a given size ----

type groupHandler struct {
	from, n, size, targets int
	u                      users
	members                [][]*gconn // [group][member]
	ids                    []string   // group ids from GROUP_INFO
	createSeq              []uint32
	createsSent            bool
	pendingCreates         int
	groups                 []int32
	m                      msgState
}

func newGroup(from, n, size, targets int, u users, run uint32, payload int) *groupHandler {
	h := &groupHandler{from: from, n: n, size: size, targets: targets, u: u, members: make([][]*gconn, n),
		ids: make([]string, n), createSeq: make([]uint32, n), m: newMsgState(run, payload)}
	for i := range h.members {
		h.members[i] = make([]*gconn, size)
	}
	return h
}

func (h *groupHandler) rampCount() int { return h.n * h.size }
func (h *groupHandler) dialSpec(i int) dialSpec {
	gi, k := i/h.size, i%h.size
	g := h.from + gi
	role := roleReceiver
	if k == 0 {
		role = roleSender
	}
	return dialSpec{target: g % h.targets, user: h.u.member(g, k), role: role, unit: int32(i)}
}
func (h *groupHandler) onReady(_ *loop, c *gconn) {
	h.members[int(c.unit)/h.size][int(c.unit)%h.size] = c
}
func (h *groupHandler) onClose(_ *loop, c *gconn, _ string) {
	gi, k := int(c.unit)/h.size, int(c.unit)%h.size
	if h.members[gi][k] == c {
		h.members[gi][k] = nil
	}
	if k == 0 && h.createSeq[gi] != 0 && h.ids[gi] == "" {
		h.createSeq[gi] = 0
		h.pendingCreates--
	}
}

// setupDone creates every group (its member 0 creates it with the members
// that logged in) and reports whether all creations are answered.
func (h *groupHandler) setupDone(l *loop) bool {
	if !h.createsSent {
		h.createsSent = true
		var names []string
		for gi := range h.n {
			creator := h.members[gi][0]
			if creator == nil {
				continue
			}
			names = names[:0]
			for k := 1; k < h.size; k++ {
				if h.members[gi][k] != nil {
					names = append(names, h.u.member(h.from+gi, k))
				}
			}
			seq := creator.nextSeq()
			h.createSeq[gi] = seq
			h.pendingCreates++
			l.send(creator, appendGroupCreate(nil, seq, "bench", names))
		}
	}
	return h.pendingCreates <= 0
}

func (h *groupHandler) active() int {
	n := 0
	for gi := range h.n {
		if h.ids[gi] != "" && h.members[gi][0] != nil {
			n++
		}
	}
	return n
}

func (h *groupHandler) onFrame(l *loop, c *gconn, hd codec.Header, body []byte) {
	gi, k := int(c.unit)/h.size, int(c.unit)%h.size
	if k == 0 && hd.Seq != 0 && hd.Seq == h.createSeq[gi] && h.ids[gi] == "" {
		switch hd.Command {
		case codec.CmdGroupInfo:
			h.ids[gi] = string(pbBytes(body, 1))
		case codec.CmdError:
			l.st.failures["group create: "+errorCodeName(hd, body)]++
		}
		h.pendingCreates--
		return
	}
	if hd.Command == codec.CmdPush {
		h.m.onPush(l, c, body)
		return
	}
	h.m.onReply(hd, body)
}

func (h *groupHandler) startPhase(l *loop, ph loopPhase) {
	h.groups = h.groups[:0]
	for gi := range h.n {
		if h.ids[gi] != "" && h.members[gi][0] != nil {
			h.groups = append(h.groups, int32(gi))
		}
	}
	if len(h.groups) == 0 {
		ph.rate = 0
	}
	h.m.start(ph)
}

func (h *groupHandler) tick(l *loop, now int64) int64 {
	return h.m.pace(l, now, func() bool {
		gi := h.groups[h.m.j%uint64(len(h.groups))]
		s := h.members[gi][0]
		_, inWin := h.m.nextEvent()
		if s == nil {
			h.m.errs["group sender down (connection lost)"]++
			return false
		}
		l.send(s, appendGroupSend(l.wbuf[:0], s.nextSeq(), h.m.cmid, h.ids[gi], h.m.body))
		h.m.cnt.sentTotal++
		if inWin {
			h.m.cnt.sent++
			for k := 1; k < h.size; k++ {
				if h.members[gi][k] != nil {
					h.m.cnt.expected++
				}
			}
		}
		return true
	})
}

// ---- churn: connect, log in, send, disconnect, repeat ----

type churnHandler struct {
	from, n, targets int
	u                users
	run              uint32
	ph               loopPhase
	running          bool
	stopping         bool
	stopAt           int64
	busy             int     // slots with a connection in flight
	waiting          []int32 // slots to restart
	spare            []int32
	sentInWin        []bool
	waitUntil        []int64
	sendSeq          []uint32
	cycle            uint64
	cnt              phaseCounters
	hist             *Hist
	errs             map[string]int64
	body             []byte
	cmid             []byte
	runStr           string
}

func newChurn(from, n, targets int, u users, run uint32, payload int) *churnHandler {
	if payload < payloadMin {
		payload = payloadMin
	}
	return &churnHandler{from: from, n: n, targets: targets, u: u, run: run, waitUntil: make([]int64, n),
		sendSeq: make([]uint32, n), sentInWin: make([]bool, n), body: make([]byte, payload), runStr: strconv.FormatUint(uint64(run), 36)}
}

func (h *churnHandler) rampCount() int        { return 0 }
func (h *churnHandler) dialSpec(int) dialSpec { return dialSpec{} }
func (h *churnHandler) setupDone(*loop) bool  { return true }
func (h *churnHandler) active() int           { return h.n }
func (h *churnHandler) spec(slot int) dialSpec {
	g := h.from + slot
	return dialSpec{target: g % h.targets, user: h.u.churner(g), role: roleSender, unit: int32(slot)}
}

func (h *churnHandler) startPhase(l *loop, ph loopPhase) {
	h.ph = ph
	h.running, h.stopping = true, false
	h.cnt = phaseCounters{}
	h.hist = NewHist()
	h.errs = map[string]int64{}
	h.waiting = h.waiting[:0]
	for slot := range h.n {
		h.waiting = append(h.waiting, int32(slot))
		h.waitUntil[slot] = ph.start
	}
}

func (h *churnHandler) startSlot(l *loop, slot int, now int64) {
	c := l.dial(h.spec(slot), now)
	if c == nil {
		h.errs["dial failed"]++
		h.waitUntil[slot] = now + int64(10e6)
		h.waiting = append(h.waiting, int32(slot))
		return
	}
	h.busy++
}

func (h *churnHandler) onReady(l *loop, c *gconn) {
	slot := int(c.unit)
	h.cycle++
	h.cmid = append(h.cmid[:0], h.runStr...)
	h.cmid = append(h.cmid, ".c"...)
	h.cmid = strconv.AppendUint(h.cmid, h.cycle, 10)
	putPayload(h.body, h.run, uint32(h.ph.id), false, c.started)
	seq := c.nextSeq()
	h.sendSeq[slot] = seq
	l.send(c, appendSend(l.wbuf[:0], seq, h.cmid, h.u.churner(h.from+slot), h.body))
	h.cnt.sentTotal++
	h.sentInWin[slot] = !h.stopping && h.ph.window.Contains(nowNs())
	if h.sentInWin[slot] {
		h.cnt.sent++
		h.cnt.expected++
	}
}

func (h *churnHandler) onFrame(l *loop, c *gconn, hd codec.Header, body []byte) {
	slot := int(c.unit)
	if hd.Seq == 0 || hd.Seq != h.sendSeq[slot] {
		if hd.Command == codec.CmdPush {
			h.cnt.selfPushes++
		}
		return
	}
	now := nowNs()
	switch hd.Command {
	case codec.CmdSendAck:
		h.cnt.acks++
		if h.sentInWin[slot] {
			h.cnt.delivered++
			h.hist.RecordNs(now - c.started)
		}
		if h.ph.window.Contains(now) {
			h.cnt.cycles++
			h.cnt.inWindowRx++
		}
	case codec.CmdError:
		h.errs[errorCodeName(hd, body)]++
	}
	l.closeConn(c, "")
}

func (h *churnHandler) onClose(l *loop, c *gconn, reason string) {
	if !h.running {
		return
	}
	slot := int(c.unit)
	h.busy--
	if reason != "" {
		h.errs[reason]++
	}
	h.waitUntil[slot] = nowNs()
	if reason != "" {
		h.waitUntil[slot] += int64(10e6) // back off 10 ms after a failure
	}
	h.waiting = append(h.waiting, int32(slot))
}

func (h *churnHandler) tick(l *loop, now int64) int64 {
	if !h.running {
		return 0
	}
	if !h.stopping && now >= h.ph.end {
		h.stopping = true
		h.stopAt = now + h.ph.drain
	}
	if h.stopping {
		if h.busy == 0 || now >= h.stopAt {
			h.running = false
			l.phaseDone(h.cnt, h.hist, h.errs, nil)
			return 0
		}
		return h.stopAt
	}
	next := h.ph.end
	// startSlot may append to h.waiting: iterate over the old list.
	pending := h.waiting
	h.waiting = h.spare[:0]
	for _, slot := range pending {
		if h.waitUntil[slot] <= now {
			h.startSlot(l, int(slot), now)
			continue
		}
		h.waiting = append(h.waiting, slot)
	}
	h.spare = pending[:0]
	for _, slot := range h.waiting {
		next = min(next, h.waitUntil[slot])
	}
	return next
}
