/**
 * getAccessToken, ensureLogin, auth state events, pluggable storage and the development login
 * hook, against a live development-mode issuer (see test/client.test.js).
 */
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');

const issuer = require('../issuer.js');
const { createClient, IssuerError, IssuerApiError, WxLoginError } = issuer;
const { createWx } = require('./wx-shim.js');

const BASE = (process.env.ISSUER_TEST_URL || '').replace(/\/+$/, '');
if (!BASE) throw new Error('ISSUER_TEST_URL is not set: see test/client.test.js');

const STORAGE_KEY = 'issuer.tokens';
const OPTIONS = { timeout: 15000 };

function setup(config) {
  const wx = createWx({ baseUrl: BASE });
  const client = createClient(Object.assign({ baseUrl: BASE, wx }, config));
  const events = [];
  client.onAuthStateChange((event, detail) => events.push([event, detail]));
  return { wx, client, events };
}

function age(wx, fields) {
  const tokens = wx.getStorageSync(STORAGE_KEY);
  wx.setStorageSync(STORAGE_KEY, Object.assign(tokens, fields));
}

async function post(path, body) {
  const res = await fetch(BASE + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return res.status;
}

// -- getAccessToken

test('getAccessToken logs in when there are no tokens, then reuses a fresh token', OPTIONS, async () => {
  const { wx, client } = setup();
  const token = await client.getAccessToken();
  assert.equal(token, client.getTokens().access_token);
  assert.equal(await client.getAccessToken(), token);
  assert.equal(wx.count('/auth/login'), 1);
  assert.equal(wx.count('/auth/refresh'), 0);
});

test('getAccessToken refreshes a token near expiry, once for concurrent callers', OPTIONS, async () => {
  const { wx, client, events } = setup();
  await client.login();
  const old = client.getTokens();
  age(wx, { expires_at: Date.now() + 5000 }); // inside the 30 s margin: getTokens() would hand it out
  assert.equal(client.getTokens().access_token, old.access_token);

  const tokens = await Promise.all([1, 2, 3, 4].map(() => client.getAccessToken()));
  assert.equal(wx.count('/auth/refresh'), 1);
  assert.equal(new Set(tokens).size, 1);
  assert.notEqual(tokens[0], old.access_token);
  assert.equal(tokens[0], client.getTokens().access_token);
  assert.ok(client.getTokens().expires_at > Date.now() + 60 * 1000);
  // The token works where request() cannot go: an upload, a socket, another HTTP library.
  const me = await fetch(BASE + '/me', { headers: { Authorization: 'Bearer ' + tokens[0] } });
  assert.equal(me.status, 200);
  assert.deepEqual(
    events.map((pair) => pair[0]),
    ['SIGNED_IN', 'TOKEN_REFRESHED']
  );
});

// -- ensureLogin

test('ensureLogin logs in once, then reuses the stored session without a round trip', OPTIONS, async () => {
  const { wx, client } = setup();
  const first = await client.ensureLogin();
  assert.equal(first.user_id, client.getTokens().user_id);
  assert.equal(wx.count('/auth/login'), 1);

  // A new launch: another client object over the same storage, even with a stale access token.
  age(wx, { expires_at: Date.now() - 1000 });
  const relaunched = createClient({ baseUrl: BASE, wx });
  const again = await relaunched.ensureLogin();
  assert.equal(again.refresh_token, first.refresh_token);
  assert.equal(wx.count('/auth/login'), 1);
  assert.equal(wx.count('/auth/refresh'), 0);
  // The first request refreshes the stale token and keeps the same session.
  const me = await relaunched.request({ url: '/me' });
  assert.equal(me.data.user_id, first.user_id);
  assert.equal(wx.count('/auth/refresh'), 1);
});

test('ensureLogin logs in again when the stored session has run out', OPTIONS, async () => {
  const { wx, client, events } = setup();
  await client.ensureLogin();
  const old = client.getTokens();
  assert.ok(old.refresh_expires_at > Date.now());
  age(wx, { refresh_expires_at: Date.now() - 1000 });

  const now = await client.ensureLogin();
  assert.notEqual(now.refresh_token, old.refresh_token);
  assert.equal(wx.count('/auth/login'), 2);
  assert.equal(wx.count('/auth/refresh'), 0); // a refresh issuer would refuse is not tried
  assert.deepEqual(
    events.map((pair) => [pair[0], pair[1].reason]),
    [
      ['SIGNED_IN', undefined],
      ['SIGNED_OUT', 'session_ended'],
      ['SIGNED_IN', undefined],
    ]
  );
});

test('ensureLogin rejects with the login error and keeps nothing', OPTIONS, async () => {
  const { wx, client } = setup();
  wx.login = (opts) => opts.fail({ errMsg: 'login:fail no network' });
  await assert.rejects(client.ensureLogin(), WxLoginError);
  assert.equal(client.getTokens(), null);
});

// -- auth state events

test('events: signed in, refreshed, signed out by a dead session, by logout', OPTIONS, async () => {
  const { wx, client, events } = setup();
  const body = await client.login();
  assert.equal(events.length, 1);
  assert.equal(events[0][0], 'SIGNED_IN');
  assert.equal(events[0][1].tokens.access_token, body.access_token);
  assert.equal(events[0][1].isNewUser, body.is_new_user);

  age(wx, { expires_at: 0 });
  await client.getAccessToken();
  assert.equal(events[1][0], 'TOKEN_REFRESHED');
  assert.deepEqual(events[1][1].tokens, client.getTokens());

  // Logged out elsewhere (another device, an operator): the next refresh finds it over.
  assert.equal(await post('/auth/logout', { refresh_token: client.getTokens().refresh_token }), 204);
  age(wx, { expires_at: 0 });
  await client.getAccessToken();
  assert.equal(events[2][0], 'SIGNED_OUT');
  assert.equal(events[2][1].reason, 'session_ended');
  assert.equal(events[2][1].tokens, null);
  assert.ok(events[2][1].error instanceof IssuerApiError);
  assert.equal(events[2][1].error.error, 'invalid_grant');
  assert.equal(events[3][0], 'SIGNED_IN'); // wx.login needs no consent: logged in again

  await client.logout();
  assert.deepEqual(events[4], ['SIGNED_OUT', { tokens: null, reason: 'logout', error: null }]);
  await client.logout(); // already signed out: no second event
  assert.equal(events.length, 5);
});

test('unsubscribe stops events; a throwing listener breaks neither the login nor others', OPTIONS, async (t) => {
  const wx = createWx({ baseUrl: BASE });
  const client = createClient({ baseUrl: BASE, wx });
  const seen = [];
  const unsubscribe = client.onAuthStateChange((event) => seen.push(event));
  const thrown = [];
  // The listener's error is rethrown outside the client, where the app's error handler sees it.
  const original = globalThis.setTimeout;
  t.mock.method(globalThis, 'setTimeout', (fn, ms) =>
    original(() => {
      try {
        fn();
      } catch (e) {
        thrown.push(e);
      }
    }, ms)
  );
  client.onAuthStateChange(() => {
    throw new Error('listener bug');
  });
  const after = [];
  client.onAuthStateChange((event) => after.push(event));

  await client.login();
  assert.deepEqual(seen, ['SIGNED_IN']);
  assert.deepEqual(after, ['SIGNED_IN']);
  unsubscribe();
  unsubscribe(); // twice is harmless
  await client.logout();
  assert.deepEqual(seen, ['SIGNED_IN']);
  assert.deepEqual(after, ['SIGNED_IN', 'SIGNED_OUT']);
  await new Promise((resolve) => original(resolve, 10));
  assert.deepEqual(
    thrown.map((e) => e.message),
    ['listener bug', 'listener bug']
  );
});

// -- pluggable storage

test('a custom async storage keeps the tokens as JSON strings', OPTIONS, async () => {
  const map = new Map();
  const storage = {
    getItem: async (key) => (map.has(key) ? map.get(key) : null),
    setItem: async (key, value) => {
      assert.equal(typeof value, 'string');
      map.set(key, value);
    },
    removeItem: async (key) => {
      map.delete(key);
    },
  };
  const wx = createWx({ baseUrl: BASE });
  const client = createClient({ baseUrl: BASE, wx, storage, storageKey: 'mine' });
  await client.ensureLogin();
  assert.equal(wx.getStorageSync('mine'), ''); // wx storage untouched
  const stored = JSON.parse(map.get('mine'));
  assert.deepEqual(client.getTokens(), stored);
  const me = await client.request({ url: '/me' });
  assert.equal(me.data.user_id, stored.user_id);

  // A relaunch over the same storage reuses the session.
  const relaunched = createClient({ baseUrl: BASE, wx, storage, storageKey: 'mine' });
  assert.equal((await relaunched.ensureLogin()).refresh_token, stored.refresh_token);
  assert.equal(wx.count('/auth/login'), 1);

  await relaunched.logout();
  assert.equal(map.has('mine'), false);
});

test('a storage without the three functions is refused at once', () => {
  assert.throws(
    () => createClient({ baseUrl: BASE, wx: createWx({ baseUrl: BASE }), storage: { getItem() {} } }),
    /getItem, setItem and removeItem/
  );
});

// -- the development login hook

test('devLogin takes codes from the emulator for a chosen test user, not from wx.login', OPTIONS, async () => {
  // WeChat DevTools' wx.login gives real WeChat codes, which issuer's emulator does not know.
  const wx = createWx({ baseUrl: BASE });
  wx.login = (opts) => opts.success({ code: 'a-real-wechat-code', errMsg: 'login:ok' });
  const plain = createClient({ baseUrl: BASE, wx });
  await assert.rejects(plain.login(), (error) => {
    assert.ok(error instanceof IssuerApiError);
    assert.equal(error.error, 'invalid_grant');
    return true;
  });

  const alice = createClient({ baseUrl: BASE, wx, storageKey: 'alice', devLogin: { user: 'dev-alice' } });
  const again = createClient({ baseUrl: BASE, wx, storageKey: 'again', devLogin: { user: 'dev-alice' } });
  const bob = createClient({ baseUrl: BASE, wx, storageKey: 'bob', devLogin: { user: 'dev-bob' } });
  const a = await alice.login();
  const b = await again.login();
  const c = await bob.login();
  assert.equal(a.user_id, b.user_id); // the same test user is the same user
  assert.notEqual(a.user_id, c.user_id);
  assert.equal((await alice.request({ url: '/me' })).data.user_id, a.user_id);
});

test('devLogin is refused for a non-loopback issuer, and says so when no emulator answers', OPTIONS, async () => {
  const wx = createWx({ baseUrl: BASE });
  for (const baseUrl of ['https://login.example.com', 'http://127.0.0.1.example.com', 'http://10.0.0.5:8000']) {
    assert.throws(() => createClient({ baseUrl, wx, devLogin: true }), /development issuer on 127\.0\.0\.1 only/);
  }
  // A loopback URL with no development issuer behind it (port 1: nothing listens).
  const nowhere = createClient({ baseUrl: 'http://127.0.0.1:1', wx, devLogin: true });
  await assert.rejects(nowhere.login(), (error) => {
    assert.ok(error instanceof WxLoginError);
    assert.match(error.description, /development emulator/);
    return true;
  });
});

// -- errors and the package surface

test('every error is an IssuerError with its own class name', () => {
  for (const name of ['IssuerApiError', 'IssuerNetworkError', 'WxLoginError', 'InvalidResponseError', 'StorageError']) {
    const ErrorClass = issuer[name];
    const error = name === 'IssuerApiError' ? new ErrorClass('x', 'y', 400) : new ErrorClass('why');
    assert.ok(error instanceof IssuerError, name);
    assert.ok(error instanceof Error, name);
    assert.equal(error.name, name);
  }
});

test('the ES module entry exports the same objects', async () => {
  const esm = await import('../issuer.mjs');
  assert.equal(esm.createClient, createClient);
  assert.equal(esm.IssuerError, IssuerError);
  assert.equal(esm.default.createClient, createClient);
  assert.equal(esm.VERSION, require('../package.json').version);
});
