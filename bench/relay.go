package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/nodestats"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// Relay is the echo baseline: a minimal gnet server speaking just enough of
// the protocol to carry the bench's load, with no authentication, no store
// and no limits. It is the physical limit of one hop on this machine: a
// SEND is forwarded to the connection logged in as its recipient (as a
// PUSH) and answered with a SEND_ACK, so it does the same syscalls per
// message as imd (one read on the sender, one write to each side), with
// the same cross-event-loop handoff (a queue per connection and a Wake per
// batch). GROUP_SEND is encoded once and queued to every other member.
//
// LOGIN takes the user from the request's user field (the bench sends it
// alongside the token) and answers LOGIN_OK at once; HEARTBEAT is answered;
// GROUP_CREATE makes a group; everything else is ignored.
type Relay struct {
	gnet.BuiltinEventEngine
	eng    gnet.Engine
	addr   net.Addr
	booted chan struct{}
	runErr chan error
	conns  atomic.Int64
	msgID  atomic.Uint64
	shards [64]relayShard
	gmu    sync.RWMutex
	groups map[string][]string
	loops  int
	dec    codec.Decoder
	// walPath, if set, makes the relay durable: it logs every SEND and
	// GROUP_SEND to this file and syncs it before it answers or forwards
	// (relaywal.go). wal is that log while the relay runs.
	walPath string
	wal     *relayWAL
	// walBeforeSync, if set before Start (tests), runs on the log's syncer
	// after each write and before its sync.
	walBeforeSync func()
}

type relayShard struct {
	mu sync.RWMutex
	m  map[string]*rconn
}

type rconn struct {
	gc   gnet.Conn
	user string
	mu   sync.Mutex
	out  []byte
	wake bool
	// seq numbers the 1:1 pushes to this connection (under mu), as imd
	// numbers an inbox: the generator then acknowledges them as it does
	// imd's, one coalesced PUSH_ACK per connection per interval, and the
	// relay reads the same frames imd reads. (With every push numbered 1,
	// each connection acked once per run, and the relay was spared about
	// one read per receiving connection per second.)
	seq uint64
}

// NewRelay returns a relay that will listen on addr with loops event
// loops (0: GOMAXPROCS, like imd).
func NewRelay(addr string, loops int) *Relay {
	r := &Relay{booted: make(chan struct{}), runErr: make(chan error, 1), groups: map[string][]string{}, loops: loops}
	for i := range r.shards {
		r.shards[i].m = map[string]*rconn{}
	}
	r.addr, _ = net.ResolveTCPAddr("tcp", addr)
	return r
}

// NewDurableRelay returns a relay like NewRelay's that also logs every
// SEND and GROUP_SEND to a write-ahead log at walPath (created, and
// truncated if it exists) and syncs it before it answers or forwards them:
// the durable baseline (imbench --baseline-durable, relaywal.go).
func NewDurableRelay(addr string, loops int, walPath string) *Relay {
	r := NewRelay(addr, loops)
	r.walPath = walPath
	return r
}

// Start listens and returns once the listener is bound.
func (r *Relay) Start(ctx context.Context) error {
	loops := r.loops
	if loops <= 0 {
		loops = runtime.GOMAXPROCS(0)
	}
	if r.walPath != "" {
		w, err := openRelayWAL(r, r.walPath)
		if err != nil {
			return err
		}
		r.wal = w
	}
	addr := r.addr.String()
	go func() {
		r.runErr <- gnet.Run(r, "tcp://"+addr, gnet.WithMulticore(true), gnet.WithNumEventLoop(loops),
			gnet.WithReuseAddr(true), gnet.WithTCPNoDelay(gnet.TCPNoDelay), gnet.WithLogger(quietLogger{}))
	}()
	select {
	case <-r.booted:
		return nil
	case err := <-r.runErr:
		return errors.Join(fmt.Errorf("bench: relay listen %s: %w", addr, err), r.closeWAL())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// closeWAL stops the durable relay's log, if it has one.
func (r *Relay) closeWAL() error {
	if r.wal == nil {
		return nil
	}
	err := r.wal.close()
	r.wal = nil
	return err
}

// Addr is the bound address.
func (r *Relay) Addr() net.Addr { return r.addr }

// Stop stops the event loops.
func (r *Relay) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := r.eng.Stop(ctx)
	return errors.Join(err, <-r.runErr, r.closeWAL())
}

// OnBoot implements gnet.EventHandler.
func (r *Relay) OnBoot(eng gnet.Engine) gnet.Action {
	r.eng = eng
	if fd, err := eng.Dup(); err == nil {
		if sa, err := unix.Getsockname(fd); err == nil {
			if a, ok := sa.(*unix.SockaddrInet4); ok {
				r.addr = &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
			}
		}
		_ = unix.Close(fd)
	}
	close(r.booted)
	return gnet.None
}

// OnOpen implements gnet.EventHandler.
func (r *Relay) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	gc.SetContext(&rconn{gc: gc})
	r.conns.Add(1)
	return nil, gnet.None
}

