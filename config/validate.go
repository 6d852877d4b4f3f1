package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mailgate/mailgate/kms"

	"github.com/mailgate/mailgate/relay"
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
	setInt(&l.MaxConnectionsPerClient, min(100, max(l.MaxConnections, 1)))
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
	for i := range c.GraphServers {
		if o := c.GraphServers[i].OAuth; o != nil && o.Flow == "" {
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
	graphs := c.validateGraphServers(&ps, servers)
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
	channels := c.validateChannels(&ps, bus, servers, graphs, templateNames)
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
		if pfx, err := netip.ParsePrefix(tn.CIDR); err != nil {
			ps.add(p+".cidr", "invalid CIDR %q (write e.g. 10.1.0.0/16)", tn.CIDR)
		} else if why := tooWide(pfx); why != "" {
			ps.add(p+".cidr", "%s %s: mail from it needs no password, so list the application servers' own network (loopback and private ranges of any size, public ranges of at most /24 for IPv4 or /48 for IPv6)", tn.CIDR, why)
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
		if c.SES.MaxSendRate < 0 {
			ps.add("ses.max_send_rate", "must not be negative (0 = no limit)")
		}
		if len(c.SES.EventTopics) == 0 {
			ps.add("ses.event_topics", "required: the SNS topic ARNs your SES identities or configuration sets publish bounces and complaints to; without them any AWS account's topic could post signed fake bounces and suppress arbitrary addresses")
		}
		for i, t := range c.SES.EventTopics {
			if !validTopicARN(t) {
				ps.add(fmt.Sprintf("ses.event_topics[%d]", i), "%q is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)", t)
			}
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
	switch {
	case c.Store.Path == "" && c.Store.Postgres == "":
		ps.add("store", "required: store.path (a SQLite file, e.g. /var/lib/mailgate/mailgate.db, for one instance) or store.postgres (a PostgreSQL DSN as a secret reference, e.g. env:MAILGATE_PG_DSN, shared by several instances)")
	case c.Store.Path != "" && c.Store.Postgres != "":
		ps.add("store", "set store.path (SQLite) or store.postgres (PostgreSQL), not both")
	}
	if c.Queue.RetryMax < c.Queue.RetryInitial {
		ps.add("queue.retry_max", "must not be shorter than queue.retry_initial")
	}
	c.validateLimits(&ps)
	if len(ps) > 0 {
		return ps
	}
	return nil
}

func (c *Config) validateListeners(ps *Problems) {
	if len(c.Listeners) == 0 {
		ps.add("listeners", "at least one submission listener is required")
	}
	var bound []boundAddress
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		host, ok := listenAddress(ps, p+".address", l.Address, "0.0.0.0:587", &bound)
		if l.TLS != "starttls" && l.TLS != "implicit" {
			ps.add(p+".tls", "must be starttls or implicit, not %q", l.TLS)
		}
		if l.AllowInsecureAuth && (!ok || !c.Development || !isLoopbackHost(host)) {
			ps.add(p+".allow_insecure_auth", "only allowed in a development config on a loopback address: AUTH must use TLS")
		}
	}
	checkCertPair(ps, "tls", c.TLS.CertFile, c.TLS.KeyFile)
	if c.TLS.CertFile == "" && !c.Development {
		ps.add("tls.cert_file", "required: submission needs TLS (a self-signed certificate is generated only in development)")
	}

	adminHost, ok := listenAddress(ps, "admin.address", c.Admin.Address, "127.0.0.1:9465", &bound)
	if ok && !isLoopbackHost(adminHost) && c.Admin.TokenFile == "" {
		ps.add("admin.token_file", "required when admin.address (%s) is not loopback: the queue API and profiler must not be open to the network (write a random token, e.g. openssl rand -hex 32 > /etc/mailgate/admin.token; chmod 600 it)", c.Admin.Address)
	}
	if c.Admin.TokenFile != "" {
		if tok, err := kms.ReadSecretFile(c.Admin.TokenFile); err != nil {
			ps.add("admin.token_file", "%v", err)
		} else {
			if len(strings.TrimSpace(string(tok))) < MinAdminTokenBytes {
				ps.add("admin.token_file", "%s holds fewer than %d characters: write a random token (openssl rand -hex 32)", c.Admin.TokenFile, MinAdminTokenBytes)
			}
			clear(tok)
		}
	}
	for i, h := range c.Admin.AllowedHosts {
		if !validHostName(h) {
			ps.add(fmt.Sprintf("admin.allowed_hosts[%d]", i), "%q is not a host name (write the name alone, e.g. mailgate-1.internal, without scheme or port)", h)
		}
	}

	if c.SES == nil {
		if c.Events != (Events{}) {
			ps.add("events", "only used with ses: (the listener of SES bounce and complaint notifications)")
		}
		return
	}
	if c.Events.Address == "" {
		ps.add("events.address", "required with ses: the listener SNS posts bounce and complaint notifications to (e.g. 0.0.0.0:8443 with cert_file and key_file, or a loopback address behind a TLS proxy)")
	} else {
		listenAddress(ps, "events.address", c.Events.Address, "0.0.0.0:8443", &bound)
	}
	checkCertPair(ps, "events", c.Events.CertFile, c.Events.KeyFile)
}

// MinAdminTokenBytes is the shortest admin token accepted: 16 random characters are beyond guessing
// over HTTP; `openssl rand -hex 32` gives 64.
const MinAdminTokenBytes = 16

// boundAddress is a listener address already claimed, for the one-address-one-listener check.
type boundAddress struct {
	path, host, port string
}

// listenAddress checks a listen address — host:port with a port of 1-65535 and a host that is empty
// (every interface), an IP literal or a host name — and that no other listener (submission, admin,
// events) claims it: two listeners on one address would fail at start, or one would shadow the other.
// It returns the host and whether the address is valid.
func listenAddress(ps *Problems, path, addr, example string, bound *[]boundAddress) (string, bool) {
	host, port, err := net.SplitHostPort(addr)
	n, perr := strconv.Atoi(port)
	switch {
	case err != nil:
		ps.add(path, "invalid address %q (write host:port, e.g. %s)", addr, example)
		return "", false
	case perr != nil || n < 1 || n > 65535:
		ps.add(path, "invalid port in %q (write host:port with a port of 1-65535, e.g. %s)", addr, example)
		return "", false
	case host != "" && !validHostName(host):
		if _, err := netip.ParseAddr(host); err != nil {
			ps.add(path, "invalid host in %q (an IP address, a host name, or nothing for every interface)", addr)
			return "", false
		}
	}
	for _, b := range *bound {
		if b.port == port && overlaps(b.host, host) {
			ps.add(path, "%s is also the address of %s: each listener needs its own address", addr, b.path)
			return host, true
		}
	}
	*bound = append(*bound, boundAddress{path: path, host: host, port: port})
	return host, true
}

// overlaps reports whether two listen hosts on one port collide: the same address, or either one
// every interface.
func overlaps(a, b string) bool {
	norm := func(h string) string {
		if h == "localhost" {
			return "127.0.0.1"
		}
		if ip, err := netip.ParseAddr(h); err == nil {
			if ip.IsUnspecified() {
				return ""
			}
			return ip.Unmap().String()
		}
		return strings.ToLower(h)
	}
	a, b = norm(a), norm(b)
	return a == "" || b == "" || a == b
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// validHostName: LDH labels separated by dots (RFC 1123 §2.1), at most 253 octets.
func validHostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// checkCertPair loads a configured certificate and key as the listeners will, so a missing, unreadable
// or mismatched pair is found by check-config, not at start.
func checkCertPair(ps *Problems, path, certFile, keyFile string) {
	if (certFile == "") != (keyFile == "") {
		ps.add(path, "cert_file and key_file go together")
		return
	}
	if certFile == "" {
		return
	}
	certPEM, err := readPEMFile(certFile)
	var keyPEM []byte
	if err == nil {
		keyPEM, err = readPEMFile(keyFile)
	}
	if err == nil {
		_, err = tls.X509KeyPair(certPEM, keyPEM)
		clear(keyPEM)
	}
	if err != nil {
		ps.add(path+".cert_file", "cannot load the certificate and key (%s, %s): %v", certFile, keyFile, err)
	}
}

// pemDecode returns the first PEM CERTIFICATE block of b, or nil.
func pemDecode(b []byte) (*pem.Block, []byte) {
	for {
		blk, rest := pem.Decode(b)
		if blk == nil || blk.Type == "CERTIFICATE" {
			return blk, rest
		}
		b = rest
	}
}

// checkCAFile reads a configured CA file as the transports will: it must hold a PEM certificate.
func checkCAFile(ps *Problems, path, file string) {
	if file == "" {
		return
	}
	if pem, err := readPEMFile(file); err != nil {
		ps.add(path, "%v", err)
	} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		ps.add(path, "%s holds no PEM certificate", file)
	}
}

// maxPEMFileBytes bounds a certificate, key or CA file read at validation: a chain is a few KiB, a CA
// bundle a few hundred.
const maxPEMFileBytes = 4 << 20

// readPEMFile reads a certificate, key or CA file, refusing what is not a regular file (a FIFO would
// block, /dev/zero would never end) and reading at most maxPEMFileBytes.
func readPEMFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMFileBytes+1))
	if err == nil && len(b) > maxPEMFileBytes {
		err = fmt.Errorf("%s is larger than %d MiB", path, maxPEMFileBytes>>20)
	}
	return b, err
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
			if !validExtension(e) {
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
		checkCAFile(ps, p+".ca_file", s.CAFile)
	}
	return servers
}

