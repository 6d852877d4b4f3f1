package oauth

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// TokenInfo is what an access token says about itself, for display (`oauth authorize`, test-send):
// never the token. The claims are decoded without verifying the signature — they are shown to an
// operator, not trusted for any decision (RFC 7519 §7.2 verification is the resource server's job).
type TokenInfo struct {
	JWT      bool      `json:"jwt"`               // false: an opaque token, nothing decoded
	Account  string    `json:"account,omitempty"` // upn, unique_name or preferred_username
	Audience []string  `json:"audience,omitempty"`
	Scopes   []string  `json:"scopes,omitempty"` // delegated permissions (scp)
	Roles    []string  `json:"roles,omitempty"`  // application permissions
	Expiry   time.Time `json:"expiry,omitzero"`
	Issuer   string    `json:"issuer,omitempty"`
	TenantID string    `json:"tenant_id,omitempty"`
	AppID    string    `json:"app_id,omitempty"` // appid or azp
}

// String is a one-line description for a terminal.
func (i TokenInfo) String() string {
	if !i.JWT {
		return "opaque token (no readable claims)"
	}
	var b strings.Builder
	if i.Account != "" {
		fmt.Fprintf(&b, "account %s, ", i.Account)
	}
	if len(i.Audience) > 0 {
		fmt.Fprintf(&b, "audience %s", strings.Join(i.Audience, " "))
	} else {
		b.WriteString("no audience")
	}
	if len(i.Scopes) > 0 {
		fmt.Fprintf(&b, ", scopes %s", strings.Join(i.Scopes, " "))
	}
	if len(i.Roles) > 0 {
		fmt.Fprintf(&b, ", roles %s", strings.Join(i.Roles, " "))
	}
	if !i.Expiry.IsZero() {
		fmt.Fprintf(&b, ", expires %s", i.Expiry.UTC().Format(time.RFC3339))
	}
	return b.String()
}

// maxTokenLen bounds what DescribeToken decodes.
const maxTokenLen = 64 << 10

// DescribeToken decodes the claims of a JWT access token (RFC 7519) for display. A token that is not
// a JWT (Microsoft may issue opaque ones for some audiences) gives a TokenInfo with JWT false.
func DescribeToken(token string) TokenInfo {
	if len(token) > maxTokenLen {
		return TokenInfo{}
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return TokenInfo{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return TokenInfo{}
	}
	var c struct {
		UPN               string          `json:"upn"`
		UniqueName        string          `json:"unique_name"`
		PreferredUsername string          `json:"preferred_username"`
		Aud               json.RawMessage `json:"aud"`
		Scp               string          `json:"scp"`
		Scope             string          `json:"scope"`
		Roles             json.RawMessage `json:"roles"`
		Exp               json.Number     `json:"exp"`
		Iss               string          `json:"iss"`
		Tid               string          `json:"tid"`
		AppID             string          `json:"appid"`
		Azp               string          `json:"azp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return TokenInfo{}
	}
	info := TokenInfo{JWT: true, Audience: stringOrList(c.Aud), Roles: stringOrList(c.Roles), Issuer: c.Iss, TenantID: c.Tid, AppID: c.AppID}
	for _, a := range []string{c.UPN, c.UniqueName, c.PreferredUsername} {
		if a != "" {
			info.Account = a
			break
		}
	}
	if info.AppID == "" {
		info.AppID = c.Azp
	}
	scp := c.Scp
	if scp == "" {
		scp = c.Scope // non-Microsoft issuers (and the test mock) use RFC 8693's "scope"
	}
	info.Scopes = strings.Fields(scp)
	if exp, err := c.Exp.Float64(); err == nil && exp > 0 && exp < 1e11 {
		info.Expiry = time.Unix(int64(exp), 0).UTC()
	}
	return info
}

// stringOrList reads a claim that may be one string or an array of strings (RFC 7519 §4.1.3 "aud").
func stringOrList(raw json.RawMessage) []string {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		if one == "" {
			return nil
		}
		return []string{one}
	}
	var many []string
	if json.Unmarshal(raw, &many) == nil {
		return many
	}
	return nil
}
