//go:build linux

package bench

import (
	"errors"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/codec"
	"golang.org/x/sys/unix"
)

// epoch is the origin of the generator's monotonic clock.
var epoch = time.Now()

// nowNs is the generator's clock: nanoseconds since epoch, monotonic.
func nowNs() int64 { return int64(time.Since(epoch)) }

// Connection states.
const (
	stDialing uint8 = iota // connect() issued, waiting for writability
	stLogin                // LOGIN sent, waiting for LOGIN_OK
	stReady                // logged in
	stClosed
)

// gconn is one generator connection. It belongs to one loop and is touched
// only by that loop's goroutine. Its size is what the generator spends per
// connection besides the socket: in and out are nil unless a partial frame
// or an unsent tail exists.
type gconn struct {
	fd        int32
	state     uint8
	role      uint8
	ackQueued bool
	wsUp      bool  // --ws: the WebSocket upgrade completed
	attempt   uint8 // ramp connections: how many times this one was retried
	rampIdx   int32 // index of the ramp connection (-1: opened by a handler)
	unit      int32 // the handler's index (pair, group member, slot)
	pos       int32 // index in loop.ready, -1 when not there
	seq       uint32
	started   int64  // dial time, loop clock
	ackSeq    uint64 // highest pushed seq seen
	ackedSeq  uint64 // highest seq sent in PUSH_ACK
	in        []byte // partial inbound frame
	out       []byte // unsent outbound bytes
}

func (c *gconn) nextSeq() uint32 {
	c.seq++
	if c.seq == 0 {
		c.seq = 1
	}
	return c.seq
}

// dialSpec is what a handler tells the loop about the i-th connection it
// wants during the ramp.
type dialSpec struct {
	target int // index into loopConfig.targets
	user   string
	role   uint8
	unit   int32
}

// handler is a scenario's logic on one loop. Every method runs on the loop
// goroutine.
type handler interface {
	// rampCount is how many connections the ramp opens; dialSpec(i)
	// describes the i-th.
	rampCount() int
	dialSpec(i int) dialSpec
	// setupDone reports whether post-login setup (group creation) is
	// complete; the loop reports itself ramped only then.
	setupDone(l *loop) bool
	onReady(l *loop, c *gconn)
	onFrame(l *loop, c *gconn, h codec.Header, body []byte)
	onClose(l *loop, c *gconn, reason string)
	// startPhase begins a measured phase; tick drives it and returns the
	// next time it wants to run (0: no timer). The handler calls
	// l.phaseDone when the phase is over.
	startPhase(l *loop, ph loopPhase)
	tick(l *loop, now int64) int64
	// active is the number of units that can take part in phases.
	active() int
}

// loopPhase is a phase as one loop runs it: clock times are the loop's.
type loopPhase struct {
	id     int
	start  int64   // loop clock
	rate   float64 // this loop's share, events/s
	window Window
	end    int64 // when sending stops (= window.To)
	drain  int64 // how long to wait for in-flight messages after end
}

// loopConfig is everything a loop needs besides its handler.
type loopConfig struct {
	id           int
	src          [4]byte
	bindSrc      bool
	targets      []unix.SockaddrInet4
	route        func(user string) (int, bool) // router mode: the user's target
	secret       []byte
	device       string
	concurrency  int
	retries      int   // re-dials of a ramp connection that failed
	loginTimeout int64 // ns
	heartbeat    int64 // ns; 0 = the interval the server announces
	pushAck      int64 // ns; 0 = never
	run          uint32
	payload      int
	maxOutbound  int
	ws           bool // speak WebSocket: upgrade first, then frames in binary messages (ws_linux.go)
}

// loopStats are the counters of one loop. Written only by the loop
// goroutine; read by the worker after the loop has reported (channel
// handoff) or after it exited.
type loopStats struct {
	dialed, connected, loggedIn int64
	retried                     int64
	failures                    map[string]int64 // ramp failures by reason
	errs                        map[string]int64 // errors after login by reason
	loginHist                   *Hist
	rampStart, rampEnd          int64
	stopReason                  string
	heartbeats, heartbeatOKs    int64
}

