// Package config is mailgate's configuration: the YAML schema, strict loading, defaults, and one
// validation pass that reports every problem at once, each with its path and the fix
// (`channels[1].transport: unknown server "m365" (define it under smtp_servers, or use ses or outbox)`).
//
// Design: Load decodes into plain structs and never stops at the first problem. Unknown keys are found
// by walking the YAML tree against the struct tags (yaml.v3's KnownFields stops at the first one) and
// reported with everything else; then Validate checks every object and every cross-reference, and the
// files the configuration names (certificates and keys, CA files, the admin token, file: secrets) as
// the daemon will read them, so `check-config` and `serve` agree. The result is a value: the daemon builds its
// runtime objects from a *Config and, on SIGHUP, swaps them only if the new file loads cleanly. Only
// cmd/mailgate reads these types; every other package takes option structs of its own. Secrets are
// stored here as references (kms:, local:, env:, file:); kms resolves them.
package config

import (
	"strings"
	"time"
)

// Config is the whole file.
type Config struct {
	// Development relaxes production rules: plain-text secrets, and AUTH without TLS on loopback
	// listeners that ask for it. The no-config development default sets it.
	Development bool   `yaml:"development"`
	Hostname    string `yaml:"hostname"` // EHLO name and Message-ID fallback domain
	// Instance names this process in a fleet sharing one store (logs, /readyz, `mailgate queue`);
	// default: the machine's host name.
	Instance string `yaml:"instance"`

	Listeners []Listener `yaml:"listeners"`
	TLS       TLS        `yaml:"tls"`
	Admin     Admin      `yaml:"admin"`
	Events    Events     `yaml:"events"`
	Limits    Limits     `yaml:"limits"`
	Spool     Spool      `yaml:"spool"`
	Store     Store      `yaml:"store"`
	Queue     Queue      `yaml:"queue"`

	BusinessUnits   []BusinessUnit   `yaml:"business_units"`
	Channels        []Channel        `yaml:"channels"`
	SMTPServers     []SMTPServer     `yaml:"smtp_servers"`
	GraphServers    []GraphServer    `yaml:"graph_servers"`
	SES             *SES             `yaml:"ses"`
	Outbox          *Outbox          `yaml:"outbox"`
	KMS             KMS              `yaml:"kms"`
	Templates       []Template       `yaml:"templates"`
	Signatures      []Signature      `yaml:"signatures"`
	Roles           []Role           `yaml:"roles"`
	Users           []User           `yaml:"users"`
	TrustedNetworks []TrustedNetwork `yaml:"trusted_networks"`
}

// Listener is one SMTP submission listener.
type Listener struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	// TLS is "starttls" (587-style) or "implicit" (465-style).
	TLS string `yaml:"tls"`
	// AllowInsecureAuth permits AUTH before STARTTLS. Only accepted in a development config on a
	// loopback address: credentials must never cross a network in the clear.
	AllowInsecureAuth bool `yaml:"allow_insecure_auth"`
}

// TLS names the certificate and key served by the listeners.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Admin is the operator HTTP listener: /metrics, /healthz and /readyz open; the queue API and
// /debug/pprof need the bearer token in TokenFile.
type Admin struct {
	Address string `yaml:"address"`
	// TokenFile holds the operator API's bearer token (mode 0600, at least 16 characters; e.g. from
	// `openssl rand -hex 32`). Required when Address is not loopback; without it the operator API is off.
	TokenFile string `yaml:"token_file"`
	// AllowedHosts are extra host names requests may carry in their Host header (e.g. the name
	// Prometheus scrapes); localhost and IP literals are always accepted. Any other Host is refused,
	// so a web page cannot reach the API through DNS rebinding.
	AllowedHosts []string `yaml:"allowed_hosts"`
}

