/**
 * issuer.js against a live development-mode issuer (`issuer dev`, or the pytest wrapper
 * tests/test_miniprogram_client.py), whose URL is in ISSUER_TEST_URL.
 */
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');

const { createClient, IssuerError } = require('../issuer.js');
const { createWx } = require('./wx-shim.js');

const BASE = (process.env.ISSUER_TEST_URL || '').replace(/\/+$/, '');
if (!BASE) {
  throw new Error(
    'ISSUER_TEST_URL is not set: start a development-mode issuer (`issuer dev --port 8000`) ' +
      'and run ISSUER_TEST_URL=http://127.0.0.1:8000 npm test'
  );
}

const STORAGE_KEY = 'issuer.tokens';
const OPTIONS = { timeout: 15000 };

function setup(wxOptions) {
  const wx = createWx(Object.assign({ baseUrl: BASE }, wxOptions));
  const client = createClient({ baseUrl: BASE, wx });
  return { wx, client };
}

// A token issuer can only refuse: same header and claims, a signature that no longer matches.
function tamperAccessToken(wx) {
  const tokens = wx.getStorageSync(STORAGE_KEY);
  const [header, claims, signature] = tokens.access_token.split('.');
  const flipped = (signature[0] === 'A' ? 'B' : 'A') + signature.slice(1);
  tokens.access_token = [header, claims, flipped].join('.');
  wx.setStorageSync(STORAGE_KEY, tokens);
  return tokens;
}

