//go:build !linux

package bench

import (
	"context"
	"errors"
)

// RunWorker needs epoll: the generator runs on Linux only.
func RunWorker(ctx context.Context, spec WorkerSpec, cmds <-chan Command, emit func(Event)) error {
	return errors.New("bench: the load generator runs on Linux only")
}