// rampReport is what a loop sends when its ramp is complete.
type rampReport struct {
	loop   int
	active int
	stats  loopStats
}

// phaseReport is what a loop sends when a phase is over.
type phaseReport struct {
	loop int
	res  phaseCounters
	hist *Hist
	lag  *Hist
	errs map[string]int64
	held int64
}

// phaseCounters are a handler's counters for one phase.
type phaseCounters struct {
	sent        int64 // messages whose intended time is in the window
	sentTotal   int64 // messages sent in the phase, warmup included
	expected    int64 // deliveries expected for sent (fan-out)
	delivered   int64 // deliveries of in-window messages (by the end of the drain)
	inWindowRx  int64 // deliveries received inside the window (any message of the phase)
	selfPushes  int64 // pushes of a sender's own message to the sending connection
	acks        int64 // SEND_ACKs received
	cycles      int64 // churn cycles completed in the window
	late        int64 // messages of an earlier phase received in this one
	heartbeats  int64
	heartbeatOK int64
}

type loopCmd struct {
	kind  string // "go", "stop-ramp", "finish"
	phase loopPhase
}

// wheel spreads a periodic per-connection action evenly over an interval:
// with n connections it acts on one every interval/n.
type wheel struct {
	interval int64
	last     int64
	credit   float64
	idx      int
}

// due returns how many connections to act on now.
func (w *wheel) due(now int64, n int) int {
	if w.interval <= 0 || n == 0 {
		w.last = now
		return 0
	}
	if w.last == 0 {
		w.last = now
		return 0
	}
	w.credit += float64(now-w.last) * float64(n) / float64(w.interval)
	w.last = now
	if w.credit > float64(n) {
		w.credit = float64(n)
	}
	k := int(w.credit)
	w.credit -= float64(k)
	return k
}

// next returns when the wheel next has work.
func (w *wheel) next(now int64, n int) int64 {
	if w.interval <= 0 || n == 0 {
		return 0
	}
	step := w.interval / int64(n)
	if step < int64(time.Millisecond) {
		step = int64(time.Millisecond)
	}
	return now + step
}

// retry is a ramp connection to dial again at time at.
type retry struct {
	idx     int32
	attempt uint8
	at      int64
}

// loop is one generator event loop: an epoll set of connections driven by
// one goroutine (locked to its OS thread).
type loop struct {
	cfg   loopConfig
	h     handler
	epfd  int
	byFD  []*gconn
	rbuf  []byte
	wbuf  []byte // scratch for building frames
	wsbuf []byte // --ws: scratch for wrapping frames in WebSocket messages
	evs   []unix.EpollEvent

	ready []*gconn
	hb    wheel
	acks  ackQueue // connections with pushes to acknowledge

	// ramp
	rampNext, inflight int
	rampStopped        bool
	rampReported       bool
	pending            []*gconn // dialing or logging in, in dial order (deadline order)
	pendingHead        int
	retryQ             []retry // failed ramp connections to dial again
	consecutiveFail    map[string]int
	users              map[*gconn]string // user of each connection not yet logged in

	st   loopStats
	held atomic.Int64 // logged-in connections, for progress reports

	// phase
	inPhase                bool
	hbAtStart, hbOKAtStart int64

	mu     sync.Mutex
	cmds   []loopCmd
	hasCmd atomic.Bool
	exit   bool

	rampCh  chan<- rampReport
	phaseCh chan<- phaseReport
	done    chan struct{}
}

func newLoop(cfg loopConfig, h handler, rampCh chan<- rampReport, phaseCh chan<- phaseReport) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	l := &loop{
		cfg: cfg, h: h, epfd: epfd, rbuf: make([]byte, 64<<10), wbuf: make([]byte, 0, 4096),
		evs: make([]unix.EpollEvent, 512), rampCh: rampCh, phaseCh: phaseCh, done: make(chan struct{}),
		consecutiveFail: map[string]int{},
	}
	l.st.failures = map[string]int64{}
	l.st.errs = map[string]int64{}
	l.st.loginHist = NewHist()
	l.hb.interval = cfg.heartbeat
	return l, nil
}

