// Types of issuer.js, written by hand next to it (the client is plain JavaScript so that a
// mini-program can use it without a build step). Checked with `tsc --strict` by the tests.

/** The package version, equal to package.json's. */
export declare const VERSION: string;

/** What is kept in storage, and what getTokens() / ensureLogin() answer. */
export interface Tokens {
  access_token: string;
  refresh_token: string;
  /** When the access token expires, in ms since the epoch by the phone's clock. */
  expires_at: number;
  /** When the login session ends for good (absolute, never extended), ms since the epoch. */
  refresh_expires_at?: number;
  user_id: string;
}

/** issuer's token response (RFC 6749 §5.1 names), as login() resolves it. */
export interface TokenResponse {
  access_token: string;
  token_type: 'Bearer';
  expires_in: number;
  refresh_token: string;
  refresh_token_expires_in: number;
  user_id: string;
  is_new_user: boolean;
  [field: string]: unknown;
}

/** The options of wx.request (and Taro.request / uni.request) that request() passes on. */
export interface RequestOptions {
  /** A path on baseUrl (`/me`) or a full URL of your own API. */
  url: string;
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH' | 'HEAD' | 'OPTIONS' | string;
  data?: string | object | ArrayBuffer;
  header?: Record<string, string>;
  timeout?: number;
  dataType?: string;
  responseType?: 'text' | 'arraybuffer' | string;
  [option: string]: unknown;
}

export interface RequestResult<T = any> {
  statusCode: number;
  data: T;
  header: Record<string, string>;
  [field: string]: unknown;
}

/**
 * Where tokens are kept: Web Storage's three functions, each synchronous or returning a
 * promise. Values are JSON strings.
 */
