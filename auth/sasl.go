package auth

import (
	"errors"

	"github.com/emersion/go-sasl"
)

// SASL mechanism names offered to submitting clients. Both carry a plain password, so relay/submit offers
// them only over TLS (RFC 4954 §4: mechanisms that disclose passwords need a protected channel).
const (
	MechPlain = sasl.Plain // RFC 4616
	MechLogin = sasl.Login // draft-murchison-sasl-login-00; Outlook and many contact-center apps use it
)

// Mechanisms lists the mechanisms a submission server advertises, in order of preference.
func Mechanisms() []string { return []string{MechPlain, MechLogin} }

// CheckFunc verifies a login and password. Its error is returned unchanged by the SASL servers, so the
// caller decides what the client sees (relay/submit returns go-smtp's ErrAuthFailed, 535 5.7.8).
type CheckFunc func(login, password string) error

// ErrAuthzid refuses a PLAIN authorization identity different from the login: acting as someone else is
// not something a password grants (RFC 4616 §2 lets the server refuse).
var ErrAuthzid = errors.New("auth: authorization identity differs from login")

// ErrLoginProtocol reports a LOGIN exchange that went on after it was finished.
var ErrLoginProtocol = errors.New("auth: unexpected LOGIN response")

// NewServer returns a SASL server for mech (MechPlain or MechLogin) that calls check with the credentials.
func NewServer(mech string, check CheckFunc) (sasl.Server, bool) {
	switch mech {
	case MechPlain:
		return sasl.NewPlainServer(func(identity, login, password string) error {
			if identity != "" && identity != login {
				// Refused before check runs: check may have side effects (a session records its
				// principal on success), and the refusal reveals nothing about the credentials.
				return ErrAuthzid
			}
			return check(login, password)
		}), true
	case MechLogin:
		return NewLoginServer(check), true
	}
	return nil, false
}

// Challenges of the LOGIN mechanism. Clients match them loosely, but go-sasl's client (and so mailgate's
// own upstream client) expects exactly these texts.
const (
	loginUsernameChallenge = "Username:"
	loginPasswordChallenge = "Password:"
)

type loginServer struct {
	check    CheckFunc
	state    int // 0 start, 1 waiting for username, 2 waiting for password, 3 done
	username string
}

// NewLoginServer returns a server for the LOGIN mechanism: challenge "Username:", then "Password:", each
// answered with one base64 line (go-smtp does the base64). An initial response to "AUTH LOGIN <b64>" is
// taken as the username, as Exchange and Postfix/Cyrus do.
func NewLoginServer(check CheckFunc) sasl.Server {
	return &loginServer{check: check}
}

// Next implements sasl.Server.
func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.state {
	case 0:
		if response == nil {
			s.state = 1
			return []byte(loginUsernameChallenge), false, nil
		}
		s.username = string(response)
		s.state = 2
		return []byte(loginPasswordChallenge), false, nil
	case 1:
		s.username = string(response)
		s.state = 2
		return []byte(loginPasswordChallenge), false, nil
	case 2:
		s.state = 3
		return nil, true, s.check(s.username, string(response))
	}
	return nil, true, ErrLoginProtocol
}
