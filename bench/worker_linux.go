//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// sampleMem returns this process's memory after a GC.
func sampleMem() MemSample {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return MemSample{RSS: procRSS(), Heap: ms.HeapInuse, CPU: procCPUSeconds()}
}

func resolveTargets(targets []string) ([]unix.SockaddrInet4, error) {
	if len(targets) == 0 {
		return nil, errors.New("bench: no targets")
	}
	out := make([]unix.SockaddrInet4, 0, len(targets))
	for _, t := range targets {
		host, port, err := net.SplitHostPort(t)
		if err != nil {
			return nil, fmt.Errorf("bench: target %q: %w", t, err)
		}
		if host == "localhost" || host == "" {
			host = "127.0.0.1"
		}
		ip := net.ParseIP(host).To4()
		if ip == nil {
			return nil, fmt.Errorf("bench: target %q: want an IPv4 address", t)
		}
		p, err := strconv.Atoi(port)
		if err != nil || p <= 0 || p > 65535 {
			return nil, fmt.Errorf("bench: target %q: bad port", t)
		}
		sa := unix.SockaddrInet4{Port: p}
		copy(sa.Addr[:], ip)
		out = append(out, sa)
	}
	return out, nil
}

// RunWorker runs one generator process's share of a run in this process:
// it opens the spec's connections on its own event loops, reports "ready"
// when the ramp is over, runs a phase for every "go" command, and returns
// after "finish" (or when cmds is closed or ctx ends), having closed every
// connection and stopped every loop. emit is called from this goroutine
// only.
func RunWorker(ctx context.Context, spec WorkerSpec, cmds <-chan Command, emit func(Event)) error {
	fdLimit := raiseFDLimit()
	if err := pinProcess(os.Getpid(), spec.CPUs); err != nil {
		return err
	}
	addrs, err := resolveTargets(spec.Targets)
	if err != nil {
		return err
	}
	routes := newRouteCache(spec.Router, spec.Targets)
	per := ConnsPerUnit(spec.Scenario, spec.GroupSize)
	units, stopReason := capUnits(spec.Units, per, MaxConnsPerProc(), fdLimit)
	nloops := spec.Loops
	if nloops <= 0 {
		nloops = runtime.GOMAXPROCS(0)
	}
	nloops = max(1, min(nloops, units))
	var src [4]byte
	bindSrc := false
	if spec.Src != "" {
		ip := net.ParseIP(spec.Src).To4()
		if ip == nil {
			return fmt.Errorf("bench: source address %q: want IPv4", spec.Src)
		}
		copy(src[:], ip)
		bindSrc = true
	}
	mem0 := sampleMem()
	rampCh := make(chan rampReport, nloops)
	phaseCh := make(chan phaseReport, nloops)
	loops := make([]*loop, 0, nloops)
	cleanup := func() {
		for _, l := range loops {
			l.command(loopCmd{kind: "finish"})
		}
		for _, l := range loops {
			<-l.done
		}
	}
	u := users{prefix: spec.UserPrefix}
	from := spec.UnitFrom
	for i := range nloops {
		n := units / nloops
		if i < units%nloops {
			n++
		}
		var h handler
		switch spec.Scenario {
		case ScenarioConns, ScenarioLogin:
			h = &holdHandler{from: from, n: n, targets: len(addrs), u: u}
		case ScenarioP2P:
			h = newP2P(from, n, len(addrs), u, spec.Run, spec.Payload)
		case ScenarioGroup:
			h = newGroup(from, n, spec.GroupSize, len(addrs), u, spec.Run, spec.Payload)
		case ScenarioChurn:
			h = newChurn(from, n, len(addrs), u, spec.Run, spec.Payload)
		default:
			cleanup()
			return fmt.Errorf("bench: unknown scenario %q", spec.Scenario)
		}
		from += n
		conc := max(1, spec.Concurrency/nloops)
		var route func(string) (int, bool)
		if spec.Router != "" {
			route = routes.index
		}
		l, err := newLoop(loopConfig{
			id: i, src: src, bindSrc: bindSrc, targets: addrs, route: route, secret: []byte(spec.Secret), device: spec.Device,
			concurrency: conc, retries: spec.Retries, loginTimeout: int64(spec.LoginTimeout), heartbeat: int64(spec.Heartbeat),
			pushAck: int64(spec.PushAck), run: spec.Run, payload: spec.Payload, maxOutbound: max(spec.MaxOutbound, 1<<20), ws: spec.WS,
		}, h, rampCh, phaseCh)
		if err != nil {
			cleanup()
			return fmt.Errorf("bench: epoll: %w", err)
		}
		loops = append(loops, l)
	}
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Go(l.run)
	}
	defer wg.Wait()
	defer cleanup()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	progress := func() {
		var held int64
		for _, l := range loops {
			held += l.held.Load()
		}
		emit(Event{Kind: "progress", Worker: spec.Worker, Held: held})
	}
	stopRamp := func() {
		for _, l := range loops {
			l.command(loopCmd{kind: "stop-ramp"})
		}
	}

	// Ramp.
	active := make([]int, len(loops))
	ramp := &RampResult{Units: units, FDLimit: fdLimit, StopReason: stopReason, Mem0: mem0}
	login := NewHist()
	for got := 0; got < len(loops); {
		select {
		case r := <-rampCh:
			got++
			st := r.stats
			ramp.Dialed += st.dialed
			ramp.Connected += st.connected
			ramp.LoggedIn += st.loggedIn
			ramp.Retried += st.retried
			ramp.Failures = mergeCounts(ramp.Failures, st.failures)
			if ramp.StopReason == "" {
				ramp.StopReason = st.stopReason
			}
			ramp.Seconds = max(ramp.Seconds, float64(st.rampEnd-st.rampStart)/1e9)
			login.Merge(st.loginHist)
			active[r.loop] = r.active
		case c, ok := <-cmds:
			if !ok || c.Kind == "finish" {
				return nil
			}
			if c.Kind == "stop-ramp" {
				stopRamp()
			}
		case <-tick.C:
			progress()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for i, l := range loops {
		ramp.Held += l.held.Load()
		ramp.Active += active[i]
	}
	ramp.Mem = sampleMem()
	if ramp.LoginHist, err = login.Encode(); err != nil {
		return err
	}
	emit(Event{Kind: "ready", Worker: spec.Worker, Ramp: ramp})

	for {
		select {
		case c, ok := <-cmds:
			if !ok || c.Kind == "finish" {
				cleanup()
				loops = nil
				emit(Event{Kind: "done", Worker: spec.Worker})
				return nil
			}
			if c.Kind != "go" || c.Phase == nil {
				continue
			}
			res, err := runPhase(ctx, spec, loops, active, *c.Phase, phaseCh, cmds, progress, tick.C)
			if err != nil {
				return err
			}
			if res == nil { // finished while in the phase
				return nil
			}
			emit(Event{Kind: "phase", Worker: spec.Worker, Phase: res})
		case <-tick.C:
			progress()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// runPhase runs one phase on every loop and merges their reports. It
// returns nil, nil when a finish command arrived meanwhile.
func runPhase(ctx context.Context, spec WorkerSpec, loops []*loop, active []int, ph PhaseSpec, phaseCh <-chan phaseReport,
	cmds <-chan Command, progress func(), tick <-chan time.Time) (*PhaseResult, error) {
	total := 0
	for _, a := range active {
		total += a
	}
	// Convert the wall-clock start to the loop clock.
	start := nowNs() + (ph.StartUnixNs - time.Now().UnixNano())
	win := Window{From: start + int64(ph.Warmup), To: start + int64(ph.Warmup) + int64(ph.Duration)}
	cpu0, wait0, t0 := procCPUSeconds(), procCPUWait(), time.Now()
	for i, l := range loops {
		rate := 0.0
		if total > 0 {
			rate = ph.Rate * float64(active[i]) / float64(total)
		}
		l.command(loopCmd{kind: "go", phase: loopPhase{id: ph.ID, start: start, rate: rate, window: win, end: win.To, drain: int64(ph.Drain)}})
	}
	res := &PhaseResult{ID: ph.ID, Rate: ph.Rate, WindowS: ph.Duration.Seconds()}
	h, lag := NewHist(), NewHist()
	for got := 0; got < len(loops); {
		select {
		case r := <-phaseCh:
			got++
			c := r.res
			res.Sent += c.sent
			res.SentTotal += c.sentTotal
			res.Expected += c.expected
			res.Delivered += c.delivered
			res.InWindowRx += c.inWindowRx
			res.SelfPushes += c.selfPushes
			res.Acks += c.acks
			res.Cycles += c.cycles
			res.Late += c.late
			res.Heartbeats += c.heartbeats
			res.HeartbeatOK += c.heartbeatOK
			res.Errors = mergeCounts(res.Errors, r.errs)
			res.Held += r.held
			h.Merge(r.hist)
			lag.Merge(r.lag)
		case c, ok := <-cmds:
			if !ok || c.Kind == "finish" {
				return nil, nil
			}
		case <-tick:
			progress()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	res.CPU, res.CPUWait, res.CPUSpan = procCPUSeconds()-cpu0, procCPUWait()-wait0, time.Since(t0).Seconds()
	res.Mem = sampleMem()
	var err error
	if res.Hist, err = h.Encode(); err != nil {
		return nil, err
	}
	if res.LagHist, err = lag.Encode(); err != nil {
		return nil, err
	}
	return res, nil
}

// capUnits limits a worker's units to what its fd limit allows and says
// why when it does.
func capUnits(units, per, maxConns int, fdLimit uint64) (int, string) {
	maxUnits := maxConns / per
	if units <= maxUnits {
		return units, ""
	}
	return maxUnits, fmt.Sprintf("fd limit: RLIMIT_NOFILE=%d lets one generator process hold %d connections, its share was %d: use more --procs",
		fdLimit, maxUnits*per, units*per)
}
