package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// unit is a parsed systemd unit file: section -> key -> values (a key may
// repeat).
type unit map[string]map[string][]string

func parseUnit(path string) (unit, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		case section == "":
			return nil, fmt.Errorf("%s:%d: setting outside a section", path, n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return nil, fmt.Errorf("%s:%d: not key=value: %q", path, n, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u, sc.Err()
}

// last returns the effective value of a [Service] key ("" if unset).
func (u unit) last(key string) string {
	v := u["Service"][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// hardening is what every unit must set, and how.
var hardening = []struct {
	key  string
	want *regexp.Regexp
	why  string
}{
	{"NoNewPrivileges", regexp.MustCompile(`^(yes|true)$`), "no privilege gain through setuid binaries"},
	{"ProtectSystem", regexp.MustCompile(`^strict$`), "the file system read-only but for the state directory"},
	{"ProtectHome", regexp.MustCompile(`^(yes|true|read-only|tmpfs)$`), "no access to home directories"},
	{"PrivateTmp", regexp.MustCompile(`^(yes|true)$`), "a private /tmp"},
	{"CapabilityBoundingSet", regexp.MustCompile(`^$`), "no capabilities (the ports are unprivileged)"},
	{"LimitNOFILE", regexp.MustCompile(`^[0-9]+$`), "one descriptor per client connection"},
	{"RestrictAddressFamilies", regexp.MustCompile(`AF_INET`), "only the socket families needed"},
	{"SystemCallFilter", regexp.MustCompile(`@system-service`), "only ordinary system calls"},
}

// checkUnit checks the hardening policy, ExecStart's settings, and, when
// systemd-analyze is installed, what it says of the unit.
func checkUnit(path string, c *commands) []string {
	u, err := parseUnit(path)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, path+": "+fmt.Sprintf(format, a...)) }
	if u["Service"] == nil {
		return []string{path + ": no [Service] section"}
	}
	for _, h := range hardening {
		v, set := u["Service"][h.key]
		if !set || !h.want.MatchString(v[len(v)-1]) {
			bad("%s must match %s (%s), got %q", h.key, h.want, h.why, strings.Join(v, " "))
		}
	}
	if n, err := strconv.Atoi(u.last("LimitNOFILE")); err == nil && n < 65536 {
		bad("LimitNOFILE=%d: too few for a server of client connections (want >= 65536)", n)
	}
	if u.last("DynamicUser") != "yes" && (u.last("User") == "" || u.last("User") == "root" || u.last("User") == "0") {
		bad("runs as root: set DynamicUser=yes or an unprivileged User=")
	}
	exec := u["Service"]["ExecStart"]
	if len(exec) != 1 {
		bad("want exactly one ExecStart, got %d", len(exec))
		return problems
	}
	argv := strings.Fields(exec[0])
	problems = append(problems, c.checkSettings(path+": ExecStart", argv, map[string]string{})...)
	return append(problems, systemdAnalyze(path, argv[0], c)...)
}

// systemdAnalyze runs `systemd-analyze verify` (which must print nothing:
// it reports unknown keys and bad values on stderr but exits 0) and
// `systemd-analyze security --offline` on a copy of the unit whose
// ExecStart names the built binary (verify requires it to exist). Without
// systemd-analyze it checks nothing and says so.
func systemdAnalyze(path, execPath string, c *commands) []string {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		fmt.Fprintf(os.Stderr, "deploycheck: no systemd-analyze: %s checked by the policy only\n", filepath.Base(path))
		return nil
	}
	dt, err := os.ReadFile(path)
	if err != nil {
		return []string{err.Error()}
	}
	bin, err := filepath.Abs(filepath.Join(c.bin, filepath.Base(execPath)))
	if err != nil {
		return []string{err.Error()}
	}
	dir, err := os.MkdirTemp("", "deploycheck-")
	if err != nil {
		return []string{err.Error()}
	}
	defer os.RemoveAll(dir)
	cp := filepath.Join(dir, filepath.Base(path))
	if err := os.WriteFile(cp, bytes.ReplaceAll(dt, []byte("ExecStart="+execPath), []byte("ExecStart="+bin)), 0o644); err != nil {
		return []string{err.Error()}
	}
	var problems []string
	out, err := exec.Command(sa, "verify", cp).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		problems = append(problems, fmt.Sprintf("%s: systemd-analyze verify: %v: %s", path, err, strings.TrimSpace(strings.ReplaceAll(string(out), cp, path))))
	}
	out, err = exec.Command(sa, "security", "--offline=yes", "--threshold=25", "--no-pager", cp).CombinedOutput()
	if err != nil {
		m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+ \S+)`).FindSubmatch(out)
		level := "unknown"
		if m != nil {
			level = string(m[1])
		}
		problems = append(problems, fmt.Sprintf("%s: systemd-analyze security: exposure %s, want at most 2.5: %v", path, level, err))
	}
	return problems
}
