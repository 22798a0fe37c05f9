// Command imctl is the command-line client and admin tool of imgn: it
// registers users, sends and receives messages, chats interactively, mints
// login tokens, manages groups, and calls a node's admin HTTP API.
//
// Run `imctl help` for the list of subcommands and `imctl <cmd> -h` for
// the flags of one. Exit status: 0 success, 1 the operation failed, 2 bad
// usage.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], newEnv(os.Getenv, os.Stdin, os.Stdout, os.Stderr))
	stop()
	os.Exit(code)
}
