package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/internal/clusterkit"
)

// CheckConfig configures one checker run.
type CheckConfig struct {
	Bin      string
	Nodes    int
	Clients  int
	Rate     float64       // messages/s over all clients
	Duration time.Duration // of the faulty phase (faults run back to back)
	Quiet    time.Duration // no-fault phase before the first fault
	Faults   []string
	Seed     uint64
	Out      io.Writer
	Logf     func(string, ...any)
}

// AllFaults lists the faults in their default order.
var AllFaults = []string{"kill", "pause", "zk-expire", "redis-flush", "mongo-restart", "net-delay",
	"net-reset", "mongo-blackhole", "mesh-delay", "mesh-partition", "mesh-reset", "term", "zk-restart", "restart-all"}

// ShortFaults is the --short set.
var ShortFaults = []string{"kill", "pause", "zk-expire", "redis-flush", "mongo-restart", "net-reset", "mesh-partition"}

// Counts is the checker's verdict.
type Counts struct {
	Attempted, Acked, Failed, Delivered, Lost, Recovered, Unexpected, Twice, Order, Gaps int
	Chat                                                                                 ChatCounts // read cursors and recalls (chat.go)
}

// OK reports whether every must-be-zero count is zero.
func (c Counts) OK() bool {
	return c.Lost == 0 && c.Unexpected == 0 && c.Twice == 0 && c.Order == 0 && c.Gaps == 0 &&
		c.Chat.CursorBack == 0 && c.Chat.CursorDiverged == 0 && c.Chat.RecallLost == 0
}

// FaultEvent is one injected fault.
type FaultEvent struct {
	Name, Target             string
	Start, Repaired, Healed  time.Time
	Err                      error
	Before, During, After    [2]time.Duration // p50, p99 of acks invoked in each window
	NBefore, NDuring, NAfter int
	// Unavailable is the fault's unavailability window as a client sees
	// it: the longest any send invoked between Start and Healed waited
	// for its answer, the client library's retries included (a send to an
	// inbox whose owner was killed waits until the view drops the node).
	Unavailable time.Duration
}

// CheckReport is the outcome of Check.
type CheckReport struct {
	Counts
	Events   []FaultEvent
	P50, P99 time.Duration
	Drain    time.Duration
	Wall     time.Duration
	SendErrs map[string]int
}

type sendRec struct {
	from, to string
	n        int // sender's counter
	invoke   time.Time
	done     time.Time // the answer (ack or final error) arrived
	acked    bool
	seq      uint64
	lat      time.Duration
}

type recvRec struct {
	id    string
	from  string
	seq   uint64
	event bool // a chat event (recall): part of the seq stream, not a message
}

type ledger struct {
	mu    sync.Mutex
	sends map[string]*sendRec
	recv  map[string][]recvRec // user -> stream in order
	errs  map[string]int
}

