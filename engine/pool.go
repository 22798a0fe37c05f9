package engine

import "sync"

// workerPool runs connections' queued requests on a fixed set of goroutines
// fed by a bounded channel. A connection is in the channel at most once (see
// conn.submit), so the channel bounds waiting connections, and each
// connection's own queue bounds its requests.
type workerPool struct {
	ch      chan *conn
	wg      sync.WaitGroup
	busy    sync.WaitGroup // one count per queued or running connection
	closeMu sync.RWMutex
	closed  bool
}

func newWorkerPool(workers, queue int) *workerPool {
	p := &workerPool{ch: make(chan *conn, queue)}
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
		p.busy.Done()
	}
}

// submit queues c without blocking; false when the queue is full or the pool
// is stopped.
func (p *workerPool) submit(c *conn) bool {
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if p.closed {
		return false
	}
	p.busy.Add(1)
	select {
	case p.ch <- c:
		return true
	default:
		p.busy.Done()
		return false
	}
}

// idle blocks until nothing is queued or running.
func (p *workerPool) idle() { p.busy.Wait() }

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
