/**
 * issuer client for WeChat mini-programs: native `wx`, Taro and uni-app.
 *
 * Install it with npm (WeChat DevTools' "构建npm" builds it from `main`, this file) or copy
 * this one file. It has no dependencies and is plain ES2017 (no object spread, `??`, `?.` or
 * `Promise#finally`), because the mini-program compiler's "ES6 to ES5" switch is not always on
 * and older base libraries lack ES2018+.
 *
 * Tokens are kept in the platform's storage (`wx.setStorageSync` and its Taro / uni-app twins)
 * so that they survive the mini-program being killed; that storage is private to the
 * mini-program and the WeChat user, which is the best a mini-program has. Another storage can
 * be plugged in.
 */
'use strict';

const VERSION = '0.2.0';
const DEFAULT_STORAGE_KEY = 'issuer.tokens';
// Refresh a little before the server would refuse the token: the request still has to travel,
// and the phone's clock only has to agree with itself (expires_at is computed from expires_in
// on receipt, never from the JWT's exp, so clock skew between phone and server does not matter).
const EXPIRY_MARGIN_MS = 30 * 1000;
// Where a development-mode issuer's WeChat emulator mints wx.login codes for a test user.
const DEV_LOGIN_PATH = '/_wechat/dev/wx.login';

// -- errors: one class per kind of failure, all IssuerErrors (like supabase auth-js)

/**
 * Every error this client rejects with.
 *
 * @property {string} error        issuer's `error` code (`invalid_grant`, `invalid_token` …),
 *                                 or `network_error` / `wx_login_failed` / `http_<status>` /
 *                                 `invalid_response` / `no_tokens`.
 * @property {string} description  issuer's `error_description`, or the platform's `errMsg`.
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

/** An HTTP answer of 400 or above, from issuer or from your API through `request()`. */
class IssuerApiError extends IssuerError {
  constructor(error, description, statusCode, data, header) {
    super(error, description, statusCode, data, header);
    this.name = 'IssuerApiError';
  }
}

/** No answer: offline, DNS, TLS, a domain not on the allow-list, or a timeout. */
class IssuerNetworkError extends IssuerError {
  constructor(description) {
    super('network_error', description);
    this.name = 'IssuerNetworkError';
  }
}

/** `wx.login()` (or Taro's / uni-app's, or the development hook) gave no code. */
class WxLoginError extends IssuerError {
  constructor(description) {
    super('wx_login_failed', description);
    this.name = 'WxLoginError';
  }
}

/** issuer answered 200 without a token pair (a proxy or a wrong `baseUrl`, typically). */
class InvalidResponseError extends IssuerError {
  constructor(description, statusCode, data) {
    super('invalid_response', description, statusCode, data);
    this.name = 'InvalidResponseError';
  }
}

