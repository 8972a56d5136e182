// A real OpenID Connect provider for sessiongate's tests: panva's certified
// oidc-provider, on a loopback port, with one client (sessiongate) and the
// users of a JSON file that the tests rewrite between sign-ins:
//
//   { "next": "alice", "users": { "alice": { "email": "...", "groups": ["physics"] } } }
//
// There is no login form: the interaction signs in the user named by
// "next" at once and grants the scopes asked for, so a test (or a headless
// browser) goes straight through the authorization code flow.
//
// Usage: node provider.mjs PORT CALLBACK_URL USERS_JSON CLIENT_SECRET
import http from 'node:http';
import fs from 'node:fs';
import Provider from 'oidc-provider';

const [port, callback, usersFile, secret] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const users = () => JSON.parse(fs.readFileSync(usersFile, 'utf8'));

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'sessiongate',
    client_secret: secret,
    redirect_uris: [callback],
    post_logout_redirect_uris: [],
    response_types: ['code'],
    grant_types: ['authorization_code'],
  }],
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Scope claims in the ID token itself, as Keycloak and Dex put them.
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    const u = users().users[id];
    if (!u) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: id,
          name: id,
          email: u.email,
          email_verified: true,
          groups: u.groups,
        };
      },
    };
  },
});
provider.proxy = false;

const handler = provider.callback();
const server = http.createServer(async (req, res) => {
  const m = req.url.match(/^\/interaction\/([^/?]+)/);
  if (!m) return handler(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    const accountId = users().next;
    const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope);
    const grantId = await grant.save();
    await provider.interactionFinished(
      req, res,
      { login: { accountId }, consent: { grantId } },
      { mergeWithLastSubmission: false },
    );
  } catch (e) {
    res.statusCode = 500;
    res.end(String(e));
  }
});
server.listen(Number(port), '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
