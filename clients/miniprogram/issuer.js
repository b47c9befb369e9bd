/**
 * issuer client for WeChat mini-programs.
 *
 * Copy this one file into a mini-program and `require` it. It has no dependencies and is
 * plain ES2017 (no object spread, `??`, `?.` or `Promise#finally`), because the mini-program
 * compiler's "ES6 to ES5" switch is not always on and older base libraries lack ES2018+.
 *
 * Tokens are kept in wx storage so that they survive the mini-program being killed; wx storage
 * is private to the mini-program and the WeChat user, which is the best a mini-program has.
 */
'use strict';

const DEFAULT_STORAGE_KEY = 'issuer.tokens';
// Refresh a little before the server would refuse the token: the request still has to travel,
// and the phone's clock only has to agree with itself (expires_at is computed from expires_in
// on receipt, never from the JWT's exp, so clock skew between phone and server does not matter).
const EXPIRY_MARGIN_MS = 30 * 1000;

/**
 * An error from issuer (its OAuth 2.0 JSON body), from the network, or from wx.login.
 *
 * @property {string} error        issuer's `error` code (`invalid_grant`, `invalid_token` …),
 *                                 or `network_error` / `wx_login_failed` / `http_<status>`.
 * @property {string} description  issuer's `error_description`, or wx's `errMsg`.
 * @property {number} statusCode   the HTTP status; 0 when no response arrived.
 * @property {*} data              the response body as received, if any.
 * @property {Object} header       the response headers, if any (e.g. `Retry-After` on 429).
 */
class IssuerError extends Error {
  constructor(error, description, statusCode, data, header) {
    super(description ? error + ': ' + description : error);
    this.name = 'IssuerError';
    this.error = error;
    this.description = description || '';
    this.statusCode = statusCode || 0;
    this.data = data;
    this.header = header;
  }
}

function parseBody(data) {
  // wx.request parses JSON only when it can; a proxy's HTML error page stays a string.
  if (typeof data !== 'string') return data;
  try {
    return JSON.parse(data);
  } catch (e) {
    return data;
  }
}

function errorFromResponse(res) {
  const body = parseBody(res.data);
  const oauth = body && typeof body === 'object' ? body : {};
  const error = typeof oauth.error === 'string' ? oauth.error : 'http_' + res.statusCode;
  const description = typeof oauth.error_description === 'string' ? oauth.error_description : '';
  return new IssuerError(error, description, res.statusCode, res.data, res.header);
}

function wxLogin(wx) {
  return new Promise(function (resolve, reject) {
    wx.login({
      success: function (res) {
        if (res && res.code) resolve(res.code);
        else reject(new IssuerError('wx_login_failed', (res && res.errMsg) || 'wx.login gave no code'));
      },
      fail: function (res) {
        reject(new IssuerError('wx_login_failed', (res && res.errMsg) || 'wx.login failed'));
      },
    });
  });
}

function wxRequest(wx, options) {
  return new Promise(function (resolve, reject) {
    const call = {};
    Object.keys(options).forEach(function (key) {
      // The caller gets a promise; their own callbacks would fire for the first attempt only.
      if (key !== 'success' && key !== 'fail' && key !== 'complete') call[key] = options[key];
    });
    call.success = resolve;
    call.fail = function (res) {
      reject(new IssuerError('network_error', (res && res.errMsg) || 'request failed'));
    };
    wx.request(call);
  });
}

function isStale(tokens) {
  return !(tokens.expires_at > Date.now() + EXPIRY_MARGIN_MS);
}

/**
 * Make a client for one issuer.
 *
 * @param {Object} config
 * @param {string} config.baseUrl      issuer's URL, e.g. `https://login.example.com`; it must be
 *                                     on the mini-program's request-domain allow-list.
 * @param {string} [config.appid]      sent with the login; only needed when issuer serves several
 *                                     mini-programs.
 * @param {string} [config.storageKey] the wx storage key the tokens live under
 *                                     (default `issuer.tokens`).
 * @param {Object} [config.wx]         the `wx` object (default: the global `wx`); tests pass a shim.
 * @returns {{login: function(): Promise<Object>, request: function(Object): Promise<Object>,
 *            logout: function(): Promise<boolean>, getTokens: function(): ?Object}}
 */
