// The HTTP client every screen uses. It owns the bearer token (localStorage, replaced by each
// `X-Refreshed-Token`), keeps the media cookie in step so <img> tags work, turns error bodies into
// readable messages, and hands a 401 to the session, which shows the login form over the current
// page and retries the request once the user has signed in again (so page state is kept).

const TOKEN_KEY = 'auth_token';

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

let onUnauthorized = null;
let multiuser = true;
let mediaVersion = 0;
let mediaCookieTimer = null;

export function configure({ unauthorized, multiuserMode }) {
  if (unauthorized) onUnauthorized = unauthorized;
  if (multiuserMode !== undefined) multiuser = multiuserMode;
}

export const getToken = () => localStorage.getItem(TOKEN_KEY);
export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

/** The token's claims, or null (no verification: only to read `exp` and `user_id`). */
export function tokenClaims(token = getToken()) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part));
  } catch {
    return null;
  }
}

/** Cache-busting suffix for media URLs, bumped when the media cookie changes owner. */
export const mediaQuery = () => `media_cookie_version=${mediaVersion}`;
export function bumpMediaVersion() {
  mediaVersion += 1;
}

/** Turns a `detail` (a string, or the 422 list) into one sentence. */
export function detailText(body, status) {
  const d = body && typeof body === 'object' ? body.detail : null;
  if (typeof d === 'string') return d;
  if (Array.isArray(d)) {
    return d.map((e) => {
      const loc = (e.loc || []).filter((x) => x !== 'body' && x !== 'query' && x !== 'path').join('.');
      return loc ? `${loc}: ${e.msg}` : e.msg;
    }).join('; ');
  }
  if (d && typeof d === 'object' && d.message) return d.message;
  return `Request failed (HTTP ${status})`;
}

/**
 * Calls the API. path is relative to the page's base (e.g. 'api/v1/boards/').
 * opts: method, json (a body to send as JSON), body (FormData), query (object; arrays repeat),
 * auth (default true: send the token and handle 401), raw (return the Response).
 */
export async function api(path, opts = {}) {
  const { method = 'GET', json, body, query, auth = true, raw = false, retried = false } = opts;
  const url = new URL(path, document.baseURI);
  for (const [k, v] of Object.entries(query || {})) {
    if (v === undefined || v === null) continue;
    for (const item of Array.isArray(v) ? v : [v]) url.searchParams.append(k, String(item));
  }
  const headers = {};
  const token = getToken();
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  let payload = body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(json);
  }
  let res;
  try {
    res = await fetch(url, { method, headers, body: payload, credentials: 'same-origin' });
  } catch (e) {
    throw new ApiError(0, 'The server cannot be reached. Check your connection and try again.');
  }
  const refreshed = res.headers.get('X-Refreshed-Token');
  if (refreshed && getToken()) {
    setToken(refreshed);
    scheduleMediaCookie();
  }
  if (res.status === 401 && auth && multiuser && onUnauthorized && !retried) {
    // Sent with a token that has since been replaced (signed in again meanwhile): just retry.
    if (!(getToken() && getToken() !== token)) await onUnauthorized();
    return api(path, { ...opts, retried: true });
  }
  if (raw && res.ok) return res;
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok) throw new ApiError(res.status, detailText(data, res.status), data);
  return data;
}

/** Asks the server for a media cookie matching the current token (multi-user only). */
export async function refreshMediaCookie() {
  if (!multiuser || !getToken()) return;
  try {
    await api('api/v1/auth/media-cookie', { method: 'POST', retried: true });
  } catch {
    // A failed cookie only breaks thumbnails; the next API call reports the real problem.
  }
}

// Sliding refreshes arrive on every change; one cookie request per burst is enough.
function scheduleMediaCookie() {
  clearTimeout(mediaCookieTimer);
  mediaCookieTimer = setTimeout(refreshMediaCookie, 500);
}
