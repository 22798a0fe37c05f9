package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/envflag"
	"github.com/imgn/imgn/internal/version"
)

// env is everything a subcommand touches outside its arguments, so tests
// can run commands in-process.
type env struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	loc    *time.Location // for chat timestamps
	now    func() time.Time
	http   *http.Client
	// jsonOut records --json of the running subcommand, for reportError.
	jsonOut bool
}

func newEnv(getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) *env {
	return &env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr, loc: time.Local, now: time.Now,
		http: &http.Client{Timeout: 30 * time.Second}}
}

// command is one subcommand.
type command struct {
	name    string
	args    string // synopsis of the arguments
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"register", "--user U --password P", "create an account", cmdRegister},
		{"send", "(--to U | --group G) [--text T | TEXT...]", "send one message and print what each side sees", cmdSend},
		{"recv", "[--count N] [--timeout D] [--from-start | --after SEQ | --unread]", "print new inbox messages as JSON lines", cmdRecv},
		{"chat", "[--to U | --group G] [--after SEQ]", "interactive chat: '@bob hi' to a user, '#gid hi' to a group", cmdChat},
		{"token", "--user U [--secret S] [--ttl D]", "mint an HS256 login token (JWT)", cmdToken},
		{"group", "create|join|leave|members|add|remove|admin|unadmin|transfer ...", "manage groups", cmdGroup},
		{"groups", "[--after G] [--limit N]", "list your groups", cmdGroups},
		{"presence", "USER...", "show who is online", cmdPresence},
		{"conversations", "[--before SEQ] [--limit N]", "list your conversations, newest first, with unread counts", cmdConversations},
		{"history", "(--peer U | --group G) [--before SEQ]", "page back through one conversation", cmdHistory},
		{"read", "(--peer U | --group G) [--seq SEQ]", "mark a conversation read (tells your other devices and the peer)", cmdRead},
		{"online", "--user U", "admin: show a user's sessions", cmdOnline},
		{"kick", "--user U [--device D]", "admin: end a user's sessions", cmdKick},
		{"broadcast", "--text T", "admin: send a notice to everyone online", cmdBroadcast},
		{"sysmsg", "--to U --text T", "admin: store a system message in a user's inbox", cmdSysmsg},
		{"events", "tail [--redis H:P] [--from ID] [--group G]", "watch the event stream a node publishes (imd --events redis)", cmdEvents},
	}
}

// Exit statuses.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// usagef reports a bad invocation: exit status 2.
func usagef(format string, args ...any) error { return envflag.Usagef(format, args...) }

// run executes one invocation and returns the exit status.
func run(ctx context.Context, args []string, e *env) int {
	if len(args) == 0 {
		printUsage(e.stderr)
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "version", "-version", "--version":
		fmt.Fprintln(e.stdout, version.String("imctl"))
		return exitOK
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 {
			if c := lookup(rest[0]); c != nil {
				return run(ctx, []string{c.name, "-h"}, e)
			}
		}
		printUsage(e.stdout)
		return exitOK
	}
	c := lookup(name)
	if c == nil {
		fmt.Fprintf(e.stderr, "imctl: unknown command %q\n\n", name)
		printUsage(e.stderr)
		return exitUsage
	}
	err := c.run(ctx, e, rest)
	var ue *envflag.UsageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "imctl %s: %s\nRun 'imctl %s -h' for usage.\n", c.name, ue.Msg, c.name)
		return exitUsage
	}
	reportError(e, c.name, err)
	return exitFail
}

