/**
 * Just enough of the mini-program `wx` object, and of Taro's and uni-app's versions of it,
 * for issuer.js to run in Node against a live development-mode issuer: the "phone" side of
 * wx.login is issuer's WeChat emulator.
 *
 * The three differ where the real ones do: `wx` takes callbacks; `Taro.request` /
 * `Taro.login` return promises that reject with `{errMsg}`; `uni` takes callbacks, and without
 * them returns a promise that resolves `[err, res]` (Vue 2) or `res` (Vue 3).
 */
'use strict';

const fs = require('fs');
const http = require('http');
const https = require('https');
const path = require('path');

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

  // wx.uploadFile: a POST of the file at filePath as multipart/form-data (RFC 7578) in the field
  // `name`, with `formData` fields beside it; the body comes back as a string, unparsed.
  function uploadFile(opts) {
    let file;
    try {
      file = fs.readFileSync(opts.filePath);
    } catch (err) {
      opts.fail && opts.fail({ errMsg: 'uploadFile:fail file not found' });
      return;
    }
    const boundary = '----wxupload' + Math.random().toString(16).slice(2);
    const parts = [];
    Object.keys(opts.formData || {}).forEach((key) => {
      parts.push(Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="${key}"\r\n\r\n${opts.formData[key]}\r\n`
      ));
    });
    parts.push(Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="${opts.name}"; ` +
        `filename="${path.basename(opts.filePath)}"\r\nContent-Type: application/octet-stream\r\n\r\n`
    ));
    parts.push(file, Buffer.from(`\r\n--${boundary}--\r\n`));
    const header = Object.assign({}, opts.header, {
      'content-type': 'multipart/form-data; boundary=' + boundary,
    });
    const target = new URL(opts.url).pathname;
    calls.set(target, (calls.get(target) || 0) + 1);
    // wx.uploadFile always POSTs, and hands the body over as a string.
    send(opts.url, 'POST', Buffer.concat(parts), header).then(
      (res) => opts.success && opts.success({
        errMsg: 'uploadFile:ok',
        statusCode: res.statusCode,
        data: typeof res.data === 'string' ? res.data : JSON.stringify(res.data),
      }),
      (err) => opts.fail && opts.fail({ errMsg: 'uploadFile:fail ' + err.message })
    );
  }

  // wx storage serialises, so a caller never holds a live reference into it.
  return {
    login,
    request,
    uploadFile,
    setStorageSync: (key, value) => storage.set(key, JSON.stringify(value)),
    getStorageSync: (key) => (storage.has(key) ? JSON.parse(storage.get(key)) : ''),
    removeStorageSync: (key) => storage.delete(key),
    calls,
    count: (path) => calls.get(path) || 0,
  };
}

// A callback-style call made a promise the way each framework does it.
function promised(call, opts) {
  return new Promise((resolve, reject) => {
    call(Object.assign({}, opts, { success: resolve, fail: reject }));
  });
}

/**
 * `Taro` as `@tarojs/taro` has it in a weapp build: request and login return promises (and
 * still call callbacks when given); storage as wx's.
 */
function createTaro(options) {
  const wx = createWx(options);
  const taro = Object.assign({}, wx);
  taro.request = (opts) => {
    const pending = promised(wx.request, opts || {});
    pending.then(
      (res) => opts && opts.success && opts.success(res),
      (err) => opts && opts.fail && opts.fail(err)
    );
    return pending;
  };
  taro.login = (opts) => {
    const pending = promised(wx.login, opts || {});
    pending.then(
      (res) => opts && opts.success && opts.success(res),
      (err) => opts && opts.fail && opts.fail(err)
    );
    return pending;
  };
  // Tests replace these to make failures; the wrappers above call whatever is there now.
  Object.defineProperty(taro, 'wx', { value: wx });
  return taro;
}

/**
 * `uni` in an mp-weixin build: callbacks as wx; without any callback, a promise that
 * resolves `[err, res]` (`vue: 2`, the default of older projects) or `res` (`vue: 3`).
 */
function createUni(options) {
  const wx = createWx(options);
  const vue = options.vue || 3;
  const uni = Object.assign({}, wx);
  function uniApi(name) {
    return (opts) => {
      opts = opts || {};
      if (name === 'login' && opts.provider !== undefined && opts.provider !== 'weixin') {
        const fail = { errMsg: 'login:fail provider ' + opts.provider + ' is not available here' };
        if (opts.fail) return opts.fail(fail);
        return vue === 2 ? Promise.resolve([fail, undefined]) : Promise.reject(fail);
      }
      if (opts.success || opts.fail || opts.complete) return wx[name](opts);
      const pending = promised(wx[name], opts);
      return vue === 2 ? pending.then((res) => [null, res], (err) => [err, undefined]) : pending;
    };
  }
  uni.request = uniApi('request');
  uni.login = uniApi('login');
  Object.defineProperty(uni, 'wx', { value: wx });
  return uni;
}

module.exports = { createWx, createTaro, createUni };
