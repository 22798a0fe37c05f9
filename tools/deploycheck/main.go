// Command deploycheck checks the deployment files of the repository
// without a container engine or an init system running:
//
//   - Dockerfile: the lint rules of `docker build --check` (BuildKit's own
//     linter, run offline: base images are not fetched), then the image
//     policy: several stages, a final stage that runs as a numeric non-root
//     user, Go built with CGO_ENABLED=0 (a static binary), base images with
//     explicit tags;
//   - deploy/compose.yaml: the Compose schema and interpolation (the
//     compose-go loader that docker compose uses), then the settings of every
//     service that runs the project's image, checked by the command's own
//     `config check` with the service's command and environment; every IM_*
//     variable must name a setting;
//   - deploy/systemd/*.service: `systemd-analyze verify` must print nothing
//     and `systemd-analyze security --offline` must rate the unit's exposure
//     at most 2.5 (both when systemd-analyze is installed), the hardening
//     policy (NoNewPrivileges, ProtectSystem=strict, an unprivileged user,
//     LimitNOFILE, no capabilities), and ExecStart's arguments with
//     `config check`.
//
// Usage (from the repository root, after `make build`):
//
//	cd tools/deploycheck && go run . -root ../.. -bin ../../bin
//
// It prints each problem and exits 1 if there is any; `make test` runs it.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	root := flag.String("root", "../..", "repository root")
	bin := flag.String("bin", "", "directory holding imd and imrouter (default ROOT/bin)")
	flag.Parse()
	if *bin == "" {
		*bin = filepath.Join(*root, "bin")
	}
	problems := checkAll(*root, *bin)
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, p)
	}
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "deploycheck: %d problem(s)\n", len(problems))
		os.Exit(1)
	}
	fmt.Println("deploycheck: Dockerfile, deploy/compose.yaml and deploy/systemd/*.service are fine")
}

// checkAll runs every check of the repository at root.
func checkAll(root, bin string) []string {
	imageCmd, problems := checkDockerfile(filepath.Join(root, "Dockerfile"))
	// The config files the image and the units read: the image's own in a
	// container, typical host files on a host (the image's listens on every
	// interface, which a host file need not).
	testdata := filepath.Join(root, "tools", "deploycheck", "testdata")
	image := &commands{bin: bin, paths: map[string]string{
		"/etc/imgn/imd.toml":      filepath.Join(root, "deploy", "docker", "imd.toml"),
		"/etc/imgn/imrouter.toml": filepath.Join(testdata, "imrouter.toml"),
	}}
	host := &commands{bin: bin, paths: map[string]string{
		"/etc/imgn/imd.toml":      filepath.Join(testdata, "imd.toml"),
		"/etc/imgn/imrouter.toml": filepath.Join(testdata, "imrouter.toml"),
	}}
	problems = append(problems, checkCompose(filepath.Join(root, "deploy", "compose.yaml"), imageCmd, image)...)
	units, _ := filepath.Glob(filepath.Join(root, "deploy", "systemd", "*.service"))
	if len(units) == 0 {
		problems = append(problems, "deploy/systemd: no unit files")
	}
	for _, u := range units {
		problems = append(problems, checkUnit(u, host)...)
	}
	return problems
}
