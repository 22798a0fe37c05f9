package envflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	tomlparser "github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
	"github.com/pelletier/go-toml/v2"

	"github.com/imgn/imgn/internal/version"
)

// maxConfigBytes bounds a config file; anything larger is a mistake (a
// log or a binary named by accident), not a configuration.
const maxConfigBytes = 1 << 20

// loadFile applies the TOML file at path to every flag not set on the
// command line or in the environment. The file's keys are flag names at
// the top level; an unknown key, a table, or a value of the wrong kind is
// an error naming the file and the key.
func (f *Flags) loadFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return Usagef("config file: %v", err)
	}
	if st.Size() > maxConfigBytes {
		return Usagef("config file %s: %d bytes, more than the %d a config file may have", path, st.Size(), maxConfigBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Usagef("config file: %v", err)
	}
	k := koanf.New(".")
	if err := k.Load(rawbytes.Provider(data), tomlparser.Parser()); err != nil {
		var derr *toml.DecodeError
		if errors.As(err, &derr) {
			row, col := derr.Position()
			return Usagef("config file %s:%d:%d: %v", path, row, col, derr)
		}
		return Usagef("config file %s: %v", path, err)
	}
	keys := k.Keys()
	sort.Strings(keys)
	var unknown []string
	for _, key := range keys {
		if fl := f.Lookup(key); fl == nil || key == "config" || key == "version" {
			unknown = append(unknown, f.unknownKey(key))
		}
	}
	if len(unknown) > 0 {
		return Usagef("config file %s: %s", path, strings.Join(unknown, "; "))
	}
	for _, key := range keys {
		if _, set := f.Source[key]; set {
			continue
		}
		s, err := tomlString(k.Get(key))
		if err != nil {
			return Usagef("config file %s: key %q: %v", path, key, err)
		}
		if err := f.Set(key, s); err != nil {
			return Usagef("config file %s: key %q: invalid value %q: %v", path, key, s, err)
		}
		f.Source[key] = "file"
	}
	return nil
}

// unknownKey explains a key that is not a setting, suggesting the closest
// flag name when one is near.
func (f *Flags) unknownKey(key string) string {
	if strings.Contains(key, ".") {
		return fmt.Sprintf("unknown key %q (settings are top-level keys, not tables)", key)
	}
	best, bestD := "", 3
	f.VisitAll(func(fl *flag.Flag) {
		if fl.Name == "config" || fl.Name == "version" {
			return
		}
		if d := editDistance(key, fl.Name); d < bestD {
			best, bestD = fl.Name, d
		}
	})
	if best != "" {
		return fmt.Sprintf("unknown key %q (did you mean %q?)", key, best)
	}
	return fmt.Sprintf("unknown key %q", key)
}

// tomlString renders a TOML value the way the flag would be written on the
// command line; an array of strings is a comma-separated list.
func tomlString(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), nil
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			s, ok := e.(string)
			if !ok {
				return "", fmt.Errorf("arrays may hold only strings, got %T", e)
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	}
	return "", fmt.Errorf("unsupported value of type %T (use a string, number or boolean; durations as strings such as \"30s\")", v)
}

// editDistance is the Levenshtein distance of a and b (short flag names).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// WriteConfigExample writes a complete, commented TOML config file: every
// flag (but --config and --version) in its group, its help text as a
// comment, and a commented-out line with its default, so the file is valid
// as written and each setting is enabled by removing one '#'. A derived
// setting (SetDerived) shows its note and its zero value, which means
// "compute it".
func (f *Flags) WriteConfigExample(w io.Writer, title string) {
	fmt.Fprintf(w, "# %s\n", title)
	fmt.Fprintf(w, "#\n# Keys are the command-line flag names. Precedence, per setting: a flag on the\n"+
		"# command line, then the IM_* environment variable, then this file, then the\n"+
		"# default. Unknown keys are errors. Durations are strings such as \"30s\";\n"+
		"# lists are comma-separated strings or arrays of strings.\n")
	f.eachSetting(w, func(fl *flag.Flag) {
		_, usage := typeName(fl)
		fmt.Fprintf(w, "\n# %s\n", strings.ReplaceAll(usage, "\n", "\n# "))
		if note, ok := f.derived[fl.Name]; ok {
			fmt.Fprintf(w, "# Default: %s.\n#%s = %s\n", note, fl.Name, tomlLiteral(fl, zeroLiteral(fl)))
			return
		}
		fmt.Fprintf(w, "#%s = %s\n", fl.Name, tomlLiteral(fl, fl.DefValue))
	})
}

