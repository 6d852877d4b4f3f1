// Package submit is mailgate's SMTP submission server (RFC 6409): agent applications hand it their
// replies, and it answers 250 only once the composed message is durably in the spool.
//
// Design. One Server runs any number of listeners (STARTTLS, RFC 3207, or implicit TLS, RFC 8314 §3.3)
// over go-smtp, with a connection limit shared by all of them. A session goes:
//
//	connect  — over the limit: 421 4.3.2 and close. Time is bounded, not only idleness (trackedConn):
//	           AuthTimeout from connect to AUTH, CommandTimeout per command line (a line dribbled a
//	           byte at a time is cut), and in DATA/BDAT a minimum transfer rate (451 4.4.2); a cut
//	           connection gets 421 4.4.2 and is closed, so slow clients cannot hold every slot.
//	AUTH     — PLAIN or LOGIN, offered only over TLS (RFC 4954 §4) except on a listener marked
//	           AllowInsecureAuth (the loopback development default). Any other mechanism: 504 5.5.4,
//	           counted under the one label "other". Failed password checks are counted per (client
//	           address, login) under a higher per-client ceiling, and a check is reserved before the
//	           password is verified, so staged or parallel exchanges get no more checks than the limit;
//	           over it AUTH answers 454 4.7.0 with the seconds until the window ends.
//	MAIL     — refused with 530 5.7.0 (RFC 4954 §6) unless the session authenticated or the client
//	           address is in a trusted network. The client's reverse-path is ignored: the envelope
//	           sender is the channel's MailFrom, so mailgate is never an open relay.
//	RCPT     — syntax, recipient limit (452 4.5.3, RFC 5321 §4.5.3.1.10), suppression list (550 5.1.1).
//	DATA/BDAT— kept in memory up to 1 MiB (no file per message), beyond that streamed to a nameless
//	           temporary file, so a large message is never whole in memory. A bare CR or bare LF or a
//	           NUL anywhere refuses the message (554 5.6.0) after the data has been read to its end, so
//	           the session stays in sync (SMTP smuggling defence; RFC 5321 §2.3.8; the ".\r" case
//	           needs mailgate's go-smtp, see relay/internal/gosmtp). Then the header's From selects
//	           the channel (550 5.7.1 if unknown or the principal lacks "reply"), a Reply-To outside
//	           the domains of the principal's channels is refused (550 5.7.1), the
//	           Composer writes the customer-facing message into a spool Draft, reply vs new outbound
//	           is enforced on its verdict (550 5.7.1), the composed size is checked against the
//	           channel's transport limit (552 5.3.4), and Draft.Commit makes it durable before
//	           "250 2.0.0 queued as <id>".
//
// Errors. Everything a session refuses goes through one function (session.reply): a *relay.Error
// becomes its code, enhanced code and client-safe text; a full disk or quota (ENOSPC, EDQUOT), however
// wrapped, becomes 452 4.3.1; a context deadline becomes 451 4.4.2; anything else becomes
// "451 4.3.0 internal error (session <id>)" and is logged with its cause. FreeSpace is the readiness
// check that takes an instance out of service before its spool's disk is full. go-smtp only
// sends *smtp.SMTPError verbatim, so no other error type ever reaches it from this package. Refusals are
// counted in mailgate_submission_messages_rejected_total{stage,reason}.
//
// Reload. The policy that configuration changes — the auth.Directory, the channels and the Composer —
// is a Rules value swapped atomically with SetRules. A session re-resolves its principal from the
// current Rules at every MAIL and DATA, so a user removed or a permission withdrawn by a reload takes
// effect at the next transaction, even on connections opened before it.
package submit

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"

	"github.com/mailgate/mailgate/auth"
	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
)

// Mode is how a listener starts TLS.
type Mode string

const (
	// ModeStartTLS accepts plain text and offers STARTTLS (RFC 3207), like port 587.
	ModeStartTLS Mode = "starttls"
	// ModeImplicit starts TLS on connect (RFC 8314 §3.3), like port 465; recommended by RFC 8314.
	ModeImplicit Mode = "implicit"
)

