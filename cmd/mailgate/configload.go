package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/mailgate/mailgate/config"
	"github.com/mailgate/mailgate/kms"
)

// loadConfig is the one validation path of check-config, serve and its reloads: config.Load (every
// problem of the file, with its path), then the same composition and submission rules serve builds
// from it, so that no configuration check-config accepts is refused when serve starts. Secrets are
// resolved by serve alone (a KMS outage is not a problem of the file).
func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	return cfg, checkBuild(cfg)
}

// checkBuild builds what serve builds from cfg without side effects and reports a failure as a
// problem of the file.
func checkBuild(cfg *config.Config) error {
	comp, err := buildComposition(cfg, nil)
	if err == nil {
		_, err = buildRules(cfg, comp)
	}
	if err != nil {
		return config.Problems{{Msg: err.Error()}}
	}
	return nil
}

// ensureDevelopmentToken writes a random admin token to path (mode 0600) unless one is there: the
// development default's operator API is guarded like production's, and `mailgate queue` reads the
// token from the same data directory.
func ensureDevelopmentToken(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(f, hex.EncodeToString(b)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readAdminToken reads an admin token file with the rules of secret files (private, bounded).
func readAdminToken(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := kms.ReadSecretFile(path)
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	tok := []byte(strings.TrimSpace(string(b)))
	clear(b)
	return tok, nil
}

// developmentAdminAddressFile is where the development daemon records the address its admin listener
// bound, so `mailgate queue` finds a daemon started with --admin without being told.
const developmentAdminAddressFile = "admin.address"
