package envflag

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

type testFlags struct {
	f     *Flags
	out   *bytes.Buffer
	name  *string
	count *int
	wait  *time.Duration
	on    *bool
	rate  *float64
	list  *string
}

func newTest(t *testing.T) *testFlags {
	t.Helper()
	out := &bytes.Buffer{}
	f := New("tool", "tool [flags]\ntool sub", "Does things.", out)
	f.WithConfig()
	tf := &testFlags{f: f, out: out,
		name:  f.String("some-name", "def", "a `NAME`"),
		count: f.Int("count", 1, "how many"),
		wait:  f.Duration("wait", 30*time.Second, "how long"),
		on:    f.Bool("on", false, "switch"),
		rate:  f.Float64("rate", 2.5, "per second"),
		list:  f.String("servers", "", "host:port,..."),
	}
	f.SetGroups(Group{"Main", []string{"some-name", "count", "wait"}})
	return tf
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPrecedence: for each setting independently, a flag beats the
// environment, which beats the file, which beats the default.
func TestPrecedence(t *testing.T) {
	path := writeFile(t, `
some-name = "from-file"
count = 7
wait = "1m"
rate = 9.5
servers = ["a:1", "b:2"]
`)
	tf := newTest(t)
	err := tf.f.Parse([]string{"--count", "3", "--config", path}, env(map[string]string{"IM_COUNT": "5", "IM_WAIT": "2m"}))
	if err != nil {
		t.Fatal(err)
	}
	if *tf.count != 3 || *tf.wait != 2*time.Minute || *tf.name != "from-file" || *tf.rate != 9.5 || *tf.list != "a:1,b:2" || *tf.on {
		t.Fatalf("count %d wait %s name %q rate %g list %q on %v", *tf.count, *tf.wait, *tf.name, *tf.rate, *tf.list, *tf.on)
	}
	want := map[string]string{"count": "flag", "config": "flag", "wait": "env", "some-name": "file", "rate": "file", "servers": "file"}
	for k, v := range want {
		if tf.f.Source[k] != v {
			t.Errorf("source of %s = %q, want %q", k, tf.f.Source[k], v)
		}
	}
	if _, ok := tf.f.Source["on"]; ok {
		t.Error("on was never set but has a source")
	}

	// The config file may come from the environment too.
	tf = newTest(t)
	if err := tf.f.Parse(nil, env(map[string]string{"IM_CONFIG": path})); err != nil || *tf.count != 7 || tf.f.ConfigPath() != path {
		t.Fatalf("IM_CONFIG: err %v count %d", err, *tf.count)
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		file string
		want string // regexp of the whole message
	}{
		{"bad duration flag", []string{"--wait", "5"}, nil, "", `^--wait: invalid value "5": want a duration with a unit, e\.g\. 5s, 2m or 1h$`},
		{"bad int flag", []string{"--count=lots"}, nil, "", `^--count: invalid value "lots": want an integer$`},
		{"bad bool flag", []string{"--on=maybe"}, nil, "", `^--on: invalid value "maybe": want true or false$`},
		{"unknown flag", []string{"--bogus"}, nil, "", `^unknown flag --bogus$`},
		{"missing value", []string{"--count"}, nil, "", `^--count needs a value$`},
		{"positional", []string{"extra", "args"}, nil, "", `^unexpected arguments: extra args$`},
		{"bad env", nil, map[string]string{"IM_COUNT": "lots"}, "", `^IM_COUNT="lots": want an integer$`},
		{"unknown key", nil, nil, "cuont = 3\nzzz = 1\n", `c\.toml: unknown key "cuont" \(did you mean "count"\?\); unknown key "zzz"$`},
		{"table", nil, nil, "[cluster]\ncount = 3\n", `unknown key "cluster\.count" \(settings are top-level keys, not tables\)`},
		{"version key", nil, nil, "version = true\n", `unknown key "version"`},
		{"bad file value", nil, nil, "wait = 30\n", `c\.toml: key "wait": invalid value "30": want a duration with a unit`},
		{"int array", nil, nil, "servers = [1, 2]\n", `key "servers": arrays may hold only strings`},
		{"datetime", nil, nil, "servers = 1979-05-27T07:32:00Z\n", `key "servers": unsupported value`},
		{"syntax", nil, nil, "count = = 3\n", `c\.toml:1:\d+: `},
		{"missing file", []string{"--config", "/nonexistent/imgn.toml"}, nil, "", `^config file: .*no such file`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tf := newTest(t)
			args := tc.args
			if tc.file != "" {
				args = append(args, "--config", writeFile(t, tc.file))
			}
			err := tf.f.Parse(args, env(tc.env))
			var ue *UsageError
			if !errors.As(err, &ue) || !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Fatalf("err %v, want a usage error matching %s", err, tc.want)
			}
			var stderr bytes.Buffer
			if code, stop := Exit("tool", err, &stderr); code != 2 || !stop {
				t.Fatalf("exit %d %v", code, stop)
			}
			if want := "tool: " + err.Error() + "\nRun 'tool --help' for usage.\n"; stderr.String() != want {
				t.Fatalf("stderr %q, want %q", stderr.String(), want)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	tf := newTest(t)
	err := tf.f.Parse([]string{"--help"}, env(nil))
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err %v", err)
	}
	if code, stop := Exit("tool", err, &bytes.Buffer{}); code != 0 || !stop {
		t.Fatalf("help exit %d", code)
	}
	help := tf.out.String()
	for _, want := range []string{
		"Usage: tool [flags]\n       tool sub\n\nDoes things.\n",
		"\nMain:\n  --some-name NAME\n    \ta NAME (default \"def\")\n  --count int\n    \thow many (default 1)\n  --wait duration\n    \thow long (default 30s)\n",
		"\nOther flags:\n  --on\n    \tswitch\n  --rate float\n    \tper second (default 2.5)\n  --servers string\n",
		"\nGeneral:\n  --config FILE\n    \tread settings from this TOML FILE",
		"  --version\n    \tprint the version and exit\n",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}
	if regexp.MustCompile(`(?m)^  -[a-z]`).MatchString(help) {
		t.Errorf("help spells a flag with one dash:\n%s", help)
	}

	tf = newTest(t)
	err = tf.f.Parse([]string{"--version"}, env(nil))
	if !errors.Is(err, ErrVersion) || !regexp.MustCompile(`^tool \S+ \(commit \S+.*go1\.\d+.* \w+/\w+\)\n$`).MatchString(tf.out.String()) {
		t.Fatalf("version: err %v out %q", err, tf.out.String())
	}
}

// TestConfigExampleRoundTrip: the example names every setting once, and
// with every '#key = value' line enabled it parses to the defaults.
func TestConfigExampleRoundTrip(t *testing.T) {
	tf := newTest(t)
	var ex bytes.Buffer
	tf.f.SetDerived(map[string]string{"count": "twice the rate"})
	tf.f.WriteConfigExample(&ex, "tool configuration")
	text := ex.String()
	if !strings.Contains(text, "# ---- Main ----") || !strings.Contains(text, "# Default: twice the rate.\n#count = 0\n") {
		t.Fatalf("example:\n%s", text)
	}
	enabled := regexp.MustCompile(`(?m)^#([a-z][a-z0-9-]* = )`).ReplaceAllString(text, "$1")
	keys := regexp.MustCompile(`(?m)^([a-z][a-z0-9-]*) = `).FindAllStringSubmatch(enabled, -1)
	if len(keys) != 6 {
		t.Fatalf("%d settings in the example, want 6:\n%s", len(keys), text)
	}
	tf = newTest(t)
	if err := tf.f.Parse([]string{"--config", writeFile(t, enabled)}, env(nil)); err != nil {
		t.Fatalf("%v\n%s", err, enabled)
	}
	for _, k := range keys {
		if tf.f.Source[k[1]] != "file" {
			t.Errorf("%s not read from the file", k[1])
		}
	}
	if *tf.name != "def" || *tf.wait != 30*time.Second || *tf.rate != 2.5 || *tf.count != 0 || *tf.on || *tf.list != "" {
		t.Fatalf("defaults changed: %q %s %g %d", *tf.name, *tf.wait, *tf.rate, *tf.count)
	}
}

func TestKeyAndQuote(t *testing.T) {
	if Key("jwt-secret") != "IM_JWT_SECRET" {
		t.Fatal(Key("jwt-secret"))
	}
	if got := quoteTOML("a\"b\\c\n"); got != `"a\"b\\c\u000A"` {
		t.Fatal(got)
	}
	if editDistance("cuont", "count") != 2 || editDistance("", "abc") != 3 || editDistance("same", "same") != 0 {
		t.Fatal("edit distance")
	}
}

func TestDisableEnv(t *testing.T) {
	tf := newTest(t)
	tf.f.DisableEnv()
	if err := tf.f.Parse(nil, env(map[string]string{"IM_COUNT": "9"})); err != nil || *tf.count != 1 {
		t.Fatalf("the environment was read: count %d err %v", *tf.count, err)
	}
}