func lookup(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "imctl: command-line client and admin tool for imgn\n\nUsage: imctl <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `  help       show this help, or 'imctl help <command>'
  version    print the version

Connection flags (most commands): --server (IM_SERVER, default 127.0.0.1:9090)
or --router (IM_ROUTER: ask imrouter for the node, e.g. http://127.0.0.1:9080),
--user (IM_USER), --password (IM_PASSWORD) or --token (IM_TOKEN),
--serializer json|protobuf|msgpack, --timeout. recv and chat keep their place
in the inbox under a device id stored in $XDG_CONFIG_HOME/imgn (or
~/.config/imgn); --device (IM_DEVICE) overrides it. Admin commands take --admin
(IM_ADMIN, default http://127.0.0.1:9091) and --admin-token (IM_ADMIN_TOKEN,
the node's bearer token when it has one). Every command takes --json.

Exit status: 0 ok, 1 the operation failed, 2 bad usage.
`)
}

// reportError prints a failed operation: the error with its protocol code
// name when the server gave one; with --json also as a JSON object on
// stdout.
func reportError(e *env, cmd string, err error) {
	fmt.Fprintf(e.stderr, "imctl %s: %v\n", cmd, err)
	if !jsonRequested(e) || errors.As(err, new(*reportedError)) {
		return
	}
	out := map[string]any{"ok": false, "error": err.Error()}
	var se *client.Error
	if errors.As(err, &se) {
		out["code"] = uint32(se.Code)
		out["code_name"] = se.Code.String()
		out["message"] = se.Message
	}
	writeJSON(e.stdout, out)
}

// reportedError is a failure whose JSON answer the command already wrote
// on stdout (with --json): reportError only prints it on stderr.
type reportedError struct{ err error }

func (r *reportedError) Error() string { return r.err.Error() }
func (r *reportedError) Unwrap() error { return r.err }

// jsonRequested is set by newFlagSet when --json was given (for
// reportError, which runs after the subcommand returned).
func jsonRequested(e *env) bool { return e.jsonOut }

// ---- flags ----

// flags is the flag set of one subcommand plus the shared options.
type flags struct {
	*flag.FlagSet
	e         *env
	json      bool
	fallbacks []envFallback
	pos       []string // positional arguments (flags may follow them)
	// help writes the subcommand's help (for -h).
	help func(w io.Writer)
}

// Args returns the positional arguments.
func (f *flags) Args() []string { return f.pos }

// NArg returns the number of positional arguments.
func (f *flags) NArg() int { return len(f.pos) }

// Arg returns the i'th positional argument, or "".
func (f *flags) Arg(i int) string {
	if i < 0 || i >= len(f.pos) {
		return ""
	}
	return f.pos[i]
}

// envFallback fills a flag from the environment when it was not given.
type envFallback struct {
	name, envVar string
	p            *string
}

// newFlags returns the flag set of subcommand name; args is its synopsis.
// -h prints the subcommand's help on stdout.
func newFlags(e *env, name, args string) *flags {
	fs := flag.NewFlagSet("imctl "+name, flag.ContinueOnError)
	// The flag package would print errors and the flag list itself; parse
	// reports errors in one line and help only for -h.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	f := &flags{FlagSet: fs, e: e}
	fs.BoolVar(&f.json, "json", false, "machine-readable JSON output")
	f.help = func(w io.Writer) {
		c := lookup(name)
		fmt.Fprintf(w, "Usage: imctl %s %s\n", name, args)
		if c != nil {
			fmt.Fprintf(w, "\n%s.\n", strings.ToUpper(c.summary[:1])+c.summary[1:])
		}
		fmt.Fprintf(w, "\nFlags:\n")
		envflag.PrintDefaults(w, fs)
	}
	return f
}

// parse parses args; errors are a usage error (the flag, spelt --name, and
// what is wrong with it) or flag.ErrHelp (help printed). Unlike
// flag.FlagSet.Parse, flags may follow positional arguments ("send --to
// bob hello --json"); "--" ends flag parsing.
func (f *flags) parse(args []string) error {
	envflag.Explain(f.FlagSet)
	err := f.parseInterleaved(args)
	f.e.jsonOut = f.json
	switch {
	case err == nil:
		set := map[string]bool{}
		f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
		for _, fb := range f.fallbacks {
			if v := f.e.getenv(fb.envVar); v != "" && !set[fb.name] {
				*fb.p = v
			}
		}
		return nil
	case errors.Is(err, flag.ErrHelp):
		f.help(f.e.stdout)
		return err
	default:
		return usagef("%v", envflag.CleanError(err))
	}
}

func (f *flags) parseInterleaved(args []string) error {
	for {
		if err := f.Parse(args); err != nil {
			return err
		}
		rest := f.FlagSet.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			f.pos = append(f.pos, rest...)
			return nil
		}
		i := 0
		for i < len(rest) && (!strings.HasPrefix(rest[i], "-") || rest[i] == "-") {
			i++
		}
		f.pos = append(f.pos, rest[:i]...)
		if i == len(rest) {
			return nil
		}
		args = rest[i:]
	}
}

// envString defines a string flag that falls back to envVar when not
// given. The environment is read after parsing, so -h never shows secrets.
func (f *flags) envString(p *string, name, envVar, def, usage string) {
	f.StringVar(p, name, def, usage+" (env "+envVar+")")
	f.fallbacks = append(f.fallbacks, envFallback{name: name, envVar: envVar, p: p})
}

// connFlags are the options of commands that talk to a node.
type connFlags struct {
	server, router, user, password, token, device, serializer string
	timeout                                                   time.Duration
	// deviceSuffix, for commands with --device, picks this machine's
	// stable device id when --device is not given (see machineDevice).
	deviceSuffix string
	hasDevice    bool
}

// connFlag selects the optional connection flags of a command.
type connFlag int

const (
	// withToken: --token, for commands that log in (not register).
	withToken connFlag = 1 << iota
	// withDevice: --device, for commands that receive (recv, chat).
	withDevice
)

// connection defines the connection flags of a command: always --server,
// --router, --user, --password, --serializer and --timeout, plus those
// selected by opts, so -h lists only flags that apply.
func (f *flags) connection(defTimeout time.Duration, opts connFlag) *connFlags {
	cf := &connFlags{}
	f.envString(&cf.server, "server", "IM_SERVER", "127.0.0.1:9090", "server address host:port")
	f.envString(&cf.router, "router", "IM_ROUTER", "", "imrouter URL(s), comma-separated; when set, the node comes from the router instead of --server")
	f.envString(&cf.user, "user", "IM_USER", "", "user id")
	f.envString(&cf.password, "password", "IM_PASSWORD", "", "password")
	if opts&withToken != 0 {
		f.envString(&cf.token, "token", "IM_TOKEN", "", "login token (JWT) instead of a password")
	}
	if opts&withDevice != 0 {
		cf.hasDevice = true
		f.envString(&cf.device, "device", "IM_DEVICE", "", "device id (default: this machine's, kept in $XDG_CONFIG_HOME/imgn/device, so each run resumes where the last stopped)")
	}
	f.StringVar(&cf.serializer, "serializer", "protobuf", "frame serializer: json, protobuf or msgpack")
	f.DurationVar(&cf.timeout, "timeout", defTimeout, "give up after this long (0 = no limit)")
	return cf
}

// config builds the client configuration; login=false for register.
// Commands with --device get this machine's stable device id unless one
// was given (e is where a failure to keep one is reported).
func (cf *connFlags) config(e *env, login bool) (client.Config, error) {
	ser, err := codec.ParseSerializer(cf.serializer)
	if err != nil {
		return client.Config{}, usagef("--serializer: %v", err)
	}
	cfg := client.Config{Addr: cf.server, User: cf.user, Device: cf.device, Serializer: ser}
	if cf.hasDevice && cf.device == "" {
		dev, err := machineDevice(e.getenv, cf.deviceSuffix)
		if err != nil {
			fmt.Fprintf(e.stderr, "imctl: no stable device id (%v); using a one-off device, so this run cannot resume from an earlier one\n", err)
		}
		cfg.Device = dev
	}
	switch {
	case cf.server == "" && cf.router == "":
		return cfg, usagef("--server is required")
	case !login:
		if cf.user == "" || cf.password == "" {
			return cfg, usagef("--user and --password are required")
		}
		cfg.Password = cf.password
	case cf.token != "" && cf.password != "":
		return cfg, usagef("give --password or --token, not both")
	case cf.token != "":
		cfg.Token = cf.token
	case cf.user == "" || cf.password == "":
		return cfg, usagef("--user and --password (or --token) are required")
	default:
		cfg.Password = cf.password
	}
	if cf.router != "" {
		uid := cf.user
		if uid == "" {
			// Only to ask the router where the user lives; the server
			// verifies the token.
			uid = auth.UnverifiedSubject(cfg.Token)
		}
		if uid == "" {
			return cfg, usagef("--router needs --user (the router places users by id)")
		}
		cfg.Resolver = client.RouterResolver(cf.router, uid, nil)
	}
	return cfg, nil
}

// withTimeout bounds ctx by the --timeout flag (0 = unbounded).
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// splitList splits "a,b , c" into [a b c].
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// writeJSON writes v as one JSON line.
func writeJSON(w io.Writer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	b = append(b, '\n')
	_, _ = w.Write(b)
}
