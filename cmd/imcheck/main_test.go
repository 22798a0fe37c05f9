package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
)

func TestRunUsage(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string // prefix
		stderr string // prefix
	}{
		{[]string{"--help"}, 0, "Usage: imcheck check [flags]\n", ""},
		{[]string{"help"}, 0, "Usage: imcheck check [flags]\n", ""},
		{[]string{"check", "--help"}, 0, "Usage: imcheck check [flags]\n\nRuns the fault checker", ""},
		{[]string{"attack", "-h"}, 0, "Usage: imcheck attack [flags]\n", ""},
		{[]string{"--version"}, 0, "imcheck ", ""},
		{nil, 2, "", "Usage: imcheck check"},
		{[]string{"verify"}, 2, "", "imcheck: unknown command \"verify\": want check or attack\nRun 'imcheck --help' for usage.\n"},
		{[]string{"check", "--nodes", "many"}, 2, "", "imcheck check: --nodes: invalid value \"many\": want an integer\nRun 'imcheck check --help' for usage.\n"},
		{[]string{"attack", "--rate=x", "--bogus"}, 2, "", "imcheck attack: --rate: invalid value \"x\": want a number\n"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errb)
		if code != tc.code || !strings.HasPrefix(out.String(), tc.stdout) || !strings.HasPrefix(errb.String(), tc.stderr) {
			t.Errorf("%v: exit %d\nstdout %q\nstderr %q", tc.args, code, out.String(), errb.String())
		}
		if regexp.MustCompile(`(?m)^\s+-[a-z]`).MatchString(out.String()) {
			t.Errorf("%v: help spells a flag -name:\n%s", tc.args, out.String())
		}
	}
}