// OnClose implements gnet.EventHandler.
func (r *Relay) OnClose(gc gnet.Conn, _ error) gnet.Action {
	r.conns.Add(-1)
	c, _ := gc.Context().(*rconn)
	if c != nil && c.user != "" {
		sh := r.shard(c.user)
		sh.mu.Lock()
		if sh.m[c.user] == c {
			delete(sh.m, c.user)
		}
		sh.mu.Unlock()
	}
	return gnet.None
}

func (r *Relay) shard(user string) *relayShard {
	return &r.shards[maphash.String(relaySeed, user)%uint64(len(r.shards))]
}

var relaySeed = maphash.MakeSeed()

func (r *Relay) lookup(user []byte) *rconn {
	sh := r.shard(string(user))
	sh.mu.RLock()
	c := sh.m[string(user)]
	sh.mu.RUnlock()
	return c
}

// enqueue appends a frame built by build to c's queue and wakes c's loop
// once per batch. self is the connection whose OnTraffic is running.
func (r *Relay) enqueue(c, self *rconn, build func([]byte) []byte) {
	c.mu.Lock()
	c.out = build(c.out)
	wake := false
	if c != self && !c.wake {
		c.wake = true
		wake = true
	}
	c.mu.Unlock()
	if wake {
		_ = c.gc.Wake(nil)
	}
}

// OnTraffic implements gnet.EventHandler.
func (r *Relay) OnTraffic(gc gnet.Conn) gnet.Action {
	c, _ := gc.Context().(*rconn)
	if c == nil {
		return gnet.Close
	}
	for {
		f, ok, err := r.dec.Next(gc)
		if err != nil {
			return gnet.Close
		}
		if !ok {
			break
		}
		r.onFrame(c, f)
		_, _ = gc.Discard(f.FrameSize())
	}
	c.mu.Lock()
	out := c.out
	c.out = nil
	c.wake = false
	c.mu.Unlock()
	if len(out) > 0 {
		_, _ = gc.Write(out)
		if cap(out) <= 4096 {
			c.mu.Lock()
			if c.out == nil {
				c.out = out[:0]
			}
			c.mu.Unlock()
		}
	}
	return gnet.None
}

func (r *Relay) onFrame(c *rconn, f codec.Frame) {
	seq := f.Seq
	switch f.Command {
	case codec.CmdLogin:
		user := string(pbBytes(f.Body, 1))
		if user != "" && c.user == "" {
			c.user = user
			sh := r.shard(user)
			sh.mu.Lock()
			sh.m[user] = c
			sh.mu.Unlock()
		}
		r.enqueue(c, c, func(b []byte) []byte {
			b, st := beginFrame(b, codec.CmdLoginOK, seq)
			b = appendStringField(b, 1, user)
			b = appendVarintField(b, 7, 30000)
			return endFrame(b, st)
		})
	case codec.CmdHeartbeat:
		r.enqueue(c, c, func(b []byte) []byte {
			b, st := beginFrame(b, codec.CmdHeartbeatOK, seq)
			return endFrame(b, st)
		})
	case codec.CmdGroupCreate:
		members := []string{c.user}
		rest := f.Body
		for len(rest) > 0 {
			field, _, data, next, err := pbNext(rest)
			if err != nil {
				break
			}
			if field == 2 && data != nil {
				members = append(members, string(data))
			}
			rest = next
		}
		id := "g" + strconv.FormatUint(r.msgID.Add(1), 36)
		r.gmu.Lock()
		r.groups[id] = members
		r.gmu.Unlock()
		r.enqueue(c, c, func(b []byte) []byte {
			b, st := beginFrame(b, codec.CmdGroupInfo, seq)
			b = appendStringField(b, 1, id)
			return endFrame(b, st)
		})
	case codec.CmdSend, codec.CmdGroupSend:
		id := r.msgID.Add(1)
		if r.wal != nil {
			r.wal.add(c, f.Command, seq, id, f.Body)
			return
		}
		r.deliver(c, c, f.Command, seq, id, f.Body)
	}
}

