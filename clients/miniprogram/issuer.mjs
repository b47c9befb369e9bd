// The ES module entry: the CommonJS build re-exported, so `import` and `require` share one
// module instance (and one IssuerError class for instanceof).
import client from './issuer.js';

export const {
  VERSION,
  createClient,
  scanTicketFrom,
  wxPlatform,
  taroPlatform,
  uniPlatform,
  IssuerError,
  IssuerApiError,
  IssuerNetworkError,
  WxLoginError,
  InvalidResponseError,
  StorageError,
} = client;
export default client;