export interface Storage {
  getItem(key: string): string | null | undefined | Promise<string | null | undefined>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

/** A platform of your own: how to send a request, get a wx.login code, and store tokens. */
export interface Platform {
  name?: string;
  /** Resolves for any HTTP status; rejects (with an IssuerNetworkError) when nothing answered. */
  request(options: RequestOptions): Promise<RequestResult>;
  /** Resolves with a one-time wx.login code; rejects with a WxLoginError. */
  login(): Promise<string>;
  /** `wx.uploadFile` as a promise (for uploadAvatar): resolves for any HTTP status. */
  uploadFile?(options: UploadFileOptions): Promise<UploadFileResult>;
  storage: Storage | PlatformStorage;
}

/** What uploadAvatar hands `wx.uploadFile`. */
export interface UploadFileOptions {
  url: string;
  filePath: string;
  name: string;
  header?: Record<string, string>;
}

/** `wx.uploadFile`'s result: its body is a string, whatever the response's type. */
export interface UploadFileResult {
  statusCode: number;
  data: string;
  header?: Record<string, string>;
}

/** The user as `GET /me` shows it; unknown values are null. */
export interface Me {
  user_id: string;
  appid: string;
  openid: string;
  unionid: string | null;
  created_at: string;
  nickname: string | null;
  avatar_url: string | null;
  phone_number: string | null;
  country_code: string | null;
}

/** What `<input type="nickname">` and an avatar URL give; either or both. */
export interface ProfileUpdate {
  nickname?: string;
  /** `https://`, or an avatar URL uploadAvatar() returned. */
  avatarUrl?: string;
}

export interface PhoneNumber {
  phone_number: string;
  pure_phone_number: string;
  country_code: string | null;
}

/** The event of `<button open-type="getPhoneNumber" bindgetphonenumber="…">`. */
export interface PhoneNumberEvent {
  detail: { code?: string; errMsg?: string };
}

/** The *StorageSync trio of wx / Taro / uni: values are kept as objects. */
export interface PlatformStorage {
  getItem(key: string): unknown;
  setItem(key: string, value: unknown): void;
  removeItem(key: string): void;
  keepsObjects: true;
}

/** The parts of `wx` the client uses. */
export interface WxLike {
  request(options: any): unknown;
  login(options: any): unknown;
  /** Needed by uploadAvatar only. */
  uploadFile?(options: any): unknown;
  getStorageSync(key: string): any;
  setStorageSync(key: string, value: any): void;
  removeStorageSync(key: string): void;
}

/** The parts of `Taro` (`@tarojs/taro`) the client uses: request and login return promises. */
export interface TaroLike {
  request(options: any): PromiseLike<any>;
  login(options?: any): PromiseLike<any>;
  /** Needed by uploadAvatar only. */
  uploadFile?(options: any): unknown;
  getStorageSync(key: string): any;
  setStorageSync(key: string, value: any): void;
  removeStorageSync(key: string): void;
}

/** The parts of uni-app's `uni` the client uses (called with callbacks). */
export type UniLike = WxLike;

interface ConfigBase {
  /** issuer's URL (its ISSUER_URL), on the mini-program's request-domain allow-list. */
  baseUrl: string;
  /** Only when issuer serves several mini-programs. */
  appid?: string;
  /** The storage key of the tokens (default `issuer.tokens`). */
  storageKey?: string;
  /** Where tokens are kept (default: the platform's *StorageSync). */
  storage?: Storage;
  /**
   * Development only: take login codes from issuer's WeChat emulator (`make run`) for this
   * test user instead of wx.login(). Refused unless baseUrl is a loopback address.
   */
  devLogin?: boolean | { user?: string };
}

/** Native mini-program: `wx` (default: the global `wx`). */
export interface WxConfig extends ConfigBase {
  wx?: WxLike;
  taro?: undefined;
  uni?: undefined;
  platform?: undefined;
}
export interface TaroConfig extends ConfigBase {
  taro: TaroLike;
  wx?: undefined;
  uni?: undefined;
  platform?: undefined;
}
export interface UniConfig extends ConfigBase {
  uni: UniLike;
  wx?: undefined;
  taro?: undefined;
  platform?: undefined;
}
export interface PlatformConfig extends ConfigBase {
  platform: Platform;
  wx?: undefined;
  taro?: undefined;
  uni?: undefined;
}
export type ClientConfig = WxConfig | TaroConfig | UniConfig | PlatformConfig;

export type AuthChangeEvent = 'SIGNED_IN' | 'TOKEN_REFRESHED' | 'SIGNED_OUT';

/** Why the user was signed out: they logged out, the session ended at issuer, or they deleted the account. */
export type SignedOutReason = 'logout' | 'session_ended' | 'account_deleted';

export interface AuthStateDetail {
  /** The tokens now: null once signed out. */
  tokens: Tokens | null;
  /** SIGNED_IN: whether issuer created the user with this login. */
  isNewUser?: boolean;
  /** SIGNED_OUT: why. */
  reason?: SignedOutReason;
  /** SIGNED_OUT with `session_ended`: issuer's refusal, when there was one. */
  error?: IssuerError | null;
}

export type AuthStateListener = (event: AuthChangeEvent, detail: AuthStateDetail) => void;

export interface IssuerClient {
  /** wx.login() → POST /auth/login → tokens stored. A new session every call. */
  login(): Promise<TokenResponse>;
  /** Reuse the stored session (no network); log in only when there is none or it ran out. */
  ensureLogin(): Promise<Tokens>;
  /** A fresh access token (logs in or refreshes, single-flight, when needed). */
  getAccessToken(): Promise<string>;
  /** A request with the access token; rejects with an IssuerError from status 400 up. */
  request<T = any>(options: RequestOptions): Promise<RequestResult<T>>;
  /** Ends the session (`everywhere`: every session of the user) at issuer and clears storage; true when issuer confirmed. */
  logout(options?: { everywhere?: boolean }): Promise<boolean>;
  /** PATCH /me with what the user filled in; resolves with the new /me. */
  updateProfile(profile: ProfileUpdate): Promise<Me>;
  /** wx.uploadFile of chooseAvatar's temporary file to PUT /me/avatar (one retry after a 401); resolves with the new /me. */
  uploadAvatar(tempFilePath: string): Promise<Me>;
  /** POST /wechat/phone with the phone-number button's `event.detail.code`. */
  getPhoneNumber(event: PhoneNumberEvent): Promise<PhoneNumber>;
  /** DELETE /me, then clears storage (SIGNED_OUT, reason `account_deleted`). */
  deleteAccount(): Promise<void>;
  /** POST /auth/scan/{ticket}/scanned: this user scanned the PC's code (logs in first when needed). */
  scanned(ticket: string): Promise<ScanScanned>;
  /** POST /auth/scan/{ticket}/confirm: `true` logs the PC in as this user, `false` refuses. */
  confirmScan(ticket: string, approve: boolean): Promise<ScanAnswer>;
  /** The stored tokens as they are (the access token may have expired), or null. */
  getTokens(): Tokens | null;
  /** Listen for sign-in, refresh and sign-out; returns the unsubscribe function. */
  onAuthStateChange(listener: AuthStateListener): () => void;
}

/** What `scanned()` resolves with: `client_id` names the PC site that asks. */
export interface ScanScanned {
  status: 'scanned';
  client_id: string;
}
/** What `confirmScan()` resolves with. */
export interface ScanAnswer {
  status: 'confirmed' | 'denied';
}
/** A page's `onLoad` options, as far as a scan code fills them. */
export interface ScanPageOptions {
  /** The code's scene, URL-encoded as WeChat hands it over. */
  scene?: string;
  /** The ticket passed as a plain query parameter (navigateTo, DevTools' compile mode). */
  ticket?: string;
  [key: string]: string | undefined;
}

export declare function createClient(config: ClientConfig): IssuerClient;

/** The scan ticket from a page's `onLoad` options (`decodeURIComponent(options.scene)`), or null. */
export declare function scanTicketFrom(options?: ScanPageOptions | null): string | null;

export declare function wxPlatform(wx: WxLike): Platform;
export declare function taroPlatform(taro: TaroLike): Platform;
export declare function uniPlatform(uni: UniLike): Platform;

/** Every error the client rejects with. */
export declare class IssuerError extends Error {
  constructor(error: string, description?: string, statusCode?: number, data?: unknown, header?: Record<string, string>);
  /** issuer's OAuth `error`, or network_error / wx_login_failed / http_<status> / invalid_response / no_tokens. */
  error: string;
  description: string;
  /** 0 when no response arrived. */
  statusCode: number;
  data: unknown;
  header: Record<string, string> | undefined;
}
/** An HTTP answer of 400 or above (issuer's, or your API's through request()). */
export declare class IssuerApiError extends IssuerError {}
/** No answer at all. */
export declare class IssuerNetworkError extends IssuerError {
  constructor(description?: string);
}
/** wx.login (or Taro's, uni-app's, or the development hook) gave no code. */
export declare class WxLoginError extends IssuerError {
  constructor(description?: string);
}
/** A 200 without a token pair. */
export declare class InvalidResponseError extends IssuerError {
  constructor(description?: string, statusCode?: number, data?: unknown);
}
/** The storage did not keep the tokens. */
export declare class StorageError extends IssuerError {
  constructor(description?: string);
}
