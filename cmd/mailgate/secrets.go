package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/mailgate/mailgate/config"
	"github.com/mailgate/mailgate/kms"
)

// newResolver builds the secret resolver a configuration needs: an AWS KMS client only when a kms:
// reference or a sealing key id is present (so a machine without AWS never waits on it), the local
// keyring when one is configured. In development a missing keyring is created, so OAuth tokens can be
// sealed without any setup.
func newResolver(ctx context.Context, c *config.Config) (*kms.Resolver, error) {
	r := &kms.Resolver{Development: c.Development, KMSKeyID: c.KMS.KeyID}
	needKMS := c.KMS.KeyID != ""
	for _, ref := range secretRefs(c) {
		if kind, _ := kms.ParseReference(ref.value); kind == kms.KindKMS {
			needKMS = true
		}
	}
	if needKMS {
		client, err := kms.NewAWSClient(ctx, kms.AWSOptions{Region: c.KMS.Region, Endpoint: c.KMS.Endpoint})
		if err != nil {
			return nil, fmt.Errorf("kms: %w", err)
		}
		r.KMS = client
	}
	if c.KMS.Keyring != "" {
		if _, err := os.Stat(c.KMS.Keyring); errors.Is(err, os.ErrNotExist) && c.Development {
			if _, err := kms.Keygen(c.KMS.Keyring); err != nil {
				return nil, fmt.Errorf("kms.keyring: %w", err)
			}
		}
		k, err := kms.LoadKeyring(c.KMS.Keyring)
		if err != nil {
			return nil, fmt.Errorf("kms.keyring: %w", err)
		}
		r.Keyring = k
	}
	return r, nil
}

type secretRef struct{ path, value string }

// secretRefs lists every secret field of the configuration with its path.
func secretRefs(c *config.Config) []secretRef {
	var refs []secretRef
	if c.Store.Postgres != "" {
		refs = append(refs, secretRef{"store.postgres", c.Store.Postgres})
	}
	if c.SES != nil && c.SES.SecretAccessKey != "" {
		refs = append(refs, secretRef{"ses.secret_access_key", c.SES.SecretAccessKey})
	}
	for i, s := range c.SMTPServers {
		if s.Password != "" {
			refs = append(refs, secretRef{fmt.Sprintf("smtp_servers[%d].password", i), s.Password})
		}
		refs = append(refs, oauthRefs(fmt.Sprintf("smtp_servers[%d].oauth", i), s.OAuth)...)
	}
	for i, g := range c.GraphServers {
		refs = append(refs, oauthRefs(fmt.Sprintf("graph_servers[%d].oauth", i), g.OAuth)...)
	}
	return refs
}

// oauthRefs are the secret fields of an OAuth credential at path: its client secret and the key of
// its client certificate.
func oauthRefs(path string, o *config.OAuth) []secretRef {
	var refs []secretRef
	if o != nil && o.ClientSecret != "" {
		refs = append(refs, secretRef{path + ".client_secret", o.ClientSecret})
	}
	if o != nil && o.ClientKey != "" {
		refs = append(refs, secretRef{path + ".client_key", o.ClientKey})
	}
	return refs
}

// resolveSecrets decrypts every secret once, at load: a KMS outage or a wrong reference is found at
// start (or reload), never at the first delivery. Errors name the config path, never the value.
func resolveSecrets(ctx context.Context, r *kms.Resolver, c *config.Config) (map[string]kms.Secret, error) {
	out := map[string]kms.Secret{}
	var problems []string
	for _, ref := range secretRefs(c) {
		s, err := r.Resolve(ctx, ref.value)
		if err != nil {
			problems = append(problems, ref.path+": "+err.Error())
			continue
		}
		out[ref.path] = s
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "\n"))
	}
	return out, nil
}

func cmdSecret(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) == 0 {
		return usageError("secret", args)
	}
	switch args[0] {
	case "encrypt":
		fs := newFlags(env, "secret encrypt", "< secret-file")
		kmsKey := fs.String("kms", "", "AWS KMS key id, ARN or alias/NAME to encrypt with")
		keyring := fs.String("local", "", "local keyring file to encrypt with (see secret keygen)")
		name := fs.String("name", "secret", "name bound into the ciphertext (encryption context); shown in errors")
		region := fs.String("region", "", "AWS region (default: the AWS configuration)")
		endpoint := fs.String("endpoint", "", "KMS endpoint override")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		ref, err := kms.Encrypt(ctx, env.stdin, kms.EncryptOptions{KMSKeyID: *kmsKey, Keyring: *keyring, Name: *name,
			AWS: kms.AWSOptions{Region: *region, Endpoint: *endpoint}})
		if err != nil {
			return err
		}
		fmt.Fprintln(env.stdout, ref)
		return nil
	case "keygen":
		fs := newFlags(env, "secret keygen", "KEYRING")
		pos, err := parseArgs(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			fs.Usage()
			return &exitError{code: 2}
		}
		id, err := kms.Keygen(pos[0])
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "%s: newest key %s (new secrets use it; older keys still decrypt)\n", pos[0], id)
		return nil
	}
	return usageError("secret", args)
}