// validateGraphServers checks the Graph mailboxes; their names share one space with smtp_servers
// (a channel's transport names either).
func (c *Config) validateGraphServers(ps *Problems, servers map[string]*SMTPServer) map[string]bool {
	graphs := map[string]bool{}
	for i, g := range c.GraphServers {
		p := fmt.Sprintf("graph_servers[%d]", i)
		switch {
		case g.Name == "":
			ps.add(p+".name", "required")
		case g.Name == TransportSES || g.Name == TransportOutbox:
			ps.add(p+".name", "%q is reserved for the built-in transport; pick another name", g.Name)
		case servers[g.Name] != nil || graphs[g.Name]:
			ps.add(p+".name", "duplicate server %q (smtp_servers and graph_servers share names)", g.Name)
		}
		graphs[g.Name] = true
		if g.Endpoint != "" {
			if u, err := url.Parse(g.Endpoint); err != nil || u.Scheme != "https" || u.Host == "" {
				ps.add(p+".endpoint", "must be an https URL such as https://graph.microsoft.com/v1.0 (the access token is a bearer credential), got %q", g.Endpoint)
			}
		}
		if g.OAuth == nil {
			ps.add(p+".oauth", "required: tenant_id, client_id, client_secret and mailbox of an app registration with the Microsoft Graph permission Mail.Send")
		} else {
			validateOAuth(ps, p+".oauth", g.OAuth)
		}
		checkCAFile(ps, p+".ca_file", g.CAFile)
	}
	return graphs
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
	switch {
	case o.ClientCertificate != "" || o.ClientKey != "":
		if o.ClientCertificate == "" || o.ClientKey == "" {
			ps.add(p+".client_certificate", "client_certificate (a PEM file) and client_key (a secret reference to its private key) go together")
		} else if pem, err := readPEMFile(o.ClientCertificate); err != nil {
			ps.add(p+".client_certificate", "%v", err)
		} else if b, _ := pemDecode(pem); b == nil {
			ps.add(p+".client_certificate", "%s holds no PEM CERTIFICATE", o.ClientCertificate)
		}
		if o.ClientSecret != "" {
			ps.add(p+".client_secret", "set either client_secret or client_certificate, not both")
		}
	case o.ClientSecret == "":
		ps.add(p+".client_secret", "required: a secret reference (kms:, local:, env:NAME, file:PATH), or client_certificate and client_key")
	}
	if o.ClientSecretExpires != "" {
		if _, err := time.Parse("2006-01-02", o.ClientSecretExpires); err != nil {
			ps.add(p+".client_secret_expires", "write the date as YYYY-MM-DD (got %q)", o.ClientSecretExpires)
		}
	}
	if !relay.ValidAddress(o.Mailbox) {
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

func (c *Config) validateChannels(ps *Problems, bus map[string]bool, servers map[string]*SMTPServer, graphs map[string]bool, templates map[string]bool) map[string]bool {
	channels := map[string]bool{}
	froms := map[string]string{}
	if len(c.Channels) == 0 {
		ps.add("channels", "at least one channel is required")
	}
	for i, ch := range c.Channels {
		p := fmt.Sprintf("channels[%d]", i)
		unique(ps, p+".name", "channel", ch.Name, channels)
		if !relay.ValidAddress(ch.From) {
			ps.add(p+".from", "must be a bare address such as support@example.com (got %q)", ch.From)
		} else if other, dup := froms[strings.ToLower(ch.From)]; dup {
			ps.add(p+".from", "%s is already the address of channel %q; a From address picks exactly one channel", ch.From, other)
		} else {
			froms[strings.ToLower(ch.From)] = ch.Name
		}
		if ch.MailFrom != "" && !relay.ValidAddress(ch.MailFrom) {
			ps.add(p+".mail_from", "must be a bare address such as bounces@example.com (got %q)", ch.MailFrom)
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
		case servers[ch.Transport] != nil, graphs[ch.Transport]:
		default:
			ps.add(p+".transport", "unknown server %q (define it under smtp_servers or graph_servers, or use ses or outbox)", ch.Transport)
		}
		// Neither API lets mailgate choose the envelope sender: a mail_from there would be silently
		// ignored (or, as SES's FromEmailAddress, change the sending identity instead), so it is refused.
		switch {
		case ch.MailFrom != "" && ch.Transport == TransportSES:
			ps.add(p+".mail_from", "not used with transport ses: SES sets the envelope sender itself (its amazonses.com domain, or the custom MAIL FROM domain of the From identity: configure that in SES, e.g. bounce.%s); remove mail_from", domainOf(ch.From))
		case ch.MailFrom != "" && graphs[ch.Transport]:
			ps.add(p+".mail_from", "not used with a Graph server: Exchange Online sends with the mailbox as the envelope sender; remove mail_from")
		}
		if ch.SESConfigurationSet != "" && ch.Transport != TransportSES {
			ps.add(p+".ses_configuration_set", "only used with transport ses")
		}
		if ch.SESTenantName != "" && ch.Transport != TransportSES {
			ps.add(p+".ses_tenant_name", "only used with transport ses")
		}
		if ch.SESIdentityARN != "" {
			if ch.Transport != TransportSES {
				ps.add(p+".ses_identity_arn", "only used with transport ses")
			} else if !validIdentityARN(ch.SESIdentityARN) {
				ps.add(p+".ses_identity_arn", "%q is not an SES identity ARN (arn:aws:ses:REGION:ACCOUNT:identity/%s)", ch.SESIdentityARN, domainOf(ch.From))
			}
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
				if perm != "reply" && perm != "outbound" && perm != "act_for_agents" {
					ps.add(cp, "unknown permission %q (use reply, outbound, act_for_agents)", perm)
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
				} else if k == "file:" {
					// The daemon reads it with the same rules (kms.ReadSecretFile).
					if err := kms.CheckSecretFile(v[len(k):]); err != nil {
						ps.add(path, "%v", err)
					}
				}
				return
			}
		}
		if !c.Development {
			ps.add(path, "plain-text secrets are refused outside development: use kms:<...> (mailgate secret encrypt --kms KEY), local:<...> (mailgate secret encrypt --local KEYRING), env:NAME or file:PATH")
		}
	}
	check("store.postgres", c.Store.Postgres)
	if c.SES != nil {
		check("ses.secret_access_key", c.SES.SecretAccessKey)
	}
	for i, s := range c.SMTPServers {
		p := fmt.Sprintf("smtp_servers[%d]", i)
		check(p+".password", s.Password)
		if s.OAuth != nil {
			check(p+".oauth.client_secret", s.OAuth.ClientSecret)
			check(p+".oauth.client_key", s.OAuth.ClientKey)
		}
	}
	for i, g := range c.GraphServers {
		if g.OAuth != nil {
			check(fmt.Sprintf("graph_servers[%d].oauth.client_secret", i), g.OAuth.ClientSecret)
			check(fmt.Sprintf("graph_servers[%d].oauth.client_key", i), g.OAuth.ClientKey)
		}
	}
}

// validExtension accepts what composition matches attachment names against: a period, then 1-32
// letters, digits, '-', '_' or '+' (one extension: ".gz", not ".tar.gz").
func validExtension(e string) bool {
	rest, ok := strings.CutPrefix(e, ".")
	if !ok || rest == "" || len(rest) > 32 {
		return false
	}
	for _, c := range []byte(rest) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '+') {
			return false
		}
	}
	return true
}

