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
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one subcommand: its one-line summary and the function that runs it with its arguments.
// A command made of subcommands (queue list, bounces remove, ...) has a usage line of them, which
// `mailgate CMD` alone and `mailgate CMD --help` print; each subcommand's --help prints its own flags.
type command struct {
	summary string
	run     func(ctx context.Context, env *cliEnv, args []string) error
	usage   string
}

// cliEnv carries the process's streams so commands are testable without touching os.Std*.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	// usageShown is set when a command's usage was printed (by --help, a flag error or a command's own
	// usage check): the failure was then the caller's, exit 2, and it was already said.
	usageShown bool
}

// exitError carries a specific exit code (check-config's 1, test-send's failure) with its message.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func commands() map[string]command {
	return map[string]command{
		"serve":        {summary: "run the relay (no --config: the loopback development default)", run: cmdServe},
		"check-config": {summary: "validate a configuration file and list every problem", run: cmdCheckConfig},
		"test-send":    {summary: "send a test message through a channel's real transport", run: cmdTestSend},
		"bounces": {summary: "list or remove recorded bounces (and their suppression)", run: cmdBounces,
			usage: "mailgate bounces list [--address A] [--channel C] | remove ADDRESS"},
		"queue": {summary: "list, show, retry, drop, hold or release queued messages; summary by transport and age", run: cmdQueue,
			usage: "mailgate queue list | summary | show ID | retry|drop|hold|release [ID…] | flush  [--channel C] [--transport T] [--rcpt ADDR] [--older-than D] [--json]"},
		"drain": {summary: "stop a running instance's intake and wait until its queue is delivered (rolling restarts)", run: cmdDrain},
		"log": {summary: "search the delivery log (log search title=123456)", run: cmdLog,
			usage: "mailgate log search [title=|ticket=TICKET] [id=QUEUEID] [message-id=ID] [rcpt=ADDR] [status=S] [since=T] [until=T] [--json]"},
		"preview": {summary: "print the message a channel would compose", run: cmdPreview},
		"secret": {summary: "encrypt a secret into a reference, or make a local keyring", run: cmdSecret,
			usage: "mailgate secret encrypt (--kms KEY | --local KEYRING) < secret-file | keygen"},
		"oauth": {summary: "authorize or inspect Microsoft OAuth credentials", run: cmdOAuth,
			usage: "mailgate oauth authorize --server NAME [--paste] | status [--local] (with --config FILE; status asks the running daemon)"},
		"hash-password": {summary: "read a password on stdin and print its bcrypt hash for users[].password_hash", run: cmdHashPassword},
		"version":       {summary: "print the version, VCS revision and build time", run: cmdVersion},
		"config": {summary: "print the effective configuration with every default filled in", run: cmdConfig,
			usage: "mailgate config show [--config FILE]"},
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
	if cmd.usage != "" && (len(args) < 2 || isHelp(args[1])) {
		if len(args) < 2 {
			fmt.Fprintf(env.stderr, "usage: %s\n  %s\n", cmd.usage, cmd.summary)
			return 2
		}
		fmt.Fprintf(env.stdout, "usage: %s\n  %s\nRun 'mailgate %s SUBCOMMAND --help' for its flags.\n", cmd.usage, cmd.summary, args[0])
		return 0
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
	if env.usageShown {
		// A flag the command does not know, or a missing value: the flag package has said which,
		// with the usage; saying it again would only repeat it.
		return 2
	}
	fmt.Fprintf(env.stderr, "mailgate %s: %v\n", args[0], err)
	return 1
}

// usageError is a command's answer to a subcommand it does not have: its usage from the command table,
// exit 2.
func usageError(name string, args []string) error {
	msg := "usage: " + commands()[name].usage
	if len(args) > 0 {
		msg = fmt.Sprintf("mailgate %s: unknown subcommand %q\n%s", name, args[0], msg)
	}
	return &exitError{code: 2, msg: msg}
}

func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

// newFlags makes a FlagSet whose --help prints the command's summary and flags.
func newFlags(env *cliEnv, name, argsUsage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		env.usageShown = true
		fmt.Fprintf(env.stderr, "usage: mailgate %s [flags] %s\n  %s\n", name, argsUsage, commands()[strings.Fields(name)[0]].summary)
		fs.PrintDefaults()
	}
	return fs
}

func cmdVersion(_ context.Context, env *cliEnv, args []string) error {
	if err := newFlags(env, "version", "").Parse(args); err != nil {
		return err
	}
	ver, revision, built := buildVersion()
	fmt.Fprintf(env.stdout, "mailgate %s (revision %s, built %s, %s)\n", ver, revision, built, runtime.Version())
	return nil
}

// buildVersion is the version (-ldflags main.version, else the module version), the VCS revision and
// the commit time the binary was built from ("unknown" when the build did not record them).
func buildVersion() (ver, revision, built string) {
	ver, revision, built = version, "unknown", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	if v := bi.Main.Version; ver == "dev" && v != "" && v != "(devel)" {
		ver = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.time":
			built = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				revision += "+modified"
			}
		}
	}
	return
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
