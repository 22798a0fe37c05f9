package envflag

import (
	"flag"
	"io"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	newFS := func() (*flag.FlagSet, *string, *int) {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		return fs, fs.String("some-name", "def", ""), fs.Int("count", 1, "")
	}
	env := map[string]string{"IM_SOME_NAME": "fromenv", "IM_COUNT": "7"}
	fs, name, count := newFS()
	if err := Parse(fs, []string{"--count", "9"}, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if *name != "fromenv" || *count != 9 {
		t.Fatalf("name %q count %d: env must apply and the flag must win", *name, *count)
	}
	fs, _, _ = newFS()
	err := Parse(fs, nil, func(k string) string { return map[string]string{"IM_COUNT": "lots"}[k] })
	if err == nil || !strings.Contains(err.Error(), "IM_COUNT") {
		t.Fatalf("bad env value: %v", err)
	}
	fs, _, _ = newFS()
	if err := Parse(fs, []string{"extra"}, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "unexpected") {
		t.Fatalf("positional: %v", err)
	}
	if Key("jwt-secret") != "IM_JWT_SECRET" {
		t.Fatal(Key("jwt-secret"))
	}
}
