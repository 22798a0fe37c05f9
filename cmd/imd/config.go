package main

import (
	"io"

	"github.com/imgn/imgn/internal/envflag"
)

// exitFor maps a parse error to imd's exit status (see envflag.Exit).
func exitFor(err error, stderr io.Writer) (code int, stop bool) {
	return envflag.Exit("imd", err, stderr)
}

// runConfig runs `imd config example` and `imd config check [flags]`.
func runConfig(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fresh := func() *envflag.Flags {
		fs, _ := newFlagSet(&options{}, io.Discard)
		return fs
	}
	check := func(args []string) (*envflag.Flags, string, error) {
		o, err := parseOptions(args, getenv, stdout)
		if err != nil {
			return nil, "", err
		}
		mode := "single node, " + o.store.kind + " store"
		if o.clustered() {
			mode = "cluster node, mesh " + o.cluster.meshMode
		}
		return o.flags, "node " + o.engine.NodeID + " (" + mode + ")", nil
	}
	return envflag.ConfigCommand("imd", args, stdout, stderr, fresh, check, redactSetting)
}

// redactSetting hides secrets in `imd config check` output.
func redactSetting(name, value string) string {
	switch name {
	case "jwt-secret", "admin-token", "mesh-secret":
		if value != "" {
			return "REDACTED"
		}
	case "mongo-uri":
		return redactURI(value)
	}
	return value
}
