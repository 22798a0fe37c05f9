package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerui"
	digest "github.com/opencontainers/go-digest"
)

// checkDockerfile lints the Dockerfile at path and checks the image
// policy. It returns the final stage's default command (exec-form CMD,
// after ENTRYPOINT if any), to check the compose services that use it.
func checkDockerfile(path string) (defaultCmd []string, problems []string) {
	dt, err := os.ReadFile(path)
	if err != nil {
		return nil, []string{err.Error()}
	}
	problems = append(problems, lintDockerfile(path, dt)...)
	res, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		return nil, append(problems, fmt.Sprintf("%s: %v", path, err))
	}
	stages, metaArgs, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return nil, append(problems, fmt.Sprintf("%s: %v", path, err))
	}
	cmd, policy := imagePolicy(stages, metaArgs)
	for _, p := range policy {
		problems = append(problems, path+": "+p)
	}
	return cmd, problems
}

// lintDockerfile runs BuildKit's lint rules, as `docker build --check`
// does, without fetching base images (their config is taken as empty).
func lintDockerfile(path string, dt []byte) []string {
	sm := llb.NewSourceMap(nil, path, "Dockerfile", dt)
	sm.Definition = &llb.Definition{}
	res, err := dockerfile2llb.DockerfileLint(context.Background(), dt, dockerfile2llb.ConvertOpt{
		Config:       dockerui.Config{},
		SourceMap:    sm,
		MetaResolver: offlineResolver{},
	})
	if err != nil {
		return []string{fmt.Sprintf("%s: lint: %v", path, err)}
	}
	var out []string
	for _, w := range res.Warnings {
		line := 0
		if len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		out = append(out, fmt.Sprintf("%s:%d: %s: %s", path, line, w.RuleName, w.Detail))
	}
	if res.Error != nil {
		out = append(out, fmt.Sprintf("%s: %s", path, res.Error.Message))
	}
	return out
}

// offlineResolver answers every base image with an empty linux config, so
// linting needs no registry.
type offlineResolver struct{}

func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	return ref, digest.FromString(ref), []byte(`{"architecture":"amd64","os":"linux","config":{}}`), nil
}

var goBuild = regexp.MustCompile(`\bgo build\b`)

// imagePolicy checks what the lint rules do not: several stages (the
// toolchain stays out of the image), an explicit tag on every base image,
// Go built without cgo, and a final stage running as a numeric non-root
// user (an image without /etc/passwd cannot resolve names). It returns
// the final stage's default command.
func imagePolicy(stages []instructions.Stage, metaArgs []instructions.ArgCommand) (defaultCmd []string, problems []string) {
	if len(stages) < 2 {
		problems = append(problems, "single stage: build in one stage and copy the binaries into a minimal final stage")
	}
	args := map[string]string{}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			if kv.Value != nil {
				args[kv.Key] = *kv.Value
			}
		}
	}
	names := map[string]bool{}
	for _, st := range stages {
		base := os.Expand(st.BaseName, func(k string) string { return args[k] })
		if !names[strings.ToLower(base)] && base != "scratch" {
			ref := base[strings.LastIndex(base, "/")+1:]
			if _, tag, ok := strings.Cut(ref, ":"); !ok && !strings.Contains(ref, "@") || tag == "latest" {
				problems = append(problems, fmt.Sprintf("FROM %s: give the base image an explicit version tag", st.BaseName))
			}
		}
		names[strings.ToLower(st.Name)] = st.Name != ""
		for _, c := range st.Commands {
			if run, ok := c.(*instructions.RunCommand); ok {
				line := strings.Join(run.CmdLine, " ")
				if goBuild.MatchString(line) && !strings.Contains(line, "CGO_ENABLED=0") {
					problems = append(problems, "RUN go build without CGO_ENABLED=0: the binary must be static")
				}
			}
		}
	}
	if len(stages) == 0 {
		return nil, problems
	}
	final := stages[len(stages)-1]
	user := ""
	var entrypoint, cmd []string
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.EntrypointCommand:
			entrypoint = c.CmdLine
			if c.PrependShell {
				problems = append(problems, "ENTRYPOINT in shell form: use the exec form")
			}
		case *instructions.CmdCommand:
			cmd = c.CmdLine
			if c.PrependShell {
				problems = append(problems, "CMD in shell form: use the exec form")
			}
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	switch n, err := strconv.Atoi(uid); {
	case user == "":
		problems = append(problems, "the final stage runs as root: add USER with a numeric uid:gid")
	case err != nil:
		problems = append(problems, fmt.Sprintf("USER %s: use a numeric uid:gid (the final image has no user database)", user))
	case n == 0:
		problems = append(problems, "USER 0: the final stage must not run as root")
	}
	return append(entrypoint, cmd...), problems
}