// Listener is one address the server accepts submissions on.
type Listener struct {
	Name    string // for logs and the sessions metric ("submission", "submissions", "dev")
	Address string // host:port; port 0 picks a free one (see Server.Addr)
	Mode    Mode
	// AllowInsecureAuth offers AUTH without TLS. Only for the loopback development listener: the
	// password would otherwise cross the network in clear text.
	AllowInsecureAuth bool
}

// Options configures a Server. Zero values take the defaults named on each field.
type Options struct {
	Hostname  string // greeting and EHLO name; default os.Hostname()
	Listeners []Listener
	// TLSConfig is required for implicit-TLS listeners and for STARTTLS listeners that do not allow
	// insecure AUTH. MinVersion is raised to TLS 1.2 if lower.
	TLSConfig *tls.Config

	MaxConnections int // simultaneous connections over all listeners; default 200
	// MaxConnectionsPerClient bounds one client address (IPv6 by /64), so one misbehaving or hostile
	// host cannot take every slot; default MaxConnections (no separate limit).
	MaxConnectionsPerClient int
	MaxMessageBytes         int64 // raw submitted size (advertised as SIZE, RFC 1870); default 50 MiB
	MaxRecipients           int   // per message; default 100

	IdleTimeout time.Duration // per read or write: RFC 5321 §4.5.3.2.7 suggests 5 minutes; default 5m
	// AuthTimeout bounds the time from connect until AUTH succeeds (or a trusted network's first MAIL
	// is accepted); default 1m. CommandTimeout bounds the arrival of one whole command line; default
	// 5m. In DATA/BDAT a transfer slower than DataMinRate bytes per second over a DataRateWindow is
	// cut; defaults 500 B/s over 30s. See trackedConn.
	AuthTimeout    time.Duration
	CommandTimeout time.Duration
	DataMinRate    int64
	DataRateWindow time.Duration
	ProcessTimeout time.Duration // composing and committing one message; default 2m
	LookupTimeout  time.Duration // one suppression lookup; default 10s
	// ShutdownTimeout bounds how long Serve waits for open sessions after its context ends; default 10s.
	ShutdownTimeout time.Duration

	// AuthFailures and AuthWindow limit failed password checks per client address (IPv6 per /64) and
	// login; defaults 5 per 5 minutes. AuthClientFailures is the ceiling over all logins of one client;
	// default 4 × AuthFailures. AuthClients bounds the limiter's memory; default 65536.
	AuthFailures       int
	AuthWindow         time.Duration
	AuthClientFailures int
	AuthClients        int
	// CheckPassword verifies AUTH credentials against the current directory; nil means
	// (*auth.Directory).Authenticate. The limiter is consulted before it is called.
	CheckPassword func(dir *auth.Directory, login, password string) (*auth.Principal, error)

	TempDir string // where raw DATA above 1 MiB spills before composition; default os.TempDir()

	Spool        Spool        // required
	Suppressions Suppressions // required
	Logger       *slog.Logger // default slog.Default()
	Metrics      *metrics.Metrics
	// Now is the clock for the Received time; nil means time.Now.
	Now func() time.Time
}

// Channel is what submission needs to know about a channel (point of contact).
type Channel struct {
	Name        string // internal name; role permissions refer to it
	FromAddress string // the address in the From header that selects the channel
	// OutboundActive allows new outbound email (not replies) on the channel, as the seed's
	// "outbound flow" switch.
	OutboundActive bool
	Transport      string // name of the transport that delivers the channel's mail
	ForceTLS       bool   // the next hop must be a verified TLS connection
	MailFrom       string // envelope sender; default FromAddress
	// MaxMessageBytes is the composed-size limit of the channel's transport (SES: 40 MB after base64);
	// 0 means none.
	MaxMessageBytes int64
}

// Rules is the reloadable policy of a Server: who may authenticate and what they may do, and which
// channels exist. It is immutable; build a new one and call Server.SetRules to reload.
type Rules struct {
	directory *auth.Directory
	channels  map[string]*Channel // by lower-cased FromAddress
	composer  Composer
}

