package engine

import (
	"sync"
	"sync/atomic"
	"time"
)

// workerPool runs connections' queued requests on a fixed set of goroutines
// fed by a channel. A connection is in the channel at most once (conn.running
// guards it), so a channel as large as the connection limit never fills;
// what bounds the work is the bytes each connection and the node may queue
// (Config.MaxConnInbound, MaxNodeInbound).
type workerPool struct {
	ch      chan *conn
	wg      sync.WaitGroup // the workers
	busy    atomic.Int64   // queued or running connections
	closeMu sync.RWMutex
	closed  bool
}

func newWorkerPool(workers, capacity int) *workerPool {
	p := &workerPool{ch: make(chan *conn, capacity)}
	p.wg.Add(workers)
	for range workers {
		go p.run()
	}
	return p
}

func (p *workerPool) run() {
	defer p.wg.Done()
	for c := range p.ch {
		c.runTasks()
		p.busy.Add(-1)
	}
}

// submit queues c without blocking. When the pool has stopped (the node is
// shutting down) c's queue is dropped with SHUTTING_DOWN.
func (p *workerPool) submit(c *conn) {
	p.closeMu.RLock()
	if !p.closed {
		p.busy.Add(1)
		select {
		case p.ch <- c:
			p.closeMu.RUnlock()
			return
		default: // cannot happen while connections <= capacity; treat as stopped
			p.busy.Add(-1)
		}
	}
	p.closeMu.RUnlock()
	c.dropQueue()
}

// idle blocks until nothing is queued or running. A plain counter polled
// here replaces a WaitGroup: submissions may start while idle waits.
func (p *workerPool) idle() {
	for p.busy.Load() > 0 {
		time.Sleep(2 * time.Millisecond)
	}
}

// stop lets queued work finish, then ends the workers.
func (p *workerPool) stop() {
	p.closeMu.Lock()
	if p.closed {
		p.closeMu.Unlock()
		return
	}
	p.closed = true
	close(p.ch)
	p.closeMu.Unlock()
	p.wg.Wait()
}
