// oauth2-mock-server dressed as Microsoft Entra ID's v2.0 token endpoint, for tests of the Microsoft
// transports: the real mock signs the tokens (RS256, JWKS at /jwks); this script only shapes their
// claims the way Entra does, which the plain mock does not:
//   - client_credentials with scope "<resource>/.default": aud = <resource>, roles = the application
//     permissions granted to the client for that resource (ROLES), appid = client_id, no scope claim.
//   - authorization_code / refresh_token with scopes "<resource>/<Perm> ... offline_access":
//     aud = <resource>, scp = the permissions, space-separated.
// Env: HOST PORT MOCK_MODULE (path of oauth2-mock-server's dist/index.mjs)
//      ROLES: JSON {"<client_id> <resource>": ["Mail.Send"], "<resource>": [...]} (a client's own entry first)
const { OAuth2Server } = await import(process.env.MOCK_MODULE);
const roles = JSON.parse(process.env.ROLES || '{}');

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.service.on('beforeTokenSigning', (token, req) => {
  const body = req.body || {};
  const scopes = String(body.scope || '').split(' ').filter(Boolean);
  const grant = body.grant_type;
  const p = token.payload;
  if (grant === 'client_credentials') {
    const def = scopes.find((s) => s.endsWith('/.default'));
    if (!def) return;
    const aud = def.slice(0, -'/.default'.length);
    p.aud = aud;
    p.appid = body.client_id;
    const granted = roles[body.client_id + ' ' + aud] ?? roles[aud] ?? [];
    if (granted.length) p.roles = granted;
    delete p.scope;
  } else if (grant === 'authorization_code' || grant === 'refresh_token') {
    const res = scopes.filter((s) => s.startsWith('https://'));
    if (!res.length) return;
    const u = new URL(res[0]);
    p.aud = u.origin;
    p.scp = res.map((s) => new URL(s).pathname.slice(1)).join(' ');
    delete p.scope;
  }
});
await server.start(Number(process.env.PORT), process.env.HOST);
console.log(JSON.stringify({ event: 'listening', issuer: server.issuer.url }));