// command queues a command for the loop; safe from any goroutine.
func (l *loop) command(c loopCmd) {
	l.mu.Lock()
	l.cmds = append(l.cmds, c)
	l.mu.Unlock()
	l.hasCmd.Store(true)
}

func (l *loop) processCmds() {
	if !l.hasCmd.Load() {
		return
	}
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.hasCmd.Store(false)
	l.mu.Unlock()
	for _, c := range cmds {
		switch c.kind {
		case "stop-ramp":
			if !l.rampStopped {
				l.rampStopped = true
				if l.st.stopReason == "" && l.rampNext < l.h.rampCount() {
					l.st.stopReason = "stopped by the coordinator (memory guard or deadline)"
				}
			}
		case "go":
			l.inPhase = true
			l.hbAtStart, l.hbOKAtStart = l.st.heartbeats, l.st.heartbeatOKs
			l.h.startPhase(l, c.phase)
		case "finish":
			l.exit = true
		}
	}
}

// maxBurst bounds the sends of one tick so reads are not starved.
const maxBurst = 1024

// run is the loop goroutine. It returns after a "finish" command, having
// closed every connection and the epoll descriptor.
func (l *loop) run() {
	runtime.LockOSThread()
	// Unlock before returning: a locked goroutine that exits takes its
	// thread with it, and a child process started from that thread would
	// get its Pdeathsig.
	defer runtime.UnlockOSThread()
	defer close(l.done)
	// Wake-ups as precise as the kernel can: the default 50 µs timer slack
	// would add to every measured latency.
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
	l.st.rampStart = nowNs()
	for {
		l.processCmds()
		if l.exit {
			break
		}
		now := nowNs()
		l.rampStep(now)
		next := l.tickAll(now)
		var timeout int64 = int64(20 * time.Millisecond)
		if next > 0 {
			if d := next - nowNs(); d < timeout {
				timeout = max(d, 0)
			}
		}
		n, err := epollWait(l.epfd, l.evs, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			l.st.errs["epoll_wait: "+errnoName(err)]++
			time.Sleep(time.Millisecond)
			continue
		}
		for i := 0; i < n; i++ {
			ev := &l.evs[i]
			fd := int(ev.Fd)
			if fd >= len(l.byFD) || l.byFD[fd] == nil {
				continue
			}
			l.onEvent(l.byFD[fd], ev.Events)
		}
	}
	for _, c := range l.byFD {
		if c != nil {
			l.closeConn(c, "")
		}
	}
	_ = unix.Close(l.epfd)
}

// epollWait waits up to timeoutNs nanoseconds (epoll_pwait2: epoll_wait's
// millisecond timeout would quantise the send schedule).
func epollWait(epfd int, evs []unix.EpollEvent, timeoutNs int64) (int, error) {
	if timeoutNs <= 0 {
		return unix.EpollWait(epfd, evs, 0)
	}
	if !noPwait2.Load() {
		ts := unix.NsecToTimespec(timeoutNs)
		r, _, e := unix.Syscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)),
			uintptr(unsafe.Pointer(&ts)), 0, 0)
		if e == 0 {
			return int(r), nil
		}
		if e != unix.ENOSYS {
			return 0, e
		}
		noPwait2.Store(true)
	}
	ms := int((timeoutNs + int64(time.Millisecond) - 1) / int64(time.Millisecond))
	return unix.EpollWait(epfd, evs, ms)
}

var noPwait2 atomic.Bool

