package main

import (
	"io"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	cfg, jsonPath, hgrm, err := parse("p2p", []string{"--pairs", "5", "--target", "127.0.0.1:1,127.0.0.1:2",
		"--admin", "http://127.0.0.1:3,http://127.0.0.1:4", "--mem-reserve", "3GiB", "--imd-arg", "--heartbeat=120s,--idle-timeout=360s",
		"--find-max", "--max-p99", "5ms", "--json", "out.json", "--hgrm", "out.hgrm", "--src", "127.0.0.2,127.0.0.3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Scenario != "p2p" || cfg.Pairs != 5 || len(cfg.Targets) != 2 || len(cfg.Admins) != 2 || cfg.MemReserve != 3<<30 ||
		len(cfg.ImdArgs) != 2 || !cfg.FindMax || cfg.MaxP99 != 5*time.Millisecond || len(cfg.Src) != 2 {
		t.Fatalf("%+v", cfg)
	}
	if jsonPath != "out.json" || hgrm != "out.hgrm" {
		t.Fatalf("json %q hgrm %q", jsonPath, hgrm)
	}
	for _, args := range [][]string{{"--mem-reserve", "lots"}, {"--pairs", "x"}, {"extra"}} {
		if _, _, _, err := parse("p2p", args, io.Discard); err == nil {
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
	if code := run(nil, io.Discard, io.Discard); code != 2 {
		t.Fatalf("no args: %d", code)
	}
	if code := run([]string{"--help"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("--help: %d", code)
	}
	if code := run([]string{"p2p", "--help"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("p2p --help: %d", code)
	}
	if code := run([]string{"nosuch"}, io.Discard, io.Discard); code == 0 {
		t.Fatal("unknown scenario accepted")
	}
}
