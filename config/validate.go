package config

import (
	"fmt"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/mailgate/mailgate/templates"
)

// Transport names that are not custom SMTP servers.
const (
	TransportSES    = "ses"
	TransportOutbox = "outbox"
)

// ApplyDefaults fills what an operator may leave out.
func (c *Config) ApplyDefaults() {
	if c.Hostname == "" {
		c.Hostname = "localhost"
	}
	for i := range c.Listeners {
		if c.Listeners[i].TLS == "" {
			c.Listeners[i].TLS = "starttls"
		}
		if c.Listeners[i].Name == "" {
			c.Listeners[i].Name = c.Listeners[i].Address
		}
	}
	if c.Admin.Address == "" {
		c.Admin.Address = "127.0.0.1:9465"
	}
	l := &c.Limits
	setInt(&l.MaxConnections, 500)
	setInt(&l.MaxConnectionsPerClient, min(100, l.MaxConnections))
	if l.MaxMessageBytes == 0 {
		l.MaxMessageBytes = 60 << 20 // raw DATA; the composed size is checked against the transport
	}
	setInt(&l.MaxRecipients, 100)
	setInt(&l.AuthFailures, 5)
	setDur(&l.AuthFailureWindow, 5*time.Minute)
	setDur(&l.ReadTimeout, 5*time.Minute)
	setInt(&l.AuthFailuresPerClient, 4*l.AuthFailures)
	setDur(&l.AuthTimeout, time.Minute)
	setDur(&l.CommandTimeout, 5*time.Minute)
	if l.DataMinRate == 0 {
		l.DataMinRate = 500
	}
	setDur(&l.DataRateWindow, 30*time.Second)
	if l.ComposeMemoryBytes == 0 {
		l.ComposeMemoryBytes = 128 << 20
	}
	if c.Spool.MinFreeBytes == 0 {
		c.Spool.MinFreeBytes = 1 << 30
	}
	q := &c.Queue
	setDur(&q.RetryInitial, time.Minute)
	setDur(&q.RetryMax, 2*time.Hour)
	setDur(&q.MaxLifetime, 5*24*time.Hour)
	setInt(&q.WorkersPerTransport, 16)
	setDur(&q.AttemptTimeout, 10*time.Minute)
	for i := range c.Channels {
		ch := &c.Channels[i]
		if ch.Ticket.Position == "" {
			ch.Ticket.Position = "end"
		}
		if ch.Ticket.Style == "" {
			ch.Ticket.Style = "plain"
		}
		if ch.Threading == "" {
			ch.Threading = "prefer_in_reply_to"
		}
	}
	for i := range c.SMTPServers {
		s := &c.SMTPServers[i]
		if s.TLS == "" {
			s.TLS = "starttls"
		}
		if s.Port == 0 {
			if s.TLS == "implicit" {
				s.Port = 465
			} else {
				s.Port = 587
			}
		}
		if s.Provider == "" {
			s.Provider = "generic"
		}
		if s.Auth == "" {
			s.Auth = "none"
		}
		if o := s.OAuth; o != nil && o.Flow == "" {
			o.Flow = "client_credentials"
		}
	}
}

func setInt(p *int, v int) {
	if *p == 0 {
		*p = v
	}
}

func setDur(p *Duration, v time.Duration) {
	if *p == 0 {
		*p = Duration(v)
	}
}

