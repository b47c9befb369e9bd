// The ES module entry's types: the default export and named exports are the same API.
import issuer, { createClient, VERSION, type IssuerClient } from 'issuer-miniprogram-client';

const a: IssuerClient = createClient({ baseUrl: 'https://login.example.com' });
const b: IssuerClient = issuer.createClient({ baseUrl: 'https://login.example.com' });
const version: string = VERSION;
// @ts-expect-error no such export
issuer.createSession();
void [a, b, version];
