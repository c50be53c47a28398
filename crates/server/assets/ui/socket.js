// A small Socket.IO v5 client over the Engine.IO v4 websocket transport (no polling fallback:
// every browser the UI supports has WebSockets), and the app's one shared connection.
//
// Wire format, as much as this client needs (https://socket.io/docs/v4/ protocol pages):
//   Engine.IO packets are text frames whose first character is the type:
//     0 open {sid, pingInterval, pingTimeout, …} · 1 close · 2 ping · 3 pong · 4 message · 6 noop
//   A Socket.IO packet rides in an Engine.IO message ("4…"); its first character is the type:
//     0 CONNECT (client: "40" + auth JSON; server: "40{sid}") · 1 DISCONNECT · 2 EVENT ("42[name, arg]")
//     3 ACK · 4 CONNECT_ERROR ("44{message}"); binary types (5, 6) are never sent by this server.
// Engine.IO v4 has the server ping and the client answer; a silent server past
// pingInterval + pingTimeout counts as a lost connection. The client reconnects with backoff,
// re-sending the auth payload (read fresh each time, so a replaced token is used).

import { getToken } from './api.js';

export class SocketClient {
  /**
   * url: the Engine.IO endpoint (http(s) or ws(s); e.g. 'ws/socket.io/' relative to the page).
   * opts.auth(): the CONNECT payload (default none); opts.onConnect(client): after each
   * (re)connect, e.g. to subscribe to rooms.
   */
  constructor(url, { auth = () => undefined, onConnect = () => {}, reconnect = true } = {}) {
    const u = new URL(url, document.baseURI);
    u.protocol = u.protocol === 'https:' || u.protocol === 'wss:' ? 'wss:' : 'ws:';
    if (!u.pathname.endsWith('/')) u.pathname += '/';
    u.searchParams.set('EIO', '4');
    u.searchParams.set('transport', 'websocket');
    this.url = u.toString();
    this.auth = auth;
    this.onConnect = onConnect;
    this.reconnect = reconnect;
    this.handlers = new Map(); // event name → Set of functions; '*' gets (name, data)
    this.connected = false;
    this.closed = false;
    this.attempts = 0;
    this.ws = null;
    this.timer = null;
    this.watchdog = null;
    this.open();
  }

