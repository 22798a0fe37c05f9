// Package attack is the bad-input attacker: it throws malformed frames,
// well-framed requests with malformed bodies, slow and abusive connections,
// login floods and a GROUP_CREATE storm at a live imd node while a few
// legitimate clients send at a fixed rate, and checks for each attack
// that the node stays up, closes (or answers) the offender with the error
// code docs/protocol.md documents, and counts it in /metrics
// (imgn_errors_total{code}). It also compares the legitimate clients' ack
// latency p99 before and during the attacks.
//
// `imcheck attack` runs it against a node it spawns (memory store); the
// package test runs every attack once.
package attack

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/internal/clusterkit"
)

// NodeArgs are the imd flags the attacks assume (short deadlines so slow
// attacks end quickly, a small outbound cap for the slow consumer, a send
// budget that lets a flooder queue megabytes but that a GROUP_CREATE storm
// exhausts).
var NodeArgs = []string{"--login-timeout", "2s", "--heartbeat", "1s", "--idle-timeout", "3s",
	"--max-outbound", "262144", "--send-rate", "1000", "--send-burst", "2000"}

// Config of Run.
type Config struct {
	Node *clusterkit.Node // a single node started with NodeArgs and JWT secret clusterkit.Secret
	// LoadClients legitimate clients send Rate messages/s in total. Defaults 4 and 100.
	LoadClients int
	Rate        float64
	// Baseline is how long the load runs before the first attack (default 5s).
	Baseline time.Duration
	// Only runs just the named attacks (default all).
	Only []string
	// Scale multiplies flood sizes (default 1).
	Scale float64
	// P99Factor and P99Slack state the latency bound: p99 during attacks
	// <= P99Factor*baseline p99 + P99Slack. Defaults 3 and 25ms.
	P99Factor float64
	P99Slack  time.Duration
	Logf      func(format string, args ...any)
}

// Result is one attack's outcome.
type Result struct {
	Name    string
	Want    string        // the documented code (or behaviour)
	Got     string        // what the offender saw
	Closed  bool          // the node closed the offender (when Fatal)
	Fatal   bool          // the documented answer closes the connection
	Counted float64       // increase of the metric named in Metric
	Metric  string        // e.g. imgn_errors_total{code="BAD_MAGIC"}
	Alive   bool          // /healthz answered after the attack
	Took    time.Duration // attack start to the node's answer/close
	OK      bool
	Detail  string
}

// Report is the outcome of Run.
type Report struct {
	Results                  []Result
	BaseP50, BaseP99         time.Duration
	AttackP50, AttackP99     time.Duration
	BaseN, AttackN           int
	LoadErrors               int
	Bound                    time.Duration
	LatencyOK, AllOK         bool
	RSSBefore, RSSAfter      int64
	GoroutinesB, GoroutinesA int
}

type env struct {
	cfg   Config
	addr  string
	admin string
	ctx   context.Context
}

type attack struct {
	name string
	run  func(e *env) Result
}

// Names lists the attacks in the order Run performs them.
func Names() []string {
	var out []string
	for _, a := range attacks {
		out = append(out, a.name)
	}
	return out
}

