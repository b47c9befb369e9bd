// The development console's script: plays a mini-program, an H5 page and a PC page against
// this issuer and its WeChat emulator. Every value reaches the page through textContent or
// an attribute, never as HTML. Tokens are shown shortened; the JWT is decoded, not verified
// (the page is a viewer: the services that accept tokens verify them against the JWKS).

const config = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);

const mp = { pair: null, user: null };
const h5 = { pending: null };
const pc = { run: 0, ticket: null, verifier: null };

// -- small pieces

function base64url(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(bytes) {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

// RFC 7636 §4.1-4.2: a 64-character verifier and its S256 challenge.
async function pkcePair() {
  const verifier = randomText(48);
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return { verifier, challenge: base64url(new Uint8Array(digest)) };
}

function decodePart(part) {
  const padded = part.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(padded + "=".repeat((4 - (padded.length % 4)) % 4));
  const bytes = Uint8Array.from(binary, (char) => char.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

// RFC 7519 §7.2 without the signature check: header and claims, for reading only.
function decodeJwt(token) {
  const [header, claims] = String(token).split(".");
  try {
    return { header: decodePart(header), claims: decodePart(claims) };
  } catch {
    return { header: { error: "not a JWT" }, claims: {} };
  }
}

function shorten(secret) {
  const text = String(secret ?? "");
  return text.length > 20 ? `${text.slice(0, 12)}…${text.slice(-4)} (${text.length} characters)` : text;
}

function show(id, value) {
  $(id).textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function showError(id, error) {
  const element = $(id);
  if (!error) {
    element.hidden = true;
    element.textContent = "";
    return;
  }
  element.textContent = error.message ?? String(error);
  element.hidden = false;
}

function logRequest(method, path, status) {
  const item = document.createElement("li");
  // The path only: no body, no header, so no token or code is ever written here.
  item.textContent = `${method} ${path.split("?")[0]} → ${status}`;
  $("log").prepend(item);
}

class ApiError extends Error {}

// One request to issuer (or its emulator): JSON, a form, or raw bytes in; JSON out.
async function call(method, path, { json, form, bytes, type, token } = {}) {
  const headers = {};
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    headers["Content-Type"] = "application/x-www-form-urlencoded";
    body = new URLSearchParams(form).toString();
  } else if (bytes !== undefined) {
    headers["Content-Type"] = type;
    body = bytes;
  }
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body, credentials: "omit" });
  } catch (error) {
    logRequest(method, path, "no answer");
    throw new ApiError(`${method} ${path.split("?")[0]}: no answer (${error.message})`);
  }
  logRequest(method, path, response.status);
  const text = await response.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { text };
  }
  if (!response.ok) {
    const what = data.error ?? (data.errcode !== undefined ? `errcode ${data.errcode}` : `HTTP ${response.status}`);
    const why = data.error_description ?? data.errmsg ?? "";
    throw new ApiError(why ? `${what}: ${why}` : what);
  }
  return data;
}

function renderPair(prefix, pair) {
  const rows = [
    ["user_id", pair.user_id],
    ["access_token", shorten(pair.access_token)],
    ["refresh_token", shorten(pair.refresh_token)],
    ["expires_in", `${pair.expires_in} s`],
  ];
  if (pair.refresh_expires_in !== undefined) rows.push(["refresh_expires_in", `${pair.refresh_expires_in} s`]);
  if (pair.is_new_user !== undefined) rows.push(["is_new_user", String(pair.is_new_user)]);
  const list = $(`${prefix}-pair`);
  list.replaceChildren();
  for (const [name, value] of rows) {
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    term.textContent = name;
    detail.textContent = value ?? "";
    detail.dataset.field = name;
    list.append(term, detail);
  }
  const { header, claims } = decodeJwt(pair.access_token);
  show(`${prefix}-header`, header);
  show(`${prefix}-claims`, claims);
  $(`${prefix}-tokens`).hidden = false;
}

// Run an action from a button: errors go to the section's error line, never uncaught.
function action(errorId, run) {
  return async (event) => {
    event?.preventDefault();
    showError(errorId, null);
    try {
      await run(event);
    } catch (error) {
      showError(errorId, error);
    }
  };
}

function needMiniProgram() {
  if (!mp.pair) throw new ApiError("Log in as a mini-program user first.");
  return mp.pair;
}

// -- mini-program