function createClient(config) {
  config = config || {};
  if (!config.baseUrl) throw new TypeError('createClient: baseUrl is required');
  const baseUrl = String(config.baseUrl).replace(/\/+$/, '');
  const appid = config.appid;
  const storageKey = config.storageKey || DEFAULT_STORAGE_KEY;
  const api = config.wx || (typeof wx !== 'undefined' ? wx : null);
  if (!api) throw new TypeError('createClient: no wx object (pass config.wx outside a mini-program)');

  // One login and one refresh at a time: a refresh token is spent by its first use, so two
  // concurrent refreshes would race (issuer's reuse grace forgives that, but only for a few
  // seconds, and every extra refresh is a wasted round trip on a phone network).
  let loginInFlight = null;
  let refreshInFlight = null;

  function url(path) {
    return /^https?:\/\//i.test(path) ? path : baseUrl + (path.charAt(0) === '/' ? '' : '/') + path;
  }

  function post(path, data) {
    return wxRequest(api, {
      url: url(path),
      method: 'POST',
      data: data,
      header: { 'content-type': 'application/json' },
      dataType: 'json',
    });
  }

  /**
   * The stored tokens, or null when logged out.
   *
   * @returns {?{access_token: string, refresh_token: string, expires_at: number, user_id: string}}
   *          `expires_at` is in milliseconds since the epoch, by the phone's clock.
   */
  function getTokens() {
    let stored;
    try {
      stored = api.getStorageSync(storageKey);
    } catch (e) {
      return null;
    }
    if (!stored || typeof stored !== 'object' || !stored.access_token || !stored.refresh_token) {
      return null;
    }
    return Object.assign({}, stored);
  }

  function storeTokens(body) {
    if (!body || typeof body.access_token !== 'string' || typeof body.refresh_token !== 'string') {
      throw new IssuerError('invalid_response', 'issuer answered without a token pair', 200, body);
    }
    const tokens = {
      access_token: body.access_token,
      refresh_token: body.refresh_token,
      expires_at: Date.now() + Number(body.expires_in || 0) * 1000,
      user_id: body.user_id,
    };
    api.setStorageSync(storageKey, tokens);
    return tokens;
  }

  function clearTokens() {
    try {
      api.removeStorageSync(storageKey);
    } catch (e) {
      // Storage that cannot be cleared cannot be fixed from here either.
    }
  }

  function shared(start, set) {
    const promise = start().then(
      function (value) {
        set(null);
        return value;
      },
      function (error) {
        set(null);
        throw error;
      }
    );
    set(promise);
    return promise;
  }

  async function doLogin() {
    const code = await wxLogin(api);
    const data = { code: code };
    if (appid) data.appid = appid;
    const res = await post('/auth/login', data);
    if (res.statusCode !== 200) throw errorFromResponse(res);
    const body = parseBody(res.data);
    storeTokens(body);
    return body;
  }

  /**
   * Log in: `wx.login()` for a one-time code, exchanged at issuer for a token pair that is
   * stored in wx storage. Concurrent calls share one login.
   *
   * @returns {Promise<Object>} issuer's token response (`access_token`, `refresh_token`,
   *          `expires_in`, `user_id`, `is_new_user` …).
   * @throws {IssuerError} issuer's error (`invalid_grant` for a bad code, `slow_down` …),
   *          `wx_login_failed`, or `network_error`.
   */
  function login() {
    return loginInFlight || shared(doLogin, function (p) { loginInFlight = p; });
  }

  async function doRefresh() {
    const tokens = getTokens();
    if (!tokens) {
      await login();
      return getTokens();
    }
    const res = await post('/auth/refresh', { refresh_token: tokens.refresh_token });
    if (res.statusCode === 200) return storeTokens(parseBody(res.data));
    const error = errorFromResponse(res);
    // invalid_grant means the session is over (expired, logged out, revoked after a reuse):
    // no retry of the refresh can help, only a new wx.login. Anything else (429, 503, network)
    // is passing, and logging in would only add load, so it is the caller's to retry.
    if (res.statusCode !== 400 || error.error !== 'invalid_grant') throw error;
    const now = getTokens();
    // Another client object sharing this storage key may have rotated the token meanwhile.
    if (now && now.refresh_token !== tokens.refresh_token) return now;
    clearTokens();
    await login();
    return getTokens();
  }

  function refresh() {
    return refreshInFlight || shared(doRefresh, function (p) { refreshInFlight = p; });
  }

  function send(options, accessToken) {
    const call = {};
    Object.keys(options).forEach(function (key) {
      call[key] = options[key];
    });
    const header = {};
    Object.keys(options.header || {}).forEach(function (name) {
      if (name.toLowerCase() !== 'authorization') header[name] = options.header[name];
    });
    header.Authorization = 'Bearer ' + accessToken;
    call.url = url(options.url);
    call.header = header;
    return wxRequest(api, call);
  }

  function usable(tokens) {
    if (!tokens) throw new IssuerError('no_tokens', 'wx storage did not keep the tokens');
    return tokens;
  }

  /**
   * `wx.request` with the access token, as a promise.
   *
   * Logs in first when there are no tokens, refreshes first when the access token is (nearly)
   * expired. On a 401 it refreshes once (one refresh shared by all concurrent requests) and
   * retries once; when the refresh token is dead too it logs in again and retries once. It never
   * retries more than once, so a 401 that survives a fresh token is the caller's.
   *
   * @param {Object} options  `wx.request` options; `url` may be a path on `baseUrl` (`/me`) or
   *          a full URL of your own API (the access token is sent to it: only use your hosts).
   *          `success` / `fail` / `complete` are ignored.
   * @returns {Promise<{statusCode: number, data: *, header: Object}>} the wx.request result,
   *          for statuses below 400.
   * @throws {IssuerError} for statuses of 400 and above (`.error` from the OAuth body when there
   *          is one, else `http_<status>`), network failures, or a failed login/refresh.
   */
  async function request(options) {
    if (!options || !options.url) throw new TypeError('request: options.url is required');
    let tokens = getTokens();
    if (!tokens) {
      await login();
      tokens = usable(getTokens());
    } else if (isStale(tokens)) {
      tokens = usable(await refresh());
    }
    let res = await send(options, tokens.access_token);
    if (res.statusCode === 401) {
      const current = getTokens();
      if (current && current.access_token !== tokens.access_token && !isStale(current)) {
        // A refresh finished while this request was out: its token is new enough, and
        // refreshing again would spend the refresh token for nothing.
        tokens = current;
      } else {
        tokens = usable(await refresh());
      }
      res = await send(options, tokens.access_token);
    }
    if (res.statusCode >= 400) throw errorFromResponse(res);
    return res;
  }

  /**
   * End the login session at issuer and forget the tokens. The tokens are cleared even when
   * issuer cannot be reached: the user asked to be logged out of this phone, and the session
   * dies on its own when it expires.
   *
   * @returns {Promise<boolean>} whether issuer confirmed the logout (204).
   */
  async function logout() {
    // A refresh or login finishing after the clear would write its tokens back.
    const pending = [loginInFlight, refreshInFlight].filter(Boolean).map(function (p) {
      return p.catch(function () {});
    });
    await Promise.all(pending);
    const tokens = getTokens();
    let confirmed = false;
    if (tokens) {
      try {
        const res = await post('/auth/logout', { refresh_token: tokens.refresh_token });
        confirmed = res.statusCode === 204;
      } catch (e) {
        // Offline: clearing locally is still what the user asked for.
      }
    }
    clearTokens();
    return confirmed;
  }

  return { login: login, request: request, logout: logout, getTokens: getTokens };
}

module.exports = { createClient: createClient, IssuerError: IssuerError };
