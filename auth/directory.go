// Package auth holds mailgate's submitting identities: agents (users with bcrypt password hashes),
// roles with per-channel permissions, and trusted client networks mapped to service principals; plus the
// SASL PLAIN and LOGIN servers and a failed-AUTH limiter used by relay/submit.
//
// Design: a Directory is built once from plain option structs, validated as a whole (every problem is
// reported at once), and never mutated afterwards. A configuration reload builds a new Directory and the
// submission server swaps the pointer atomically, so a session never sees half of a reload and no lock is
// taken on the AUTH path. A Principal is the resolved identity of a session — an agent who authenticated
// or a service principal matched by client address — carrying a copy of its role's channel permissions.
//
// Authentication spends one bcrypt comparison whether or not the login exists (an unknown login is
// compared against a dummy hash of the same cost), so response time does not reveal which logins exist.
// The failed-AUTH Limiter lives outside the Directory because it must survive reloads.
package auth

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailgate/mailgate/relay"
)

// Permission is what a role allows on one channel (the seed's per-point-of-contact rights).
type Permission struct {
	// Reply allows sending from the channel's address: replies to customer mail (DESIGN §2).
	Reply bool
	// Outbound additionally allows starting a new conversation (a message that is not a reply).
	Outbound bool
	// ActForAgents allows naming, in the X-Mailgate-Agent header, the agent a message is sent for: a
	// CRM or another service account submitting for many agents (DESIGN §1). The agent's signature and
	// name are then applied, and the delivery log records both.
	ActForAgents bool
}

// Role names a set of channel permissions, so many agents share one definition.
type Role struct {
	Name string
	// Channels maps a channel name to what the role may do on it; channels not listed allow nothing.
	Channels map[string]Permission
}

// User is an agent that authenticates with SMTP AUTH.
type User struct {
	Login string // AUTH identity; compared case-insensitively
	Name  string // display name, for logs and signatures
	// PasswordHash is a bcrypt hash ($2a$/$2b$/$2y$); plain passwords are never held.
	PasswordHash string
	Role         string
	BusinessUnit string
}

// TrustedNetwork maps client addresses to a service principal, like Postfix mynetworks, for applications
// that cannot do SMTP AUTH. The principal's role still decides which channels it may send from.
type TrustedNetwork struct {
	Prefix       netip.Prefix
	Principal    string // name of the service principal, used as its login in logs and the queue
	Role         string
	BusinessUnit string
}

// Principal is the identity a submission session acts as.
type Principal struct {
	Login        string // user login (lower-cased) or service principal name
	Name         string // display name
	Role         string
	BusinessUnit string
	// Service is true for a principal admitted by client network rather than by AUTH.
	Service bool
	perms   map[string]Permission
}

// May returns what the principal may do on the named channel; the zero Permission allows nothing.
func (p *Principal) May(channel string) Permission {
	if p == nil {
		return Permission{}
	}
	return p.perms[channel]
}

// ErrBadCredentials is returned by Authenticate for an unknown login or a wrong password (the two are
// deliberately indistinguishable). RFC 4954 §6: 535 5.7.8.
var ErrBadCredentials = &relay.Error{Code: 535, Enhanced: relay.CodeBadCredentials,
	Msg: "Authentication credentials invalid", Reason: "bad_credentials"}

type account struct {
	hash      []byte
	principal Principal
}

type trusted struct {
	prefix    netip.Prefix
	principal Principal
}

// Directory resolves logins and client addresses to principals. It is immutable once built and safe for
// concurrent use.
type Directory struct {
	accounts  map[string]*account
	trusted   []trusted // longest prefix first
	dummyHash []byte
}