// Check runs the workload and the fault schedule on a fresh cluster and
// returns the verdict.
func Check(ctx context.Context, cfg CheckConfig) (*CheckReport, error) {
	wall := time.Now()
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 1))
	c, err := clusterkit.Start(ctx, clusterkit.Config{Bin: cfg.Bin, Nodes: cfg.Nodes, Router: true, ProxyDeps: true,
		ProxyClients: true, NodeArgs: []string{"--heartbeat", "1s", "--idle-timeout", "3s"}, Logf: cfg.Logf})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cfg.Logf("cluster up: %d nodes, router %s (%.1fs)", cfg.Nodes, c.RouterURL(), time.Since(wall).Seconds())
	l := &ledger{sends: map[string]*sendRec{}, recv: map[string][]recvRec{}, errs: map[string]int{}}
	ch := newChatLedger()
	users := make([]string, cfg.Clients)
	for i := range users {
		users[i] = fmt.Sprintf("u%d", i)
	}
	clients := make([]*client.Client, len(users))
	var recvWG sync.WaitGroup
	for i, u := range users {
		cl, err := client.Dial(ctx, clusterkit.ClientConfig(c.RouterURL(), "", u, "d"))
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", u, err)
		}
		defer cl.Close()
		clients[i] = cl
		recvWG.Go(func() {
			for m := range cl.Messages() {
				ev := ch.received(u, m)
				l.mu.Lock()
				l.recv[u] = append(l.recv[u], recvRec{id: m.ClientMsgId, from: m.From, seq: m.Seq, event: ev})
				l.mu.Unlock()
			}
		})
	}
	// Senders: each client sends one message at a time to a random peer at
	// its share of the rate; latency counts from the intended send time.
	sctx, stopSend := context.WithCancel(ctx)
	var sendWG sync.WaitGroup
	interval := time.Duration(float64(time.Second) * float64(len(users)) / cfg.Rate)
	for i, cl := range clients {
		peerRng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)+2))
		sendWG.Go(func() {
			next := time.Now().Add(time.Duration(peerRng.Int64N(int64(interval))))
			for n := 0; ; n++ {
				select {
				case <-sctx.Done():
					return
				case <-time.After(time.Until(next)):
				}
				to := users[(i+1+peerRng.IntN(len(users)-1))%len(users)]
				id := users[i] + "-" + strconv.Itoa(n)
				rec := &sendRec{from: users[i], to: to, n: n, invoke: next}
				l.mu.Lock()
				l.sends[id] = rec
				l.mu.Unlock()
				actx, cancel := context.WithTimeout(sctx, 20*time.Second)
				ack, err := cl.Send(actx, to, []byte(id), client.WithClientMsgID(id))
				cancel()
				l.mu.Lock()
				rec.done = time.Now()
				if err == nil {
					rec.acked, rec.seq, rec.lat = true, ack.Seq, time.Since(rec.invoke)
				} else {
					l.errs[errName(err)]++
				}
				l.mu.Unlock()
				if err == nil && n%recallEvery == recallEvery-1 {
					ch.recall(sctx, cl, users[i], to, ack.MsgId)
				}
				next = next.Add(interval)
				if d := time.Since(next); d > 0 { // fell behind (a long retry): skip the missed slots
					next = next.Add(d.Truncate(interval) + interval)
				}
			}
		})
	}
	for i, cl := range clients {
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1<<32))
		sendWG.Go(func() { ch.reader(sctx, cl, users[i], rng) })
	}
	rep := &CheckReport{SendErrs: l.errs}
	time.Sleep(cfg.Quiet)
	end := time.Now().Add(cfg.Duration)
	for k := 0; time.Now().Before(end) && ctx.Err() == nil; k++ {
		name := cfg.Faults[k%len(cfg.Faults)]
		ev := inject(ctx, c, name, rng, cfg.Logf)
		rep.Events = append(rep.Events, ev)
		time.Sleep(time.Second) // let traffic run between faults
	}
	time.Sleep(2 * time.Second) // an after-window for the last fault
	stopSend()
	sendWG.Wait()
	// Drain: heal everything, sync every client, wait until every acked
	// message is in both inboxes (or 60s).
	drainStart := time.Now()
	_ = c.WaitMembers(ctx, 30*time.Second)
	for _, cl := range clients {
		sc, cancel := context.WithTimeout(ctx, 20*time.Second)
		_ = cl.SyncNow(sc)
		cancel()
	}
	_ = clusterkit.Poll(ctx, 60*time.Second, "drain", func() bool { return l.missing() == 0 })
	chat := ch.finish(ctx, users, clients, func(u string) (*client.Client, error) {
		cc := clusterkit.ClientConfig(c.RouterURL(), "", u, "d2")
		cc.SendOnly = true
		return client.Dial(ctx, cc)
	})
	time.Sleep(500 * time.Millisecond) // anything still queued (duplicates would show here)
	rep.Drain = time.Since(drainStart)
	for _, cl := range clients {
		_ = cl.Close()
	}
	recvWG.Wait()
	rep.Counts = l.verdict()
	rep.Chat = chat
	var lats []time.Duration
	l.mu.Lock()
	for _, s := range l.sends {
		if s.acked {
			lats = append(lats, s.lat)
		}
	}
	for i := range rep.Events {
		ev := &rep.Events[i]
		ev.Before, ev.NBefore = l.window(ev.Start.Add(-5*time.Second), ev.Start)
		ev.During, ev.NDuring = l.window(ev.Start, ev.Healed)
		ev.After, ev.NAfter = l.window(ev.Healed, ev.Healed.Add(5*time.Second))
		ev.Unavailable = l.longestWait(ev.Start, ev.Healed)
	}
	l.mu.Unlock()
	rep.P50, rep.P99 = pct(lats, .5), pct(lats, .99)
	rep.Wall = time.Since(wall)
	return rep, nil
}

