// A downstream Node.js service that accepts issuer's access tokens, verified locally with
// jose against issuer's JWKS: no shared secret, no call to issuer per request.
//
//   npm ci
//   ISSUER_URL=http://127.0.0.1:8000 PORT=8002 node server.mjs
//   curl -s http://127.0.0.1:8002/orders -H "Authorization: Bearer $ACCESS"
//
// Environment:
//   ISSUER_URL       (required) issuer's ISSUER_URL, exactly as it puts it in `iss`
//   ISSUER_AUDIENCE  issuer's ISSUER_AUDIENCE when it sets one (default: ISSUER_URL)
//   PORT             where to listen (default 8002); HOST (default 127.0.0.1)
//   JWKS_MAX_AGE     seconds to cache the JWKS: keep it at issuer's ISSUER_JWKS_MAX_AGE
//                    (default 300). jose does not read Cache-Control, so this is what bounds
//                    how long a key revoked with `issuer keys revoke` still verifies here.
//   JWKS_REFETCH_COOLDOWN  seconds between refetches for tokens with an unknown kid (default
//                    30, never above JWKS_MAX_AGE): the first token of a key rotated with
//                    `issuer keys rotate --now` is picked up within this long.

import http from 'node:http';
import { createRemoteJWKSet, customFetch, decodeProtectedHeader, errors, jwtVerify } from 'jose';

const ALGORITHMS = ['ES256', 'RS256', 'EdDSA'];
// RFC 9068 §2.2's claims, and issuer's own sid (the login session): issuer signs every token
// with them and refuses a token without them, and so does this service.
const REQUIRED_CLAIMS = ['exp', 'iat', 'sub', 'jti', 'client_id', 'sid'];
// Identifiers that must be non-empty strings, as issuer checks them.
const STRING_CLAIMS = ['sub', 'client_id', 'jti', 'sid', 'openid'];
// RFC 8725: headers that would let a token choose its own verification key. jose never
// follows them; refusing them outright is what issuer itself does.
const FORBIDDEN_HEADERS = ['jku', 'jwk', 'x5u', 'x5c'];
const LEEWAY_SECONDS = 5;