// NewDirectory validates users, roles and trusted networks together and builds a Directory. Every problem
// is reported (errors.Join), each naming the object it concerns, so a config loader can show them all.
// Password hashes are never included in errors.
func NewDirectory(users []User, roles []Role, networks []TrustedNetwork) (*Directory, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	roleByName := make(map[string]*Role, len(roles))
	for i := range roles {
		r := &roles[i]
		switch {
		case r.Name == "":
			bad("roles[%d]: name is empty", i)
		case roleByName[r.Name] != nil:
			bad("roles[%d]: duplicate role %q", i, r.Name)
		default:
			roleByName[r.Name] = r
		}
		for ch, p := range r.Channels {
			if p.Outbound && !p.Reply {
				// Outbound without reply would allow starting conversations one cannot continue.
				bad("roles[%d] (%s): channel %q: outbound requires reply", i, r.Name, ch)
			}
		}
	}
	perms := func(role string) map[string]Permission {
		r := roleByName[role]
		if r == nil {
			return nil
		}
		m := make(map[string]Permission, len(r.Channels))
		for k, v := range r.Channels {
			m[k] = v
		}
		return m
	}

	d := &Directory{accounts: make(map[string]*account, len(users))}
	maxCost := bcrypt.DefaultCost
	for i, u := range users {
		login := strings.ToLower(u.Login)
		switch {
		case login == "":
			bad("users[%d]: login is empty", i)
			continue
		case strings.ContainsAny(login, "\x00\r\n"):
			bad("users[%d]: login contains a control character", i)
			continue
		case d.accounts[login] != nil:
			bad("users[%d]: duplicate login %q", i, login)
			continue
		}
		if roleByName[u.Role] == nil {
			bad("users[%d] (%s): unknown role %q", i, login, u.Role)
		}
		cost, err := bcrypt.Cost([]byte(u.PasswordHash))
		if err != nil {
			bad("users[%d] (%s): password hash is not a bcrypt hash", i, login)
		} else if cost > maxCost {
			maxCost = cost
		}
		d.accounts[login] = &account{hash: []byte(u.PasswordHash), principal: Principal{
			Login: login, Name: u.Name, Role: u.Role, BusinessUnit: u.BusinessUnit, perms: perms(u.Role),
		}}
	}

	seen := map[netip.Prefix]bool{}
	for i, n := range networks {
		if !n.Prefix.IsValid() {
			bad("trusted_networks[%d]: invalid prefix", i)
			continue
		}
		p := n.Prefix.Masked()
		if p.Addr().Is4In6() {
			bad("trusted_networks[%d]: write IPv4-mapped prefix %s as plain IPv4", i, n.Prefix)
			continue
		}
		if seen[p] {
			bad("trusted_networks[%d]: duplicate prefix %s", i, p)
			continue
		}
		seen[p] = true
		if n.Principal == "" {
			bad("trusted_networks[%d]: principal is empty", i)
		}
		if roleByName[n.Role] == nil {
			bad("trusted_networks[%d] (%s): unknown role %q", i, p, n.Role)
		}
		d.trusted = append(d.trusted, trusted{prefix: p, principal: Principal{
			Login: n.Principal, Name: n.Principal, Role: n.Role, BusinessUnit: n.BusinessUnit,
			Service: true, perms: perms(n.Role),
		}})
	}
	// Most specific network wins, as in a routing table.
	slices.SortStableFunc(d.trusted, func(a, b trusted) int { return b.prefix.Bits() - a.prefix.Bits() })

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// The dummy hash has the highest cost in use, so an unknown login costs as much as the dearest user.
	var random [32]byte
	_, _ = rand.Read(random[:])
	h, err := bcrypt.GenerateFromPassword(random[:16], maxCost)
	if err != nil {
		return nil, fmt.Errorf("auth: dummy hash: %w", err)
	}
	d.dummyHash = h
	return d, nil
}

// Authenticate checks a login and password. It returns ErrBadCredentials for an unknown login or a wrong
// password, after spending the same bcrypt work in both cases.
func (d *Directory) Authenticate(login, password string) (*Principal, error) {
	a := d.accounts[strings.ToLower(login)]
	hash := d.dummyHash
	if a != nil {
		hash = a.hash
	}
	// bcrypt reads only the first 72 bytes and GenerateFromPassword refuses longer passwords, so a longer
	// one can never be right; it is still compared (truncated) so that timing stays the same.
	pw := []byte(password)
	tooLong := len(pw) > 72
	if tooLong {
		pw = pw[:72]
	}
	err := bcrypt.CompareHashAndPassword(hash, pw)
	if err != nil || a == nil || tooLong {
		return nil, ErrBadCredentials
	}
	p := a.principal
	return &p, nil
}

// Agent returns the user a service principal names as the agent it sends for: a user (not a service
// principal of a trusted network) by login, case-insensitively.
func (d *Directory) Agent(login string) (*Principal, bool) {
	a, ok := d.accounts[strings.ToLower(strings.TrimSpace(login))]
	if !ok {
		return nil, false
	}
	p := a.principal
	return &p, true
}

// Principal returns the current principal for a login, so a session authenticated before a reload acts
// with the permissions of the new configuration (and not at all if the user was removed).
func (d *Directory) Principal(login string) (*Principal, bool) {
	a := d.accounts[strings.ToLower(login)]
	if a == nil {
		return nil, false
	}
	p := a.principal
	return &p, true
}

// Trusted returns the service principal of the most specific trusted network containing addr.
func (d *Directory) Trusted(addr netip.Addr) (*Principal, bool) {
	addr = addr.Unmap() // an IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d
	for _, t := range d.trusted {
		if t.prefix.Contains(addr) {
			p := t.principal
			return &p, true
		}
	}
	return nil, false
}
