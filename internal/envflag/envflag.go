// Package envflag is the command-line handling every imgn command shares:
//
//   - every flag --some-name may also be set as IM_SOME_NAME in the
//     environment, and commands that opt in read a TOML config file
//     (--config FILE, or IM_CONFIG) whose keys are the flag names;
//     precedence is flag > environment > file > default, decided per flag;
//   - an unknown config key, a malformed value or a stray argument is a
//     usage error that names the flag, variable or key (and the file and
//     line), printed with a one-line pointer to --help instead of the whole
//     flag list; the command exits 2;
//   - help spells flags --name (the standard library prints -name), lists
//     them in the command's groups, and goes to stdout with exit status 0;
//   - --version prints the build stamp of internal/version.
//
// Nothing here is safe for concurrent use; a command parses once at start.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/imgn/imgn/internal/version"
)

// Key returns the environment variable of a flag: "IM_" + the upper-cased
// name with dashes as underscores.
func Key(name string) string { return "IM_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) }

// ErrVersion is returned by Parse after it printed the version (exit 0).
var ErrVersion = errors.New("version requested")

// UsageError is a bad invocation: the command prints it with a pointer to
// --help and exits 2.
type UsageError struct{ Msg string }

func (u *UsageError) Error() string { return u.Msg }

// Usagef returns a *UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// Exit reports the exit status for err as returned by Parse or by a
// command's own checks of its options, and prints what the user needs:
// nothing for help and version (already printed), otherwise
//
//	imd: --heartbeat: invalid value "5": want a duration with a unit, e.g. 5s, 2m or 1h
//	Run 'imd --help' for usage.
//
// stop is false only for a nil err (go on running). Every non-nil error is
// treated as a usage error: exit status 2.
func Exit(name string, err error, stderr io.Writer) (code int, stop bool) {
	switch {
	case err == nil:
		return 0, false
	case errors.Is(err, flag.ErrHelp), errors.Is(err, ErrVersion):
		return 0, true
	}
	fmt.Fprintf(stderr, "%s: %v\nRun '%s --help' for usage.\n", name, err, name)
	return 2, true
}

// Group is a titled list of flag names, in the order help and the config
// example show them.
type Group struct {
	Title string
	Names []string
}

// Flags is one command's flag set with the shared conventions. Define flags
// on the embedded FlagSet, then call Parse once.
type Flags struct {
	*flag.FlagSet
	name        string
	synopsis    string // usage lines after "Usage: "
	description string
	out         io.Writer
	groups      []Group
	config      *string // --config, once WithConfig was called
	derived     map[string]string
	noEnv       bool
	version     bool
	// Source records, after Parse, where each flag's value came from:
	// "flag", "env" (IM_*) or "file"; absent means the default.
	Source map[string]string
}

// New returns an empty flag set for command name (e.g. "imd" or
// "imcheck check") with --version defined. synopsis is the usage line(s)
// without "Usage: " (several lines are joined with newlines); description
// follows it in help. Help and version go to out.
func New(name, synopsis, description string, out io.Writer) *Flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// The standard library prints errors and the whole flag list itself;
	// Parse reports instead (see Exit).
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	f := &Flags{FlagSet: fs, name: name, synopsis: synopsis, description: description, out: out}
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	return f
}

// DisableEnv makes Parse ignore the environment: for tools whose flag
// names would collide with the daemons' IM_* variables.
func (f *Flags) DisableEnv() { f.noEnv = true }

// WithConfig defines --config FILE (also IM_CONFIG): a TOML file of flag
// values read by Parse.
func (f *Flags) WithConfig() {
	f.config = new(string)
	f.StringVar(f.config, "config", "", "read settings from this TOML `FILE`: keys are flag names ('"+strings.Fields(f.name)[0]+" config example' prints one)")
}

// ConfigPath returns the config file Parse read, or "".
func (f *Flags) ConfigPath() string {
	if f.config == nil {
		return ""
	}
	return *f.config
}

