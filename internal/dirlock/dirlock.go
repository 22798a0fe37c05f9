// Package dirlock gives one process exclusive use of a directory, so a
// second server started on the same data directory fails at once with a
// message naming the process that holds it and the lock file, whatever
// store the directory holds.
//
// The lock is an advisory flock(2) on a file in the directory; the kernel
// drops it when the holder exits, even on kill -9, so a stale lock file
// never blocks a restart. The holder writes its pid into the file for the
// message of the next one.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// FileName is the lock file created in a locked directory.
const FileName = "imd.lock"

// Lock is a held directory lock. Release it when done with the directory.
type Lock struct {
	f    *os.File
	path string
}

// HeldError reports a directory locked by another holder.
type HeldError struct {
	Dir, Path string
	// PID is the holder's process id as recorded in the lock file, or 0
	// when the file does not say.
	PID int
}

func (e *HeldError) Error() string {
	holder := "another process"
	if e.PID > 0 {
		holder = fmt.Sprintf("another process (pid %d)", e.PID)
	}
	return fmt.Sprintf("data directory %s is in use by %s: lock file %s is held; stop that process or choose another directory", e.Dir, holder, e.Path)
}

// Acquire creates dir if needed and locks it without waiting. It returns a
// *HeldError when another open lock exists (in this process or another).
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &HeldError{Dir: dir, Path: path, PID: readPID(path)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("write lock file %s: %w", path, err)
		}
	}
	return &Lock{f: f, path: path}, nil
}

// Path returns the lock file's path.
func (l *Lock) Path() string { return l.path }

// Release unlocks the directory. The file stays (removing it would let a
// third process lock a new file while a second still waits on the old).
func (l *Lock) Release() error {
	if err := l.f.Truncate(0); err != nil {
		l.f.Close()
		return fmt.Errorf("clear lock file: %w", err)
	}
	return l.f.Close() // closing the last descriptor drops the flock
}

// readPID returns the pid recorded in path, or 0.
func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