// Straight to issuer, past the client and the shim's counters: what another device would do.
async function post(path, body) {
  const res = await fetch(BASE + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

test('login stores the tokens and request() reaches /me with them', OPTIONS, async () => {
  const { wx, client } = setup();
  const before = Date.now();
  const body = await client.login();
  assert.equal(typeof body.access_token, 'string');

  const tokens = client.getTokens();
  assert.equal(tokens.access_token, body.access_token);
  assert.equal(tokens.refresh_token, body.refresh_token);
  assert.equal(tokens.user_id, body.user_id);
  assert.ok(tokens.expires_at >= before + body.expires_in * 1000);
  assert.ok(tokens.expires_at <= Date.now() + body.expires_in * 1000);
  assert.deepEqual(wx.getStorageSync(STORAGE_KEY), tokens);

  const me = await client.request({ url: '/me' });
  assert.equal(me.statusCode, 200);
  assert.equal(me.data.user_id, body.user_id);
  assert.equal(wx.count('/auth/login'), 1);
  assert.equal(wx.count('/auth/refresh'), 0);
});

test('request() without tokens logs in first, once for concurrent requests', OPTIONS, async () => {
  const { wx, client } = setup();
  const answers = await Promise.all([1, 2, 3].map(() => client.request({ url: '/me' })));
  assert.deepEqual(
    answers.map((res) => res.statusCode),
    [200, 200, 200]
  );
  assert.equal(wx.count('/auth/login'), 1);
  assert.equal(wx.count('/me'), 3);
  assert.equal(answers[0].data.user_id, client.getTokens().user_id);
});

test('a refused access token costs exactly one refresh, then succeeds', OPTIONS, async () => {
  const { wx, client } = setup();
  await client.login();
  const tampered = tamperAccessToken(wx);

  const me = await client.request({ url: '/me' });
  assert.equal(me.statusCode, 200);
  assert.equal(wx.count('/auth/refresh'), 1);
  assert.equal(wx.count('/auth/login'), 1);
  assert.equal(wx.count('/me'), 2); // the 401, then the retry
  const now = client.getTokens();
  assert.notEqual(now.access_token, tampered.access_token);
  assert.notEqual(now.refresh_token, tampered.refresh_token); // rotated
});

test('5 concurrent 401s share one refresh and all succeed', OPTIONS, async () => {
  const { wx, client } = setup();
  await client.login();
  tamperAccessToken(wx);

  const answers = await Promise.all([1, 2, 3, 4, 5].map(() => client.request({ url: '/me' })));
  assert.deepEqual(
    answers.map((res) => res.statusCode),
    [200, 200, 200, 200, 200]
  );
  assert.equal(wx.count('/auth/refresh'), 1);
  assert.equal(wx.count('/auth/login'), 1);
});

test('a 401 that arrives after another request refreshed reuses the new token', OPTIONS, async () => {
  const { wx, client } = setup();
  await client.login();
  tamperAccessToken(wx);
  // Hold the first answer of one request back until the other request is done, refresh and all.
  let release;
  const gate = new Promise((resolve) => (release = resolve));
  const request = wx.request;
  let holding = true;
  wx.request = (opts) => {
    if (holding && opts.header && opts.header['X-Hold']) {
      holding = false;
      const success = opts.success;
      return request(Object.assign({}, opts, { success: (res) => gate.then(() => success(res)) }));
    }
    return request(opts);
  };

  const late = client.request({ url: '/me', header: { 'X-Hold': '1' } });
  const early = await client.request({ url: '/me' });
  assert.equal(wx.count('/auth/refresh'), 1);
  release();
  assert.equal((await late).statusCode, 200);
  assert.equal(early.statusCode, 200);
  assert.equal(wx.count('/auth/refresh'), 1);
  assert.equal(wx.count('/me'), 4); // two 401s, two retries
});

test('an access token past expires_at is refreshed before it is sent', OPTIONS, async () => {
  const { wx, client } = setup();
  await client.login();
  const tokens = wx.getStorageSync(STORAGE_KEY);
  tokens.expires_at = Date.now() + 10 * 1000; // inside the 30 s margin
  wx.setStorageSync(STORAGE_KEY, tokens);

  const me = await client.request({ url: '/me' });
  assert.equal(me.statusCode, 200);
  assert.equal(wx.count('/auth/refresh'), 1);
  assert.equal(wx.count('/me'), 1); // no 401 round trip
  assert.ok(client.getTokens().expires_at > Date.now() + 60 * 1000);
});

test('a dead refresh token falls back to login and succeeds', OPTIONS, async () => {
  const { wx, client } = setup();
  await client.login();
  const old = client.getTokens();
  const ended = await post('/auth/logout', { refresh_token: old.refresh_token });
  assert.equal(ended.status, 204);
  tamperAccessToken(wx);

  const me = await client.request({ url: '/me' });
  assert.equal(me.statusCode, 200);
  assert.equal(wx.count('/auth/refresh'), 1); // answered 400 invalid_grant
  assert.equal(wx.count('/auth/login'), 2);
  const now = client.getTokens();
  assert.notEqual(now.refresh_token, old.refresh_token);
  assert.equal(me.data.user_id, now.user_id);
});

test('concurrent requests on a dead session share one refresh and one login', OPTIONS, async () => {
  const { wx, client } = setup();
  await client.login();
  await post('/auth/logout', { refresh_token: client.getTokens().refresh_token });

  const answers = await Promise.all([1, 2, 3].map(() => client.request({ url: '/me' })));
  assert.deepEqual(
    answers.map((res) => res.statusCode),
    [200, 200, 200]
  );
  assert.equal(wx.count('/auth/refresh'), 1);
  assert.equal(wx.count('/auth/login'), 2);
});

test('it never loops: a failing fallback login rejects after one attempt', OPTIONS, async () => {
  const { wx, client } = setup();
  await client.login();
  await post('/auth/logout', { refresh_token: client.getTokens().refresh_token });
  wx.login = (opts) => opts.fail({ errMsg: 'login:fail no network' });

  await assert.rejects(client.request({ url: '/me' }), (error) => {
    assert.ok(error instanceof IssuerError);
    assert.equal(error.error, 'wx_login_failed');
    return true;
  });
  assert.equal(wx.count('/me'), 1);
  assert.equal(wx.count('/auth/refresh'), 1);
  assert.equal(wx.count('/auth/login'), 1);
  assert.equal(client.getTokens(), null); // the dead pair is not kept
});

test('logout ends the session at issuer and clears storage', OPTIONS, async () => {
  const { wx, client } = setup();
  await client.login();
  const { refresh_token } = client.getTokens();

  assert.equal(await client.logout(), true);
  assert.equal(client.getTokens(), null);
  assert.equal(wx.getStorageSync(STORAGE_KEY), '');
  assert.equal(wx.count('/auth/logout'), 1);
  const again = await post('/auth/refresh', { refresh_token });
  assert.equal(again.status, 400);
  assert.equal(again.body.error, 'invalid_grant');
});

test('logout clears storage even when issuer cannot be reached', OPTIONS, async () => {
  const wx = createWx({ baseUrl: BASE });
  // Port 1 on loopback: nothing listens, the connection is refused at once.
  const offline = createClient({ baseUrl: 'http://127.0.0.1:1', wx });
  wx.setStorageSync(STORAGE_KEY, {
    access_token: 'a.b.c',
    refresh_token: 'rt_x',
    expires_at: Date.now() + 600000,
    user_id: 'u',
  });
  assert.equal(await offline.logout(), false);
  assert.equal(offline.getTokens(), null);
  assert.equal(wx.getStorageSync(STORAGE_KEY), '');
});

test('a 4xx from issuer rejects with its OAuth error', OPTIONS, async () => {
  const { wx, client } = setup();
  await assert.rejects(client.request({ url: '/wechat/decrypt', method: 'POST', data: {} }), (error) => {
    assert.ok(error instanceof IssuerError);
    assert.equal(error.statusCode, 400);
    assert.equal(error.error, 'invalid_request');
    assert.ok(error.description.length > 0);
    return true;
  });
  assert.equal(wx.count('/auth/refresh'), 0); // a 400 is not a token problem

  const stranger = createClient({ baseUrl: BASE, wx, appid: 'wx0000000000000000', storageKey: 'other' });
  await assert.rejects(stranger.login(), (error) => {
    assert.equal(error.statusCode, 400);
    assert.equal(error.error, 'invalid_client');
    return true;
  });
  assert.equal(stranger.getTokens(), null);
});
