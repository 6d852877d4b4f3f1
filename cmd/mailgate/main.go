// Command mailgate is the outbound SMTP relay gateway: one binary whose subcommands run the daemon
// (serve) and the operator tools around it. This is the only place that reads config types and wires
// concrete packages together; every other package takes option structs of its own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one subcommand: its one-line summary and the function that runs it with its arguments.
type command struct {
	summary string
	run     func(ctx context.Context, env *cliEnv, args []string) error
}

// cliEnv carries the process's streams so commands are testable without touching os.Std*.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

// exitError carries a specific exit code (check-config's 1, test-send's failure) with its message.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func commands() map[string]command {
	return map[string]command{
		"serve":         {"run the relay (no --config: the loopback development default)", cmdServe},
		"check-config":  {"validate a configuration file and list every problem", cmdCheckConfig},
		"test-send":     {"send a test message through a channel's real transport", cmdTestSend},
		"bounces":       {"list or remove recorded bounces (and their suppression)", cmdBounces},
		"queue":         {"list, retry or drop queued messages", cmdQueue},
		"drain":         {"stop a running instance's intake and wait until its queue is delivered (rolling restarts)", cmdDrain},
		"log":           {"search the delivery log (log search title=123456)", cmdLog},
		"preview":       {"print the message a channel would compose", cmdPreview},
		"secret":        {"encrypt a secret into a reference, or make a local keyring", cmdSecret},
		"oauth":         {"authorize or inspect Microsoft OAuth credentials", cmdOAuth},
		"hash-password": {"read a password on stdin and print its bcrypt hash for users[].password_hash", cmdHashPassword},
		"version":       {"print the version", cmdVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: mailgate <command> [flags]\n\ncommands:")
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'mailgate <command> --help' for a command's flags.")
}

func main() {
	env := &cliEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, env, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, env *cliEnv, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "mailgate: unknown command %q\n\n", args[0])
		usage(env.stderr)
		return 2
	}
	err := cmd.run(ctx, env, args[1:])
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(env.stderr, ee.msg)
		}
		return ee.code
	}
	fmt.Fprintf(env.stderr, "mailgate %s: %v\n", args[0], err)
	return 1
}

// newFlags makes a FlagSet whose --help prints the command's summary and flags.
func newFlags(env *cliEnv, name, argsUsage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "usage: mailgate %s [flags] %s\n  %s\n", name, argsUsage, commands()[strings.Fields(name)[0]].summary)
		fs.PrintDefaults()
	}
	return fs
}

func cmdVersion(_ context.Context, env *cliEnv, args []string) error {
	if err := newFlags(env, "version", "").Parse(args); err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, "mailgate", version)
	return nil
}

// parseArgs parses flags wherever they stand among the positional arguments ("bounces remove ADDR
// --config F" as well as "bounces remove --config F ADDR"; the flag package alone stops at the first
// positional one) and returns the positional arguments.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