// SetDerived names the settings whose default is computed from other
// settings (the flag's own default is then its zero value, meaning
// "compute it"), with a short note on how: "3 x heartbeat". Help, the
// config example and WriteSettings show the note.
func (f *Flags) SetDerived(notes map[string]string) { f.derived = notes }

// SetGroups orders help and the config example. Flags in no group are
// listed last under "Other flags"; --config and --version under "General".
func (f *Flags) SetGroups(groups ...Group) { f.groups = groups }

// Parse sets the flags from args, then from IM_* variables in getenv for
// flags not given, then from the config file for flags set neither way.
// Positional arguments are refused. It returns flag.ErrHelp after writing
// help to out, ErrVersion after writing the version, or a *UsageError.
func (f *Flags) Parse(args []string, getenv func(string) string) error {
	Explain(f.FlagSet)
	if err := f.FlagSet.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			f.PrintHelp(f.out)
			return flag.ErrHelp
		}
		return &UsageError{Msg: CleanError(err).Error()}
	}
	if f.NArg() > 0 {
		return Usagef("unexpected arguments: %s", strings.Join(f.Args(), " "))
	}
	if f.version {
		fmt.Fprintln(f.out, version.String(strings.Fields(f.name)[0]))
		return ErrVersion
	}
	f.Source = map[string]string{}
	f.Visit(func(fl *flag.Flag) { f.Source[fl.Name] = "flag" })
	var envErr error
	f.VisitAll(func(fl *flag.Flag) {
		if _, given := f.Source[fl.Name]; given || f.noEnv || fl.Name == "version" || envErr != nil {
			return
		}
		key := Key(fl.Name)
		if v := getenv(key); v != "" {
			if err := fl.Value.Set(v); err != nil {
				envErr = Usagef("%s=%q: %v", key, v, err)
				return
			}
			f.Source[fl.Name] = "env"
		}
	})
	if envErr != nil {
		return envErr
	}
	if path := f.ConfigPath(); path != "" {
		return f.loadFile(path)
	}
	return nil
}

// Explain wraps every flag's value so a malformed value is explained
// ("want a duration with a unit, e.g. 5s, 2m or 1h") instead of the
// standard library's "parse error". It is idempotent.
func Explain(fs *flag.FlagSet) {
	fs.VisitAll(func(fl *flag.Flag) {
		switch v := fl.Value.(type) {
		case explained, explainedBool:
		default:
			if b, ok := v.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				fl.Value = explainedBool{explained{v}}
			} else {
				fl.Value = explained{v}
			}
		}
	})
}

type explained struct{ flag.Value }

type explainedBool struct{ explained }

func (explainedBool) IsBoolFlag() bool { return true }

// Get returns the wrapped value's Get, or its string form.
func (v explained) Get() any {
	if g, ok := v.Value.(flag.Getter); ok {
		return g.Get()
	}
	return v.Value.String()
}

func (v explained) Set(s string) error {
	err := v.Value.Set(s)
	if err == nil {
		return nil
	}
	switch v.Get().(type) {
	case time.Duration:
		return errors.New("want a duration with a unit, e.g. 5s, 2m or 1h")
	case bool:
		return errors.New("want true or false")
	case int, int64:
		if strings.Contains(err.Error(), "range") {
			return errors.New("integer out of range")
		}
		return errors.New("want an integer")
	case uint, uint64:
		if strings.Contains(err.Error(), "range") {
			return errors.New("integer out of range")
		}
		return errors.New("want a non-negative integer")
	case float64:
		return errors.New("want a number")
	}
	return err
}

// The standard library's messages name flags "-name"; every imgn command
// documents them as "--name".
var flagErrorForms = []struct {
	re   *regexp.Regexp
	repl string
}{
	{regexp.MustCompile(`^invalid (?:boolean )?value (".*") for (?:flag )?-([^ :]+): `), `--$2: invalid value $1: `},
	{regexp.MustCompile(`^flag provided but not defined: -+(.*)$`), `unknown flag --$1`},
	{regexp.MustCompile(`^flag needs an argument: -+(.*)$`), `--$1 needs a value`},
}