func errName(err error) string {
	var ce *client.Error
	switch {
	case errors.As(err, &ce):
		return ce.Code.String()
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "other"
}

// missing counts acked messages not yet seen by their recipient.
func (l *ledger) missing() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := map[string]bool{}
	for u, st := range l.recv {
		for _, r := range st {
			seen[u+"|"+r.id] = true
		}
	}
	n := 0
	for id, s := range l.sends {
		if s.acked && (!seen[s.to+"|"+id] || !seen[s.from+"|"+id]) {
			n++
		}
	}
	return n
}

func (l *ledger) verdict() Counts {
	l.mu.Lock()
	defer l.mu.Unlock()
	var c Counts
	seen := map[string]bool{}
	for u, st := range l.recv {
		ids := map[string]bool{}
		last := map[string]int{} // sender -> last acked counter seen
		for i, r := range st {
			if r.seq != uint64(i+1) {
				c.Gaps++ // the stream must be 1, 2, 3, ... (it starts at seq 1)
			}
			if r.event {
				continue // recall events: chat.go checks them
			}
			if ids[r.id] {
				c.Twice++
				continue
			}
			ids[r.id] = true
			seen[u+"|"+r.id] = true
			s, ok := l.sends[r.id]
			if !ok {
				c.Unexpected++
				continue
			}
			if r.from != s.from || (u != s.to && u != s.from) {
				c.Unexpected++
				continue
			}
			if u == s.to {
				c.Delivered++
				if s.acked {
					// Sends are sequential per sender: an acked message was
					// stored before the next send began, so acked messages
					// of one sender appear in counter order.
					if p, ok := last[s.from]; ok && s.n < p {
						c.Order++
					}
					last[s.from] = s.n
				}
			}
		}
	}
	for id, s := range l.sends {
		c.Attempted++
		if s.acked {
			c.Acked++
			if !seen[s.to+"|"+id] {
				c.Lost++
			}
			if !seen[s.from+"|"+id] {
				c.Lost++ // the sender's own inbox copy
			}
		} else {
			c.Failed++
			if seen[s.to+"|"+id] {
				c.Recovered++
			}
		}
	}
	return c
}

// window returns p50/p99 of the ack latency of acked sends invoked in
// [from, to). l.mu is held.
func (l *ledger) window(from, to time.Time) ([2]time.Duration, int) {
	var d []time.Duration
	for _, s := range l.sends {
		if s.acked && !s.invoke.Before(from) && s.invoke.Before(to) {
			d = append(d, s.lat)
		}
	}
	return [2]time.Duration{pct(d, .5), pct(d, .99)}, len(d)
}

// longestWait returns the longest time a send invoked in [from, to) waited
// for its answer, successful or not. l.mu is held.
func (l *ledger) longestWait(from, to time.Time) time.Duration {
	var longest time.Duration
	for _, s := range l.sends {
		if s.invoke.Before(from) || !s.invoke.Before(to) || s.done.IsZero() {
			continue
		}
		longest = max(longest, s.done.Sub(s.invoke))
	}
	return longest
}

func pct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

