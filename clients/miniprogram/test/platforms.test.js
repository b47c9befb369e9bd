/**
 * The Taro and uni-app adapters against a live development-mode issuer, each through a shim
 * of that framework's API (test/wx-shim.js): their promise and callback shapes differ from wx.
 */
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');

const { createClient, IssuerError, WxLoginError, IssuerNetworkError } = require('../issuer.js');
const { createTaro, createUni } = require('./wx-shim.js');

const BASE = (process.env.ISSUER_TEST_URL || '').replace(/\/+$/, '');
if (!BASE) throw new Error('ISSUER_TEST_URL is not set: see test/client.test.js');

const STORAGE_KEY = 'issuer.tokens';
const OPTIONS = { timeout: 15000 };

function tamperAccessToken(api) {
  const tokens = api.getStorageSync(STORAGE_KEY);
  const [header, claims, signature] = tokens.access_token.split('.');
  tokens.access_token = [header, claims, (signature[0] === 'A' ? 'B' : 'A') + signature.slice(1)].join('.');
  api.setStorageSync(STORAGE_KEY, tokens);
}

const FRAMEWORKS = [
  { name: 'Taro', make: () => createTaro({ baseUrl: BASE }), option: 'taro' },
  { name: 'uni-app (Vue 3)', make: () => createUni({ baseUrl: BASE, vue: 3 }), option: 'uni' },
  { name: 'uni-app (Vue 2)', make: () => createUni({ baseUrl: BASE, vue: 2 }), option: 'uni' },
];

for (const framework of FRAMEWORKS) {
  test(`${framework.name}: login, /me, one shared refresh on 401s, logout`, OPTIONS, async () => {
    const api = framework.make();
    const client = createClient({ baseUrl: BASE, [framework.option]: api });

    const me = await client.request({ url: '/me' });
    assert.equal(me.statusCode, 200);
    assert.equal(me.data.user_id, client.getTokens().user_id);
    assert.deepEqual(api.getStorageSync(STORAGE_KEY), client.getTokens());
    assert.equal(api.count('/auth/login'), 1);

    tamperAccessToken(api);
    const answers = await Promise.all([1, 2, 3].map(() => client.request({ url: '/me' })));
    assert.deepEqual(
      answers.map((res) => res.statusCode),
      [200, 200, 200]
    );
    assert.equal(api.count('/auth/refresh'), 1);
    assert.equal(api.count('/auth/login'), 1);

    const token = await client.getAccessToken();
    assert.equal(token, client.getTokens().access_token);

    assert.equal(await client.logout(), true);
    assert.equal(client.getTokens(), null);
    assert.equal(api.getStorageSync(STORAGE_KEY), '');
  });

  test(`${framework.name}: a 4xx is an IssuerError, a failed login a WxLoginError`, OPTIONS, async () => {
    const api = framework.make();
    const client = createClient({ baseUrl: BASE, [framework.option]: api });
    await assert.rejects(client.request({ url: '/wechat/decrypt', method: 'POST', data: {} }), (error) => {
      assert.ok(error instanceof IssuerError);
      assert.equal(error.statusCode, 400);
      assert.equal(error.error, 'invalid_request');
      return true;
    });

    const offline = framework.make();
    if (framework.option === 'taro') {
      offline.login = () => Promise.reject({ errMsg: 'login:fail no network' });
    } else {
      offline.login = (opts) => opts.fail({ errMsg: 'login:fail no network' });
    }
    await assert.rejects(createClient({ baseUrl: BASE, [framework.option]: offline }).login(), (error) => {
      assert.ok(error instanceof WxLoginError);
      assert.equal(error.error, 'wx_login_failed');
      assert.equal(error.description, 'login:fail no network');
      return true;
    });

    // Port 1 on loopback: nothing listens, the connection is refused at once.
    const unreachable = createClient({ baseUrl: 'http://127.0.0.1:1', [framework.option]: framework.make() });
    await assert.rejects(unreachable.login(), (error) => {
      assert.ok(error instanceof IssuerNetworkError);
      assert.equal(error.statusCode, 0);
      return true;
    });
  });
}

test('uni-app is asked for the weixin login provider', OPTIONS, async () => {
  const uni = createUni({ baseUrl: BASE });
  const providers = [];
  const login = uni.login;
  uni.login = (opts) => {
    providers.push(opts.provider);
    return login(opts);
  };
  await createClient({ baseUrl: BASE, uni }).login();
  assert.deepEqual(providers, ['weixin']);
});

test('only one platform may be given', () => {
  assert.throws(
    () => createClient({ baseUrl: BASE, taro: createTaro({ baseUrl: BASE }), uni: createUni({ baseUrl: BASE }) }),
    /one of platform, wx, taro or uni/
  );
});
