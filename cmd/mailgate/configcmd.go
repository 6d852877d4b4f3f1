package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
	"gopkg.in/yaml.v3"

	"github.com/mailgate/mailgate/config"
)

func cmdCheckConfig(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "check-config", "FILE")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return &exitError{code: 2}
	}
	path := pos[0]
	cfg, err := loadConfig(path)
	var ps config.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintf(env.stdout, "%s: %s\n", path, p)
		}
		return &exitError{code: 1, msg: fmt.Sprintf("%s: %d problem(s)", path, len(ps))}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%s: ok\n%s: store: %s\n", path, path, cfg.Store.Kind())
	return nil
}

// cmdHashPassword reads the password from stdin, never argv, so it stays out of shell history and ps.
// On a terminal it prompts twice without echo; from a pipe or file it reads the first line.
func cmdHashPassword(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "hash-password", "< password-file")
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var password []byte
	if f, ok := env.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		var err error
		if password, err = promptPassword(env, f); err != nil {
			return err
		}
	} else {
		line, err := bufio.NewReader(env.stdin).ReadString('\n')
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			return fmt.Errorf("no password on standard input (%v)", err)
		}
		password = []byte(line)
	}
	h, err := bcrypt.GenerateFromPassword(password, *cost)
	clear(password)
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, string(h))
	return nil
}

func promptPassword(env *cliEnv, tty *os.File) ([]byte, error) {
	fmt.Fprint(env.stderr, "Password: ")
	first, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprintln(env.stderr)
	if err != nil {
		return nil, err
	}
	fmt.Fprint(env.stderr, "Again: ")
	second, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprintln(env.stderr)
	defer clear(second)
	switch {
	case err != nil:
		return nil, err
	case len(first) == 0:
		return nil, errors.New("empty password")
	case string(first) != string(second):
		clear(first)
		return nil, errors.New("the passwords differ")
	}
	return first, nil
}

// cmdConfig is `config show [--config FILE]`: the configuration serve would run, every default filled
// in (as Postfix's postconf shows its effective settings), so an operator sees what an omitted key
// means. Secret fields print as the references they are (env:, file:, kms:, local:), never their values.
func cmdConfig(_ context.Context, env *cliEnv, args []string) error {
	if args[0] != "show" {
		return usageError("config", args)
	}
	fs := newFlags(env, "config show", "")
	path := fs.String("config", "", "configuration file; without one, the development default (as `mailgate serve` runs it)")
	dataDir := fs.String("data-dir", "mailgate-data", "development default: directory of all state")
	if _, err := parseArgs(fs, args[1:]); err != nil {
		return err
	}
	var cfg *config.Config
	var err error
	if *path == "" {
		// serve validates the development default when it starts (and makes its token and password
		// hash then); here its defaults are only filled in, with nothing written to disk.
		cfg = config.Development(config.DevelopmentOptions{DataDir: *dataDir, DemoPasswordHash: "(bcrypt hash of \"demo\", made by serve)"})
		cfg.ApplyDefaults()
	} else {
		cfg, err = loadConfig(*path)
	}
	var ps config.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintf(env.stderr, "%s: %s\n", *path, p)
		}
		return &exitError{code: 1, msg: fmt.Sprintf("%s: %d problem(s); nothing shown", *path, len(ps))}
	}
	if err != nil {
		return err
	}
	enc := yaml.NewEncoder(env.stdout)
	enc.SetIndent(2)
	if err := enc.Encode(cfg); err != nil {
		return err
	}
	return enc.Close()
}

// unknownChannel is the error for a --channel the configuration does not have: it lists the ones it
// has (names are exact; a different case is pointed out), so the operator's next command works.
func unknownChannel(cfg *config.Config, name string) error {
	names := make([]string, 0, len(cfg.Channels))
	for _, ch := range cfg.Channels {
		if strings.EqualFold(ch.Name, name) {
			return fmt.Errorf("no channel %q; did you mean %q? (channel names are exact)", name, ch.Name)
		}
		names = append(names, strconv.Quote(ch.Name))
	}
	if len(names) == 0 {
		return fmt.Errorf("no channel %q: the configuration has no channels", name)
	}
	return fmt.Errorf("no channel %q; the configuration has %s", name, strings.Join(names, ", "))
}