// tickAll runs timeouts, heartbeats, push acks and the handler's timers;
// it returns the earliest next deadline (0: none).
func (l *loop) tickAll(now int64) int64 {
	next := int64(0)
	earliest := func(t int64) {
		if t > 0 && (next == 0 || t < next) {
			next = t
		}
	}
	// Login/connect timeouts, in dial order.
	for l.pendingHead < len(l.pending) {
		c := l.pending[l.pendingHead]
		if c.state != stDialing && c.state != stLogin {
			l.pending[l.pendingHead] = nil
			l.pendingHead++
			continue
		}
		if now-c.started < l.cfg.loginTimeout {
			earliest(c.started + l.cfg.loginTimeout)
			break
		}
		reason := "timeout_login"
		if c.state == stDialing {
			reason = "timeout_connect"
		}
		l.failConn(c, reason)
		l.pending[l.pendingHead] = nil
		l.pendingHead++
	}
	if l.pendingHead > 1024 && l.pendingHead*2 > len(l.pending) {
		l.pending = append(l.pending[:0], l.pending[l.pendingHead:]...)
		l.pendingHead = 0
	}
	if len(l.retryQ) > 0 {
		earliest(l.retryQ[0].at)
	}
	// Heartbeats, spread evenly over the interval.
	if k := l.hb.due(now, len(l.ready)); k > 0 {
		for ; k > 0 && len(l.ready) > 0; k-- {
			c := l.ready[l.hb.idx%len(l.ready)]
			l.hb.idx++
			l.send(c, appendHeartbeat(l.wbuf[:0], c.nextSeq()))
			l.st.heartbeats++
		}
	}
	earliest(l.hb.next(now, len(l.ready)))
	// Cumulative push acks: a connection that received pushes acks them
	// all one interval after the first of them.
	earliest(l.acks.popDue(now, func(c *gconn) {
		c.ackQueued = false
		if c.state == stReady && c.ackSeq > c.ackedSeq {
			c.ackedSeq = c.ackSeq
			l.send(c, appendPushAck(l.wbuf[:0], c.ackSeq))
		}
	}))
	earliest(l.h.tick(l, now))
	return next
}

// rampStep opens connections up to the concurrency bound and reports the
// ramp once every connection is settled.
func (l *loop) rampStep(now int64) {
	want := l.h.rampCount()
	// Retries first (they are due in order of failure), then new ones.
	for len(l.retryQ) > 0 && !l.rampStopped && l.inflight < l.cfg.concurrency && l.retryQ[0].at <= now {
		r := l.retryQ[0]
		l.retryQ = l.retryQ[1:]
		if c := l.dial(l.h.dialSpec(int(r.idx)), now); c != nil {
			c.rampIdx, c.attempt = r.idx, r.attempt
		}
	}
	for !l.rampStopped && l.rampNext < want && l.inflight < l.cfg.concurrency {
		spec := l.h.dialSpec(l.rampNext)
		if c := l.dial(spec, now); c != nil {
			c.rampIdx = int32(l.rampNext)
		}
		l.rampNext++
	}
	if l.rampStopped {
		l.retryQ = nil
	}
	if l.rampReported || l.inflight > 0 || len(l.retryQ) > 0 || (l.rampNext < want && !l.rampStopped) || !l.h.setupDone(l) {
		return
	}
	l.rampReported = true
	l.st.rampEnd = now
	st := l.st
	st.failures = copyCounts(l.st.failures)
	st.loginHist = NewHist()
	st.loginHist.Merge(l.st.loginHist)
	l.rampCh <- rampReport{loop: l.cfg.id, active: l.h.active(), stats: st}
}

func copyCounts(m map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// dial opens one connection (non-blocking connect) and registers it. A
// failure is counted by reason; descriptor exhaustion stops the ramp.
func (l *loop) dial(spec dialSpec, now int64) *gconn {
	l.st.dialed++
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		l.rampFailure(errnoName(err), err)
		return nil
	}
	fail := func(err error) *gconn {
		_ = unix.Close(fd)
		l.rampFailure(errnoName(err), err)
		return nil
	}
	if l.cfg.bindSrc {
		// IP_BIND_ADDRESS_NO_PORT: bind the address now, the port at
		// connect time, so the 4-tuple (not the source port alone) must be
		// unique: ~28k ports per (source, destination) pair instead of
		// ~28k per source.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: l.cfg.src}); err != nil {
			return fail(err)
		}
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	ti := spec.target
	if l.cfg.route != nil {
		if i, ok := l.cfg.route(spec.user); ok {
			ti = i
		}
	}
	target := l.cfg.targets[ti%len(l.cfg.targets)]
	if err := unix.Connect(fd, &target); err != nil && err != unix.EINPROGRESS {
		return fail(err)
	}
	c := &gconn{fd: int32(fd), state: stDialing, role: spec.role, unit: spec.unit, pos: -1, started: now, rampIdx: -1}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP, Fd: int32(fd)}); err != nil {
		return fail(err)
	}
	for fd >= len(l.byFD) {
		l.byFD = append(l.byFD, make([]*gconn, len(l.byFD)+1024)...)
	}
	l.byFD[fd] = c
	l.inflight++
	l.pending = append(l.pending, c)
	l.setUser(c, spec.user)
	return c
}