// CleanError rewrites an error of flag.FlagSet.Parse to the --name
// spelling: `--heartbeat: invalid value "5": ...`, `unknown flag --bogus`,
// `--listen needs a value`. Other errors are returned unchanged.
func CleanError(err error) error {
	msg := err.Error()
	for _, f := range flagErrorForms {
		if f.re.MatchString(msg) {
			return errors.New(f.re.ReplaceAllString(msg, f.repl))
		}
	}
	return err
}

// PrintHelp writes the command's help: usage, description, and the flags
// in their groups.
func (f *Flags) PrintHelp(w io.Writer) {
	lines := strings.Split(f.synopsis, "\n")
	fmt.Fprintf(w, "Usage: %s\n", lines[0])
	for _, l := range lines[1:] {
		fmt.Fprintf(w, "       %s\n", l)
	}
	if f.description != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(f.description, "\n"))
	}
	for _, g := range f.orderedGroups() {
		fmt.Fprintf(w, "\n%s:\n", g.Title)
		for _, name := range g.Names {
			if fl := f.Lookup(name); fl != nil {
				printFlag(w, fl, f.derived[name])
			}
		}
	}
}

// orderedGroups returns the configured groups (unknown names dropped),
// then "Other flags" and "General".
func (f *Flags) orderedGroups() []Group {
	seen := map[string]bool{"version": true, "config": true}
	var out []Group
	for _, g := range f.groups {
		var names []string
		for _, n := range g.Names {
			if f.Lookup(n) != nil && !seen[n] {
				names = append(names, n)
				seen[n] = true
			}
		}
		if len(names) > 0 {
			out = append(out, Group{g.Title, names})
		}
	}
	var rest []string
	f.VisitAll(func(fl *flag.Flag) {
		if !seen[fl.Name] {
			rest = append(rest, fl.Name)
		}
	})
	if len(rest) > 0 {
		title := "Other flags"
		if len(out) == 0 {
			title = "Flags"
		}
		out = append(out, Group{title, rest})
	}
	general := []string{"version"}
	if f.config != nil {
		general = []string{"config", "version"}
	}
	return append(out, Group{"General", general})
}

// PrintDefaults writes every flag of fs in the --name spelling, sorted,
// in the two-line layout of flag.PrintDefaults.
func PrintDefaults(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(fl *flag.Flag) { printFlag(w, fl, "") })
}

// printFlag writes one flag; derived, when not empty, is shown as its
// default.
func printFlag(w io.Writer, fl *flag.Flag, derived string) {
	typ, usage := typeName(fl)
	line := "  --" + fl.Name
	if typ != "" {
		line += " " + typ
	}
	usage = strings.ReplaceAll(usage, "\n", "\n    \t")
	if derived != "" {
		usage += " (default " + derived + ")"
	} else if !zeroDefault(fl) {
		if _, isString := valueOf(fl).(string); isString {
			usage += fmt.Sprintf(" (default %q)", fl.DefValue)
		} else {
			usage += fmt.Sprintf(" (default %s)", fl.DefValue)
		}
	}
	fmt.Fprintf(w, "%s\n    \t%s\n", line, usage)
}

// typeName is flag.UnquoteUsage for wrapped values: a `name` in the usage
// text wins, else the name of the value's Go type.
func typeName(fl *flag.Flag) (typ, usage string) {
	typ, usage = flag.UnquoteUsage(fl)
	if strings.Contains(fl.Usage, "`") {
		return typ, usage
	}
	switch valueOf(fl).(type) {
	case bool:
		return "", usage
	case time.Duration:
		return "duration", usage
	case int, int64:
		return "int", usage
	case uint, uint64, uint16:
		return "uint", usage
	case float64:
		return "float", usage
	case string:
		return "string", usage
	}
	return typ, usage
}

// valueOf returns the flag's current value as its Go type when it has one.
func valueOf(fl *flag.Flag) any {
	if g, ok := fl.Value.(flag.Getter); ok {
		return g.Get()
	}
	return fl.Value.String()
}

func zeroDefault(fl *flag.Flag) bool {
	switch fl.DefValue {
	case "", "0", "0s", "false":
		return true
	}
	return false
}
