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
		{"send", "(--to U | --group G) [--text T | TEXT...]", "send one message and print its ack", cmdSend},
		{"recv", "[--count N] [--timeout D] [--after SEQ]", "print inbox messages as JSON lines (sync first, then live)", cmdRecv},
		{"chat", "[--to U | --group G]", "interactive chat: '@bob hi' to a user, '#gid hi' to a group", cmdChat},
		{"token", "--user U [--secret S] [--ttl D]", "mint an HS256 login token (JWT)", cmdToken},
		{"group", "create|join|leave|members ...", "manage groups", cmdGroup},
		{"presence", "USER...", "show who is online", cmdPresence},
		{"online", "--user U", "admin: show a user's sessions", cmdOnline},
		{"kick", "--user U [--device D]", "admin: end a user's sessions", cmdKick},
		{"broadcast", "--text T", "admin: send a notice to everyone online", cmdBroadcast},
		{"sysmsg", "--to U --text T", "admin: store a system message in a user's inbox", cmdSysmsg},
	}
}

// Exit statuses.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// usageError is a bad invocation: exit status 2.
type usageError struct{ msg string }

func (u *usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// run executes one invocation and returns the exit status.
func run(ctx context.Context, args []string, e *env) int {
	if len(args) == 0 {
		printUsage(e.stderr)
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
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
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errFlagParse):
		return exitUsage // the flag package printed the error and usage
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "imctl %s: %s\nRun 'imctl %s -h' for usage.\n", c.name, ue.msg, c.name)
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

Connection flags (most commands): --server (IM_SERVER, default 127.0.0.1:9090)
or --router (IM_ROUTER: ask imrouter for the node, e.g. http://127.0.0.1:9080),
--user (IM_USER), --password (IM_PASSWORD) or --token (IM_TOKEN), --device,
--serializer json|protobuf|msgpack, --timeout. Admin commands take --admin
(IM_ADMIN, default http://127.0.0.1:9091). Every command takes --json.

Exit status: 0 ok, 1 the operation failed, 2 bad usage.
`)
}

// reportError prints a failed operation: the error with its protocol code
// name when the server gave one; with --json also as a JSON object on
// stdout.
func reportError(e *env, cmd string, err error) {
	fmt.Fprintf(e.stderr, "imctl %s: %v\n", cmd, err)
	if !jsonRequested(e) {
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

// jsonRequested is set by newFlagSet when --json was given (for
// reportError, which runs after the subcommand returned).
func jsonRequested(e *env) bool { return e.jsonOut }

// ---- flags ----

var errFlagParse = errors.New("flag parse error")

// flags is the flag set of one subcommand plus the shared options.
type flags struct {
	*flag.FlagSet
	e         *env
	json      bool
	fallbacks []envFallback
	pos       []string // positional arguments (flags may follow them)
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

func newFlags(e *env, name, args string) *flags {
	fs := flag.NewFlagSet("imctl "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	f := &flags{FlagSet: fs, e: e}
	fs.BoolVar(&f.json, "json", false, "machine-readable JSON output")
	fs.Usage = func() {
		c := lookup(name)
		fmt.Fprintf(fs.Output(), "Usage: imctl %s %s\n", name, args)
		if c != nil {
			fmt.Fprintf(fs.Output(), "\n%s.\n", strings.ToUpper(c.summary[:1])+c.summary[1:])
		}
		fmt.Fprintf(fs.Output(), "\nFlags:\n")
		fs.PrintDefaults()
	}
	return f
}

// parse parses args; errors are errFlagParse (already printed) or
// flag.ErrHelp. Unlike flag.FlagSet.Parse, flags may follow positional
// arguments ("send --to bob hello --json"); "--" ends flag parsing.
func (f *flags) parse(args []string) error {
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
		return err
	default:
		return errFlagParse
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

// connFlags are the options of commands that log in.
type connFlags struct {
	server, router, user, password, token, device, serializer string
	timeout                                                   time.Duration
}

func (f *flags) connection(defTimeout time.Duration) *connFlags {
	cf := &connFlags{}
	f.envString(&cf.server, "server", "IM_SERVER", "127.0.0.1:9090", "server address host:port")
	f.envString(&cf.router, "router", "IM_ROUTER", "", "imrouter URL(s), comma-separated; when set, the node comes from the router instead of --server")
	f.envString(&cf.user, "user", "IM_USER", "", "user id")
	f.envString(&cf.password, "password", "IM_PASSWORD", "", "password")
	f.envString(&cf.token, "token", "IM_TOKEN", "", "login token (JWT) instead of a password")
	f.StringVar(&cf.device, "device", "", "device id (default: a random one per run; set it to resume from the server cursor)")
	f.StringVar(&cf.serializer, "serializer", "protobuf", "frame serializer: json, protobuf or msgpack")
	f.DurationVar(&cf.timeout, "timeout", defTimeout, "give up after this long (0 = no limit)")
	return cf
}

// config builds the client configuration; login=false for register.
func (cf *connFlags) config(login bool) (client.Config, error) {
	ser, err := codec.ParseSerializer(cf.serializer)
	if err != nil {
		return client.Config{}, usagef("--serializer: %v", err)
	}
	cfg := client.Config{Addr: cf.server, User: cf.user, Device: cf.device, Serializer: ser}
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