function seconds(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) {
    console.error(`${name}: must be a number of seconds, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return value;
}

const issuer = (process.env.ISSUER_URL ?? '').trim();
if (!issuer) {
  console.error("ISSUER_URL: set it to issuer's ISSUER_URL, e.g. http://127.0.0.1:8000");
  process.exit(2);
}
const audience = (process.env.ISSUER_AUDIENCE ?? '').trim() || issuer;
const host = process.env.HOST || '127.0.0.1';
const port = seconds('PORT', 8002);
const maxAge = seconds('JWKS_MAX_AGE', 300);
const cooldown = Math.min(seconds('JWKS_REFETCH_COOLDOWN', 30), maxAge);

/** The JWKS could not be fetched: the token may be fine, issuer is not reachable. */
class KeysUnavailable extends Error {}

const jwks = createRemoteJWKSet(new URL(`${issuer.replace(/\/+$/, '')}/.well-known/jwks.json`), {
  cacheMaxAge: maxAge * 1000,
  cooldownDuration: cooldown * 1000,
  timeoutDuration: 5000,
  // Tell a failed fetch apart from a bad token: the first is a 503, not a 401.
  [customFetch]: async (url, options) => {
    let response;
    try {
      response = await fetch(url, options);
    } catch (cause) {
      throw new KeysUnavailable(`JWKS fetch failed: ${cause?.name ?? 'error'}`, { cause });
    }
    if (response.status !== 200) {
      throw new KeysUnavailable(`JWKS fetch answered HTTP ${response.status}`);
    }
    return response;
  },
});

class InvalidToken extends Error {}

/** The claims of a valid access token; throws InvalidToken (401) or KeysUnavailable (503). */
async function verify(token) {
  let header;
  try {
    header = decodeProtectedHeader(token);
  } catch {
    throw new InvalidToken('The access token is malformed.');
  }
  if (FORBIDDEN_HEADERS.some((name) => name in header)) {
    throw new InvalidToken('The access token carries a key-selection header this service does not trust.');
  }
  // RFC 7515 §4.1.11: a recipient must refuse a JWS naming an extension it does not
  // understand. Issuer signs with none, so any crit is refused, even RFC 7797's b64 that jose
  // would accept.
  if ('crit' in header) {
    throw new InvalidToken('The access token names a critical header extension issuer refuses.');
  }
  if (typeof header.kid !== 'string' || header.kid === '') {
    throw new InvalidToken('The access token was not signed by a key of this issuer.');
  }
  let payload;
  try {
    ({ payload } = await jwtVerify(token, jwks, {
      issuer,
      audience,
      typ: 'at+jwt',
      algorithms: ALGORITHMS,
      requiredClaims: REQUIRED_CLAIMS,
      clockTolerance: LEEWAY_SECONDS,
    }));
  } catch (error) {
    if (error instanceof KeysUnavailable || error instanceof errors.JWKSTimeout) {
      throw error instanceof KeysUnavailable ? error : new KeysUnavailable(error.message);
    }
    if (error instanceof errors.JWKSInvalid || error?.code === 'ERR_JOSE_GENERIC') {
      throw new KeysUnavailable(error.message); // issuer answered something that is no JWKS
    }
    if (error instanceof errors.JWTExpired) throw new InvalidToken('The access token has expired.');
    if (error instanceof errors.JWKSNoMatchingKey) {
      throw new InvalidToken('The access token was not signed by a key of this issuer.');
    }
    throw new InvalidToken('The access token is invalid.');
  }
  // issuer's own rules beyond jose's: one audience, string identifiers.
  if (typeof payload.aud !== 'string') throw new InvalidToken('The access token is invalid.');
  for (const name of STRING_CLAIMS) {
    if (typeof payload[name] !== 'string' || payload[name] === '') {
      throw new InvalidToken('The access token is invalid.');
    }
  }
  if ('unionid' in payload && typeof payload.unionid !== 'string') {
    throw new InvalidToken('The access token is invalid.');
  }
  // jose checks iat's type but its age only when given maxTokenAge: a token "issued" later
  // than now plus the leeway comes from no issuer with a sane clock, and issuer refuses it.
  if (payload.iat > Date.now() / 1000 + LEEWAY_SECONDS) {
    throw new InvalidToken('The access token is issued in the future.');
  }
  return payload;
}

function send(response, status, body, headers = {}) {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  response.end(text);
}

function unauthorized(response, description, { missing }) {
  // RFC 6750 §3: a missing token gets a bare challenge, a bad one names the error.
  send(
    response,
    401,
    { error: 'invalid_token', error_description: description },
    {
      'WWW-Authenticate': missing ? 'Bearer' : 'Bearer error="invalid_token"',
      'Cache-Control': 'no-store',
    },
  );
}

async function orders(request, response) {
  const [scheme, ...rest] = (request.headers.authorization ?? '').trim().split(' ');
  const token = rest.join(' ').trim();
  if (scheme.toLowerCase() !== 'bearer' || !token) {
    unauthorized(response, 'An access token is required.', { missing: true });
    return;
  }
  let claims;
  try {
    claims = await verify(token);
  } catch (error) {
    if (error instanceof InvalidToken) {
      unauthorized(response, error.message, { missing: false });
      return;
    }
    console.error(`token verification unavailable: ${error.message}`);
    send(
      response,
      503,
      { error: 'temporarily_unavailable', error_description: 'Signing keys cannot be fetched; retry shortly.' },
      { 'Retry-After': '5' },
    );
    return;
  }
  send(response, 200, { user: claims.sub, app: claims.client_id });
}

const routes = {
  '/orders': orders,
  '/health': async (request, response) => send(response, 200, { status: 'ok' }),
};

const server = http.createServer((request, response) => {
  const path = new URL(request.url ?? '/', 'http://localhost').pathname;
  const route = routes[path];
  if (!route) {
    send(response, 404, { error: 'not_found', error_description: 'No such path.' });
    return;
  }
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    send(response, 405, { error: 'method_not_allowed', error_description: 'Use GET.' }, { Allow: 'GET, HEAD' });
    return;
  }
  route(request, response).catch((error) => {
    console.error(error);
    if (!response.headersSent) send(response, 500, { error: 'server_error' });
  });
});

server.listen(port, host, () => {
  console.log(`listening on http://${host}:${server.address().port}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections(); // keep-alive connections would hold close() open
  });
}
