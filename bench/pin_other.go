//go:build !linux

package bench

import "errors"

func pinProcess(pid int, cpuList string) error {
	if cpuList == "" {
		return nil
	}
	return errors.New("bench: cpu pinning needs Linux")
}