// setUser stashes the user a connection logs in as until the connect
// completes (only connections in flight hold one).
func (l *loop) setUser(c *gconn, user string) {
	if l.users == nil {
		l.users = map[*gconn]string{}
	}
	l.users[c] = user
}

// rampFailure counts a failed dial. Running out of descriptors (or of
// ephemeral ports, 1000 times in a row) stops this loop's ramp: retrying
// cannot succeed and the report says why the run stopped.
func (l *loop) rampFailure(reason string, err error) {
	l.st.failures["dial: "+reason]++
	l.consecutiveFail[reason]++
	switch {
	case errors.Is(err, unix.EMFILE):
		soft, _ := FDLimit()
		l.stopRamp("fd limit: socket() failed with EMFILE at RLIMIT_NOFILE=" + itoa(int64(soft)) + "; use more --procs")
	case errors.Is(err, unix.ENFILE):
		l.stopRamp("system file table full (ENFILE): raise fs.file-max")
	case errors.Is(err, unix.EADDRNOTAVAIL) && l.consecutiveFail[reason] >= 1000:
		l.stopRamp("ephemeral ports exhausted (EADDRNOTAVAIL): add source addresses (--src) or server ports/nodes")
	case errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM):
		l.stopRamp("kernel memory exhausted (" + reason + ")")
	}
}

func (l *loop) stopRamp(reason string) {
	l.rampStopped = true
	if l.st.stopReason == "" {
		l.st.stopReason = reason
	}
}

// failConn ends a connection that never logged in. A ramp connection is
// dialled again (up to cfg.retries times, after 1-2 s), as a client would
// reconnect.
func (l *loop) failConn(c *gconn, reason string) {
	l.st.failures[reason]++
	l.consecutiveFail[reason]++
	if c.rampIdx >= 0 && int(c.attempt) < l.cfg.retries && !l.rampStopped {
		l.st.retried++
		backoff := int64(time.Second) + int64(c.fd%1000)*int64(time.Millisecond)
		l.retryQ = append(l.retryQ, retry{idx: c.rampIdx, attempt: c.attempt + 1, at: nowNs() + backoff})
	}
	l.closeConn(c, reason)
}

// onEvent handles epoll events of c.
func (l *loop) onEvent(c *gconn, ev uint32) {
	if c.state == stDialing {
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		soerr, err := unix.GetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && soerr != 0 {
			err = syscall.Errno(soerr)
		}
		if err != nil {
			l.failConn(c, "connect: "+errnoName(err))
			return
		}
		l.st.connected++
		clear(l.consecutiveFail)
		c.state = stLogin
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: c.fd})
		if l.cfg.ws {
			// the LOGIN follows the upgrade's 101 (wsHandshake); the user waits in l.users
			l.sendRaw(c, l.wsUpgradeRequest(c))
			return
		}
		l.sendLogin(c)
		return
	}
	if ev&unix.EPOLLOUT != 0 && len(c.out) > 0 {
		l.flush(c)
		if c.state == stClosed {
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 {
		l.read(c)
	}
}

// sendLogin sends c's LOGIN, as the user the dial stashed.
func (l *loop) sendLogin(c *gconn) {
	user := l.users[c]
	delete(l.users, c)
	token := "-"
	if len(l.cfg.secret) > 0 {
		t, err := auth.MintToken(l.cfg.secret, user, 24*time.Hour)
		if err != nil {
			l.failConn(c, "mint token: "+err.Error())
			return
		}
		token = t
	}
	l.send(c, appendLogin(l.wbuf[:0], c.nextSeq(), user, token, l.cfg.device))
}

// read reads what is available and handles every complete frame.
func (l *loop) read(c *gconn) {
	buf := l.rbuf
	have := 0
	if len(c.in) > 0 {
		if len(c.in)+4096 > len(buf) {
			// A frame larger than the loop buffer: read into its own.
			c.in = growCap(c.in, 64<<10)
			n, err := unix.Read(int(c.fd), c.in[len(c.in):cap(c.in)])
			if !l.readResult(c, n, err) {
				return
			}
			c.in = c.in[:len(c.in)+n]
			data := c.in
			c.in = nil
			l.frames(c, data, true)
			return
		}
		have = copy(buf, c.in)
		c.in = c.in[:0]
	}
	n, err := unix.Read(int(c.fd), buf[have:])
	if !l.readResult(c, n, err) {
		if have > 0 && c.state != stClosed {
			c.in = append(c.in[:0], buf[:have]...)
		}
		return
	}
	l.frames(c, buf[:have+n], false)
}

func growCap(b []byte, extra int) []byte {
	if cap(b)-len(b) >= extra {
		return b
	}
	nb := make([]byte, len(b), len(b)+extra)
	copy(nb, b)
	return nb
}

// readResult handles the end cases of a read; it reports whether n bytes
// were read.
func (l *loop) readResult(c *gconn, n int, err error) bool {
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return false
	case err != nil:
		l.lost(c, "read: "+errnoName(err))
		return false
	case n == 0:
		l.lost(c, "closed by server")
		return false
	}
	return true
}

