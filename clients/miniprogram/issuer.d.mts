// Types of the ES module entry (issuer.mjs): the same as the CommonJS entry's.
import * as client from './issuer.js';

export * from './issuer.js';
export default client;
