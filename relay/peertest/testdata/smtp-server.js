// mailgate's upstream test server: Node's smtp-server standing in for Microsoft 365 or any submission
// server. STARTTLS; AUTH only after TLS; PLAIN/LOGIN against SMTP_USER/SMTP_PASS; XOAUTH2 against
// XOAUTH2_TOKENS (static) or RS256 JWTs verified with the JWKS at JWKS_URL (and OAUTH_ISSUER). A refused
// XOAUTH2 token gets the 334 JSON challenge, then 535, as Microsoft and Google answer.
// Each accepted message is one JSON line on stdout and, with SAVE_DIR, a .eml file.
// The server keeps real transaction state (a second MAIL without RSET gets "503 nested MAIL command"),
// which is what makes it the peer for testing a client's transaction handling.
// Env: HOST PORT TLS_KEY TLS_CERT SMTP_USER SMTP_PASS XOAUTH2_TOKENS JWKS_URL OAUTH_ISSUER SMTP_MAX_SIZE
//      FAIL_RCPT_REGEX (550) TEMPFAIL_RCPT_REGEX (451) DISABLED_COMMANDS NO_PLAIN SAVE_DIR HIDE_PIPELINING
//      RULES: a JSON list of {"at": "mail"|"rcpt"|"data", "match": regex, "reply": "553 5.7.1 text"};
//        mail rules match the sender, rcpt rules the recipient, data rules the raw message. The server
//        adds no enhanced codes of its own (smtp-server's default), so each rule's reply is exact.
'use strict';
const { SMTPServer } = require('smtp-server');
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const env = process.env;
const tokens = new Set((env.XOAUTH2_TOKENS || '').split(',').filter(Boolean));
const fromB64url = (s) => Buffer.from(s, 'base64url');
let keys = null;

async function verifyJWT(token) {
  const parts = token.split('.');
  if (parts.length !== 3 || !env.JWKS_URL) return false;
  const header = JSON.parse(fromB64url(parts[0]));
  const claims = JSON.parse(fromB64url(parts[1]));
  if (header.alg !== 'RS256') return false;
  for (const refresh of [false, true]) {
    if (!keys || refresh) keys = (await (await fetch(env.JWKS_URL)).json()).keys;
    const jwk = keys.find((k) => k.kid === header.kid);
    if (!jwk) continue;
    const signed = Buffer.from(parts[0] + '.' + parts[1]);
    const pub = crypto.createPublicKey({ key: jwk, format: 'jwk' });
    if (!crypto.verify('RSA-SHA256', signed, pub, fromB64url(parts[2]))) return false;
    if (claims.exp && claims.exp * 1000 <= Date.now()) return false;
    return !env.OAUTH_ISSUER || claims.iss === env.OAUTH_ISSUER;
  }
  return false;
}

const rules = JSON.parse(env.RULES || '[]');
// ruled returns the Error of the first rule at stage `at` matching text, or undefined.
const ruled = (at, text) => {
  const r = rules.find((x) => x.at === at && new RegExp(x.match).test(text));
  if (!r) return undefined;
  return Object.assign(new Error(r.reply.slice(4)), { responseCode: Number(r.reply.slice(0, 3)) });
};

const methods = ['LOGIN', 'XOAUTH2'];
if (!env.NO_PLAIN) methods.unshift('PLAIN');

const server = new SMTPServer({
  secure: false,
  key: fs.readFileSync(env.TLS_KEY),
  cert: fs.readFileSync(env.TLS_CERT),
  authMethods: methods,
  allowInsecureAuth: false,
  disabledCommands: (env.DISABLED_COMMANDS || '').split(',').filter(Boolean),
  size: Number(env.SMTP_MAX_SIZE || 36700160),
  banner: 'mailgate test upstream',
  hidePIPELINING: !!env.HIDE_PIPELINING,
  logger: false,
  onAuth(auth, session, cb) {
    if (auth.method === 'XOAUTH2') {
      const refuse = () => cb(null, { data: { status: '401', schemes: 'bearer', scope: 'https://outlook.office.com/SMTP.Send' } });
      const ok = () => cb(null, { user: { name: auth.username, method: 'XOAUTH2' } });
      if (tokens.has(auth.accessToken)) return ok();
      return verifyJWT(auth.accessToken).then((v) => (v ? ok() : refuse()), refuse);
    }
    if (auth.username === (env.SMTP_USER || 'user') && auth.password === (env.SMTP_PASS || 'pass')) {
      return cb(null, { user: { name: auth.username, method: auth.method } });
    }
    return cb(new Error('Invalid username or password'));
  },
  onMailFrom(addr, session, cb) {
    cb(ruled('mail', addr.address));
  },
  onRcptTo(addr, session, cb) {
    const rule = (code, re) => re && new RegExp(re).test(addr.address)
      && Object.assign(new Error(code + ' refused by test rule'), { responseCode: code });
    cb(ruled('rcpt', addr.address) || rule(550, env.FAIL_RCPT_REGEX) || rule(451, env.TEMPFAIL_RCPT_REGEX) || undefined);
  },
  onData(stream, session, cb) {
    const chunks = [];
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => {
      if (stream.sizeExceeded) {
        return cb(Object.assign(new Error('552 message exceeds fixed maximum size'), { responseCode: 552 }));
      }
      const raw = Buffer.concat(chunks);
      const refused = ruled('data', raw.toString('latin1'));
      if (refused) return cb(refused);
      const m = /^Subject: (.*)$/im.exec(raw.toString('latin1'));
      const rec = {
        event: 'accepted', id: session.id,
        user: session.user && session.user.name, auth: session.user && session.user.method,
        tls: !!session.secure, from: session.envelope.mailFrom.address,
        to: session.envelope.rcptTo.map((r) => r.address), size: raw.length, subject: m ? m[1] : '',
      };
      if (env.SAVE_DIR) fs.writeFileSync(path.join(env.SAVE_DIR, Date.now() + '-' + session.id + '.eml'), raw);
      console.log(JSON.stringify(rec));
      cb(null, 'OK queued as ' + session.id);
    });
  },
});
server.on('error', (e) => console.error('smtp-server error:', e.message));
server.listen(Number(env.PORT), env.HOST || '127.0.0.1');
