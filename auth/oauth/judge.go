package oauth

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Verdict is one line of test-send's judgement of a credential: OK, or what to change.
type Verdict struct {
	Item string // "audience", "permission", "mailbox", "expiry", "credential"
	// OK is true when the item is right; Unknown when the token does not say (an opaque token, a
	// claim absent), which is printed but is not a failure.
	OK, Unknown bool
	Msg         string
}

// String renders the verdict as test-send prints it: "OK   item: ...", "FIX  item: ..." or "?    item: ...".
func (v Verdict) String() string {
	tag := "FIX "
	switch {
	case v.OK:
		tag = "OK  "
	case v.Unknown:
		tag = "?   "
	}
	return tag + " " + v.Item + ": " + v.Msg
}

// Resource identifiers by API: Microsoft writes a token's aud as the resource URI or the resource's
// application id.
var audiences = map[API][]string{
	APISMTP:  {"https://outlook.office365.com", "https://outlook.office.com", "00000002-0000-0ff1-ce00-000000000000"},
	APIGraph: {"https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000"},
}

// Permissions the transports need: application (roles) and delegated (scp).
var permissions = map[API]struct{ app, delegated string }{
	APISMTP:  {app: "SMTP.SendAsApp", delegated: "SMTP.Send"},
	APIGraph: {app: "Mail.Send", delegated: "Mail.Send"},
}

// Judge checks a token this credential obtained against what its API needs — audience, permission
// (roles for client_credentials, scp for authorization_code), the signed-in mailbox — and the
// credential's expiry, at now. Each line is OK, FIX with the change to make, or unknown.
func (s *Source) Judge(info TokenInfo, now time.Time) []Verdict {
	api := s.o.API
	if api == "" {
		api = APISMTP
	}
	other := APIGraph
	if api == APIGraph {
		other = APISMTP
	}
	need := permissions[api]
	var out []Verdict
	if !info.JWT {
		out = append(out, Verdict{Item: "token", Unknown: true, Msg: "opaque token: its audience and permissions cannot be read here"})
	} else {
		out = append(out, judgeAudience(info, api, other, s.o.Server))
		out = append(out, s.judgePermission(info, api, other, need.app, need.delegated))
		out = append(out, s.judgeMailbox(info))
	}
	exp, what := s.CredentialExpiry()
	switch warn, fail := s.ExpiryProblem(now); {
	case fail != "":
		out = append(out, Verdict{Item: "credential", Msg: fail})
	case warn != "":
		out = append(out, Verdict{Item: "credential", Msg: warn})
	case !exp.IsZero():
		out = append(out, Verdict{Item: "credential", OK: true, Msg: fmt.Sprintf("%s valid until %s", what, exp.UTC().Format("2006-01-02"))})
	}
	return out
}

func judgeAudience(info TokenInfo, api, other API, server string) Verdict {
	want := audiences[api][0]
	switch {
	case len(info.Audience) == 0:
		return Verdict{Item: "audience", Unknown: true, Msg: "the token names no audience; " + api.label() + " needs " + want}
	case overlaps(info.Audience, audiences[api]):
		return Verdict{Item: "audience", OK: true, Msg: strings.Join(info.Audience, " ")}
	case overlaps(info.Audience, audiences[other]) && api == APISMTP:
		return Verdict{Item: "audience", Msg: "this is a Microsoft Graph token (" + strings.Join(info.Audience, " ") + "); SMTP AUTH refuses it " +
			"(535 5.7.3): ask for " + want + "/.default (remove custom scopes of server " + server + "), or send through a graph_servers mailbox"}
	default:
		return Verdict{Item: "audience", Msg: fmt.Sprintf("the token is for %s; %s needs %s: check server %s's scopes",
			strings.Join(info.Audience, " "), api.label(), want, server)}
	}
}

func (s *Source) judgePermission(info TokenInfo, api, other API, app, delegated string) Verdict {
	if s.o.Flow == ClientCredentials {
		switch {
		case slices.Contains(info.Roles, app):
			return Verdict{Item: "permission", OK: true, Msg: "application permission " + app}
		case len(info.Roles) == 0:
			return Verdict{Item: "permission", Unknown: true, Msg: "the token carries no roles claim: grant the application permission " +
				app + " with admin consent if mail is refused"}
		case api == APISMTP && slices.Contains(info.Roles, permissions[other].app):
			return Verdict{Item: "permission", Msg: "Mail.Send is a Microsoft Graph permission; SMTP AUTH needs the Office 365 Exchange Online " +
				"application permission SMTP.SendAsApp (with admin consent), or use a graph_servers mailbox"}
		}
		return Verdict{Item: "permission", Msg: "roles " + strings.Join(info.Roles, " ") + " lack " + app +
			": add it to the app registration's API permissions and grant admin consent"}
	}
	switch {
	case slices.Contains(info.Scopes, delegated):
		return Verdict{Item: "permission", OK: true, Msg: "delegated permission " + delegated}
	case len(info.Scopes) == 0:
		return Verdict{Item: "permission", Unknown: true, Msg: "the token carries no scp claim; " + api.label() + " needs the delegated permission " + delegated}
	}
	return Verdict{Item: "permission", Msg: "scopes " + strings.Join(info.Scopes, " ") + " lack " + delegated +
		": add the delegated permission and run `mailgate oauth authorize --server " + s.o.Server + "` again"}
}

func (s *Source) judgeMailbox(info TokenInfo) Verdict {
	if s.o.Flow == ClientCredentials {
		return Verdict{Item: "mailbox", OK: true, Msg: "app-only token sending as " + s.o.Mailbox +
			" (the app's service principal needs access to it: Add-MailboxPermission for SMTP, no application access policy excluding it for Graph)"}
	}
	switch {
	case info.Account == "":
		return Verdict{Item: "mailbox", Unknown: true, Msg: "the token names no account; mail is sent as " + s.o.Mailbox}
	case strings.EqualFold(info.Account, s.o.Mailbox):
		return Verdict{Item: "mailbox", OK: true, Msg: "signed in as " + info.Account}
	}
	return Verdict{Item: "mailbox", Msg: "signed in as " + info.Account + " but server " + s.o.Server + " sends as " + s.o.Mailbox +
		": run `mailgate oauth authorize --server " + s.o.Server + "` signing in as " + s.o.Mailbox + " (or grant Send As)"}
}

func overlaps(a, b []string) bool {
	for _, x := range a {
		for _, y := range b {
			if strings.EqualFold(strings.TrimRight(x, "/"), y) {
				return true
			}
		}
	}
	return false
}

// label names the API in messages.
func (a API) label() string {
	if a == APIGraph {
		return "Microsoft Graph"
	}
	return "SMTP AUTH"
}