// Validate checks every object and cross-reference and returns all problems as Problems (nil if none).
func (c *Config) Validate() error {
	var ps Problems
	c.validateListeners(&ps)
	bus := c.validateBusinessUnits(&ps)
	servers := c.validateSMTPServers(&ps)
	templateNames := map[string]bool{}
	for i, t := range c.Templates {
		p := fmt.Sprintf("templates[%d]", i)
		unique(&ps, p+".name", "template", t.Name, templateNames)
		if strings.TrimSpace(t.HTML) == "" {
			ps.add(p+".html", "required: the branded HTML with a {{.Content}} placeholder")
		} else if _, err := templates.Parse(t.Name, t.HTML, t.Text); err != nil {
			// templates says which form failed ("html: ..." or "text: ..."): point at that field.
			form, msg, ok := strings.Cut(err.Error(), ": ")
			if ok && (form == "html" || form == "text") {
				ps.add(p+"."+form, "%s", msg)
			} else {
				ps.add(p, "%v", err)
			}
		}
	}
	channels := c.validateChannels(&ps, bus, servers, templateNames)
	roles := c.validateRoles(&ps, channels)
	logins := map[string]bool{}
	for i, u := range c.Users {
		p := fmt.Sprintf("users[%d]", i)
		// Logins are matched case-insensitively at AUTH.
		unique(&ps, p+".login", "user", strings.ToLower(u.Login), logins)
		if !strings.HasPrefix(u.PasswordHash, "$2") {
			ps.add(p+".password_hash", "must be a bcrypt hash (make one with: mailgate hash-password < password-file)")
		}
		c.checkRoleBU(&ps, p, u.Role, u.BusinessUnit, roles, bus)
	}
	principals := map[string]bool{}
	for i, tn := range c.TrustedNetworks {
		p := fmt.Sprintf("trusted_networks[%d]", i)
		if _, err := netip.ParsePrefix(tn.CIDR); err != nil {
			ps.add(p+".cidr", "invalid CIDR %q (write e.g. 10.1.0.0/16)", tn.CIDR)
		}
		if tn.Principal == "" {
			ps.add(p+".principal", "required: the service principal name mail from this network is sent as")
		} else if logins[strings.ToLower(tn.Principal)] {
			ps.add(p+".principal", "%q is also a user login; pick a distinct service principal name", tn.Principal)
		}
		principals[tn.Principal] = true
		c.checkRoleBU(&ps, p, tn.Role, tn.BusinessUnit, roles, bus)
	}
	assigned := map[string]string{}
	for i, s := range c.Signatures {
		p := fmt.Sprintf("signatures[%d]", i)
		if s.Name == "" {
			ps.add(p+".name", "required")
		}
		if strings.TrimSpace(s.Text) == "" && strings.TrimSpace(s.HTML) == "" {
			ps.add(p, "needs text, html or both")
		}
		for j, u := range s.Users {
			up := fmt.Sprintf("%s.users[%d]", p, j)
			if !logins[strings.ToLower(u)] {
				ps.add(up, "unknown user %q", u)
			}
			if other, ok := assigned[strings.ToLower(u)]; ok {
				ps.add(up, "user %q is in signatures %q and %q; a user can have only one signature", u, other, s.Name)
			}
			assigned[strings.ToLower(u)] = s.Name
		}
	}
	c.validateSecrets(&ps)
	if c.SES != nil {
		if c.SES.Region == "" {
			ps.add("ses.region", "required (e.g. eu-west-1)")
		}
		if (c.SES.AccessKeyID == "") != (c.SES.SecretAccessKey == "") {
			ps.add("ses", "access_key_id and secret_access_key go together (or leave both out for the AWS default credential chain)")
		}
	}
	if c.KMS.Endpoint != "" {
		if _, err := url.ParseRequestURI(c.KMS.Endpoint); err != nil {
			ps.add("kms.endpoint", "invalid URL %q", c.KMS.Endpoint)
		}
	}
	if c.Spool.Dir == "" {
		ps.add("spool.dir", "required: the directory of the durable queue (e.g. /var/spool/mailgate)")
	}
	if c.Store.Path == "" {
		ps.add("store.path", "required: the SQLite database file (e.g. /var/lib/mailgate/mailgate.db)")
	}
	if c.Queue.RetryMax < c.Queue.RetryInitial {
		ps.add("queue.retry_max", "must not be shorter than queue.retry_initial")
	}
	if len(ps) > 0 {
		return ps
	}
	return nil
}

func (c *Config) validateListeners(ps *Problems) {
	if len(c.Listeners) == 0 {
		ps.add("listeners", "at least one submission listener is required")
	}
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		host, _, err := net.SplitHostPort(l.Address)
		if err != nil {
			ps.add(p+".address", "invalid address %q (write host:port, e.g. 0.0.0.0:587)", l.Address)
		}
		if l.TLS != "starttls" && l.TLS != "implicit" {
			ps.add(p+".tls", "must be starttls or implicit, not %q", l.TLS)
		}
		if l.AllowInsecureAuth {
			ip, _ := netip.ParseAddr(host)
			if !c.Development || !(ip.IsLoopback() || host == "localhost") {
				ps.add(p+".allow_insecure_auth", "only allowed in a development config on a loopback address: AUTH must use TLS")
			}
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		ps.add("tls", "cert_file and key_file go together")
	}
	if c.TLS.CertFile == "" && !c.Development {
		ps.add("tls.cert_file", "required: submission needs TLS (a self-signed certificate is generated only in development)")
	}
	if _, _, err := net.SplitHostPort(c.Admin.Address); err != nil {
		ps.add("admin.address", "invalid address %q (write host:port, e.g. 127.0.0.1:9465)", c.Admin.Address)
	}
}

func (c *Config) validateBusinessUnits(ps *Problems) map[string]bool {
	bus := map[string]bool{}
	for i, b := range c.BusinessUnits {
		p := fmt.Sprintf("business_units[%d]", i)
		unique(ps, p+".name", "business unit", b.Name, bus)
		if b.TimeZone == "" {
			ps.add(p+".time_zone", "required: an IANA time zone such as Europe/Berlin")
		} else if _, err := time.LoadLocation(b.TimeZone); err != nil {
			ps.add(p+".time_zone", "unknown time zone %q (use an IANA name such as America/New_York)", b.TimeZone)
		}
		for j, e := range b.AcceptedExtensions {
			if !strings.HasPrefix(e, ".") || len(e) < 2 || strings.ContainsAny(e, "/\\ ") {
				ps.add(fmt.Sprintf("%s.accepted_extensions[%d]", p, j), "write the extension with its period, e.g. .png (got %q)", e)
			}
		}
	}
	return bus
}

