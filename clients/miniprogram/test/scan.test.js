/**
 * The phone half of PC scan login: scanTicketFrom(options), scanned(ticket) and
 * confirmScan(ticket, approve) against a live development-mode issuer, with the PC half
 * played by the browser client (clients/web) over fetch (see test/client.test.js).
 */
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('path');
const { pathToFileURL } = require('url');

const { createClient, scanTicketFrom, IssuerApiError } = require('../issuer.js');
const { createWx } = require('./wx-shim.js');

const BASE = (process.env.ISSUER_TEST_URL || '').replace(/\/+$/, '');
if (!BASE) throw new Error('ISSUER_TEST_URL is not set: see test/client.test.js');

const OPTIONS = { timeout: 20000 };
const WEB_CLIENT = pathToFileURL(path.join(__dirname, '..', '..', 'web', 'issuer-web.mjs')).href;

let users = 0;
function phone() {
  users += 1;
  const wx = createWx({ baseUrl: BASE, user: 'scan-' + process.pid + '-' + users });
  return createClient({ baseUrl: BASE, wx });
}

async function pcTicket() {
  const { createWebClient, memoryStorage } = await import(WEB_CLIENT);
  const pc = createWebClient({ issuer: BASE, clientId: 'dev-pc', storage: memoryStorage() });
  return { pc, scan: await pc.startScan() };
}

async function status(ticket) {
  const response = await fetch(BASE + '/auth/scan/' + ticket + '?wait=0');
  return (await response.json()).status;
}

test('scanTicketFrom takes the URL-encoded scene, or a plain ticket, or nothing', () => {
  const ticket = 'AbCdEfGhIjKlMnOpQrStUvWxYz012-_9';
  assert.equal(scanTicketFrom({ scene: ticket }), ticket);
  assert.equal(scanTicketFrom({ scene: encodeURIComponent(ticket) }), ticket);
  assert.equal(scanTicketFrom({ scene: ticket.replace('-', '%2D') }), ticket);
  assert.equal(scanTicketFrom({ ticket: ticket }), ticket);
  assert.equal(scanTicketFrom({}), null);
  assert.equal(scanTicketFrom(undefined), null);
  assert.equal(scanTicketFrom({ scene: 'short' }), null);
  assert.equal(scanTicketFrom({ scene: '%E0%A4%A' }), null); // a broken escape
  assert.equal(scanTicketFrom({ scene: ticket + '/../me' }), null);
});

test('the whole scan flow: the PC shows a code, the phone scans and approves, the PC has tokens', OPTIONS, async () => {
  const { pc, scan } = await pcTicket();
  const client = phone();
  const seen = [];
  const waiting = pc.waitForScan(scan, { onStatus: (s) => seen.push(s), wait: 5, sleep: async () => {} });
  // What WeChat hands the page the code opened: the scene, URL-encoded.
  const ticket = scanTicketFrom({ scene: encodeURIComponent(scan.ticket) });
  assert.equal(ticket, scan.ticket);
  // No tokens yet: scanned() logs in first.
  assert.deepEqual(await client.scanned(ticket), { status: 'scanned', client_id: 'dev-pc' });
  assert.deepEqual(await client.scanned(ticket), { status: 'scanned', client_id: 'dev-pc' });
  assert.deepEqual(await client.confirmScan(ticket, true), { status: 'confirmed' });
  const tokens = await waiting;
  assert.equal(tokens.userId, client.getTokens().user_id);
  assert.ok(seen.includes('confirmed'));
  // Confirmed once: a second answer is refused.
  await assert.rejects(client.confirmScan(ticket, false), (e) => e instanceof IssuerApiError && e.error === 'invalid_grant');
});

test('refusing: the PC sees denied and gets no tokens', OPTIONS, async () => {
  const { pc, scan } = await pcTicket();
  const client = phone();
  await client.scanned(scan.ticket);
  assert.deepEqual(await client.confirmScan(scan.ticket, false), { status: 'denied' });
  assert.equal(await status(scan.ticket), 'denied');
  await assert.rejects(pc.waitForScan(scan, { wait: 0 }), (e) => e.error === 'access_denied');
  assert.equal(pc.tokens(), null);
});

test('another user cannot confirm a ticket someone scanned', OPTIONS, async () => {
  const { scan } = await pcTicket();
  const first = phone();
  const second = phone();
  await first.scanned(scan.ticket);
  await assert.rejects(second.scanned(scan.ticket), (e) => e instanceof IssuerApiError && e.error === 'invalid_grant');
  await assert.rejects(second.confirmScan(scan.ticket, true), (e) => e instanceof IssuerApiError);
  assert.equal(await status(scan.ticket), 'scanned');
});

test('bad arguments are refused before any request', async () => {
  const client = phone();
  await assert.rejects(client.scanned('not-a-ticket'), TypeError);
  await assert.rejects(client.scanned('../../me/aaaaaaaaaaaaaaaaaaaaaaaaaaa'), TypeError);
  await assert.rejects(client.confirmScan('AbCdEfGhIjKlMnOpQrStUvWxYz012-_9', 'yes'), TypeError);
  assert.equal(client.getTokens(), null);
});