// lost handles a connection the server or the network ended.
func (l *loop) lost(c *gconn, reason string) {
	if c.state == stDialing || c.state == stLogin {
		l.failConn(c, reason)
		return
	}
	l.st.errs[reason]++
	l.closeConn(c, reason)
}

// frames handles every complete frame in data and keeps the tail.
func (l *loop) frames(c *gconn, data []byte, owned bool) {
	if l.cfg.ws {
		l.wsFrames(c, data, owned)
		return
	}
	l.imgnFrames(c, data, owned)
}

// imgnFrames is frames for the raw protocol: data is a frame stream.
func (l *loop) imgnFrames(c *gconn, data []byte, owned bool) {
	var dec codec.Decoder
	dec.MaxBody = 16 << 20
	for len(data) > 0 && c.state != stClosed {
		f, ok, err := dec.ParseFrame(data)
		if err != nil {
			l.lost(c, "bad frame: "+err.Error())
			return
		}
		if !ok {
			break
		}
		l.onFrame(c, f.Header, f.Body)
		data = data[f.FrameSize():]
	}
	l.keepTail(c, data, owned)
}

// keepTail keeps the unparsed rest of c's input for the next read.
func (l *loop) keepTail(c *gconn, data []byte, owned bool) {
	if c.state == stClosed || len(data) == 0 {
		return
	}
	if owned {
		c.in = data
		return
	}
	c.in = append(c.in[:0], data...)
}

func (l *loop) onFrame(c *gconn, h codec.Header, body []byte) {
	switch h.Command {
	case codec.CmdLoginOK:
		if c.state != stLogin {
			return
		}
		now := nowNs()
		l.st.loginHist.RecordNs(now - c.started)
		l.st.loggedIn++
		l.inflight--
		c.state = stReady
		c.pos = int32(len(l.ready))
		l.ready = append(l.ready, c)
		l.held.Add(1)
		if l.hb.interval == 0 {
			ms := pbVarint(body, 7)
			if ms == 0 {
				ms = 30000
			}
			l.hb.interval = int64(ms) * int64(time.Millisecond)
		}
		l.h.onReady(l, c)
		return
	case codec.CmdHeartbeatOK:
		l.st.heartbeatOKs++
		return
	case codec.CmdError:
		if c.state == stLogin {
			l.failConn(c, "login: "+errorCodeName(h, body))
			return
		}
	case codec.CmdKick:
		l.st.errs["KICK"]++
		return
	case codec.CmdGoAway:
		l.st.errs["GO_AWAY"]++
		return
	}
	if c.state == stReady {
		l.h.onFrame(l, c, h, body)
	}
}