async function mpLogin() {
  const user = $("mp-user").value.trim();
  // What wx.login() does on the phone: a one-time code for this test user.
  const minted = await call("POST", "/_wechat/dev/wx.login", { json: { appid: config.appid, user } });
  const pair = await call("POST", "/auth/login", { json: { appid: config.appid, code: minted.code } });
  mp.pair = pair;
  mp.user = user;
  renderPair("mp", pair);
  show("mp-result", { logged_in_as: user, user_id: pair.user_id, is_new_user: pair.is_new_user });
  $("pc-scan").disabled = !(pc.ticket && $("pc-status").textContent === "pending");
}

async function mpMe() {
  const me = await call("GET", "/me", { token: needMiniProgram().access_token });
  show("mp-result", me);
  return me;
}

async function mpRefresh() {
  const before = needMiniProgram();
  const pair = await call("POST", "/auth/refresh", { json: { refresh_token: before.refresh_token } });
  mp.pair = pair;
  renderPair("mp", pair);
  show("mp-result", { refreshed: true, rotated: pair.refresh_token !== before.refresh_token });
}

async function mpDecrypt() {
  const pair = needMiniProgram();
  // What wx.getUserProfile hands the phone: encrypted with the user's current session_key.
  const sample = await call("POST", "/_wechat/dev/user-data", { json: { appid: config.appid, user: mp.user } });
  const opened = await call("POST", "/wechat/decrypt", {
    token: pair.access_token,
    json: { encrypted_data: sample.encryptedData, iv: sample.iv, raw_data: sample.rawData, signature: sample.signature },
  });
  show("mp-result", { encryptedData: shorten(sample.encryptedData), decrypted: opened.data });
}

async function mpPhone() {
  const pair = needMiniProgram();
  // What the getPhoneNumber button hands the page: a phone code (not a login code).
  const minted = await call("POST", "/_wechat/dev/phone-code", { json: { appid: config.appid, user: mp.user } });
  show("mp-result", await call("POST", "/wechat/phone", { token: pair.access_token, json: { code: minted.code } }));
}

async function mpNickname() {
  const pair = needMiniProgram();
  const me = await call("PATCH", "/me", { token: pair.access_token, json: { nickname: $("mp-nickname").value } });
  show("mp-result", me);
}

async function mpAvatar() {
  const pair = needMiniProgram();
  // What chooseAvatar hands the page: a photo, then uploaded as wx.uploadFile would.
  const photo = await fetch(`/_wechat/dev/avatar?${new URLSearchParams({ user: mp.user })}`);
  logRequest("GET", "/_wechat/dev/avatar", photo.status);
  const me = await call("PUT", "/me/avatar", {
    token: pair.access_token,
    bytes: await photo.blob(),
    type: "image/jpeg",
  });
  show("mp-result", me);
  if (me.avatar_url) {
    $("mp-avatar-img").src = me.avatar_url;
    $("mp-avatar-img").hidden = false;
  }
}

async function mpLogout() {
  const pair = needMiniProgram();
  await call("POST", "/auth/logout", { json: { refresh_token: pair.refresh_token } });
  mp.pair = null;
  $("mp-tokens").hidden = true;
  $("pc-scan").disabled = true;
  showError("mp-error", null);
}

// -- H5 login in an iframe: the emulator's authorize page, then back on web-done

async function h5Start() {
  if (!config.h5) throw new ApiError("No h5 client is configured: the console has none to use.");
  const { verifier, challenge } = await pkcePair();
  const state = randomText(16);
  h5.pending = { verifier, state };
  const query = new URLSearchParams({
    response_type: "code",
    client_id: config.h5.client_id,
    redirect_uri: config.h5.redirect_uri,
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
    scope: $("h5-scope").value,
  });
  $("h5-tokens").hidden = true;
  $("h5-frame").hidden = false;
  $("h5-frame").src = `/auth/authorize?${query}`;
}

async function h5Landed() {
  let where;
  try {
    where = $("h5-frame").contentWindow.location;
  } catch {
    return; // another origin: nothing of ours to read
  }
  if (!h5.pending || where.href === "about:blank") return;
  const done = new URL(config.h5.redirect_uri);
  if (where.pathname !== done.pathname) return;
  const query = new URLSearchParams(where.search);
  const pending = h5.pending;
  h5.pending = null; // one use, whatever happens
  $("h5-frame").hidden = true;
  if (query.get("state") !== pending.state) throw new ApiError("The state that came back is not this page's.");
  if (query.get("error")) {
    throw new ApiError(`${query.get("error")}: ${query.get("error_description") ?? ""}`);
  }
  const pair = await call("POST", "/auth/token", {
    form: {
      grant_type: "authorization_code",
      code: query.get("code") ?? "",
      redirect_uri: config.h5.redirect_uri,
      client_id: config.h5.client_id,
      code_verifier: pending.verifier,
    },
  });
  renderPair("h5", pair);
  const me = await call("GET", "/me", { token: pair.access_token });
  show("h5-me", me);
}