func (c *Config) validateSMTPServers(ps *Problems) map[string]*SMTPServer {
	servers := map[string]*SMTPServer{}
	for i := range c.SMTPServers {
		s := &c.SMTPServers[i]
		p := fmt.Sprintf("smtp_servers[%d]", i)
		switch {
		case s.Name == "":
			ps.add(p+".name", "required")
		case s.Name == TransportSES || s.Name == TransportOutbox:
			ps.add(p+".name", "%q is reserved for the built-in transport; pick another name", s.Name)
		case servers[s.Name] != nil:
			ps.add(p+".name", "duplicate server %q", s.Name)
		}
		servers[s.Name] = s
		if s.Host == "" {
			ps.add(p+".host", "required")
		}
		if s.Port <= 0 || s.Port > 65535 {
			ps.add(p+".port", "must be 1-65535")
		}
		if s.TLS != "starttls" && s.TLS != "implicit" {
			ps.add(p+".tls", "must be starttls or implicit, not %q", s.TLS)
		}
		if s.Provider != "generic" && s.Provider != "microsoft" {
			ps.add(p+".provider", "must be generic or microsoft, not %q", s.Provider)
		}
		switch s.Auth {
		case "none":
		case "login", "plain":
			if s.Username == "" {
				ps.add(p+".username", "required with auth %s", s.Auth)
			}
			if s.Password == "" {
				ps.add(p+".password", "required with auth %s: a secret reference (kms:, local:, env:NAME, file:PATH)", s.Auth)
			}
		case "microsoft-oauth":
			validateOAuth(ps, p+".oauth", s.OAuth)
		default:
			ps.add(p+".auth", "must be none, login, plain or microsoft-oauth, not %q", s.Auth)
		}
		if s.Auth != "microsoft-oauth" && s.OAuth != nil {
			ps.add(p+".oauth", "only used with auth: microsoft-oauth")
		}
	}
	return servers
}

func validateOAuth(ps *Problems, p string, o *OAuth) {
	if o == nil {
		ps.add(p, "required with auth microsoft-oauth: tenant_id, client_id, client_secret, mailbox")
		return
	}
	if o.TenantID == "" {
		ps.add(p+".tenant_id", "required: the Directory (tenant) ID of the app registration")
	}
	if o.ClientID == "" {
		ps.add(p+".client_id", "required: the Application (client) ID of the app registration")
	}
	if o.ClientSecret == "" {
		ps.add(p+".client_secret", "required: a secret reference (kms:, local:, env:NAME, file:PATH)")
	}
	if _, err := mail.ParseAddress(o.Mailbox); err != nil {
		ps.add(p+".mailbox", "required: the mailbox address mail is sent as (got %q)", o.Mailbox)
	}
	switch o.Flow {
	case "client_credentials":
	case "authorization_code":
		if u, err := url.Parse(o.RedirectURL); err != nil || u.Host == "" {
			ps.add(p+".redirect_url", "required with authorization_code: the redirect URL registered for the app (e.g. http://localhost:8765/callback)")
		}
	default:
		ps.add(p+".flow", "must be client_credentials or authorization_code, not %q", o.Flow)
	}
	for _, f := range []struct{ name, v string }{{"authorize_url", o.AuthorizeURL}, {"token_url", o.TokenURL}} {
		if f.v != "" {
			if u, err := url.Parse(f.v); err != nil || u.Host == "" {
				ps.add(p+"."+f.name, "invalid URL %q", f.v)
			}
		}
	}
}