// eachSetting calls fn for every setting (every flag but --config and
// --version) in group order, after writing each group's title as a TOML
// comment to w.
func (f *Flags) eachSetting(w io.Writer, fn func(fl *flag.Flag)) {
	for _, g := range f.orderedGroups() {
		if g.Title == "General" {
			continue
		}
		fmt.Fprintf(w, "\n# ---- %s ----\n", g.Title)
		for _, name := range g.Names {
			fn(f.Lookup(name))
		}
	}
}

// tomlLiteral renders s, a value of fl's type, as a TOML literal.
func tomlLiteral(fl *flag.Flag, s string) string {
	switch valueOf(fl).(type) {
	case bool, int, int64, uint, uint64, uint16, float64:
		return s
	}
	return quoteTOML(s)
}

// zeroLiteral is the text of fl's zero value ("0", "0s", ...), which
// derived settings take to mean "compute it".
func zeroLiteral(fl *flag.Flag) string {
	switch valueOf(fl).(type) {
	case time.Duration:
		return "0s"
	case bool:
		return "false"
	case string:
		return ""
	}
	return "0"
}

// quoteTOML returns s as a TOML basic string.
func quoteTOML(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// WriteSettings writes the current value of every setting (as after Parse)
// as TOML, each with where it came from: flag, env (with the variable),
// file, default, or derived (SetDerived) when the command computed it.
// redact, when not nil, may replace a value before it is printed (secrets,
// passwords in URIs).
func (f *Flags) WriteSettings(w io.Writer, redact func(name, value string) string) {
	f.eachSetting(w, func(fl *flag.Flag) {
		val := fl.Value.String()
		if redact != nil {
			val = redact(fl.Name, val)
		}
		src := f.Source[fl.Name]
		switch {
		case src == "env":
			src = "env " + Key(fl.Name)
		case src == "" && f.derived[fl.Name] != "" && val != zeroLiteral(fl):
			src = "derived: " + f.derived[fl.Name]
		case src == "":
			src = "default"
		}
		fmt.Fprintf(w, "%s = %s  # %s\n", fl.Name, tomlLiteral(fl, val), src)
	})
}

// ConfigCommand runs `<name> config example` and `<name> config check
// [flags]` and returns the exit status. fresh returns the command's flag
// set with nothing parsed (for the example); check parses args the way
// the command does at start and returns the parsed set and a one-line
// summary of the configuration. redact is passed to WriteSettings.
func ConfigCommand(name string, args []string, stdout, stderr io.Writer,
	fresh func() *Flags, check func(args []string) (*Flags, string, error), redact func(name, value string) string) int {
	usage := func(format string, a ...any) int {
		code, _ := Exit(name, Usagef(format, a...), stderr)
		return code
	}
	if len(args) == 0 {
		return usage("config needs a subcommand: example or check")
	}
	switch args[0] {
	case "example":
		if len(args) > 1 {
			return usage("config example takes no arguments")
		}
		fresh().WriteConfigExample(stdout, fmt.Sprintf("%s configuration file (TOML), from '%s config example' of %s", name, name, version.String(name)))
		return 0
	case "check":
		fs, summary, err := check(args[1:])
		if code, stop := Exit(name, err, stderr); stop {
			return code
		}
		fmt.Fprintf(stdout, "# %s configuration is valid: %s\n", name, summary)
		if p := fs.ConfigPath(); p != "" {
			fmt.Fprintf(stdout, "# config file: %s\n", p)
		}
		fs.WriteSettings(stdout, redact)
		return 0
	}
	return usage("unknown config subcommand %q: want example or check", args[0])
}
