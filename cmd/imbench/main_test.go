package main

import (
	"bytes"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	cfg, out, err := parse("p2p", []string{"--pairs", "5", "--target", "127.0.0.1:1,127.0.0.1:2",
		"--admin", "http://127.0.0.1:3,http://127.0.0.1:4", "--mem-reserve", "3GiB", "--imd-arg", "--heartbeat=120s,--idle-timeout=360s",
		"--find-max", "--max-p99", "5ms", "--json", "out.json", "--hgrm", "out.hgrm", "--src", "127.0.0.2,127.0.0.3"}, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Scenario != "p2p" || cfg.Pairs != 5 || len(cfg.Targets) != 2 || len(cfg.Admins) != 2 || cfg.MemReserve != 3<<30 ||
		len(cfg.ImdArgs) != 2 || !cfg.FindMax || cfg.MaxP99 != 5*time.Millisecond || len(cfg.Src) != 2 {
		t.Fatalf("%+v", cfg)
	}
	if out.json != "out.json" || out.hgrm != "out.hgrm" || out.repeat != 1 {
		t.Fatalf("outputs %+v", out)
	}
	if _, out, err := parse("p2p", []string{"--repeat", "5", "--baseline-echo"}, io.Discard, io.Discard); err != nil || out.repeat != 5 {
		t.Fatalf("--repeat 5: %+v, %v", out, err)
	}
	for _, args := range [][]string{{"--mem-reserve", "lots"}, {"--pairs", "x"}, {"extra"},
		{"--repeat", "0"}, {"--repeat", "2", "--hgrm", "x.hgrm"}, {"--repeat", "3", "--profile", "dir"}} {
		if _, _, err := parse("p2p", args, io.Discard, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	var b bytesFlag
	for in, want := range map[string]uint64{"512": 512, "2K": 2048, "1MiB": 1 << 20, "2g": 2 << 30} {
		if err := b.Set(in); err != nil || uint64(b) != want {
			t.Errorf("%s: %d %v", in, b, err)
		}
	}
}

func TestRunExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string // prefix
		stderr string // exact
	}{
		{nil, 2, "", ""},
		{[]string{"--help"}, 0, "Usage: imbench <scenario> [flags]\n", ""},
		{[]string{"p2p", "--help"}, 0, "Usage: imbench p2p [flags]\n", ""},
		{[]string{"--version"}, 0, "imbench ", ""},
		{[]string{"nosuch"}, 2, "", "imbench: unknown scenario \"nosuch\": want one of conns, p2p, group, login, churn\nRun 'imbench --help' for usage.\n"},
		{[]string{"p2p", "--rate", "fast"}, 2, "", "imbench p2p: --rate: invalid value \"fast\": want a number\nRun 'imbench p2p --help' for usage.\n"},
		{[]string{"p2p", "-bogus"}, 2, "", "imbench p2p: unknown flag --bogus\nRun 'imbench p2p --help' for usage.\n"},
		{[]string{"p2p", "--repeat", "0"}, 2, "", "imbench p2p: --repeat 0: want at least 1\nRun 'imbench p2p --help' for usage.\n"},
		{[]string{"fsync", "--help"}, 0, "Usage: imbench fsync [flags]\n", ""},
		{[]string{"fsync", "--record", "0", "--duration", "1ms"}, 1, "", "imbench fsync: bench: fsync probe: record size 0, want > 0\n"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if code != tc.code || !strings.HasPrefix(out.String(), tc.stdout) || (tc.stderr != "" && errb.String() != tc.stderr) {
			t.Errorf("%v: exit %d\nstdout %q\nstderr %q", tc.args, code, out.String(), errb.String())
		}
		if regexp.MustCompile(`(?m)^\s+-[a-z]`).MatchString(out.String()) {
			t.Errorf("%v: help spells a flag -name:\n%s", tc.args, out.String())
		}
	}
}

// TestFsyncCommand: the probe runs on its own and reports what it measured.
func TestFsyncCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"fsync", "--dir", t.TempDir(), "--duration", "100ms"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !regexp.MustCompile(`^fsync probe .*: [1-9][0-9]* writes of 600 B \+ fdatasync: mean [0-9]+us p50 [1-9]`).MatchString(out.String()) {
		t.Fatalf("output %q", out.String())
	}
}