// tooWide says why a trusted network is refused, or "" if it is not: it covers the whole internet, or
// it is a public range wider than /24 (IPv4) or /48 (IPv6, a site's allocation). Loopback and private
// ranges (RFC 1918, RFC 6598 shared, RFC 4193 unique local, link-local) may be any size: they cannot be
// reached from the internet.
func tooWide(p netip.Prefix) string {
	p = p.Masked()
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	if p.Bits() == 0 {
		return "covers the whole internet"
	}
	private := []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fc00::/7"), netip.MustParsePrefix("fe80::/10"),
	}
	for _, r := range private {
		if r.Addr().BitLen() == p.Addr().BitLen() && r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
			return ""
		}
	}
	if limit := map[bool]int{true: 24, false: 48}[p.Addr().Is4()]; p.Bits() < limit {
		return fmt.Sprintf("is a public range wider than /%d", limit)
	}
	return ""
}

// validTopicARN: arn:<partition>:sns:<region>:<12-digit account>:<topic name>.
func validTopicARN(s string) bool {
	f := strings.Split(s, ":")
	if len(f) != 6 || f[0] != "arn" || !strings.HasPrefix(f[1], "aws") || f[2] != "sns" || f[3] == "" || f[5] == "" || len(f[4]) != 12 {
		return false
	}
	_, err := strconv.ParseUint(f[4], 10, 64)
	return err == nil
}

