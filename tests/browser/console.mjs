// Clicks through the development console in Debian's chromium, driven by playwright-core over
// the DevTools protocol (no browser is downloaded). Run by tests/test_console_browser.py with
// ISSUER_TEST_URL (a development issuer) and SCREENSHOTS (a directory outside the repository).
// Prints one JSON line of what the page showed; any failed expectation exits non-zero.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.ISSUER_TEST_URL.replace(/\/+$/, "");
const SHOTS = process.env.SCREENSHOTS;
const STEP = 15_000; // ms for any one expectation; the whole run takes a few seconds

const profile = mkdtempSync(join(tmpdir(), "console-chromium-"));
// A fresh profile (--user-data-dir) each run, removed at the end.
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 1300 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = { console: [], pageErrors: [], violations: [], failed: [] };
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP);
  // Every answer of 400 and up, by path: only the refused H5 login may bring one (none today).
  page.on("response", (answer) => {
    if (answer.status() >= 400) seen.failed.push(`${answer.status()} ${new URL(answer.url()).pathname}`);
  });
  page.on("pageerror", (error) => seen.pageErrors.push(String(error)));
  page.on("console", (message) => {
    const text = message.text();
    if (/Content.Security.Policy/i.test(text)) seen.violations.push(text);
    if (message.type() === "error") seen.console.push(text);
  });

  const response = await page.goto(`${BASE}/_console`);
  assert.equal(response.status(), 200);
  const csp = response.headers()["content-security-policy"];
  assert.match(csp, /default-src 'none'/);
  await page.waitForSelector("body[data-ready=true]");

  // -- mini-program login as a chosen test user, the pair decoded, /me, refresh
  await page.fill("#mp-user", "browser-alice");
  await page.click("#mp-login");
  await page.waitForSelector("#mp-tokens:not([hidden])");
  const claims = JSON.parse(await page.textContent("#mp-claims"));
  const header = JSON.parse(await page.textContent("#mp-header"));
  assert.equal(header.typ, "at+jwt");
  assert.ok(header.kid);
  assert.equal(claims.iss, BASE);
  const sub = claims.sub;
  assert.ok(sub);
  const shownAccess = await page.textContent("#mp-pair dd[data-field=access_token]");
  assert.match(shownAccess, /…/); // shortened, never the whole token

  await page.click("#mp-me");
  await page.waitForFunction(() => document.querySelector("#mp-result").textContent.includes('"openid"'));
  const me = JSON.parse(await page.textContent("#mp-result"));
  assert.equal(me.sub ?? me.user_id, sub);

  const before = await page.textContent("#mp-claims");
  await page.click("#mp-refresh");
  await page.waitForFunction(() => document.querySelector("#mp-result").textContent.includes('"rotated": true'));
  assert.notEqual(await page.textContent("#mp-claims"), before);

  await page.click("#mp-decrypt");
  await page.waitForFunction(() => document.querySelector("#mp-result").textContent.includes('"decrypted"'));
  const decrypted = JSON.parse(await page.textContent("#mp-result")).decrypted;
  assert.equal(decrypted.nickName, "browser-alice");

  await page.click("#mp-phone");
  await page.waitForFunction(() => document.querySelector("#mp-result").textContent.includes("pure_phone_number"));

  // A nickname with markup stays text.
  await page.fill("#mp-nickname", "<b>Alice</b>");
  await page.click("#mp-save-nickname");
  await page.waitForFunction(() => document.querySelector("#mp-result").textContent.includes("&lt;b&gt;") ||
    document.querySelector("#mp-result").textContent.includes("<b>Alice</b>"));
  assert.equal(await page.locator("#mp-result b").count(), 0);
  await page.click("#mp-avatar");
  await page.waitForSelector("#mp-avatar-img:not([hidden])");
  await page.waitForFunction(() => document.querySelector("#mp-avatar-img").naturalWidth > 0);
  await page.screenshot({ path: join(SHOTS, "1-miniprogram.png"), fullPage: true });

  // -- H5 login: the emulator's authorize page in the frame, the same WeChat user
  await page.click("#h5-start");
  const wechat = page.frameLocator("#h5-frame");
  await wechat.locator("input[name=user]").fill("browser-alice");
  await page.screenshot({ path: join(SHOTS, "2-h5-authorize.png"), fullPage: true });
  await wechat.locator("button[value=consent]").click();
  await page.waitForSelector("#h5-tokens:not([hidden])");
  const h5Claims = JSON.parse(await page.textContent("#h5-claims"));
  assert.equal(h5Claims.client_id, "dev-h5");
  assert.equal(h5Claims.sub, sub, "an H5 login of the same WeChat user (snsapi_userinfo) is the same user");
  await page.waitForFunction(() => document.querySelector("#h5-me").textContent.includes("openid"));
  await page.screenshot({ path: join(SHOTS, "3-h5-done.png"), fullPage: true });

  // H5 refused: the page says access_denied
  await page.click("#h5-start");
  await wechat.locator("button[value=refuse]").click();
  await page.waitForSelector("#h5-error:not([hidden])");
  assert.match(await page.textContent("#h5-error"), /access_denied/);

  // A snapshot-page visitor (is_snapshotuser=1) gets no account, and the page says why.
  await page.click("#h5-start");
  await page.waitForSelector("#h5-error", { state: "hidden" });
  await wechat.locator("button[value=snapshot]").click();
  await page.waitForSelector("#h5-error:not([hidden])");
  assert.match(await page.textContent("#h5-error"), /access_denied: .*snapshot/);

  // -- PC scan: the PC shows the code and long-polls; the phone half scans and approves
  await page.click("#pc-start");
  await page.waitForFunction(() => document.querySelector("#pc-qrcode").naturalWidth > 0);
  assert.equal(await page.textContent("#pc-status"), "pending");
  await page.click("#pc-scan");
  await page.waitForFunction(() => document.querySelector("#pc-status").textContent === "scanned");
  assert.equal(await page.textContent("#pc-site"), "dev-pc");
  await page.screenshot({ path: join(SHOTS, "4-scan-scanned.png"), fullPage: true });
  await page.click("#pc-approve");
  await page.waitForSelector("#pc-tokens:not([hidden])");
  assert.equal(await page.textContent("#pc-status"), "confirmed");
  const pcClaims = JSON.parse(await page.textContent("#pc-claims"));
  assert.equal(pcClaims.client_id, "dev-pc");
  assert.equal(pcClaims.sub, sub);
  await page.screenshot({ path: join(SHOTS, "5-scan-confirmed.png"), fullPage: true });

  // A second code, refused on the phone: the PC sees denied and no tokens.
  await page.click("#pc-start");
  await page.waitForFunction(() => document.querySelector("#pc-status").textContent === "pending");
  await page.click("#pc-scan");
  await page.waitForFunction(() => document.querySelector("#pc-status").textContent === "scanned");
  await page.click("#pc-refuse");
  await page.waitForFunction(() => document.querySelector("#pc-status").textContent === "denied");
  assert.equal(await page.isHidden("#pc-tokens"), true);

  // The request log names paths only: no token or code in it.
  const log = await page.textContent("#log");
  assert.doesNotMatch(log, /code=|token=|eyJ/);

  assert.deepEqual(seen.pageErrors, []);
  assert.deepEqual(seen.violations, []);
  assert.deepEqual(seen.failed, []);
  console.log(JSON.stringify({ sub, h5: h5Claims.client_id, pc: pcClaims.client_id, consoleErrors: seen.console }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
