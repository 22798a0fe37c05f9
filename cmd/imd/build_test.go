package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// testVersion is stamped into the imd the tests build, the way the
// Makefile stamps releases.
const testVersion = "v0.0.0-test"

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
	buildOut  []byte
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// buildImd compiles this command once per test binary, with the version
// stamped through -ldflags as `make build` does.
func buildImd(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "imd-test-")
		if buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "imd")
		buildOut, buildErr = exec.Command("go", "build", "-o", buildBin,
			"-ldflags", "-X github.com/imgn/imgn/internal/version.Version="+testVersion+
				" -X github.com/imgn/imgn/internal/version.Commit=0123456789abcdef0123"+
				" -X github.com/imgn/imgn/internal/version.Date=2026-01-02T03:04:05Z", ".").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build imd: %v\n%s", buildErr, buildOut)
	}
	return buildBin
}
