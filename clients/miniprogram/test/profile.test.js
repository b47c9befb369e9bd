/**
 * updateProfile, uploadAvatar (over wx.uploadFile), getPhoneNumber, deleteAccount and
 * logout({everywhere}) against a live development-mode issuer (see test/client.test.js).
 */
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const os = require('os');
const path = require('path');

const { createClient, IssuerError, IssuerApiError } = require('../issuer.js');
const { createWx } = require('./wx-shim.js');

const BASE = (process.env.ISSUER_TEST_URL || '').replace(/\/+$/, '');
if (!BASE) throw new Error('ISSUER_TEST_URL is not set: see test/client.test.js');

const STORAGE_KEY = 'issuer.tokens';
const OPTIONS = { timeout: 15000 };
// A 1x1 PNG: what chooseAvatar's temporary file holds, only smaller.
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==',
  'base64'
);

let users = 0;
function setup() {
  // Each test its own WeChat user: deleting one account must not touch another test's.
  users += 1;
  const user = 'profile-' + process.pid + '-' + users;
  const wx = createWx({ baseUrl: BASE, user });
  const client = createClient({ baseUrl: BASE, wx });
  const events = [];
  client.onAuthStateChange((event, detail) => events.push([event, detail]));
  return { wx, client, events, user };
}

function tempFile(name, bytes) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'issuer-avatar-'));
  const file = path.join(dir, name);
  fs.writeFileSync(file, bytes);
  return file;
}

// A token issuer can only refuse: same claims, a signature that no longer matches.
function tamperAccessToken(wx) {
  const tokens = wx.getStorageSync(STORAGE_KEY);
  const [header, claims, signature] = tokens.access_token.split('.');
  tokens.access_token = [header, claims, (signature[0] === 'A' ? 'B' : 'A') + signature.slice(1)].join('.');
  wx.setStorageSync(STORAGE_KEY, tokens);
}

async function phoneCode(user) {
  const res = await fetch(BASE + '/_wechat/dev/phone-code', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  assert.equal(res.status, 200);
  return (await res.json()).code;
}

test('updateProfile saves the nickname the user typed and answers /me', OPTIONS, async () => {
  const { client } = setup();
  const me = await client.updateProfile({ nickname: '小明' });
  assert.equal(me.nickname, '小明');
  const seen = await client.request({ url: '/me' });
  assert.equal(seen.data.nickname, '小明');
});

test('updateProfile refuses a bad nickname with invalid_request naming it', OPTIONS, async () => {
  const { client } = setup();
  await assert.rejects(client.updateProfile({ nickname: 'a\u202eb' }), (err) => {
    assert.ok(err instanceof IssuerApiError);
    assert.equal(err.error, 'invalid_request');
    assert.match(err.description, /nickname/);
    return true;
  });
});

test('uploadAvatar sends the file with wx.uploadFile and /me points to it', OPTIONS, async () => {
  const { wx, client } = setup();
  const me = await client.uploadAvatar(tempFile('tmp_avatar.png', PNG));
  assert.match(me.avatar_url, /\/avatars\/[0-9a-f]{32}$/);
  assert.equal(wx.count('/me/avatar'), 1);
  const served = await fetch(me.avatar_url);
  assert.equal(served.status, 200);
  assert.equal(served.headers.get('content-type'), 'image/webp');
  // And the URL can be saved back as the avatar, as a mini-program that stores it would.
  assert.equal((await client.updateProfile({ avatarUrl: me.avatar_url })).avatar_url, me.avatar_url);
});

test('uploadAvatar refreshes once and retries after a 401', OPTIONS, async () => {
  const { wx, client } = setup();
  await client.login();
  tamperAccessToken(wx);
  const me = await client.uploadAvatar(tempFile('tmp_avatar.png', PNG));
  assert.match(me.avatar_url, /\/avatars\//);
  assert.equal(wx.count('/me/avatar'), 2);
  assert.equal(wx.count('/auth/refresh'), 1);
});

test('uploadAvatar of what is not an image rejects with invalid_request', OPTIONS, async () => {
  const { client } = setup();
  await assert.rejects(client.uploadAvatar(tempFile('notes.txt', Buffer.from('not an image'))), (err) => {
    assert.ok(err instanceof IssuerApiError);
    assert.equal(err.statusCode, 400);
    assert.equal(err.error, 'invalid_request');
    return true;
  });
});

test('getPhoneNumber sends the button event\'s code; a refusal has no code', OPTIONS, async () => {
  const { client, user } = setup();
  await client.login();
  const phone = await client.getPhoneNumber({ detail: { code: await phoneCode(user), errMsg: 'getPhoneNumber:ok' } });
  assert.match(phone.phone_number, /^138\d{8}$/);
  assert.equal((await client.request({ url: '/me' })).data.phone_number, phone.phone_number);
  await assert.rejects(client.getPhoneNumber({ detail: { errMsg: 'getPhoneNumber:fail user deny' } }), (err) => {
    assert.ok(err instanceof IssuerError);
    assert.equal(err.error, 'phone_number_denied');
    return true;
  });
  // Another user's code: WeChat checks the openid issuer sends with it.
  const { client: other } = setup();
  await assert.rejects(other.getPhoneNumber({ detail: { code: await phoneCode(user) } }), (err) => {
    assert.equal(err.error, 'invalid_grant');
    return true;
  });
});

test('logout({everywhere: true}) ends the sessions of the user on every device', OPTIONS, async () => {
  const phone = setup();
  const tablet = { wx: createWx({ baseUrl: BASE, user: phone.user }) };
  tablet.client = createClient({ baseUrl: BASE, wx: tablet.wx });
  await phone.client.login();
  await tablet.client.login();
  assert.equal(await phone.client.logout({ everywhere: true }), true);
  assert.equal(phone.client.getTokens(), null);
  const refresh = await fetch(BASE + '/auth/refresh', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ refresh_token: tablet.client.getTokens().refresh_token }),
  });
  assert.equal(refresh.status, 400);
});

test('deleteAccount removes the account; the next login is a new user', OPTIONS, async () => {
  const { wx, client, events } = setup();
  const first = await client.login();
  await client.updateProfile({ nickname: 'to be deleted' });
  const old = client.getTokens().access_token;
  await client.deleteAccount();
  assert.equal(client.getTokens(), null);
  assert.deepEqual(events.at(-1)[0], 'SIGNED_OUT');
  assert.equal(events.at(-1)[1].reason, 'account_deleted');
  const me = await fetch(BASE + '/me', { headers: { Authorization: 'Bearer ' + old } });
  assert.equal(me.status, 401);
  const again = await client.login();
  assert.equal(again.is_new_user, true);
  assert.notEqual(again.user_id, first.user_id);
  assert.equal(wx.count('/me'), 2); // the PATCH and the DELETE
});