// validIdentityARN: arn:<partition>:ses:<region>:<12-digit account>:identity/<address or domain>.
func validIdentityARN(s string) bool {
	f := strings.SplitN(s, ":", 6)
	if len(f) != 6 || f[0] != "arn" || !strings.HasPrefix(f[1], "aws") || f[2] != "ses" || f[3] == "" || len(f[4]) != 12 {
		return false
	}
	if _, err := strconv.ParseUint(f[4], 10, 64); err != nil {
		return false
	}
	name, ok := strings.CutPrefix(f[5], "identity/")
	return ok && name != ""
}

// validateLimits refuses negative numbers and durations: a negative limit is a mistake, and silently
// taking the default instead would run with a limit the operator did not choose.
func (c *Config) validateLimits(ps *Problems) {
	type num struct {
		path string
		v    int64
	}
	l, q := c.Limits, c.Queue
	nums := []num{
		{"limits.max_connections", int64(l.MaxConnections)}, {"limits.max_connections_per_client", int64(l.MaxConnectionsPerClient)},
		{"limits.max_message_bytes", l.MaxMessageBytes}, {"limits.max_recipients", int64(l.MaxRecipients)},
		{"limits.auth_failures", int64(l.AuthFailures)}, {"limits.auth_failure_window", int64(l.AuthFailureWindow)},
		{"limits.read_timeout", int64(l.ReadTimeout)},
		{"queue.retry_initial", int64(q.RetryInitial)}, {"queue.retry_max", int64(q.RetryMax)},
		{"queue.max_lifetime", int64(q.MaxLifetime)}, {"queue.workers_per_transport", int64(q.WorkersPerTransport)},
		{"queue.attempt_timeout", int64(q.AttemptTimeout)},
	}
	for i, s := range c.SMTPServers {
		p := fmt.Sprintf("smtp_servers[%d].", i)
		nums = append(nums, num{p + "max_connections", int64(s.MaxConnections)}, num{p + "messages_per_minute", int64(s.MessagesPerMinute)},
			num{p + "recipients_per_day", int64(s.RecipientsPerDay)}, num{p + "max_message_bytes", s.MaxMessageBytes},
			num{p + "timeouts.connect", int64(s.Timeouts.Connect)}, num{p + "timeouts.command", int64(s.Timeouts.Command)},
			num{p + "timeouts.data", int64(s.Timeouts.Data)}, num{p + "timeouts.idle", int64(s.Timeouts.Idle)})
	}
	for i, g := range c.GraphServers {
		p := fmt.Sprintf("graph_servers[%d].", i)
		nums = append(nums, num{p + "max_concurrent_requests", int64(g.MaxConcurrentRequests)}, num{p + "messages_per_minute", int64(g.MessagesPerMinute)},
			num{p + "recipients_per_day", int64(g.RecipientsPerDay)}, num{p + "max_message_bytes", g.MaxMessageBytes})
	}
	for _, n := range nums {
		if n.v < 0 {
			ps.add(n.path, "must not be negative (leave it out for the default)")
		}
	}
	if l.MaxConnectionsPerClient > l.MaxConnections && l.MaxConnections > 0 {
		ps.add("limits.max_connections_per_client", "%d is more than limits.max_connections (%d)", l.MaxConnectionsPerClient, l.MaxConnections)
	}
}

// domainOf is the domain of an address ("example.com" when it has none, for messages only).
func domainOf(addr string) string {
	if _, d, ok := strings.Cut(addr, "@"); ok && d != "" {
		return d
	}
	return "example.com"
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
