package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/imgn/imgn/internal/childproc"
)

// WorkerArg is the hidden first argument that makes imbench a worker
// process (see RunChild).
const WorkerArg = "__worker"

// RunChild is the main of a worker process: it reads a WorkerSpec (JSON) from
// the first line of stdin and then Commands, one JSON object per line, and
// writes Events to stdout, one per line. It ends after "finish", when stdin
// closes (the parent is gone), or on SIGTERM/SIGINT, and returns the exit
// code.
func RunChild(stdin io.Reader, stdout, stderr io.Writer) int {
	br := bufio.NewReaderSize(stdin, 64<<10)
	line, err := br.ReadBytes('\n')
	if err != nil && len(line) == 0 {
		fmt.Fprintln(stderr, "imbench worker: no spec on stdin:", err)
		return 2
	}
	var spec WorkerSpec
	if err := json.Unmarshal(line, &spec); err != nil {
		fmt.Fprintln(stderr, "imbench worker: bad spec:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cmds := make(chan Command, 16)
	// The reader ends at EOF on stdin (the parent closes it when it is done
	// with this worker, or dies) or when RunWorker has returned.
	workerDone := make(chan struct{})
	go func() {
		defer close(cmds)
		for {
			line, err := br.ReadBytes('\n')
			if len(line) > 1 {
				var c Command
				if json.Unmarshal(line, &c) == nil {
					select {
					case cmds <- c:
					case <-workerDone:
						return
					}
				}
			}
			if err != nil {
				return
			}
		}
	}()
	var mu sync.Mutex
	enc := json.NewEncoder(stdout)
	emit := func(ev Event) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(ev)
	}
	err = RunWorker(ctx, spec, cmds, emit)
	close(workerDone)
	if err != nil {
		emit(Event{Kind: "error", Worker: spec.Worker, Err: err.Error()})
		return 1
	}
	return 0
}

// worker is the parent's handle on one worker, in this process or a child
// process. Its events, and finally one "exit" event, go to the shared
// channel given at start.
type worker struct {
	id   int
	send func(Command) error
	// stop ends the worker without blocking: it closes the command stream
	// (and, for a process, kills it if it has not exited after grace). The
	// caller keeps draining events until the worker's "exit" event.
	stop func(grace time.Duration)
}

// startInProcess runs spec on RunWorker in a goroutine.
func startInProcess(ctx context.Context, spec WorkerSpec, events chan<- Event) *worker {
	cmds := make(chan Command, 16)
	var once sync.Once
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := RunWorker(ctx, spec, cmds, func(ev Event) { events <- ev })
		ev := Event{Kind: "exit", Worker: spec.Worker}
		if err != nil {
			ev.Err = err.Error()
		}
		events <- ev
	}()
	return &worker{
		id: spec.Worker,
		send: func(c Command) error {
			select {
			case cmds <- c:
				return nil
			case <-done:
				return errors.New("worker exited")
			}
		},
		stop: func(time.Duration) { once.Do(func() { close(cmds) }) },
	}
}

// startProcess runs spec in a child process: exe args... with the spec on
// its stdin. The child dies with this process (Pdeathsig) and has its own
// process group, so a terminal's Ctrl-C reaches only the parent, which
// then stops it in order.
func startProcess(exe string, args, env []string, spec WorkerSpec, events chan<- Event, stderr io.Writer) (*worker, error) {
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = stderr
	cmd.SysProcAttr = childproc.Attr(true)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start worker %d: %w", spec.Worker, err)
	}
	var wmu sync.Mutex
	enc := json.NewEncoder(stdin)
	write := func(v any) error {
		wmu.Lock()
		defer wmu.Unlock()
		return enc.Encode(v)
	}
	if err := write(spec); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("bench: worker %d spec: %w", spec.Worker, err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for sc.Scan() {
			var ev Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				continue
			}
			ev.Worker = spec.Worker
			events <- ev
		}
		err := cmd.Wait()
		ev := Event{Kind: "exit", Worker: spec.Worker}
		if err != nil {
			ev.Err = err.Error()
		}
		events <- ev
	}()
	var once sync.Once
	return &worker{
		id:   spec.Worker,
		send: func(c Command) error { return write(c) },
		stop: func(grace time.Duration) {
			once.Do(func() {
				wmu.Lock()
				_ = stdin.Close()
				wmu.Unlock()
				// The parent keeps draining events meanwhile; this
				// goroutine ends when the child has exited.
				go func() {
					t := time.NewTimer(grace)
					defer t.Stop()
					select {
					case <-exited:
					case <-t.C:
						_ = cmd.Process.Signal(syscall.SIGKILL)
					}
				}()
			})
		},
	}, nil
}