func (c *Config) validateChannels(ps *Problems, bus map[string]bool, servers map[string]*SMTPServer, templates map[string]bool) map[string]bool {
	channels := map[string]bool{}
	froms := map[string]string{}
	if len(c.Channels) == 0 {
		ps.add("channels", "at least one channel is required")
	}
	for i, ch := range c.Channels {
		p := fmt.Sprintf("channels[%d]", i)
		unique(ps, p+".name", "channel", ch.Name, channels)
		if a, err := mail.ParseAddress(ch.From); err != nil || a.Name != "" {
			ps.add(p+".from", "must be a bare address such as support@example.com (got %q)", ch.From)
		} else if other, dup := froms[strings.ToLower(a.Address)]; dup {
			ps.add(p+".from", "%s is already the address of channel %q; a From address picks exactly one channel", a.Address, other)
		} else {
			froms[strings.ToLower(a.Address)] = ch.Name
		}
		if ch.MailFrom != "" {
			if a, err := mail.ParseAddress(ch.MailFrom); err != nil || a.Name != "" {
				ps.add(p+".mail_from", "must be a bare address (got %q)", ch.MailFrom)
			}
		}
		if !bus[ch.BusinessUnit] {
			ps.add(p+".business_unit", "unknown business unit %q (define it under business_units)", ch.BusinessUnit)
		}
		switch {
		case ch.Transport == TransportSES:
			if c.SES == nil {
				ps.add(p+".transport", "ses needs a top-level ses: section (region)")
			}
			if ch.ForceTLS && ch.SESConfigurationSet == "" {
				ps.add(p+".ses_configuration_set", "required with force_tls on SES: a configuration set whose TLS policy is REQUIRE")
			}
		case ch.Transport == TransportOutbox:
			if c.Outbox == nil {
				ps.add(p+".transport", "outbox needs a top-level outbox: section (dir)")
			}
		case servers[ch.Transport] != nil:
		default:
			ps.add(p+".transport", "unknown server %q (define it under smtp_servers, or use ses or outbox)", ch.Transport)
		}
		if ch.SESConfigurationSet != "" && ch.Transport != TransportSES {
			ps.add(p+".ses_configuration_set", "only used with transport ses")
		}
		if ch.Template != "" && !templates[ch.Template] {
			ps.add(p+".template", "unknown template %q (define it under templates)", ch.Template)
		}
		if ch.Ticket.Position != "end" && ch.Ticket.Position != "start" {
			ps.add(p+".ticket.position", "must be end or start, not %q", ch.Ticket.Position)
		}
		switch ch.Ticket.Style {
		case "plain", "brackets", "braces", "hidden":
		default:
			ps.add(p+".ticket.style", "must be one of plain, brackets, braces, hidden, not %q", ch.Ticket.Style)
		}
		switch ch.Threading {
		case "prefer_in_reply_to":
		case "ignore_in_reply_to":
			if ch.Ticket.Style == "hidden" {
				ps.add(p+".threading", "ignore_in_reply_to threads by the ticket number, which ticket.style hidden removes: replies could not be threaded; show the ticket or prefer In-Reply-To")
			}
		default:
			ps.add(p+".threading", "must be prefer_in_reply_to or ignore_in_reply_to, not %q", ch.Threading)
		}
	}
	return channels
}

func (c *Config) validateRoles(ps *Problems, channels map[string]bool) map[string]bool {
	roles := map[string]bool{}
	for i, r := range c.Roles {
		p := fmt.Sprintf("roles[%d]", i)
		unique(ps, p+".name", "role", r.Name, roles)
		for ch, perms := range r.Channels {
			cp := p + ".channels." + ch
			if !channels[ch] {
				ps.add(cp, "unknown channel %q", ch)
			}
			for _, perm := range perms {
				if perm != "reply" && perm != "outbound" {
					ps.add(cp, "unknown permission %q (use reply, outbound)", perm)
				}
			}
		}
	}
	return roles
}

func (c *Config) checkRoleBU(ps *Problems, p, role, bu string, roles, bus map[string]bool) {
	if !roles[role] {
		ps.add(p+".role", "unknown role %q (define it under roles)", role)
	}
	if !bus[bu] {
		ps.add(p+".business_unit", "unknown business unit %q (define it under business_units)", bu)
	}
}

// validateSecrets refuses plain-text secrets outside development: a secret in the file must be a
// reference that kms resolves at load.
func (c *Config) validateSecrets(ps *Problems) {
	check := func(path, v string) {
		if v == "" {
			return
		}
		for _, k := range []string{"kms:", "local:", "env:", "file:"} {
			if strings.HasPrefix(v, k) {
				if len(v) == len(k) {
					ps.add(path, "empty %s reference", strings.TrimSuffix(k, ":"))
				}
				return
			}
		}
		if !c.Development {
			ps.add(path, "plain-text secrets are refused outside development: use kms:<...> (mailgate secret encrypt --kms KEY), local:<...> (mailgate secret encrypt --local KEYRING), env:NAME or file:PATH")
		}
	}
	if c.SES != nil {
		check("ses.secret_access_key", c.SES.SecretAccessKey)
	}
	for i, s := range c.SMTPServers {
		p := fmt.Sprintf("smtp_servers[%d]", i)
		check(p+".password", s.Password)
		if s.OAuth != nil {
			check(p+".oauth.client_secret", s.OAuth.ClientSecret)
		}
	}
}

// unique records name in seen, reporting at path a missing name or one already used by another
// object of the same kind.
func unique(ps *Problems, path, kind, name string, seen map[string]bool) {
	switch {
	case name == "":
		ps.add(path, "required")
	case seen[name]:
		ps.add(path, "duplicate %s %q", kind, name)
	}
	seen[name] = true
}
