// Package version reports what a binary was built from. The release build
// (`make build`, `make dist`) stamps Version, Commit and Date with
// -ldflags "-X github.com/imgn/imgn/internal/version.Version=...";
// a plain `go build` leaves them empty and String falls back to the VCS
// information the Go toolchain records in the binary.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Stamped at link time; empty in an unstamped build.
var (
	// Version is the release version, e.g. v0.4.0 or v0.4.0-3-g8a490d2-dirty.
	Version string
	// Commit is the full git commit hash.
	Commit string
	// Date is the commit's time, RFC 3339 in UTC (the time of the
	// sources, so rebuilding a commit stamps the same bytes).
	Date string
)

// Info is the resolved build information.
type Info struct {
	Version  string // "devel" when neither stamped nor recorded by the toolchain
	Commit   string // "unknown" when unavailable
	Date     string // "" when unavailable
	Modified bool   // unstamped build from a tree with uncommitted changes (toolchain VCS info)
	Go       string // runtime.Version()
	Platform string // GOOS/GOARCH
}

// Get returns the stamped values, filling gaps from debug.ReadBuildInfo.
func Get() Info {
	in := Info{Version: Version, Commit: Commit, Date: Date, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if in.Commit == "" {
					in.Commit = s.Value
				}
			case "vcs.time":
				if in.Date == "" {
					in.Date = s.Value
				}
			case "vcs.modified":
				// A stamped build says so in its Version ("-dirty").
				in.Modified = s.Value == "true" && Commit == ""
			}
		}
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version
		}
	}
	if in.Version == "" {
		in.Version = "devel"
	}
	if in.Commit == "" {
		in.Commit = "unknown"
	}
	return in
}

// String is the one-line answer of `<cmd> --version`, e.g.
//
//	imd v0.4.0 (commit 8a490d2c1f0e from 2026-12-06T02:00:00Z, go1.26.8 linux/amd64)
func String(cmd string) string {
	in := Get()
	commit := in.Commit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if in.Modified {
		commit += "+modified"
	}
	from := ""
	if in.Date != "" {
		from = " from " + in.Date
	}
	return fmt.Sprintf("%s %s (commit %s%s, %s %s)", cmd, in.Version, commit, from, in.Go, in.Platform)
}
