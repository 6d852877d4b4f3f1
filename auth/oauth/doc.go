// Package oauth obtains the OAuth 2.0 access tokens mailgate presents to Microsoft 365, with AUTH
// XOAUTH2 on SMTP or as the bearer token of Microsoft Graph's sendMail: one Source per configured custom
// SMTP server ("auth: microsoft-oauth") or Graph mailbox (graph_servers).
//
// Design:
//
//   - Two flows. client_credentials (app permission, scope https://outlook.office365.com/.default)
//     needs only the app's secret. authorization_code (delegated, scopes
//     https://outlook.office.com/SMTP.Send offline_access) needs an operator to sign in once through
//     `mailgate oauth authorize` (PKCE, RFC 7636); the refresh token it yields is then used, rotated
//     and persisted by the Source. For Graph (Options.API = graph) the same flows ask for the
//     audience https://graph.microsoft.com: scope https://graph.microsoft.com/.default (application
//     permission Mail.Send) or https://graph.microsoft.com/Mail.Send offline_access (delegated).
//   - One cached access token per Source, shared by every delivery worker. It is replaced at least
//     RefreshMargin (10 minutes) before it expires, because Exchange Online checks expiry when a
//     connection authenticates, and a long DATA phase must not outlive the token. At most one token
//     request is in flight: concurrent callers wait for it (a per-Source single flight, no global
//     state). The request runs on its own context so one caller's cancellation does not fail the
//     others. Invalidate drops the cached token only if it is still the one the caller was refused
//     with, so a 535 seen by many workers at once costs one new request, not one each.
//   - Refresh tokens never touch disk or the store in clear: they are sealed with kms (the name bound
//     into the ciphertext is the store key, so a sealed value copied to another server's row does not
//     open) and stored through a narrow interface. A rotated refresh token is persisted at once; if
//     that fails it is kept in memory and persisting is retried on the next refresh.
//   - Failures are the relay's, not the customer's: every token failure is a temporary *relay.Error
//     (451 4.7.0) so the queue defers the mail, never bounces it. Its Reason names the cause
//     (oauth_refresh_token_expired, oauth_invalid_client_secret, oauth_endpoint_unreachable, ...) for
//     the metric mailgate_oauth_token_errors_total{server,reason}; the message and a separate Remedy
//     (see RemedyOf) tell the operator what to do, and Status reports it for `mailgate oauth status`
//     and /readyz. After a failure, requests pause for RetryFailedAfter so an outage is not hammered
//     by every worker; a still-valid token keeps being used meanwhile.
//   - Tokens, refresh tokens, authorization codes, PKCE verifiers and the client secret are never
//     logged nor put in an error. Microsoft's error descriptions are kept (they carry the AADSTS code
//     and the trace id support asks for) after scrubbing any known secret value out of them.
//     DescribeToken decodes an access token's claims for display without ever returning the token.
package oauth
