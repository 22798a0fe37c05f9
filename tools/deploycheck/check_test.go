package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var binDir string

// TestMain builds imd and imrouter of this repository once.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "deploycheck-bin-")
	if err != nil {
		panic(err)
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/imd", "./cmd/imrouter")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		panic("build imd, imrouter: " + err.Error() + "\n" + string(out))
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestRepository: the repository's own deployment files pass.
func TestRepository(t *testing.T) {
	if problems := checkAll("../..", binDir); len(problems) > 0 {
		t.Fatalf("problems:\n%s", strings.Join(problems, "\n"))
	}
}

func wantAll(t *testing.T, problems []string, wants ...string) {
	t.Helper()
	all := strings.Join(problems, "\n")
	for _, w := range wants {
		if !strings.Contains(all, w) {
			t.Errorf("no problem mentions %q; problems:\n%s", w, all)
		}
	}
}

func TestBadDockerfile(t *testing.T) {
	cmd, problems := checkDockerfile("testdata/bad/Dockerfile")
	wantAll(t, problems,
		"ConsistentInstructionCasing", "SecretsUsedInArgOrEnv", "JSONArgsRecommended", // BuildKit's rules
		"single stage", "FROM golang:latest: give the base image an explicit version tag",
		"without CGO_ENABLED=0", "CMD in shell form", "the final stage runs as root")
	if strings.Join(cmd, " ") != "/imd --listen $LISTEN" {
		t.Errorf("default command %q", cmd)
	}
}

func TestBadCompose(t *testing.T) {
	c := &commands{bin: binDir}
	problems := checkCompose("testdata/bad/deploy/compose.yaml", []string{"imd"}, c)
	wantAll(t, problems,
		"service node: imd refuses the settings", `IM_HEARTBEAT="5": want a duration`,
		"service router: imrouter refuses the settings", `--lb "fastest"`)
	problems = checkCompose("testdata/bad/deploy/compose.yaml", []string{"imd", "--heartbeat", "5s"}, c)
	wantAll(t, problems, "service node: IM_NODEID is not a setting of imd")
	wantAll(t, checkCompose("testdata/schema/compose.yaml", nil, c), "services.other.ports must be a array")
}

func TestBadUnit(t *testing.T) {
	problems := checkUnit("testdata/bad/deploy/systemd/imd.service", &commands{bin: binDir})
	wantAll(t, problems,
		"NoNewPrivileges must match", "ProtectSystem must match ^strict$", "CapabilityBoundingSet must match",
		"LimitNOFILE=1024: too few", "runs as root", "ExecStart: imd refuses the settings")
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		wantAll(t, problems, "Unknown key 'BogusKey'", "systemd-analyze security: exposure")
	}
	if _, err := parseUnit(filepath.Join(t.TempDir(), "missing.service")); err == nil {
		t.Error("a missing unit parses")
	}
}