// Run performs the attacks against cfg.Node with the load running.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.LoadClients <= 0 {
		cfg.LoadClients = 4
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 100
	}
	if cfg.Baseline <= 0 {
		cfg.Baseline = 5 * time.Second
	}
	if cfg.Scale <= 0 {
		cfg.Scale = 1
	}
	if cfg.P99Factor <= 0 {
		cfg.P99Factor = 3
	}
	if cfg.P99Slack <= 0 {
		cfg.P99Slack = 25 * time.Millisecond
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	e := &env{cfg: cfg, addr: cfg.Node.Listen, admin: cfg.Node.Admin, ctx: ctx}
	rep := &Report{}
	if s, err := cfg.Node.Stats(ctx); err == nil {
		rep.RSSBefore, rep.GoroutinesB = int64(s.RSSBytes), s.Goroutines
	}
	ld, err := startLoad(ctx, cfg, e.addr)
	if err != nil {
		return nil, err
	}
	time.Sleep(cfg.Baseline)
	t1 := time.Now()
	for _, a := range attacks {
		if len(cfg.Only) > 0 && !slices.Contains(cfg.Only, a.name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		start := time.Now()
		r := a.run(e)
		r.Name = a.name
		if r.Took == 0 {
			r.Took = time.Since(start)
		}
		r.Alive = healthy(ctx, e.admin)
		r.OK = r.OK && r.Alive
		cfg.Logf("attack %-22s want %-22s got %-22s closed=%-5v counted=%-5.0f alive=%v ok=%v %s",
			r.Name, r.Want, r.Got, r.Closed, r.Counted, r.Alive, r.OK, r.Detail)
		rep.Results = append(rep.Results, r)
	}
	t2 := time.Now()
	ld.stop()
	base, att, errs := ld.split(t1, t2)
	rep.BaseN, rep.AttackN, rep.LoadErrors = len(base), len(att), errs
	rep.BaseP50, rep.BaseP99 = pct(base, 0.50), pct(base, 0.99)
	rep.AttackP50, rep.AttackP99 = pct(att, 0.50), pct(att, 0.99)
	rep.Bound = time.Duration(cfg.P99Factor*float64(rep.BaseP99)) + cfg.P99Slack
	rep.LatencyOK = rep.AttackP99 <= rep.Bound && errs == 0
	rep.AllOK = true
	for _, r := range rep.Results {
		rep.AllOK = rep.AllOK && r.OK
	}
	if s, err := cfg.Node.Stats(ctx); err == nil {
		rep.RSSAfter, rep.GoroutinesA = int64(s.RSSBytes), s.Goroutines
	}
	return rep, nil
}

func healthy(ctx context.Context, admin string) bool {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+admin+"/healthz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200
}

// load is the legitimate traffic: open-loop sends at fixed intended times,
// latency measured from the intended time (no coordinated omission).
type load struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []sample
	clients []*client.Client
}

type sample struct {
	at  time.Time
	lat time.Duration
	err error
}

func startLoad(ctx context.Context, cfg Config, addr string) (*load, error) {
	lctx, cancel := context.WithCancel(ctx)
	ld := &load{cancel: cancel}
	n := cfg.LoadClients
	for i := range n {
		cl, err := client.Dial(ctx, clusterkit.ClientConfig("", addr, fmt.Sprintf("legit%d", i), "d"))
		if err != nil {
			ld.stop()
			return nil, fmt.Errorf("attack: legit client: %w", err)
		}
		ld.clients = append(ld.clients, cl)
		// Drain the stream so the legit clients are never slow consumers.
		go func() {
			for range cl.Messages() {
			}
		}()
	}
	interval := time.Duration(float64(time.Second) * float64(n) / cfg.Rate)
	for i, cl := range ld.clients {
		to := fmt.Sprintf("legit%d", (i+1)%n)
		ld.wg.Go(func() {
			next := time.Now().Add(time.Duration(i) * interval / time.Duration(n))
			for k := 0; ; k++ {
				select {
				case <-lctx.Done():
					return
				case <-time.After(time.Until(next)):
				}
				at := next
				ld.wg.Go(func() {
					sctx, c := context.WithTimeout(lctx, 10*time.Second)
					defer c()
					_, err := cl.Send(sctx, to, []byte("legit"))
					if lctx.Err() != nil {
						return
					}
					ld.mu.Lock()
					ld.samples = append(ld.samples, sample{at: at, lat: time.Since(at), err: err})
					ld.mu.Unlock()
				})
				next = next.Add(interval)
			}
		})
	}
	return ld, nil
}

func (ld *load) stop() {
	ld.cancel()
	ld.wg.Wait()
	for _, c := range ld.clients {
		_ = c.Close()
	}
}

func (ld *load) split(t1, t2 time.Time) (base, att []time.Duration, errs int) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	for _, s := range ld.samples {
		if s.err != nil {
			errs++
			continue
		}
		switch {
		case s.at.Before(t1):
			base = append(base, s.lat)
		case s.at.Before(t2):
			att = append(att, s.lat)
		}
	}
	return base, att, errs
}

func pct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q * float64(len(s)-1))
	return s[i]
}
