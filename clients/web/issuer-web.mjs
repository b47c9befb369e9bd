// Browser client of issuer's web login: H5 pages inside WeChat (authorization code + PKCE,
// RFC 6749 §4.1, RFC 7636 S256) and PC pages that log in by scanning the mini-program code.
// Tokens stay in the page's storage and travel only in request bodies and the Authorization
// header, never in a URL. One refresh at a time: concurrent callers share it.

const VERIFIER_BYTES = 48; // 64 URL-safe characters (RFC 7636 §4.1: 43 to 128)
const EXPIRY_SKEW_MS = 30_000; // refresh this long before the access token expires
const PENDING_KEY = "issuer.web.pending";
const TOKENS_KEY = "issuer.web.tokens";

/** An OAuth error from issuer (RFC 6749 §5.2) or from the redirect (§4.1.2.1). */
export class WebLoginError extends Error {
  constructor(error, description) {
    super(description ? `${error}: ${description}` : error);
    this.name = "WebLoginError";
    this.error = error;
    this.description = description ?? "";
  }
}

/** A Storage-like object kept in memory (for tests, or pages that want no persistence). */
export function memoryStorage() {
  const items = new Map();
  return {
    getItem: (key) => (items.has(key) ? items.get(key) : null),
    setItem: (key, value) => void items.set(key, String(value)),
    removeItem: (key) => void items.delete(key),
  };
}

function base64url(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** A PKCE pair: a random verifier and its S256 challenge. */
export async function pkcePair() {
  const verifier = base64url(crypto.getRandomValues(new Uint8Array(VERIFIER_BYTES)));
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return { verifier, challenge: base64url(new Uint8Array(digest)) };
}

export function createWebClient({
  issuer,
  clientId,
  redirectUri,
  storage = globalThis.sessionStorage ?? memoryStorage(),
  fetch: fetchImpl = globalThis.fetch.bind(globalThis),
  now = () => Date.now(),
}) {
  const base = issuer.replace(/\/+$/, "");
  let refreshing = null;

  async function post(path, form) {
    const response = await fetchImpl(base + path, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(form).toString(),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new WebLoginError(body.error ?? "server_error", body.error_description);
    return body;
  }

  function keep(pair) {
    const tokens = {
      accessToken: pair.access_token,
      refreshToken: pair.refresh_token,
      expiresAt: now() + pair.expires_in * 1000,
      userId: pair.user_id,
    };
    storage.setItem(TOKENS_KEY, JSON.stringify(tokens));
    return tokens;
  }

  function tokens() {
    const text = storage.getItem(TOKENS_KEY);
    return text ? JSON.parse(text) : null;
  }

  async function exchange(code, verifier, withRedirect) {
    const form = { grant_type: "authorization_code", code, client_id: clientId, code_verifier: verifier };
    if (withRedirect) form.redirect_uri = redirectUri;
    return keep(await post("/auth/token", form));
  }

  return {
    tokens,

    /** The URL to send the browser to; the verifier and state wait in storage. */
    async startH5Login({ scope } = {}) {
      const { verifier, challenge } = await pkcePair();
      const state = base64url(crypto.getRandomValues(new Uint8Array(16)));
      storage.setItem(PENDING_KEY, JSON.stringify({ verifier, state }));
      const query = new URLSearchParams({
        response_type: "code",
        client_id: clientId,
        redirect_uri: redirectUri,
        state,
        code_challenge: challenge,
        code_challenge_method: "S256",
      });
      if (scope) query.set("scope", scope);
      return `${base}/auth/authorize?${query}`;
    },

    /** On the redirect page: check the state, exchange the code, keep the tokens. */
    async finishH5Login(url = globalThis.location?.href) {
      const query = new URL(url).searchParams;
      const pending = JSON.parse(storage.getItem(PENDING_KEY) ?? "null");
      storage.removeItem(PENDING_KEY); // one use, whatever happens
      if (!pending || query.get("state") !== pending.state) {
        throw new WebLoginError("invalid_request", "The login did not start on this page.");
      }
      if (query.get("error")) throw new WebLoginError(query.get("error"), query.get("error_description"));
      return exchange(query.get("code") ?? "", pending.verifier, true);
    },

    /** A scan ticket for the PC page: show `qrcodeUrl`, then `waitForScan(ticket)`. */
    async startScan() {
      const { verifier, challenge } = await pkcePair();
      const body = await post("/auth/scan", { client_id: clientId, code_challenge: challenge });
      return { ticket: body.ticket, qrcodeUrl: body.qrcode_url, expiresIn: body.expires_in,
               interval: body.interval, verifier };
    },

    /** Long-poll until the phone confirms (tokens kept and returned), denies or the ticket
     * expires (a WebLoginError). `onStatus` hears every new status. */
    async waitForScan(scan, { onStatus, wait = 25, sleep = (ms) => new Promise((r) => setTimeout(r, ms)) } = {}) {
      let since = "pending";
      for (;;) {
        const response = await fetchImpl(
          `${base}/auth/scan/${encodeURIComponent(scan.ticket)}?since=${since}&wait=${wait}`,
        );
        const body = await response.json();
        if (!response.ok) throw new WebLoginError(body.error ?? "server_error", body.error_description);
        if (body.status !== since) onStatus?.(body.status);
        if (body.status === "confirmed") {
          if (!body.code) throw new WebLoginError("invalid_grant", "The code was handed out already.");
          return exchange(body.code, scan.verifier, false);
        }
        if (body.status === "denied" || body.status === "expired") {
          throw new WebLoginError("access_denied", `The scan login was ${body.status}.`);
        }
        if (body.status === since) await sleep((body.interval ?? 2) * 1000);
        since = body.status;
      }
    },

    /** A valid access token, refreshed first when it is about to expire: one refresh in
     * flight at a time, shared by every caller. */
    async getAccessToken() {
      const current = tokens();
      if (!current) throw new WebLoginError("invalid_token", "Not logged in.");
      if (current.expiresAt - EXPIRY_SKEW_MS > now()) return current.accessToken;
      refreshing ??= post("/auth/token", {
        grant_type: "refresh_token",
        refresh_token: current.refreshToken,
        client_id: clientId,
      })
        .then(keep)
        .finally(() => {
          refreshing = null;
        });
      return (await refreshing).accessToken;
    },

    /** End the login session here and at issuer (RFC 7009). */
    async logout() {
      const current = tokens();
      storage.removeItem(TOKENS_KEY);
      if (current) await post("/auth/logout", { token: current.refreshToken }).catch(() => {});
    },
  };
}