// NewRules validates channels and builds Rules. Every problem is reported (errors.Join).
func NewRules(dir *auth.Directory, channels []Channel, composer Composer) (*Rules, error) {
	var errs []error
	if dir == nil {
		errs = append(errs, errors.New("submit: no auth directory"))
	}
	if composer == nil {
		errs = append(errs, errors.New("submit: no composer"))
	}
	r := &Rules{directory: dir, composer: composer, channels: make(map[string]*Channel, len(channels))}
	names := map[string]bool{}
	for i, c := range channels {
		if c.Name == "" {
			errs = append(errs, fmt.Errorf("channels[%d]: name is empty", i))
		} else if names[c.Name] {
			errs = append(errs, fmt.Errorf("channels[%d]: duplicate channel name %q", i, c.Name))
		}
		names[c.Name] = true
		from := strings.ToLower(c.FromAddress)
		if !relay.ValidAddress(from) {
			errs = append(errs, fmt.Errorf("channels[%d] (%s): from address %q is not an address", i, c.Name, c.FromAddress))
			continue
		}
		if r.channels[from] != nil {
			errs = append(errs, fmt.Errorf("channels[%d] (%s): from address %s is also channel %s's", i, c.Name, from, r.channels[from].Name))
			continue
		}
		if c.MailFrom == "" {
			c.MailFrom = c.FromAddress
		} else if !relay.ValidAddress(c.MailFrom) {
			errs = append(errs, fmt.Errorf("channels[%d] (%s): mail from %q is not an address", i, c.Name, c.MailFrom))
		}
		if c.MaxMessageBytes < 0 {
			errs = append(errs, fmt.Errorf("channels[%d] (%s): max message bytes is negative", i, c.Name))
		}
		r.channels[from] = &c
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// Channel returns the channel whose From address is addr (case-insensitive).
func (r *Rules) Channel(addr string) (*Channel, bool) {
	c, ok := r.channels[strings.ToLower(addr)]
	return c, ok
}

// Spool is where accepted messages go: the queue (relay/queue) implements it.
type Spool interface {
	// Create starts a new message body; the caller writes it, then commits or aborts it.
	Create() (relay.Draft, error)
}

// Suppressions is the suppression list (relay/store): addresses that bounced before.
type Suppressions interface {
	// Suppressed reports whether addr is suppressed and why (a client-safe diagnostic). addr is passed
	// as the client wrote it; the store normalises.
	Suppressed(ctx context.Context, addr string) (reason string, ok bool, err error)
}

// Composer turns a submitted message into the customer-facing one (relay/compose, DESIGN §3).
type Composer interface {
	// Compose reads the raw submitted message (CRLF line endings, already checked for bare CR/LF) from
	// src and writes the composed message to dst. Errors should be *relay.Error when the client is at
	// fault (e.g. 554 5.6.0, 550 5.7.1 for a forbidden attachment); any other error is answered
	// 451 4.3.0.
	Compose(ctx context.Context, src io.Reader, dst io.Writer, sub *Submission) (*Composed, error)
}

// Submission is what the Composer learns about the message being submitted.
type Submission struct {
	SessionID string
	Principal *auth.Principal
	// Agent is the agent the principal sends for (X-Mailgate-Agent, accepted only with the channel's
	// act_for_agents permission); nil when the principal sends as itself.
	Agent      *auth.Principal
	Channel    *Channel
	MailFrom   string   // envelope sender chosen by mailgate (Channel.MailFrom)
	Recipients []string // envelope recipients, as accepted at RCPT
	Received   time.Time
	// Header is the submitted message's header as parsed by submission (raw bytes kept); read-only.
	Header  textproto.Header
	RawSize int64 // bytes of the submitted message
}

// Composed is the Composer's verdict on the message it wrote.
type Composed struct {
	MessageID string // the Message-ID of the composed message, without angle brackets
	Ticket    string // ticket number, if any
	// Reply is true when the message is a reply (In-Reply-To/References or a ticket number, DESIGN §2);
	// otherwise it is new outbound email and needs the channel's outbound flow and the role's outbound.
	Reply bool
	Size  int64 // bytes written to dst
}