// deliver forwards a SEND (to its recipient) or a GROUP_SEND (to every
// other member) with message id id, and acknowledges it to c. self is the
// connection whose OnTraffic is running (nil: none, the durable relay's
// syncer). body is the request's body, read during the call only.
func (r *Relay) deliver(c, self *rconn, cmd codec.Command, seq uint32, id uint64, body []byte) {
	switch cmd {
	case codec.CmdSend:
		cmid, to, text := pbBytes(body, 1), pbBytes(body, 2), pbBytes(body, 4)
		if t := r.lookup(to); t != nil {
			r.enqueue(t, self, func(b []byte) []byte {
				t.seq++
				return appendRelayPush(b, t.seq, id, c.user, to, cmid, text)
			})
		}
		r.enqueue(c, self, func(b []byte) []byte { return appendRelayAck(b, seq, cmid, id) })
	case codec.CmdGroupSend:
		cmid, gid, text := pbBytes(body, 1), pbBytes(body, 2), pbBytes(body, 4)
		r.gmu.RLock()
		members := r.groups[string(gid)]
		r.gmu.RUnlock()
		// Encode once, queue to every other member. Every group push is
		// numbered 1, so members ack it once per run: numbering per member
		// would cost the per-member encoding the relay exists to avoid.
		frame := appendRelayPush(nil, 1, id, c.user, gid, cmid, text)
		for _, m := range members {
			if m == c.user {
				continue
			}
			if t := r.lookup([]byte(m)); t != nil {
				r.enqueue(t, self, func(b []byte) []byte { return append(b, frame...) })
			}
		}
		r.enqueue(c, self, func(b []byte) []byte { return appendRelayAck(b, seq, cmid, id) })
	}
}

// appendRelayPush appends PUSH{messages: [{seq, msg_id, from, to,
// client_msg_id, body}]}.
func appendRelayPush(b []byte, seq, id uint64, from string, to, cmid, body []byte) []byte {
	b, st := beginFrame(b, codec.CmdPush, 0)
	msgLen := 1 + varintLen(seq) + 1 + varintLen(id) + 1 + fieldLen(len(from)) + 1 + fieldLen(len(to)) + 1 + fieldLen(len(cmid)) + 1 + fieldLen(len(body))
	b = appendTag(b, 1, 2)
	b = appendVarint(b, uint64(msgLen))
	b = appendVarintField(b, 1, seq)
	b = appendTag(b, 2, 0)
	b = appendVarint(b, id)
	b = appendTag(b, 3, 2)
	b = appendVarint(b, uint64(len(from)))
	b = append(b, from...)
	b = appendTag(b, 4, 2)
	b = appendVarint(b, uint64(len(to)))
	b = append(b, to...)
	b = appendTag(b, 6, 2)
	b = appendVarint(b, uint64(len(cmid)))
	b = append(b, cmid...)
	b = appendTag(b, 8, 2)
	b = appendVarint(b, uint64(len(body)))
	b = append(b, body...)
	return endFrame(b, st)
}

func appendRelayAck(b []byte, seq uint32, cmid []byte, id uint64) []byte {
	b, st := beginFrame(b, codec.CmdSendAck, seq)
	b = appendBytesField(b, 1, cmid)
	b = appendVarintField(b, 2, id)
	b = appendVarintField(b, 3, 1)
	return endFrame(b, st)
}

func varintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// fieldLen is the length prefix plus the payload of a length-delimited
// field of n bytes.
func fieldLen(n int) int { return varintLen(uint64(n)) + n }

// Stats reports the relay's process memory in the shape of imd's
// /admin/stats.
func (r *Relay) Stats() NodeStats {
	st := nodestats.Process(int(r.conns.Load()))
	st.NodeID = "relay"
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.RLock()
		st.Sessions += len(sh.m)
		sh.mu.RUnlock()
	}
	st.Users = st.Sessions
	return st
}

// AdminHandler serves /admin/stats, /readyz and /debug/pprof/ like imd's
// admin endpoint.
func (r *Relay) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /admin/stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Stats())
	})
	return mux
}

type quietLogger struct{}

func (quietLogger) Debugf(string, ...any) {}
func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Warnf(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(string, ...any) {}

// RelayArg is the hidden first argument that makes imbench run the relay
// as a process (see RunRelayMain).
const RelayArg = "__relay"

// RunRelayMain runs the relay on listen with its admin endpoint on admin
// until ctx ends.
// walPath, if set, makes it the durable relay (NewDurableRelay).
func RunRelayMain(ctx context.Context, listen, admin string, loops int, walPath string) error {
	r := NewDurableRelay(listen, loops, walPath)
	if err := r.Start(ctx); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", admin)
	if err != nil {
		_ = r.Stop()
		return err
	}
	srv := &http.Server{Handler: r.AdminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return r.Stop()
}
