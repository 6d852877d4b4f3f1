package config

import (
	"path/filepath"
)

// DevelopmentOptions moves the development default's addresses and data directory.
type DevelopmentOptions struct {
	DataDir        string // default ./mailgate-data
	SubmissionAddr string // default 127.0.0.1:2525
	AdminAddr      string // default 127.0.0.1:9465
	// DemoPasswordHash is the bcrypt hash of the demo user's password ("demo"); cmd computes it at start
	// so that no hash of a known password ships in the binary.
	DemoPasswordHash string
}

// Development is the configuration `mailgate serve` runs with when given none: everything on loopback,
// user demo/demo, one channel "Support" that shows every composition feature, and the outbox
// transport writing each delivered message as a .eml file under DataDir/outbox.
func Development(o DevelopmentOptions) *Config {
	if o.DataDir == "" {
		o.DataDir = "mailgate-data"
	}
	if o.SubmissionAddr == "" {
		o.SubmissionAddr = "127.0.0.1:2525"
	}
	if o.AdminAddr == "" {
		o.AdminAddr = "127.0.0.1:9465"
	}
	c := &Config{
		Development: true,
		Hostname:    "localhost",
		Listeners: []Listener{{
			Name: "submission", Address: o.SubmissionAddr, TLS: "starttls",
			// Loopback development only: lets a first swaks run work without --tls.
			AllowInsecureAuth: true,
		}},
		Admin:  Admin{Address: o.AdminAddr},
		Spool:  Spool{Dir: filepath.Join(o.DataDir, "spool")},
		Store:  Store{Path: filepath.Join(o.DataDir, "mailgate.db")},
		Outbox: &Outbox{Dir: filepath.Join(o.DataDir, "outbox")},
		KMS:    KMS{Keyring: filepath.Join(o.DataDir, "keyring")},
		BusinessUnits: []BusinessUnit{{
			Name: "Example", TimeZone: "America/New_York",
			AcceptedExtensions: []string{".png", ".jpg", ".jpeg", ".gif", ".pdf", ".txt", ".csv", ".docx", ".xlsx"},
		}},
		Channels: []Channel{{
			Name: "Support", From: "support@example.com", DisplayName: "Example Support",
			BusinessUnit: "Example", Transport: TransportOutbox, OutboundFlow: true,
			Template: "example-branded",
			Ticket:   Ticket{Position: "end", Style: "brackets"},
		}},
		Templates: []Template{{
			Name: "example-branded",
			HTML: `<!DOCTYPE html>
<html><body style="margin:0;background:#f4f5f7;font-family:Arial,Helvetica,sans-serif">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0"><tr><td align="center">
<table role="presentation" width="600" cellpadding="24" cellspacing="0" style="background:#ffffff">
<tr><td style="background:#1f4e79;color:#ffffff;font-size:20px">{{.DisplayName}}</td></tr>
<tr><td style="color:#222222;font-size:14px;line-height:1.5">{{.Content}}</td></tr>
<tr><td style="color:#777777;font-size:12px">Ticket {{.Ticket}} &middot; please keep this number in your reply.</td></tr>
</table></td></tr></table></body></html>`,
			Text: "{{.Content}}\n\n--\n{{.DisplayName}} - ticket {{.Ticket}}\n",
		}},
		Signatures: []Signature{{
			Name:  "demo",
			Text:  "Demo Agent\nExample Support | support@example.com",
			HTML:  `<p style="margin-top:16px">Demo Agent<br><strong>Example Support</strong> | <a href="mailto:support@example.com">support@example.com</a></p>`,
			Users: []string{"demo"},
		}},
		Roles: []Role{{Name: "agent", Channels: map[string][]string{"Support": {"reply", "outbound"}}}},
		Users: []User{{
			Login: "demo", Name: "Demo Agent", PasswordHash: o.DemoPasswordHash,
			Role: "agent", BusinessUnit: "Example",
		}},
	}
	c.ApplyDefaults()
	return c
}
