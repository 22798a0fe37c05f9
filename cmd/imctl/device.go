package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
)

// deviceFile is where imctl keeps this machine's device id, under the
// user's config directory.
const deviceFile = "imgn/device"

// machineDevice returns this machine's device id for imctl, plus suffix
// ("-recv" keeps recv's place apart from chat's, so both can run at once
// without the server closing one as a duplicate login). The id, "m-" and
// 12 hex digits, is created on first use in <config dir>/imgn/device and
// read from there afterwards, so recv and chat resume from the server's
// cursor for this machine instead of replaying the inbox on every run. On
// failure it returns "" (the client then picks a one-off device) and why.
func machineDevice(getenv func(string) string, suffix string) (string, error) {
	dir, err := userConfigDir(getenv)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, deviceFile)
	id, err := readDevice(path)
	if errors.Is(err, fs.ErrNotExist) {
		id, err = createDevice(path)
	}
	if err != nil {
		return "", err
	}
	return id + suffix, nil
}

// userConfigDir is os.UserConfigDir reading the environment through
// getenv, so tests can point it at a temporary directory.
func userConfigDir(getenv func(string) string) (string, error) {
	switch runtime.GOOS {
	case "windows", "darwin", "ios", "plan9":
		return os.UserConfigDir()
	}
	if d := getenv("XDG_CONFIG_HOME"); d != "" {
		if !filepath.IsAbs(d) {
			return "", fmt.Errorf("XDG_CONFIG_HOME %q is not an absolute path", d)
		}
		return d, nil
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".config"), nil
	}
	return "", errors.New("neither XDG_CONFIG_HOME nor HOME is set")
}

func readDevice(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(b))
	if !deviceForm.MatchString(id) {
		return "", fmt.Errorf("%s holds %q, not a device id: delete the file to get a new one", path, truncate(id, 70))
	}
	return id, nil
}

// createDevice writes a new id to path, or returns the one another imctl
// wrote first: the file appears complete or not at all (link of a fully
// written temporary file).
func createDevice(path string) (string, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random device id: %w", err)
	}
	id := "m-" + hex.EncodeToString(b[:])
	tmp, err := os.CreateTemp(filepath.Dir(path), ".device-*")
	if err != nil {
		return "", fmt.Errorf("store device id: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(id + "\n")
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return "", fmt.Errorf("store device id: %w", werr)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readDevice(path)
		}
		return "", fmt.Errorf("store device id: %w", err)
	}
	return id, nil
}

// deviceForm is the form of the ids createDevice makes.
var deviceForm = regexp.MustCompile(`^m-[0-9a-f]{12}$`)