/** The storage did not keep the tokens it was just given. */
class StorageError extends IssuerError {
  constructor(description) {
    super('no_tokens', description);
    this.name = 'StorageError';
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
  return new IssuerApiError(error, description, res.statusCode, res.data, res.header);
}

function failMessage(res, fallback) {
  if (res && typeof res.errMsg === 'string') return res.errMsg;
  if (res && typeof res.message === 'string') return res.message;
  return fallback;
}

// -- platforms: the request, login and storage calls of wx, Taro and uni-app, as promises

function withoutCallbacks(options) {
  const call = {};
  Object.keys(options).forEach(function (key) {
    // The caller gets a promise; their own callbacks would fire for the first attempt only.
    if (key !== 'success' && key !== 'fail' && key !== 'complete') call[key] = options[key];
  });
  return call;
}

function syncStorage(api) {
  return {
    getItem: function (key) {
      return api.getStorageSync(key);
    },
    setItem: function (key, value) {
      api.setStorageSync(key, value);
    },
    removeItem: function (key) {
      api.removeStorageSync(key);
    },
    // The *StorageSync functions keep objects as they are (serialised inside the platform).
    keepsObjects: true,
  };
}

/**
 * `uploadFile` of an API that takes `success` / `fail` callbacks (wx, uni-app, and Taro, whose
 * promise-returning `Taro.uploadFile` still calls them), as a promise. `wx.uploadFile` is the
 * only way a mini-program sends a chosen file (`chooseAvatar`'s temporary path): multipart.
 */
function callbackUpload(api, name) {
  return function (options) {
    return new Promise(function (resolve, reject) {
      if (!api || typeof api.uploadFile !== 'function') {
        reject(new IssuerNetworkError(name + '.uploadFile is not available'));
        return;
      }
      const call = withoutCallbacks(options);
      call.success = resolve;
      call.fail = function (res) {
        reject(new IssuerNetworkError(failMessage(res, 'upload failed')));
      };
      const pending = api.uploadFile(call);
      // Taro's promise rejects as `fail` is called: handled there, not unhandled here.
      if (isThenable(pending)) pending.then(null, function () {});
    });
  };
}

/**
 * Native mini-program `wx`: callback-style `wx.request` / `wx.login`, `wx.*StorageSync`.
 *
 * @param {Object} wx
 * @returns {Platform}
 */
function wxPlatform(wx) {
  return {
    name: 'wx',
    request: function (options) {
      return new Promise(function (resolve, reject) {
        const call = withoutCallbacks(options);
        call.success = resolve;
        call.fail = function (res) {
          reject(new IssuerNetworkError(failMessage(res, 'request failed')));
        };
        wx.request(call);
      });
    },
    login: function () {
      return new Promise(function (resolve, reject) {
        wx.login({
          success: function (res) {
            if (res && res.code) resolve(res.code);
            else reject(new WxLoginError(failMessage(res, 'wx.login gave no code')));
          },
          fail: function (res) {
            reject(new WxLoginError(failMessage(res, 'wx.login failed')));
          },
        });
      });
    },
    uploadFile: callbackUpload(wx, 'wx'),
    storage: syncStorage(wx),
  };
}

/**
 * Taro (3 and 4): `Taro.request(options)` and `Taro.login()` return promises, which reject
 * with `{errMsg}` (mini-program builds) or an `Error` (H5 builds) on failure.
 *
 * @param {Object} Taro  `import Taro from '@tarojs/taro'`
 * @returns {Platform}
 */
function taroPlatform(Taro) {
  return {
    name: 'taro',
    request: function (options) {
      let pending;
      try {
        pending = Taro.request(withoutCallbacks(options));
      } catch (e) {
        return Promise.reject(new IssuerNetworkError(failMessage(e, 'request failed')));
      }
      return Promise.resolve(pending).then(null, function (res) {
        throw new IssuerNetworkError(failMessage(res, 'request failed'));
      });
    },
    login: function () {
      return Promise.resolve()
        .then(function () {
          return Taro.login();
        })
        .then(
          function (res) {
            if (res && res.code) return res.code;
            throw new WxLoginError(failMessage(res, 'Taro.login gave no code'));
          },
          function (res) {
            throw new WxLoginError(failMessage(res, 'Taro.login failed'));
          }
        );
    },
    uploadFile: callbackUpload(Taro, 'Taro'),
    storage: syncStorage(Taro),
  };
}

/**
 * uni-app: called with `success` / `fail` callbacks, whose shape is the same under Vue 2 and
 * Vue 3. (Without callbacks uni-app returns a promise, which resolves `[err, res]` under Vue 2
 * but `res` under Vue 3: the callbacks avoid guessing which.)
 *
 * @param {Object} uni  the global `uni`
 * @returns {Platform}
 */
function uniPlatform(uni) {
  return {
    name: 'uni',
    request: function (options) {
      return new Promise(function (resolve, reject) {
        const call = withoutCallbacks(options);
        call.success = resolve;
        call.fail = function (res) {
          reject(new IssuerNetworkError(failMessage(res, 'request failed')));
        };
        uni.request(call);
      });
    },
    login: function () {
      return new Promise(function (resolve, reject) {
        uni.login({
          provider: 'weixin',
          success: function (res) {
            if (res && res.code) resolve(res.code);
            else reject(new WxLoginError(failMessage(res, 'uni.login gave no code')));
          },
          fail: function (res) {
            reject(new WxLoginError(failMessage(res, 'uni.login failed')));
          },
        });
      });
    },
    uploadFile: callbackUpload(uni, 'uni'),
    storage: syncStorage(uni),
  };
}

function choosePlatform(config) {
  const given = ['platform', 'wx', 'taro', 'uni'].filter(function (name) {
    return config[name];
  });
  if (given.length > 1) {
    throw new TypeError('createClient: pass one of platform, wx, taro or uni, not ' + given.join(' and '));
  }
  if (config.platform) return config.platform;
  if (config.taro) return taroPlatform(config.taro);
  if (config.uni) return uniPlatform(config.uni);
  const api = config.wx || (typeof wx !== 'undefined' ? wx : null);
  if (!api) {
    throw new TypeError('createClient: no wx object (pass wx, taro, uni or platform outside a mini-program)');
  }
  return wxPlatform(api);
}

function isThenable(value) {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function';
}

function isLoopback(url) {
  const match = /^https?:\/\/(\[[^\]]*\]|[^/:?#]*)/i.exec(url);
  if (!match) return false;
  const host = match[1].toLowerCase();
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/**
 * Make a client for one issuer.
 *
 * @param {Object} config
 * @param {string} config.baseUrl      issuer's URL, e.g. `https://login.example.com`; it must be
 *                                     on the mini-program's request-domain allow-list.
 * @param {string} [config.appid]      sent with the login; only needed when issuer serves several
 *                                     mini-programs.
 * @param {string} [config.storageKey] the storage key the tokens live under (default
 *                                     `issuer.tokens`).
 * @param {Object} [config.wx]         the `wx` object (default: the global `wx`); tests pass a shim.
 * @param {Object} [config.taro]       `Taro` from `@tarojs/taro`, instead of `wx`.
 * @param {Object} [config.uni]        uni-app's `uni`, instead of `wx`.
 * @param {Platform} [config.platform] your own `{request, login, storage}`, instead of the above.
 * @param {Storage} [config.storage]   where tokens are kept: `getItem` / `setItem` / `removeItem`
 *                                     of strings, sync or returning promises (default: the
 *                                     platform's `*StorageSync`).
 * @param {{user?: string}|boolean} [config.devLogin]  development only: take login codes from
 *                                     issuer's WeChat emulator (`make run`) for this test user
 *                                     instead of `wx.login()`; refused unless `baseUrl` is a
 *                                     loopback address.
 * @returns {IssuerClient}
 */
// A scan ticket as issuer makes them: the `scene` of the code the PC shows.
const TICKET_PATTERN = /^[A-Za-z0-9_-]{32}$/;

/**
 * The scan ticket a page was opened with: `onLoad(options)`'s `options.scene`, which WeChat
 * hands over URL-encoded (获取不限制的小程序码: scene). Also takes `options.ticket`, for a
 * page opened by `wx.navigateTo({url: '...?ticket=...'})` or DevTools' compile mode.
 *
 * @param {Object} [options]  the page's `onLoad` options.
 * @returns {string|null} the ticket, or null when the page was not opened by a scan code.
 */
function scanTicketFrom(options) {
  if (!options) return null;
  const raw = typeof options.scene === 'string' && options.scene ? options.scene : options.ticket;
  if (typeof raw !== 'string' || !raw) return null;
  let ticket;
  try {
    ticket = decodeURIComponent(raw);
  } catch (e) {
    return null; // a malformed escape: not a code issuer made
  }
  return TICKET_PATTERN.test(ticket) ? ticket : null;
}

function createClient(config) {
  config = config || {};
  if (!config.baseUrl) throw new TypeError('createClient: baseUrl is required');
  const baseUrl = String(config.baseUrl).replace(/\/+$/, '');
  const appid = config.appid;
  const storageKey = config.storageKey || DEFAULT_STORAGE_KEY;
  const platform = choosePlatform(config);
  const storage = config.storage || platform.storage;
  if (!storage || typeof storage.getItem !== 'function' || typeof storage.setItem !== 'function' || typeof storage.removeItem !== 'function') {
    throw new TypeError('createClient: storage needs getItem, setItem and removeItem');
  }
  const devLogin = config.devLogin ? (config.devLogin === true ? {} : config.devLogin) : null;
  if (devLogin && !isLoopback(baseUrl)) {
    // The emulator exists only in a development-mode issuer, which only listens on loopback:
    // a build that still asks for it must fail at once, not at every user's first login.
    throw new TypeError('createClient: devLogin is for a development issuer on 127.0.0.1 only, not ' + baseUrl);
  }

  // One login and one refresh at a time: a refresh token is spent by its first use, so two
  // concurrent refreshes would race (issuer's reuse grace forgives that, but only for a few
  // seconds, and every extra refresh is a wasted round trip on a phone network).
  let loginInFlight = null;
  let refreshInFlight = null;
  // The tokens last read or written: what getTokens() answers when the storage is async.
  let remembered = null;
  const listeners = [];

  function url(path) {
    return /^https?:\/\//i.test(path) ? path : baseUrl + (path.charAt(0) === '/' ? '' : '/') + path;
  }

  function post(path, data) {
    return platform.request({
      url: url(path),
      method: 'POST',
      data: data,
      header: { 'content-type': 'application/json' },
      dataType: 'json',
    });
  }

  // -- storage

  function normalise(stored) {
    if (typeof stored === 'string' && stored) {
      try {
        stored = JSON.parse(stored);
      } catch (e) {
        return null;
      }
    }
    if (!stored || typeof stored !== 'object' || typeof stored.access_token !== 'string' || typeof stored.refresh_token !== 'string') {
      return null;
    }
    return stored;
  }

  function copy(tokens) {
    return tokens ? Object.assign({}, tokens) : null;
  }

  async function loadTokens() {
    let stored;
    try {
      stored = await storage.getItem(storageKey);
    } catch (e) {
      stored = null;
    }
    remembered = normalise(stored);
    return copy(remembered);
  }

  /**
   * The stored tokens as they are, or null when logged out. The access token in them may
   * have expired: use `getAccessToken()` for one that is fresh.
   *
   * @returns {?Tokens}
   */
  function getTokens() {
    let stored;
    try {
      stored = storage.getItem(storageKey);
    } catch (e) {
      return null;
    }
    if (isThenable(stored)) {
      stored.then(null, function () {});
      return copy(remembered);
    }
    remembered = normalise(stored);
    return copy(remembered);
  }

  async function storeTokens(body) {
    if (!body || typeof body.access_token !== 'string' || typeof body.refresh_token !== 'string') {
      throw new InvalidResponseError('issuer answered without a token pair', 200, body);
    }
    const tokens = {
      access_token: body.access_token,
      refresh_token: body.refresh_token,
      expires_at: Date.now() + Number(body.expires_in || 0) * 1000,
      user_id: body.user_id,
    };
    if (typeof body.refresh_token_expires_in === 'number') {
      tokens.refresh_expires_at = Date.now() + body.refresh_token_expires_in * 1000;
    }
    await storage.setItem(storageKey, storage.keepsObjects ? tokens : JSON.stringify(tokens));
    remembered = tokens;
    return copy(tokens);
  }

  async function clearTokens() {
    remembered = null;
    try {
      await storage.removeItem(storageKey);
    } catch (e) {
      // Storage that cannot be cleared cannot be fixed from here either.
    }
  }

  // -- auth state events

  /**
   * Be told when the user is signed in, the tokens are refreshed, or the user is signed out.
   *
   * @param {function(string, Object): void} listener  called with the event
   *        (`SIGNED_IN`, `TOKEN_REFRESHED`, `SIGNED_OUT`) and `{tokens, reason?, isNewUser?,
   *        error?}`.
   * @returns {function(): void} unsubscribe.
   */
  function onAuthStateChange(listener) {
    if (typeof listener !== 'function') throw new TypeError('onAuthStateChange: listener must be a function');
    listeners.push(listener);
    return function unsubscribe() {
      const index = listeners.indexOf(listener);
      if (index >= 0) listeners.splice(index, 1);
    };
  }

  function emit(event, detail) {
    listeners.slice().forEach(function (listener) {
      try {
        listener(event, detail);
      } catch (e) {
        // A listener's bug must not break the login it is told about; it still surfaces
        // (App.onError in a mini-program, the console elsewhere).
        setTimeout(function () {
          throw e;
        }, 0);
      }
    });
  }

  // -- login and refresh

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

  async function devCode() {
    const body = { user: devLogin.user || 'miniprogram-dev' };
    if (appid) body.appid = appid;
    let res;
    try {
      res = await post(DEV_LOGIN_PATH, body);
    } catch (e) {
      throw new WxLoginError('issuer\'s development emulator cannot be reached: ' + e.description);
    }
    const data = parseBody(res.data);
    if (res.statusCode !== 200 || !data || typeof data.code !== 'string') {
      throw new WxLoginError(
        'issuer\'s development emulator answered ' + res.statusCode + ' (is issuer running in development mode, `make run`?)'
      );
    }
    return data.code;
  }

  async function doLogin() {
    const code = devLogin ? await devCode() : await platform.login();
    const data = { code: code };
    if (appid) data.appid = appid;
    const res = await post('/auth/login', data);
    if (res.statusCode !== 200) throw errorFromResponse(res);
    const body = parseBody(res.data);
    const tokens = await storeTokens(body);
    emit('SIGNED_IN', { tokens: tokens, isNewUser: body.is_new_user === true });
    return body;
  }

  /**
   * Log in: `wx.login()` for a one-time code, exchanged at issuer for a token pair that is
   * stored. Every call starts a new session; `ensureLogin()` reuses the stored one. Concurrent
   * calls share one login.
   *
   * @returns {Promise<Object>} issuer's token response (`access_token`, `refresh_token`,
   *          `expires_in`, `user_id`, `is_new_user` …).
   * @throws {IssuerError} issuer's error (`invalid_grant` for a bad code, `slow_down` …),
   *          `wx_login_failed`, or `network_error`.
   */
  function login() {
    return loginInFlight || shared(doLogin, function (p) { loginInFlight = p; });
  }

  async function sessionEnded(error) {
    await clearTokens();
    emit('SIGNED_OUT', { tokens: null, reason: 'session_ended', error: error });
    await login();
    return loadTokens();
  }

  async function doRefresh() {
    const tokens = await loadTokens();
    if (!tokens) {
      await login();
      return loadTokens();
    }
    if (tokens.refresh_expires_at && tokens.refresh_expires_at <= Date.now()) {
      // The session's absolute lifetime is over: issuer would only answer invalid_grant.
      return sessionEnded(null);
    }
    const res = await post('/auth/refresh', { refresh_token: tokens.refresh_token });
    if (res.statusCode === 200) {
      const fresh = await storeTokens(parseBody(res.data));
      emit('TOKEN_REFRESHED', { tokens: fresh });
      return fresh;
    }
    const error = errorFromResponse(res);
    // invalid_grant means the session is over (expired, logged out, revoked after a reuse):
    // no retry of the refresh can help, only a new wx.login. Anything else (429, 503, network)
    // is passing, and logging in would only add load, so it is the caller's to retry.
    if (res.statusCode !== 400 || error.error !== 'invalid_grant') throw error;
    const now = await loadTokens();
    // Another client object sharing this storage key may have rotated the token meanwhile.
    if (now && now.refresh_token !== tokens.refresh_token) return now;
    return sessionEnded(error);
  }

  function refresh() {
    return refreshInFlight || shared(doRefresh, function (p) { refreshInFlight = p; });
  }

  function usable(tokens) {
    if (!tokens) throw new StorageError('the storage did not keep the tokens');
    return tokens;
  }

  function isStale(tokens) {
    return !(tokens.expires_at > Date.now() + EXPIRY_MARGIN_MS);
  }

  async function freshTokens() {
    const tokens = await loadTokens();
    if (!tokens) {
      await login();
      return usable(await loadTokens());
    }
    if (isStale(tokens)) return usable(await refresh());
    return tokens;
  }

  /**
   * A fresh access token, for what `request()` cannot send: `wx.uploadFile`,
   * `wx.downloadFile`, `wx.connectSocket`, interceptors of other HTTP libraries. Logs in when
   * there are no tokens; refreshes (one refresh shared by all callers) when the token is
   * within 30 s of expiring.
   *
   * @returns {Promise<string>}
   * @throws {IssuerError} as `login()` and a refresh can.
   */
  async function getAccessToken() {
    return (await freshTokens()).access_token;
  }

  /**
   * What `App.onLaunch` should call: keep the stored session when there is one (no network
   * round trip, even offline), and log in only when there is none or it has run out. The
   * access token is refreshed later, when a request needs it.
   *
   * @returns {Promise<Tokens>}
   * @throws {IssuerError} when a login was needed and failed.
   */
  async function ensureLogin() {
    const tokens = await loadTokens();
    if (tokens && !(tokens.refresh_expires_at && tokens.refresh_expires_at <= Date.now())) {
      return tokens;
    }
    if (tokens) {
      await clearTokens();
      emit('SIGNED_OUT', { tokens: null, reason: 'session_ended', error: null });
    }
    await login();
    return usable(await loadTokens());
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
    return platform.request(call);
  }

  /**
   * `wx.request` (or Taro's / uni-app's) with the access token, as a promise.
   *
   * Logs in first when there are no tokens, refreshes first when the access token is (nearly)
   * expired. On a 401 it refreshes once (one refresh shared by all concurrent requests) and
   * retries once; when the refresh token is dead too it logs in again and retries once. It never
   * retries more than once, so a 401 that survives a fresh token is the caller's.
   *
   * @param {Object} options  request options; `url` may be a path on `baseUrl` (`/me`) or
   *          a full URL of your own API (the access token is sent to it: only use your hosts).
   *          `success` / `fail` / `complete` are ignored.
   * @returns {Promise<{statusCode: number, data: *, header: Object}>} the request's result,
   *          for statuses below 400.
   * @throws {IssuerError} `IssuerApiError` for statuses of 400 and above (`.error` from the
   *          OAuth body when there is one, else `http_<status>`), `IssuerNetworkError`, or what
   *          a failed login or refresh threw.
   */
  async function request(options) {
    if (!options || !options.url) throw new TypeError('request: options.url is required');
    let tokens = await freshTokens();
    let res = await send(options, tokens.access_token);
    if (res.statusCode === 401) {
      const current = await loadTokens();
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
   * @param {{everywhere?: boolean}} [options]  `everywhere: true` ends every session of the
   *        user, on every device (`{"scope": "global"}` with the access token).
   * @returns {Promise<boolean>} whether issuer confirmed the logout (204).
   */
  async function logout(options) {
    const everywhere = Boolean(options && options.everywhere);
    // A refresh or login finishing after the clear would write its tokens back.
    const pending = [loginInFlight, refreshInFlight].filter(Boolean).map(function (p) {
      return p.catch(function () {});
    });
    await Promise.all(pending);
    const tokens = await loadTokens();
    let confirmed = false;
    if (tokens) {
      try {
        let res;
        if (everywhere) {
          // The access token names the user; request() refreshes it first when it is stale.
          res = await request({
            url: '/auth/logout',
            method: 'POST',
            data: { scope: 'global', refresh_token: tokens.refresh_token },
            header: { 'content-type': 'application/json' },
          });
        } else {
          res = await post('/auth/logout', { refresh_token: tokens.refresh_token });
        }
        confirmed = res.statusCode === 204;
      } catch (e) {
        // Offline, or the session had already ended: clearing locally is still what the
        // user asked for.
      }
    }
    await clearTokens();
    if (tokens) emit('SIGNED_OUT', { tokens: null, reason: 'logout', error: null });
    return confirmed;
  }

  // -- profile and account (what the user fills in since WeChat stopped giving it)

  /**
   * Save what the user filled in: `<input type="nickname">`'s value, and/or an avatar URL
   * (`https://`, or one `uploadAvatar()` returned).
   *
   * @param {{nickname?: string, avatarUrl?: string}} profile
   * @returns {Promise<Object>} the user as `GET /me` now shows it.
   * @throws {IssuerApiError} `invalid_request` naming the field that is refused.
   */
  async function updateProfile(profile) {
    const data = {};
    if (profile && profile.nickname !== undefined) data.nickname = profile.nickname;
    if (profile && profile.avatarUrl !== undefined) data.avatar_url = profile.avatarUrl;
    const res = await request({
      url: '/me',
      method: 'PATCH',
      data: data,
      header: { 'content-type': 'application/json' },
    });
    return parseBody(res.data);
  }

  function upload(filePath, accessToken) {
    if (typeof platform.uploadFile !== 'function') {
      throw new TypeError('uploadAvatar: this platform has no uploadFile');
    }
    return platform.uploadFile({
      url: url('/me/avatar'),
      filePath: filePath,
      name: 'file',
      header: { Authorization: 'Bearer ' + accessToken },
    });
  }

  /**
   * Upload the avatar the user chose (`<button open-type="chooseAvatar">`'s
   * `event.detail.avatarUrl`, a temporary file) with `wx.uploadFile`. issuer re-encodes it
   * (at most 2 MiB in, 640 px out, no metadata kept) and serves it at a stable URL. On a 401
   * it refreshes once and retries once, as `request()` does.
   *
   * @param {string} tempFilePath
   * @returns {Promise<Object>} the user as `GET /me` now shows it; `avatar_url` is the new URL.
   * @throws {IssuerApiError} `invalid_request` (not an image, too many pixels), 413 (larger
   *         than 2 MiB), or what a login or refresh threw.
   */
  async function uploadAvatar(tempFilePath) {
    if (typeof tempFilePath !== 'string' || !tempFilePath) {
      throw new TypeError('uploadAvatar: tempFilePath is required');
    }
    let tokens = await freshTokens();
    let res = await upload(tempFilePath, tokens.access_token);
    if (res.statusCode === 401) {
      const current = await loadTokens();
      tokens = current && current.access_token !== tokens.access_token && !isStale(current)
        ? current
        : usable(await refresh());
      res = await upload(tempFilePath, tokens.access_token);
    }
    if (res.statusCode >= 400) throw errorFromResponse(res);
    // wx.uploadFile hands the body over as a string, whatever its type.
    return parseBody(res.data);
  }

  /**
   * The phone number from `<button open-type="getPhoneNumber" bindgetphonenumber="...">`:
   * pass the handler's event. Its `detail.code` goes to issuer, which asks WeChat (with the
   * user's openid) and keeps the number for `/me`.
   *
   * @param {{detail?: {code?: string, errMsg?: string}}} event
   * @returns {Promise<{phone_number: string, pure_phone_number: string, country_code: ?string}>}
   * @throws {IssuerError} `phone_number_denied` when the user refused (no code);
   *         `quota_exhausted` when the app's phone-number quota is used up; `invalid_grant`.
   */
  async function getPhoneNumber(event) {
    const detail = (event && event.detail) || {};
    if (typeof detail.code !== 'string' || !detail.code) {
      throw new IssuerError('phone_number_denied', detail.errMsg || 'the event carries no code');
    }
    const res = await request({
      url: '/wechat/phone',
      method: 'POST',
      data: { code: detail.code },
      header: { 'content-type': 'application/json' },
    });
    return parseBody(res.data);
  }

  /**
   * Delete the user's account at issuer (every session, identity, phone, profile and avatar)
   * and forget the tokens. A later login is a new user.
   *
   * @returns {Promise<void>}
   * @throws {IssuerError} when issuer did not confirm: the tokens are then kept.
   */
  async function deleteAccount() {
    await request({ url: '/me', method: 'DELETE' });
    await clearTokens();
    emit('SIGNED_OUT', { tokens: null, reason: 'account_deleted', error: null });
  }

  // -- PC scan login: the phone half

  function checkTicket(ticket, name) {
    if (typeof ticket !== 'string' || !TICKET_PATTERN.test(ticket)) {
      throw new TypeError(name + ': ticket must be the 32-character scene of a scan code');
    }
  }

  /**
   * Tell issuer this user scanned the PC's code (`POST /auth/scan/{ticket}/scanned`): the PC
   * shows "scanned" and the ticket is this user's alone to confirm. Logs in first when there
   * are no tokens. Calling it again for the same ticket is harmless.
   *
   * @param {string} ticket  from `scanTicketFrom(options)`.
   * @returns {Promise<{status: 'scanned', client_id: string}>} `client_id` names the PC site.
   * @throws {IssuerApiError} `invalid_grant` (the ticket expired, or another user scanned
   *         it), `invalid_request` (a ticket of another mini-program), or what a login threw.
   */
  async function scanned(ticket) {
    checkTicket(ticket, 'scanned');
    const res = await request({
      url: '/auth/scan/' + ticket + '/scanned',
      method: 'POST',
      data: {},
      header: { 'content-type': 'application/json' },
    });
    return parseBody(res.data);
  }

  /**
   * The user's answer to "log in on the PC?" (`POST /auth/scan/{ticket}/confirm`): `true`
   * logs the PC in as this user, `false` refuses. Call `scanned(ticket)` first.
   *
   * @param {string} ticket
   * @param {boolean} approve
   * @returns {Promise<{status: 'confirmed'|'denied'}>}
   * @throws {IssuerApiError} `invalid_grant` (expired, already answered, or scanned by
   *         another user), or what a login or refresh threw.
   */
  async function confirmScan(ticket, approve) {
    checkTicket(ticket, 'confirmScan');
    if (typeof approve !== 'boolean') throw new TypeError('confirmScan: approve must be a boolean');
    const res = await request({
      url: '/auth/scan/' + ticket + '/confirm',
      method: 'POST',
      data: { approve: approve },
      header: { 'content-type': 'application/json' },
    });
    return parseBody(res.data);
  }

  return {
    login: login,
    ensureLogin: ensureLogin,
    getAccessToken: getAccessToken,
    request: request,
    logout: logout,
    updateProfile: updateProfile,
    uploadAvatar: uploadAvatar,
    getPhoneNumber: getPhoneNumber,
    deleteAccount: deleteAccount,
    scanned: scanned,
    confirmScan: confirmScan,
    getTokens: getTokens,
    onAuthStateChange: onAuthStateChange,
  };
}

module.exports = {
  VERSION: VERSION,
  createClient: createClient,
  scanTicketFrom: scanTicketFrom,
  wxPlatform: wxPlatform,
  taroPlatform: taroPlatform,
  uniPlatform: uniPlatform,
  IssuerError: IssuerError,
  IssuerApiError: IssuerApiError,
  IssuerNetworkError: IssuerNetworkError,
  WxLoginError: WxLoginError,
  InvalidResponseError: InvalidResponseError,
  StorageError: StorageError,
};
