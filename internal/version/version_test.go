package version

import (
	"regexp"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	defer func(v, c, d string) { Version, Commit, Date = v, c, d }(Version, Commit, Date)
	Version, Commit, Date = "v1.2.3", "0123456789abcdef0123456789abcdef01234567", "2026-01-02T03:04:05Z"
	got := String("imd")
	if !regexp.MustCompile(`^imd v1\.2\.3 \(commit 0123456789ab from 2026-01-02T03:04:05Z, go1\.\d+\S* \w+/\w+\)$`).MatchString(got) {
		t.Fatalf("%q", got)
	}
	Version, Commit, Date = "", "", ""
	in := Get()
	if in.Version == "" || in.Commit == "" || !strings.HasPrefix(in.Go, "go") {
		t.Fatalf("unstamped: %+v", in)
	}
}
