// The web client against a live development issuer (ISSUER_TEST_URL), whose emulator plays
// WeChat's authorize page and the phone.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createWebClient, memoryStorage, pkcePair, WebLoginError } from "../issuer-web.mjs";

const issuer = process.env.ISSUER_TEST_URL;
if (!issuer) throw new Error("set ISSUER_TEST_URL to a development issuer");
const done = `${issuer}/_wechat/dev/web-done`;

/** The person on WeChat's authorize page: where the browser lands afterwards. */
async function wechatPage(authorizeUrl, user, action = "consent") {
  const toWechat = await fetch(authorizeUrl, { redirect: "manual" });
  const page = toWechat.headers.get("location").split("#")[0];
  const fields = Object.fromEntries(new URL(page).searchParams);
  const decided = await fetch(page, {
    method: "POST",
    body: new URLSearchParams({ ...fields, user, action }),
    redirect: "manual",
  });
  const back = await fetch(decided.headers.get("location"), { redirect: "manual" });
  return back.headers.get("location");
}

async function miniProgramLogin(user) {
  const minted = await (await fetch(`${issuer}/_wechat/dev/wx.login`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user }),
  })).json();
  return (await fetch(`${issuer}/auth/login`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ code: minted.code }),
  })).json();
}

test("PKCE pair: S256 of the verifier", async () => {
  const { verifier, challenge } = await pkcePair();
  assert.match(verifier, /^[A-Za-z0-9_-]{64}$/);
  assert.match(challenge, /^[A-Za-z0-9_-]{43}$/);
});

test("H5 login: authorize, WeChat, redirect, code exchange, same user as the mini-program", async () => {
  const client = createWebClient({ issuer, clientId: "dev-h5", redirectUri: done, storage: memoryStorage() });
  const url = await client.startH5Login({ scope: "snsapi_userinfo" });
  const landed = await wechatPage(url, "web-client-amy");
  assert.ok(landed.startsWith(done + "?"));
  assert.ok(!landed.includes("access_token"));
  const tokens = await client.finishH5Login(landed);
  const mini = await miniProgramLogin("web-client-amy");
  assert.equal(tokens.userId, mini.user_id);
  await assert.rejects(client.finishH5Login(landed), WebLoginError); // the state is spent
});

test("H5 login refused in WeChat rejects with access_denied", async () => {
  const client = createWebClient({ issuer, clientId: "dev-h5", redirectUri: done, storage: memoryStorage() });
  const landed = await wechatPage(await client.startH5Login(), "web-client-bo", "refuse");
  await assert.rejects(client.finishH5Login(landed), (error) => error.error === "access_denied");
});

test("scan login: ticket, phone scans and confirms, the PC's poll gets the tokens", async () => {
  const pc = createWebClient({ issuer, clientId: "dev-pc", storage: memoryStorage() });
  const scan = await pc.startScan();
  assert.equal((await fetch(scan.qrcodeUrl)).headers.get("content-type"), "image/png");
  const phone = await miniProgramLogin("web-client-cy");
  const bearer = { Authorization: `Bearer ${phone.access_token}`, "Content-Type": "application/json" };
  const seen = [];
  const waiting = pc.waitForScan(scan, { onStatus: (status) => seen.push(status), wait: 5, sleep: async () => {} });
  await fetch(`${issuer}/auth/scan/${scan.ticket}/scanned`, { method: "POST", headers: bearer, body: "{}" });
  await fetch(`${issuer}/auth/scan/${scan.ticket}/confirm`, {
    method: "POST", headers: bearer, body: JSON.stringify({ approve: true }),
  });
  const tokens = await waiting;
  assert.equal(tokens.userId, phone.user_id);
  assert.equal(seen.at(-1), "confirmed");
});

test("one refresh in flight, shared by concurrent callers", async () => {
  let clock = Date.now();
  let refreshes = 0;
  const counting = (url, init) => {
    if (String(url).endsWith("/auth/token") && String(init?.body).includes("refresh_token")) refreshes += 1;
    return fetch(url, init);
  };
  const client = createWebClient({
    issuer, clientId: "dev-h5", redirectUri: done, storage: memoryStorage(), fetch: counting, now: () => clock,
  });
  await client.finishH5Login(await wechatPage(await client.startH5Login(), "web-client-di"));
  const first = client.tokens().accessToken;
  clock += 3600_000; // past expiry
  const tokens = await Promise.all([client.getAccessToken(), client.getAccessToken(), client.getAccessToken()]);
  assert.equal(refreshes, 1);
  assert.equal(new Set(tokens).size, 1);
  assert.notEqual(tokens[0], first);
  await client.logout();
  assert.equal(client.tokens(), null);
});
