package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// projectImage is the image deploy/compose.yaml builds from the Dockerfile.
const projectImage = "imgn:local"

// checkCompose loads the compose file as docker compose would (schema,
// anchors, interpolation; the environment is empty, so defaults apply)
// and checks the settings of every service running the project's image.
// imageCmd is the image's default command, for services that give none.
func checkCompose(path string, imageCmd []string, c *commands) []string {
	opts, err := cli.NewProjectOptions([]string{path}, cli.WithName("imgn"), cli.WithEnv(nil), cli.WithResolvedPaths(true))
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", path, err)}
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", path, err)}
	}
	var problems []string
	names := make([]string, 0, len(p.Services))
	for name := range p.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	checked := 0
	for _, name := range names {
		s := p.Services[name]
		if s.Image != projectImage {
			continue
		}
		checked++
		if s.Build != nil && filepath.Base(s.Build.Dockerfile) != "Dockerfile" {
			problems = append(problems, fmt.Sprintf("%s: service %s builds %s, not the repository's Dockerfile", path, name, s.Build.Dockerfile))
		}
		argv := []string(s.Command)
		if len(argv) == 0 {
			argv = imageCmd
		}
		if len(argv) == 0 {
			problems = append(problems, fmt.Sprintf("%s: service %s has no command", path, name))
			continue
		}
		problems = append(problems, c.checkSettings(fmt.Sprintf("%s: service %s", path, name), argv, environment(s.Environment))...)
	}
	if checked == 0 {
		problems = append(problems, fmt.Sprintf("%s: no service runs %s", path, projectImage))
	}
	return problems
}

func environment(m types.MappingWithEquals) map[string]string {
	env := map[string]string{}
	for k, v := range m {
		if v != nil {
			env[k] = *v
		}
	}
	return env
}