// Events is the listener SNS posts SES bounce and complaint notifications to (POST /ses/events, and
// nothing else). It may face the internet: give it a certificate, or put a TLS proxy in front.
type Events struct {
	Address  string `yaml:"address"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Limits bound what one client can make mailgate do.
type Limits struct {
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerClient bounds one client address (IPv6 by /64): one host cannot take every slot.
	MaxConnectionsPerClient int      `yaml:"max_connections_per_client"`
	MaxMessageBytes         int64    `yaml:"max_message_bytes"` // raw DATA size
	MaxRecipients           int      `yaml:"max_recipients"`
	AuthFailures            int      `yaml:"auth_failures"`       // failed AUTH attempts per client IP and login ...
	AuthFailureWindow       Duration `yaml:"auth_failure_window"` // ... within this window
	// AuthFailuresPerClient is the ceiling over all logins from one client address (IPv6 by /64): an
	// application server with many agents is not locked out by one agent's wrong password, but
	// cannot guess at many logins either. Default 4 × auth_failures.
	AuthFailuresPerClient int      `yaml:"auth_failures_per_client"`
	ReadTimeout           Duration `yaml:"read_timeout"`
	// AuthTimeout bounds the time from connect to a successful AUTH (or a trusted network's first
	// MAIL). Default 60s.
	AuthTimeout Duration `yaml:"auth_timeout"`
	// CommandTimeout bounds the time one whole command line may take to arrive (RFC 5321 §4.5.3.2.7
	// suggests 5 minutes); a line dribbled byte by byte is cut. Default 5m.
	CommandTimeout Duration `yaml:"command_timeout"`
	// DataMinRate is the slowest DATA/BDAT transfer accepted, in bytes per second averaged over
	// DataRateWindow; a slower client gets 451 4.4.2 and is disconnected. Defaults 500 and 30s.
	DataMinRate    int64    `yaml:"data_min_rate"`
	DataRateWindow Duration `yaml:"data_rate_window"`
	// ComposeMemoryBytes is the memory all compositions together may hold for decoded text and HTML
	// parts; beyond it compositions wait their turn. Default 128 MiB.
	ComposeMemoryBytes int64 `yaml:"compose_memory_bytes"`
}

// Spool is the per-instance durable queue directory.
type Spool struct {
	Dir string `yaml:"dir"`
	// MinFreeBytes is the free space below which /readyz fails for the spool's file system, so a
	// load balancer stops sending mail before the disk is full. Default 1 GiB.
	MinFreeBytes int64 `yaml:"min_free_bytes"`
}

// Store is where bounces, suppression, the delivery log, OAuth tokens and (with PostgreSQL) the
// upstream budgets live: a SQLite file for one instance (Path), or a PostgreSQL database shared by a
// fleet (Postgres). Exactly one is set.
type Store struct {
	Path string `yaml:"path"`
	// Postgres is the DSN (libpq key=value or postgres:// URI) as a secret reference — env:NAME,
	// file:PATH, kms:… or local:… — since it may carry the password; never logged.
	Postgres string `yaml:"postgres"`
}

// Kind names the configured store for operators ("sqlite FILE", "postgresql (DSN from env:NAME)")
// without revealing the DSN: only the kind of a reference, and the name of an env or file one.
func (s Store) Kind() string {
	if s.Postgres == "" {
		return "sqlite " + s.Path
	}
	for _, k := range []string{"env:", "file:"} {
		if strings.HasPrefix(s.Postgres, k) {
			return "postgresql (DSN from " + s.Postgres + ")"
		}
	}
	if k, _, ok := strings.Cut(s.Postgres, ":"); ok && (k == "kms" || k == "local") {
		return "postgresql (DSN sealed with " + k + ")"
	}
	return "postgresql (DSN in the file)"
}

// Queue is the retry policy.
type Queue struct {
	RetryInitial        Duration `yaml:"retry_initial"`
	RetryMax            Duration `yaml:"retry_max"`
	MaxLifetime         Duration `yaml:"max_lifetime"`
	WorkersPerTransport int      `yaml:"workers_per_transport"`
	AttemptTimeout      Duration `yaml:"attempt_timeout"`
}

// BusinessUnit carries the time zone of outgoing Date headers and the attachment allowlist.
type BusinessUnit struct {
	Name     string `yaml:"name"`
	TimeZone string `yaml:"time_zone"` // IANA name, e.g. Europe/Berlin
	// AcceptedExtensions like ".png"; empty allows every attachment.
	AcceptedExtensions []string `yaml:"accepted_extensions"`
}

// Channel is a point of contact: the From address agents send as, and how its mail looks and travels.
type Channel struct {
	Name         string `yaml:"name"`
	From         string `yaml:"from"`
	DisplayName  string `yaml:"display_name"`
	BusinessUnit string `yaml:"business_unit"`
	// Transport is "ses", "outbox" or the name of one of smtp_servers.
	Transport    string `yaml:"transport"`
	OutboundFlow bool   `yaml:"outbound_flow"`
	ForceTLS     bool   `yaml:"force_tls"`
	// MailFrom overrides the envelope sender (the seed's MAILFROM setting); default: From.
	MailFrom string `yaml:"mail_from"`
	Template string `yaml:"template"`
	Ticket   Ticket `yaml:"ticket"`
	// Threading is prefer_in_reply_to (default) or ignore_in_reply_to.
	Threading string `yaml:"threading"`
	// SESConfigurationSet is the SES configuration set for this channel (required with force_tls on SES).
	SESConfigurationSet string `yaml:"ses_configuration_set"`
	// SESTenantName optionally sends the channel's mail as an SES tenant (TenantName).
	SESTenantName string `yaml:"ses_tenant_name"`
	// SESIdentityARN is the ARN of a sending identity another AWS account authorised this one to use
	// (SES sending authorization); empty = the From address's own identity in this account.
	SESIdentityARN string `yaml:"ses_identity_arn"`
}

// Ticket is how the ticket number appears in the subject.
type Ticket struct {
	Position string `yaml:"position"` // end (default) or start
	Style    string `yaml:"style"`    // plain (default), brackets, braces, hidden
}

// SMTPServer is a custom upstream SMTP server.
type SMTPServer struct {
	Name string `yaml:"name"`
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	TLS  string `yaml:"tls"` // starttls (default) or implicit
	// Provider "microsoft" applies Exchange Online's limits by default; "generic" otherwise.
	Provider string `yaml:"provider"`
	// Auth is none, login, plain or microsoft-oauth.
	Auth              string       `yaml:"auth"`
	Username          string       `yaml:"username"`
	Password          string       `yaml:"password"` // secret reference
	OAuth             *OAuth       `yaml:"oauth"`
	MaxConnections    int          `yaml:"max_connections"`
	MessagesPerMinute int          `yaml:"messages_per_minute"`
	RecipientsPerDay  int          `yaml:"recipients_per_day"`
	MaxMessageBytes   int64        `yaml:"max_message_bytes"`
	CAFile            string       `yaml:"ca_file"` // extra trust anchors (a private CA); system roots otherwise
	Timeouts          SMTPTimeouts `yaml:"timeouts"`
	// Chunking (default true) sends each message as MAIL, RCPT and BDAT LAST in one round trip where
	// the server offers CHUNKING and PIPELINING (Exchange and Postfix do); false always uses DATA.
	Chunking *bool `yaml:"chunking"`
}

// GraphServer is a Microsoft 365 mailbox that sends through Microsoft Graph's sendMail instead of SMTP
// (for tenants that keep SMTP AUTH disabled). Channels name it as their transport, like a custom SMTP
// server. The credential is a Microsoft OAuth one whose tokens are issued for Graph: application
// permission Mail.Send (client_credentials) or delegated Mail.Send (authorization_code); oauth.mailbox
// is the sending mailbox.
type GraphServer struct {
	Name string `yaml:"name"`
	// Endpoint overrides https://graph.microsoft.com/v1.0 (national clouds, tests); https only.
	Endpoint string `yaml:"endpoint"`
	OAuth    *OAuth `yaml:"oauth"`
	// MaxConcurrentRequests defaults to Graph's 4 per mailbox; MessagesPerMinute and RecipientsPerDay
	// to Exchange Online's 30 and 10,000; MaxMessageBytes to the mailbox default of 35 MB.
	MaxConcurrentRequests int    `yaml:"max_concurrent_requests"`
	MessagesPerMinute     int    `yaml:"messages_per_minute"`
	RecipientsPerDay      int    `yaml:"recipients_per_day"`
	MaxMessageBytes       int64  `yaml:"max_message_bytes"`
	CAFile                string `yaml:"ca_file"` // extra trust anchors (a TLS-inspecting proxy's CA)
}

// SMTPTimeouts bound each step of an upstream session.
type SMTPTimeouts struct {
	Connect Duration `yaml:"connect"`
	Command Duration `yaml:"command"`
	Data    Duration `yaml:"data"`
	// Idle closes a pooled upstream connection unused for this long (Postfix's
	// smtp_connection_cache_time_limit is 2s; mailgate's default is the transport's, 30s).
	Idle Duration `yaml:"idle"`
}

// OAuth is a Microsoft OAuth 2.0 credential for XOAUTH2.
type OAuth struct {
	TenantID     string `yaml:"tenant_id"`
	ClientID     string `yaml:"client_id"`
	ClientSecret string `yaml:"client_secret"` // secret reference
	// ClientSecretExpires is when the client secret expires (YYYY-MM-DD, as the app registration shows
	// it): /readyz warns 30 days ahead and fails 7 days ahead.
	ClientSecretExpires string `yaml:"client_secret_expires"`
	// ClientCertificate (a PEM file) and ClientKey (a secret reference to its PEM RSA private key) are a
	// certificate credential, used instead of client_secret: token requests carry a signed client
	// assertion. Its NotAfter is watched like client_secret_expires.
	ClientCertificate string   `yaml:"client_certificate"`
	ClientKey         string   `yaml:"client_key"`
	Mailbox           string   `yaml:"mailbox"`
	Flow              string   `yaml:"flow"` // client_credentials or authorization_code
	Scopes            []string `yaml:"scopes"`
	RedirectURL       string   `yaml:"redirect_url"`
	AuthorizeURL      string   `yaml:"authorize_url"` // override for national clouds and tests
	TokenURL          string   `yaml:"token_url"`
}

// SES is the AWS SES v2 transport.
type SES struct {
	Region   string `yaml:"region"`
	Endpoint string `yaml:"endpoint"`
	// AccessKeyID and SecretAccessKey (a secret reference) are static credentials; without them the
	// AWS default chain is used (environment, shared files, SSO, container or instance role).
	AccessKeyID     string  `yaml:"access_key_id"`
	SecretAccessKey string  `yaml:"secret_access_key"`
	MaxSendRate     float64 `yaml:"max_send_rate"` // messages per second; 0 = unlimited
	// EventTopics are the SNS topic ARNs whose bounce and complaint notifications the events listener
	// accepts (required: anyone can sign SNS messages from a topic of their own).
	EventTopics []string `yaml:"event_topics"`
}

// Outbox is the development transport: each delivered message becomes a .eml file.
type Outbox struct {
	Dir string `yaml:"dir"`
}

// KMS says how secrets are decrypted and how mailgate seals what it stores (OAuth refresh tokens).
type KMS struct {
	Region   string `yaml:"region"`
	Endpoint string `yaml:"endpoint"`
	KeyID    string `yaml:"key_id"`  // AWS KMS key for sealing stored secrets
	Keyring  string `yaml:"keyring"` // local keyring file (local: references, and sealing when no key_id)
}

// Template is a branded HTML template (with an optional plain-text form).
type Template struct {
	Name string `yaml:"name"`
	HTML string `yaml:"html"`
	Text string `yaml:"text"`
}

// Signature is an agent signature and the users it is assigned to.
type Signature struct {
	Name  string   `yaml:"name"`
	Text  string   `yaml:"text"`
	HTML  string   `yaml:"html"`
	Users []string `yaml:"users"`
}

// Role grants permissions per channel: "reply", "outbound" and "act_for_agents" (a service account
// may name, in the X-Mailgate-Agent header, the agent it sends for on that channel).
type Role struct {
	Name     string              `yaml:"name"`
	Channels map[string][]string `yaml:"channels"`
}

// User is an agent (or service account) that authenticates with SMTP AUTH.
type User struct {
	Login        string `yaml:"login"`
	Name         string `yaml:"name"`
	PasswordHash string `yaml:"password_hash"` // bcrypt
	Role         string `yaml:"role"`
	BusinessUnit string `yaml:"business_unit"`
}

// TrustedNetwork lets applications that cannot do SMTP AUTH submit from a network, as a named service
// principal whose role still limits the channels it may send on (like Postfix mynetworks, but narrower).
type TrustedNetwork struct {
	CIDR         string `yaml:"cidr"`
	Principal    string `yaml:"principal"`
	Role         string `yaml:"role"`
	BusinessUnit string `yaml:"business_unit"`
}

// Duration is a time.Duration written as "90s", "15m", "120h" in YAML.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