// -- PC scan login: the PC long-polls, the phone half is the mini-program user above

function pcStatus(status) {
  $("pc-status").textContent = status;
  const scanned = status === "scanned";
  $("pc-approve").disabled = !scanned;
  $("pc-refuse").disabled = !scanned;
  $("pc-scan").disabled = !(status === "pending" && mp.pair);
}

async function pcStart() {
  if (!config.pc) throw new ApiError("No web client is configured: the console has none to use.");
  const { verifier, challenge } = await pkcePair();
  const scan = await call("POST", "/auth/scan", { json: { client_id: config.pc.client_id, code_challenge: challenge } });
  pc.run += 1;
  pc.ticket = scan.ticket;
  pc.verifier = verifier;
  $("pc-qrcode").src = scan.qrcode_url;
  $("pc-ticket").textContent = scan.ticket;
  $("pc-code").hidden = false;
  $("pc-asks").hidden = true;
  $("pc-tokens").hidden = true;
  pcStatus("pending");
  pcPoll(pc.run, scan.interval ?? 2).catch((error) => showError("pc-error", error));
}

async function pcPoll(run, interval) {
  let since = "pending";
  while (run === pc.run) {
    const answer = await call("GET", `/auth/scan/${encodeURIComponent(pc.ticket)}?since=${since}&wait=25`);
    if (run !== pc.run) return; // a newer code replaced this one
    pcStatus(answer.status);
    if (answer.status === "confirmed") {
      if (!answer.code) throw new ApiError("The code was handed out already.");
      const pair = await call("POST", "/auth/token", {
        form: { grant_type: "authorization_code", code: answer.code, client_id: config.pc.client_id, code_verifier: pc.verifier },
      });
      renderPair("pc", pair);
      return;
    }
    if (answer.status === "denied" || answer.status === "expired") return;
    if (answer.status === since) await new Promise((resolve) => setTimeout(resolve, (answer.interval ?? interval) * 1000));
    since = answer.status;
  }
}

async function pcScan() {
  const pair = needMiniProgram();
  if (!pc.ticket) throw new ApiError("Show a scan code on the PC first.");
  // The mini-program page the code opened reads the ticket from its scene, then says so.
  const answer = await call("POST", `/auth/scan/${encodeURIComponent(pc.ticket)}/scanned`, { token: pair.access_token, json: {} });
  $("pc-site").textContent = answer.client_id;
  $("pc-asks").hidden = false;
}

async function pcConfirm(approve) {
  const pair = needMiniProgram();
  await call("POST", `/auth/scan/${encodeURIComponent(pc.ticket)}/confirm`, { token: pair.access_token, json: { approve } });
  $("pc-asks").hidden = true;
}

// -- wiring

function start() {
  const issuerOrigin = new URL(config.issuer).origin;
  if (issuerOrigin !== location.origin) {
    // WeChat's (emulated) pages come back to ISSUER_URL: from another origin the H5 frame
    // could not be read, and the scan code would not load under this page's policy.
    const warning = $("origin-warning");
    warning.textContent = `Open this console at ${issuerOrigin}/_console (ISSUER_URL): the web logins come back there.`;
    warning.hidden = false;
  }
  $("h5-client").textContent = config.h5?.client_id ?? "(none configured)";
  $("pc-client").textContent = config.pc?.client_id ?? "(none configured)";
  $("h5-start").disabled = !config.h5;
  $("pc-start").disabled = !config.pc;

  $("mp-login-form").addEventListener("submit", action("mp-error", mpLogin));
  $("mp-me").addEventListener("click", action("mp-error", mpMe));
  $("mp-refresh").addEventListener("click", action("mp-error", mpRefresh));
  $("mp-decrypt").addEventListener("click", action("mp-error", mpDecrypt));
  $("mp-phone").addEventListener("click", action("mp-error", mpPhone));
  $("mp-profile-form").addEventListener("submit", action("mp-error", mpNickname));
  $("mp-avatar").addEventListener("click", action("mp-error", mpAvatar));
  $("mp-logout").addEventListener("click", action("mp-error", mpLogout));
  $("h5-form").addEventListener("submit", action("h5-error", h5Start));
  $("h5-frame").addEventListener("load", action("h5-error", h5Landed));
  $("pc-start").addEventListener("click", action("pc-error", pcStart));
  $("pc-scan").addEventListener("click", action("pc-error", pcScan));
  $("pc-approve").addEventListener("click", action("pc-error", () => pcConfirm(true)));
  $("pc-refuse").addEventListener("click", action("pc-error", () => pcConfirm(false)));
  document.body.dataset.ready = "true";
}

start();
