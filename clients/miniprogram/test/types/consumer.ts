// Compiled with `tsc --noEmit --strict` against the installed package: the hand-written
// issuer.d.ts must accept what the README shows and refuse what the client refuses.
import {
  createClient,
  IssuerError,
  IssuerApiError,
  WxLoginError,
  type AuthChangeEvent,
  type IssuerClient,
  type Storage,
  type Tokens,
  type WxLike,
  type TaroLike,
} from 'issuer-miniprogram-client';

declare const wx: WxLike;
declare const Taro: TaroLike;
declare const uni: WxLike;

const issuer: IssuerClient = createClient({ baseUrl: 'https://login.example.com' });
createClient({ baseUrl: 'https://login.example.com', wx, appid: 'wx0123456789abcdef' });
createClient({ baseUrl: 'https://login.example.com', taro: Taro });
createClient({ baseUrl: 'https://login.example.com', uni, storageKey: 'session' });
createClient({ baseUrl: 'http://127.0.0.1:8000', devLogin: { user: 'alice' } });

const memory = new Map<string, string>();
const storage: Storage = {
  getItem: async (key) => memory.get(key) ?? null,
  setItem: (key, value) => void memory.set(key, value),
  removeItem: (key) => void memory.delete(key),
};
createClient({ baseUrl: 'https://login.example.com', storage });

// @ts-expect-error baseUrl is required
createClient({ wx });
// @ts-expect-error one platform at a time
createClient({ baseUrl: 'https://login.example.com', wx, taro: Taro });
// @ts-expect-error devLogin takes a user name, not a number
createClient({ baseUrl: 'http://127.0.0.1:8000', devLogin: { user: 1 } });

async function launch(): Promise<void> {
  try {
    const tokens: Tokens = await issuer.ensureLogin();
    const expires: number = tokens.expires_at;
    void expires;
  } catch (err) {
    if (err instanceof WxLoginError) console.warn(err.description);
    else if (err instanceof IssuerApiError && err.statusCode === 429) console.warn(err.header);
    else if (err instanceof IssuerError) console.warn(err.error);
  }
  const token: string = await issuer.getAccessToken();
  const me = await issuer.request<{ user_id: string }>({ url: '/me', method: 'GET' });
  const id: string = me.data.user_id;
  const status: number = me.statusCode;
  const body = await issuer.login();
  const fresh: boolean = body.is_new_user;
  const confirmed: boolean = await issuer.logout();
  const now: Tokens | null = issuer.getTokens();
  // @ts-expect-error getTokens() may be null
  const user: string = issuer.getTokens().user_id;
  // @ts-expect-error request() needs a url
  await issuer.request({ method: 'GET' });
  void [token, id, status, fresh, confirmed, now, user];
}

// The fill-in components of today's WeChat, each fed to issuer.
async function profile(event: { detail: { avatarUrl: string; code?: string; errMsg?: string } }) {
  const named = await issuer.updateProfile({ nickname: '小明' });
  const nickname: string | null = named.nickname;
  const uploaded = await issuer.uploadAvatar(event.detail.avatarUrl);
  const avatar: string | null = uploaded.avatar_url;
  await issuer.updateProfile({ avatarUrl: 'https://example.com/a.png' });
  const phone = await issuer.getPhoneNumber(event);
  const number: string = phone.phone_number;
  const everywhere: boolean = await issuer.logout({ everywhere: true });
  await issuer.deleteAccount();
  // @ts-expect-error the avatar field is avatarUrl
  await issuer.updateProfile({ avatar_url: 'https://example.com/a.png' });
  // @ts-expect-error uploadAvatar takes the temporary file's path
  await issuer.uploadAvatar(new Uint8Array(1));
  void [nickname, avatar, number, everywhere];
}
void profile;

const unsubscribe: () => void = issuer.onAuthStateChange((event, detail) => {
  const seen: AuthChangeEvent = event;
  if (event === 'SIGNED_OUT' && detail.reason === 'session_ended') {
    const error: IssuerError | null | undefined = detail.error;
    void error;
  }
  const tokens: Tokens | null = detail.tokens;
  void [seen, tokens];
});
unsubscribe();
void launch;

// PC scan login, the phone half: the ticket from onLoad's options, then scanned and confirm.
import { scanTicketFrom, type ScanAnswer, type ScanScanned } from 'issuer-miniprogram-client';
async function scanPage(options: Record<string, string | undefined>): Promise<void> {
  const ticket: string | null = scanTicketFrom(options);
  if (ticket === null) return;
  const seen: ScanScanned = await issuer.scanned(ticket);
  const site: string = seen.client_id;
  void site;
  const answer: ScanAnswer = await issuer.confirmScan(ticket, true);
  if (answer.status === 'denied') console.warn('refused');
  // @ts-expect-error approve is a boolean
  await issuer.confirmScan(ticket, 'yes');
}
void scanPage;
