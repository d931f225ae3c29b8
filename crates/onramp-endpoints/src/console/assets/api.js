// The service API from the browser: a shared access policy's connection
// string (or a token pasted as is) kept in sessionStorage only, a
// SharedAccessSignature signed with WebCrypto's HMAC-SHA256 for each call,
// and Azure's error bodies turned into exceptions that keep their code.

export const API_VERSION = '2021-10-01';
const STORE_KEY = 'onramp.console.credential';
const TOKEN_SECONDS = 3600;

export class ApiError extends Error {
  constructor(status, errorCode, message) {
    super(message);
    this.status = status;
    this.errorCode = errorCode;
  }
}

/** `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`, checked. */
export function parseConnectionString(text) {
  const fields = {};
  for (const part of text.trim().split(';')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    if (eq < 1) throw new Error(`'${part}' is not a name=value field of a connection string`);
    fields[part.slice(0, eq).trim().toLowerCase()] = part.slice(eq + 1).trim();
  }
  const hostName = fields.hostname;
  const keyName = fields.sharedaccesskeyname;
  const key = fields.sharedaccesskey;
  if (!hostName) throw new Error('the connection string has no HostName');
  if (!keyName) throw new Error('the connection string has no SharedAccessKeyName (a shared access policy\'s)');
  if (!key) throw new Error('the connection string has no SharedAccessKey');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(key)) throw new Error('the SharedAccessKey is not base64');
  return { hostName, keyName, key };
}

function base64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function bytesToBase64(bytes) {
  let bin = '';
  for (const b of new Uint8Array(bytes)) bin += String.fromCharCode(b);
  return btoa(bin);
}

/** A SharedAccessSignature for `resource`, as the Azure SDKs make one. */
export async function signToken(resource, keyName, keyBase64, seconds = TOKEN_SECONDS) {
  const sr = encodeURIComponent(resource);
  const se = Math.floor(Date.now() / 1000) + seconds;
  const key = await crypto.subtle.importKey('raw', base64ToBytes(keyBase64),
    { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const mac = await crypto.subtle.sign('HMAC', key, new TextEncoder().encode(`${sr}\n${se}`));
  const sig = encodeURIComponent(bytesToBase64(mac));
  return `SharedAccessSignature sr=${sr}&sig=${sig}&se=${se}&skn=${encodeURIComponent(keyName)}`;
}

/** What a pasted token says about itself (for display and expiry). */
export function describeToken(token) {
  const text = token.trim().replace(/^SharedAccessSignature\s+/i, '');
  const fields = Object.fromEntries(text.split('&').map((f) => {
    const eq = f.indexOf('=');
    return eq < 0 ? [f, ''] : [f.slice(0, eq), f.slice(eq + 1)];
  }));
  if (!fields.sr || !fields.sig || !fields.se) {
    throw new Error('a SharedAccessSignature has sr=, sig= and se= fields');
  }
  const expiry = Number(fields.se);
  if (!Number.isFinite(expiry)) throw new Error(`se=${fields.se} is not a number of seconds`);
  if (expiry * 1000 < Date.now()) throw new Error(`the token expired at ${new Date(expiry * 1000).toISOString()}`);
  return { resource: decodeURIComponent(fields.sr), keyName: decodeURIComponent(fields.skn || ''), expiry };
}

let cached = null; // { token, until }

export const session = {
  load() {
    try { return JSON.parse(sessionStorage.getItem(STORE_KEY) || 'null'); } catch { return null; }
  },
  save(credential) {
    sessionStorage.setItem(STORE_KEY, JSON.stringify(credential));
    cached = null;
  },
  clear() {
    sessionStorage.removeItem(STORE_KEY);
    cached = null;
  },
  /** Who is signed in, for the header. */
  describe() {
    const c = this.load();
    if (!c) return null;
    if (c.kind === 'connectionString') {
      const p = parseConnectionString(c.value);
      return `${p.keyName} @ ${p.hostName}`;
    }
    const t = describeToken(c.value);
    return `${t.keyName || 'token'} @ ${t.resource}`;
  },
};

async function authorization() {
  const c = session.load();
  if (!c) throw new ApiError(401, 401000, 'not signed in');
  if (c.kind === 'token') return c.value.trim();
  if (cached && cached.until > Date.now()) return cached.token;
  const p = parseConnectionString(c.value);
  const token = await signToken(p.hostName, p.keyName, p.key);
  cached = { token, until: Date.now() + (TOKEN_SECONDS - 300) * 1000 };
  return token;
}

/**
 * One service API call. `query` is an object of extra query parameters;
 * `etag` goes in If-Match. Answers `{ status, body, headers }`; a status
 * of 400 or more throws an ApiError with Azure's errorCode and message.
 */
export async function call(method, path, { body, etag, query, headers } = {}) {
  const params = new URLSearchParams({ 'api-version': API_VERSION });
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') params.set(k, v);
  }
  const h = { Authorization: await authorization(), Accept: 'application/json', ...(headers || {}) };
  if (etag) h['If-Match'] = etag;
  let payload;
  if (body !== undefined) {
    h['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const resp = await fetch(`${path}?${params}`, { method, headers: h, body: payload, cache: 'no-store' });
  const text = await resp.text();
  let parsed = null;
  if (text) {
    try { parsed = JSON.parse(text); } catch { parsed = text; }
  }
  if (resp.status >= 400) {
    const code = parsed && typeof parsed === 'object' ? parsed.errorCode : undefined;
    const message = parsed && typeof parsed === 'object' && parsed.message
      ? parsed.message : `${method} ${path} answered ${resp.status}`;
    throw new ApiError(resp.status, code, message);
  }
  return { status: resp.status, body: parsed, headers: resp.headers };
}

/** Every page of a query (Azure's x-ms-continuation loop), up to `max` items. */
export async function queryAll(path, queryText, max = 1000) {
  const items = [];
  let continuation;
  do {
    const headers = { 'x-ms-max-item-count': '100' };
    if (continuation) headers['x-ms-continuation'] = continuation;
    const { body, headers: got } = await call('POST', path, { body: { query: queryText }, headers });
    items.push(...(Array.isArray(body) ? body : []));
    continuation = got.get('x-ms-continuation');
  } while (continuation && items.length < max);
  return items;
}

/** A path segment for an ID a user typed. */
export const seg = (id) => encodeURIComponent(id);
