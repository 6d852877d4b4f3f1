package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"

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
func cmdHashPassword(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "hash-password", "< password-file")
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost")
	if err := fs.Parse(args); err != nil {
		return err
	}
	line, err := bufio.NewReader(env.stdin).ReadString('\n')
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return fmt.Errorf("no password on standard input (%v)", err)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(line), *cost)
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, string(h))
	return nil
}
