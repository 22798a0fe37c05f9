package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// commands runs the project's commands (built into bin) to check the
// settings a deployment file gives them.
type commands struct {
	bin string
	// paths maps a path inside the deployment (a container's config file)
	// to the repository file that ends up there.
	paths map[string]string
}

// known are the commands whose settings can be checked.
var known = map[string]bool{"imd": true, "imrouter": true}

// checkSettings runs `<cmd> config check args...` with env as the whole
// environment and reports a refusal, and every IM_* variable of env that
// the command did not take as a setting. where names the file and service
// for messages.
func (c *commands) checkSettings(where string, argv []string, env map[string]string) []string {
	name := filepath.Base(argv[0])
	if !known[name] {
		return []string{fmt.Sprintf("%s: runs %q, not one of the project's daemons", where, argv[0])}
	}
	args := append([]string{"config", "check"}, argv[1:]...)
	for i, a := range args {
		if p, ok := c.paths[a]; ok {
			args[i] = p
		}
	}
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Env = []string{}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return []string{fmt.Sprintf("%s: %s refuses the settings: %v: %s", where, name, err, strings.TrimSpace(stderr.String()))}
	}
	used := map[string]bool{}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if m := envSource.FindStringSubmatch(sc.Text()); m != nil {
			used[m[1]] = true
		}
	}
	var problems []string
	for k := range env {
		if strings.HasPrefix(k, "IM_") && !used[k] {
			problems = append(problems, fmt.Sprintf("%s: %s is not a setting of %s", where, k, name))
		}
	}
	return problems
}

// envSource matches a line of `config check` output set from a variable.
var envSource = regexp.MustCompile(`  # env (IM_[A-Z0-9_]+)$`)
