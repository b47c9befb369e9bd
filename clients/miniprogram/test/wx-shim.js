/**
 * Just enough of the mini-program `wx` object for issuer.js to run in Node against a live
 * development-mode issuer: the "phone" side of wx.login is issuer's WeChat emulator.
 */
'use strict';

const http = require('http');
const https = require('https');

/**
 * @param {Object} options
 * @param {string} options.baseUrl  the development-mode issuer (its emulator is at /_wechat).
 * @param {string} [options.user]   the emulator's test user every wx.login logs in as.
 * @param {number} [options.timeout] milliseconds before a request fails like wx's timeout.
 * @returns {Object} a `wx` with login, request and the *StorageSync trio, plus `calls`
 *          (request count by path) and `count(path)` for assertions.
 */
function createWx(options) {
  const baseUrl = options.baseUrl.replace(/\/+$/, '');
  const user = options.user || 'miniprogram-client';
  const timeout = options.timeout || 10000;
  const storage = new Map();
  const calls = new Map();

  function send(url, method, body, header) {
    return new Promise((resolve, reject) => {
      const target = new URL(url);
      const transport = target.protocol === 'https:' ? https : http;
      const req = transport.request(target, { method, headers: header, timeout }, (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let data = text;
          // wx.request's default dataType "json": parse when possible, whatever the label says.
          try {
            data = text ? JSON.parse(text) : '';
          } catch (e) {
            data = text;
          }
          resolve({ statusCode: res.statusCode, data, header: res.headers });
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', reject);
      if (body !== undefined) req.write(body);
      req.end();
    });
  }

  function request(opts) {
    const method = (opts.method || 'GET').toUpperCase();
    const header = Object.assign({ 'content-type': 'application/json' }, opts.header);
    let url = opts.url;
    let body;
    if (opts.data !== undefined && opts.data !== null) {
      if (method === 'GET') {
        // wx.request puts GET data in the query string.
        const target = new URL(url);
        Object.keys(opts.data).forEach((key) => target.searchParams.set(key, opts.data[key]));
        url = target.toString();
      } else {
        body = typeof opts.data === 'string' ? opts.data : JSON.stringify(opts.data);
      }
    }
    const path = new URL(url).pathname;
    calls.set(path, (calls.get(path) || 0) + 1);
    send(url, method, body, header).then(
      (res) => opts.success && opts.success(Object.assign({ errMsg: 'request:ok' }, res)),
      (err) => opts.fail && opts.fail({ errMsg: 'request:fail ' + err.message })
    );
  }

  function login(opts) {
    const body = JSON.stringify({ user });
    send(baseUrl + '/_wechat/dev/wx.login', 'POST', body, { 'content-type': 'application/json' })
      .then((res) => {
        if (res.statusCode !== 200 || !res.data || !res.data.code) {
          throw new Error('emulator answered ' + res.statusCode + ' ' + JSON.stringify(res.data));
        }
        opts.success && opts.success({ code: res.data.code, errMsg: 'login:ok' });
      })
      .catch((err) => opts.fail && opts.fail({ errMsg: 'login:fail ' + err.message }));
  }

  // wx storage serialises, so a caller never holds a live reference into it.
  return {
    login,
    request,
    setStorageSync: (key, value) => storage.set(key, JSON.stringify(value)),
    getStorageSync: (key) => (storage.has(key) ? JSON.parse(storage.get(key)) : ''),
    removeStorageSync: (key) => storage.delete(key),
    calls,
    count: (path) => calls.get(path) || 0,
  };
}

module.exports = { createWx };