// inject applies one fault, repairs it and waits for the cluster to heal
// (every live node ready and seeing every other).
func inject(ctx context.Context, c *clusterkit.Cluster, name string, rng *rand.Rand, logf func(string, ...any)) FaultEvent {
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	ev := FaultEvent{Name: name, Target: n.ID, Start: time.Now()}
	var err error
	switch name {
	case "kill": // SIGKILL, restart after 1s
		err = n.Kill()
		time.Sleep(time.Second)
		err = errors.Join(err, n.Start(ctx))
	case "pause": // SIGSTOP past the idle timeout (3s) and the ZK session (2s)
		err = n.Pause()
		time.Sleep(4 * time.Second)
		err = errors.Join(err, n.Resume())
	case "term": // graceful drain, then restart
		n.Term(10 * time.Second)
		err = n.Start(ctx)
	case "zk-expire": // cut the node from ZooKeeper past its session timeout
		n.ZKProxy.Partition()
		time.Sleep(3500 * time.Millisecond)
		n.ZKProxy.Heal()
	case "zk-restart":
		ev.Target = "zookeeper"
		err = c.ZK.Kill()
		time.Sleep(time.Second)
		err = errors.Join(err, c.ZK.Start())
	case "redis-flush": // crash Redis (no persistence: a restart is empty), then FLUSHALL again
		ev.Target = "redis"
		err = c.Redis.Kill()
		time.Sleep(500 * time.Millisecond)
		err = errors.Join(err, c.Redis.Start())
		time.Sleep(time.Second)
		err = errors.Join(err, c.FlushRedis())
	case "mongo-restart":
		ev.Target = "mongo"
		err = c.Mongo.Kill()
		time.Sleep(time.Second)
		err = errors.Join(err, c.Mongo.Start())
	case "net-delay": // 100 ms each way on the node's Mongo and Redis links
		n.MongoProxy.SetDelay(100 * time.Millisecond)
		n.RedisProxy.SetDelay(100 * time.Millisecond)
		time.Sleep(3 * time.Second)
		n.MongoProxy.Heal()
		n.RedisProxy.Heal()
	case "net-reset": // RST every client, Mongo and Redis connection of the node
		n.ClientProxy.Reset()
		n.MongoProxy.Reset()
		n.RedisProxy.Reset()
	case "mesh-delay": // 100 ms each way on every peer's link into the node
		n.MeshProxy.SetDelay(100 * time.Millisecond)
		time.Sleep(3 * time.Second)
		n.MeshProxy.Heal()
	case "mesh-partition": // peers' links into the node hold bytes for 3s (blackhole)
		n.MeshProxy.Partition()
		time.Sleep(3 * time.Second)
		n.MeshProxy.Heal()
	case "mesh-reset": // RST every peer's link into the node
		n.MeshProxy.Reset()
	case "mongo-blackhole": // the node's Mongo link holds bytes for 3s
		n.MongoProxy.Partition()
		time.Sleep(3 * time.Second)
		n.MongoProxy.Heal()
	case "restart-all": // SIGKILL every node, start all at the same instant
		ev.Target = "all"
		for _, m := range c.Nodes {
			err = errors.Join(err, m.Kill())
		}
		err = errors.Join(err, c.StartNodesTogether(ctx, c.Nodes...))
	default:
		err = fmt.Errorf("unknown fault %q", name)
	}
	ev.Repaired = time.Now()
	err = errors.Join(err, c.WaitMembers(ctx, 30*time.Second))
	ev.Healed = time.Now()
	ev.Err = err
	logf("fault %-16s %-9s took %5.1fs, healed %5.2fs after repair %v", name, ev.Target,
		ev.Repaired.Sub(ev.Start).Seconds(), ev.Healed.Sub(ev.Repaired).Seconds(), errOrEmpty(err))
	return ev
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// Print writes the verdict and the fault table.
func (r *CheckReport) Print(w io.Writer) {
	ok := "PASS"
	if !r.OK() {
		ok = "FAIL"
	}
	fmt.Fprintf(w, "\nchecker verdict: %s (wall %.0fs, drain %.1fs)\n", ok, r.Wall.Seconds(), r.Drain.Seconds())
	fmt.Fprintf(w, "| attempted | acked | failed | delivered | lost | recovered | unexpected | twice | order | gaps | ack p50 | ack p99 |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(w, "| %d | %d | %d | %d | %d | %d | %d | %d | %d | %d | %s | %s |\n", r.Attempted, r.Acked, r.Failed,
		r.Delivered, r.Lost, r.Recovered, r.Unexpected, r.Twice, r.Order, r.Gaps, ms(r.P50), ms(r.P99))
	if len(r.SendErrs) > 0 {
		fmt.Fprintf(w, "send errors (after the client library's retries): %v\n", r.SendErrs)
	}
	ct := r.Chat
	fmt.Fprintf(w, "\n| reads acked | cursor moved back | devices disagree | recalls | recalls acked | recall not applied |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|\n")
	fmt.Fprintf(w, "| %d | %d | %d | %d | %d | %d |\n", ct.Reads, ct.CursorBack, ct.CursorDiverged, ct.Recalls, ct.RecallsAcked, ct.RecallLost)
	fmt.Fprintf(w, "\n| fault | target | fault lasted | heal after repair | unavailable | p50/p99 before | p50/p99 during | p50/p99 after | error |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|\n")
	for _, e := range r.Events {
		fmt.Fprintf(w, "| %s | %s | %.1fs | %.2fs | %.2fs | %s / %s | %s / %s | %s / %s | %s |\n", e.Name, e.Target,
			e.Repaired.Sub(e.Start).Seconds(), e.Healed.Sub(e.Repaired).Seconds(), e.Unavailable.Seconds(),
			ms(e.Before[0]), ms(e.Before[1]), ms(e.During[0]), ms(e.During[1]), ms(e.After[0]), ms(e.After[1]), errOrEmpty(e.Err))
	}
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
}