  /** Listens to an event; returns a function that stops listening. */
  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(fn);
    return () => this.handlers.get(event)?.delete(fn);
  }

  /** Sends an event with one JSON argument (dropped while disconnected, like socket.io's volatile). */
  emit(event, data) {
    if (!this.connected) return false;
    this.ws.send(`42${JSON.stringify(data === undefined ? [event] : [event, data])}`);
    return true;
  }

  /** Closes for good (no reconnect). */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    if (this.ws) {
      try {
        if (this.ws.readyState === WebSocket.OPEN) this.ws.send('41');
        this.ws.close();
      } catch {
        // Already closing.
      }
    }
    this.setConnected(false);
  }

  /** Drops the current connection and opens a new one now (e.g. after the token changed). */
  restart() {
    if (this.closed) return;
    this.attempts = 0;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      try { ws.close(); } catch { /* closing anyway */ }
    }
    this.setConnected(false);
    clearTimeout(this.timer);
    this.open();
  }

  dispatch(event, data) {
    for (const fn of [...(this.handlers.get(event) || [])]) {
      try { fn(data); } catch (e) { console.error(e); }
    }
    for (const fn of [...(this.handlers.get('*') || [])]) {
      try { fn(event, data); } catch (e) { console.error(e); }
    }
  }

  setConnected(value) {
    if (this.connected === value) return;
    this.connected = value;
    this.dispatch(value ? 'connect' : 'disconnect', undefined);
  }

  open() {
    if (this.closed) return;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    let pingMs = 25000;
    let timeoutMs = 20000;
    const alive = () => {
      clearTimeout(this.watchdog);
      this.watchdog = setTimeout(() => ws.close(), pingMs + timeoutMs);
    };
    ws.onmessage = (msg) => {
      if (this.ws !== ws || typeof msg.data !== 'string') return;
      const text = msg.data;
      switch (text[0]) {
        case '0': { // Engine.IO open: ask for the default namespace with the auth payload.
          try {
            const info = JSON.parse(text.slice(1));
            pingMs = info.pingInterval || pingMs;
            timeoutMs = info.pingTimeout || timeoutMs;
          } catch { /* keep the defaults */ }
          alive();
          const auth = this.auth();
          ws.send(auth === undefined ? '40' : `40${JSON.stringify(auth)}`);
          break;
        }
        case '2': // ping
          alive();
          ws.send(`3${text.slice(1)}`);
          break;
        case '4':
          alive();
          this.packet(text.slice(1));
          break;
        case '1':
          ws.close();
          break;
        default:
          break;
      }
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      clearTimeout(this.watchdog);
      this.ws = null;
      this.setConnected(false);
      this.scheduleReconnect();
    };
    ws.onerror = () => {
      // onclose follows and schedules the reconnect.
    };
  }

  packet(text) {
    const type = text[0];
    let rest = text.slice(1);
    // An optional namespace ("/admin,") precedes the payload; only "/" is used here.
    if (rest.startsWith('/')) {
      const comma = rest.indexOf(',');
      rest = comma < 0 ? '' : rest.slice(comma + 1);
    }
    if (type === '0') {
      this.attempts = 0;
      this.setConnected(true);
      try { this.onConnect(this); } catch (e) { console.error(e); }
    } else if (type === '2') {
      const json = rest.replace(/^\d+/, ''); // an ack id, never requested by this client
      let args;
      try { args = JSON.parse(json); } catch { return; }
      if (Array.isArray(args) && typeof args[0] === 'string') this.dispatch(args[0], args[1]);
    } else if (type === '4') {
      let message = 'refused';
      try { message = JSON.parse(rest).message || message; } catch { /* keep */ }
      this.dispatch('connect_error', { message });
      this.ws?.close();
    } else if (type === '1') {
      this.ws?.close();
    }
  }

  scheduleReconnect() {
    if (this.closed || !this.reconnect) return;
    clearTimeout(this.timer);
    const delay = Math.min(15000, 500 * 2 ** Math.min(this.attempts, 5)) * (0.75 + Math.random() * 0.5);
    this.attempts += 1;
    this.timer = setTimeout(() => this.open(), delay);
  }
}

// ---- the app's shared connection ----

let shared = null;
const listeners = new Map(); // survive reconnects and restarts: event → Set

/** Opens (or re-opens, e.g. after another user signed in) the app's socket. */
export function startEvents() {
  stopEvents();
  shared = new SocketClient('ws/socket.io/', {
    auth: () => {
      const token = getToken();
      return token ? { token } : undefined;
    },
    onConnect: (c) => c.emit('subscribe_queue', { queue_id: 'default' }),
  });
  shared.on('*', (event, data) => {
    for (const fn of [...(listeners.get(event) || [])]) {
      try { fn(data); } catch (e) { console.error(e); }
    }
  });
  for (const state of ['connect', 'disconnect']) {
    shared.on(state, () => {
      document.documentElement.dataset.socket = state === 'connect' ? 'connected' : 'disconnected';
    });
  }
}

export function stopEvents() {
  shared?.close();
  shared = null;
  delete document.documentElement.dataset.socket;
}

/** Reconnects with the current token (after signing in again). */
export function restartEvents() {
  if (shared) shared.restart();
  else startEvents();
}

/** True while the shared socket is connected. */
export const eventsConnected = () => !!shared?.connected;

/**
 * Listens to a server event (or 'connect' / 'disconnect' of the shared socket) for as long as
 * the returned function is not called. Screens call it in render and the result in cleanup.
 */
export function onEvent(event, fn) {
  if (!listeners.has(event)) listeners.set(event, new Set());
  listeners.get(event).add(fn);
  return () => listeners.get(event)?.delete(fn);
}

/** Several onEvent at once: { name: fn }; returns one function that removes them all. */
export function onEvents(map) {
  const offs = Object.entries(map).map(([k, fn]) => onEvent(k, fn));
  return () => offs.forEach((off) => off());
}

/**
 * Delivers an event to this page's listeners as if the server had sent it. The end-to-end tests
 * use it to play progress events that need a real diffusion model to happen.
 */
export function emitLocal(event, data) {
  for (const fn of [...(listeners.get(event) || [])]) {
    try { fn(data); } catch (e) { console.error(e); }
  }
}