// send writes frame to c, in a WebSocket message with --ws.
func (l *loop) send(c *gconn, frame []byte) {
	if l.cfg.ws {
		l.wsbuf = appendWSMessage(l.wsbuf[:0], 0x2, frame)
		frame = l.wsbuf
	}
	l.sendRaw(c, frame)
}

// sendRaw writes b to c, queueing what the socket does not take.
func (l *loop) sendRaw(c *gconn, frame []byte) {
	if c.state == stClosed {
		return
	}
	if len(c.out) > 0 {
		if len(c.out)+len(frame) > l.cfg.maxOutbound {
			l.lost(c, "generator outbound buffer full (server not reading)")
			return
		}
		c.out = append(c.out, frame...)
		return
	}
	n, err := unix.Write(int(c.fd), frame)
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		l.lost(c, "write: "+errnoName(err))
		return
	}
	if n < 0 {
		n = 0
	}
	if n < len(frame) {
		c.out = append(c.out, frame[n:]...)
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP, Fd: c.fd})
	}
}

// flush writes queued output after EPOLLOUT.
func (l *loop) flush(c *gconn) {
	n, err := unix.Write(int(c.fd), c.out)
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		l.lost(c, "write: "+errnoName(err))
		return
	}
	if n > 0 {
		c.out = c.out[n:]
	}
	if len(c.out) == 0 {
		c.out = nil
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: c.fd})
	}
}

// closeConn closes c; reason is passed to the handler ("" at shutdown).
func (l *loop) closeConn(c *gconn, reason string) {
	if c.state == stClosed {
		return
	}
	prev := c.state
	c.state = stClosed
	if prev == stDialing || prev == stLogin {
		l.inflight--
		delete(l.users, c)
	}
	if c.pos >= 0 {
		last := len(l.ready) - 1
		moved := l.ready[last]
		l.ready[c.pos] = moved
		moved.pos = c.pos
		l.ready[last] = nil
		l.ready = l.ready[:last]
		c.pos = -1
		l.held.Add(-1)
	}
	if int(c.fd) < len(l.byFD) {
		l.byFD[c.fd] = nil
	}
	_ = unix.Close(int(c.fd))
	c.in, c.out = nil, nil
	if prev == stReady || reason != "" {
		l.h.onClose(l, c, reason)
	}
}

// pushed records that c received a push of seq at now; it is acknowledged
// one push-ack interval after the first push not yet acknowledged.
func (l *loop) pushed(c *gconn, seq uint64, now int64) {
	if seq <= c.ackSeq {
		return
	}
	c.ackSeq = seq
	if !c.ackQueued && l.cfg.pushAck > 0 {
		c.ackQueued = true
		l.acks.add(c, now+l.cfg.pushAck)
	}
}

// phaseDone reports a finished phase to the worker.
func (l *loop) phaseDone(res phaseCounters, h *Hist, errs map[string]int64, lag *Hist) {
	l.inPhase = false
	res.heartbeats, res.heartbeatOK = l.st.heartbeats-l.hbAtStart, l.st.heartbeatOKs-l.hbOKAtStart
	all := copyCounts(l.st.errs)
	for k, v := range errs {
		all[k] += v
	}
	clear(l.st.errs)
	l.phaseCh <- phaseReport{loop: l.cfg.id, res: res, hist: h, lag: lag, errs: all, held: l.held.Load()}
}

func errnoName(err error) string {
	var en syscall.Errno
	if errors.As(err, &en) {
		if name := errnoNames[en]; name != "" {
			return name
		}
		return en.Error()
	}
	return err.Error()
}

var errnoNames = map[syscall.Errno]string{
	unix.EMFILE: "EMFILE", unix.ENFILE: "ENFILE", unix.EADDRNOTAVAIL: "EADDRNOTAVAIL", unix.EADDRINUSE: "EADDRINUSE",
	unix.ECONNREFUSED: "ECONNREFUSED", unix.ECONNRESET: "ECONNRESET", unix.ETIMEDOUT: "ETIMEDOUT", unix.EPIPE: "EPIPE",
	unix.ENOBUFS: "ENOBUFS", unix.ENOMEM: "ENOMEM", unix.EHOSTUNREACH: "EHOSTUNREACH", unix.ENETUNREACH: "ENETUNREACH",
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
