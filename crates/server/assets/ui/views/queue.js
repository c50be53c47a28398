// Queue: every item of the default queue (other users' items arrive redacted from the server),
// counts for "mine" and "all", cancel for my items (admins: any item), and for admins the
// processor's pause/resume and clear. Refreshed live by the socket's queue events (debounced),
// with polling as the fallback: every 3 s while the socket is down, every 30 s while it is up
// (localStorage `atelier.queuePollMs` overrides both, for tests).

import { api } from '../api.js';
import { h, mount, confirmDialog, toast, badge, formatDate, errorText, errorBox } from '../dom.js';
import { session } from '../session.js';
import { onEvent, onEvents, eventsConnected } from '../socket.js';

const Q = 'api/v1/queue/default';
const POLL_MS = 3000;
const LIVE_POLL_MS = 30000;
const QUEUE_EVENTS = ['queue_item_status_changed', 'batch_enqueued', 'queue_items_canceled', 'queue_items_retried', 'queue_cleared'];

function pollInterval() {
  const forced = Number(localStorage.getItem('atelier.queuePollMs'));
  if (forced > 0) return forced;
  return eventsConnected() ? LIVE_POLL_MS : POLL_MS;
}
const TERMINAL = new Set(['completed', 'failed', 'canceled']);

export async function render(container) {
  const stats = h('div', { class: 'stats', 'aria-label': 'Queue counts' });
  const controls = h('div', { class: 'row' });
  const alert = errorBox();
  const table = h('div', { class: 'table-wrap' });
  let timer = null;
  let stopped = false;
  let lastKey = '';

  const act = async (fn) => {
    alert.set('');
    try {
      await fn();
    } catch (e) {
      alert.set(errorText(e));
    }
    await load(true);
  };

  const load = async (force = false) => {
    const [status, items] = await Promise.all([api(`${Q}/status`), api(`${Q}/list_all`)]);
    if (stopped) return;
    const q = status.queue;
    const running = status.processor.is_started;
    mount(stats,
      stat(q.pending, 'pending (all)'),
      stat(q.in_progress, 'in progress'),
      session.multiuser ? stat(`${q.user_pending ?? 0} / ${q.pending}`, 'pending: mine / all') : null,
      stat(q.completed, 'completed'),
      stat(q.failed, 'failed'),
      stat(q.canceled, 'canceled'),
      h('div', { class: 'stat' }, h('b', {}, running ? 'Running' : 'Paused'), h('span', {}, 'processor')));
    if (session.isAdmin) {
      mount(controls,
        running
          ? h('button', { type: 'button', class: 'btn', onclick: () => act(() => api(`${Q}/processor/pause`, { method: 'PUT' })) }, 'Pause')
          : h('button', { type: 'button', class: 'btn primary', onclick: () => act(() => api(`${Q}/processor/resume`, { method: 'PUT' })) }, 'Resume'),
        h('button', {
          type: 'button',
          class: 'btn danger',
          onclick: async () => {
            if (!await confirmDialog('Clear the queue', 'Cancel the running item and delete every queue item of every user, history included?', { confirmLabel: 'Clear queue', danger: true })) return;
            act(async () => {
              const r = await api(`${Q}/clear`, { method: 'PUT' });
              toast(`${r.deleted} queue item(s) removed.`);
            });
          },
        }, 'Clear'));
    }
    const key = JSON.stringify(items.map((i) => [i.item_id, i.status]));
    if (!force && key === lastKey) return;
    lastKey = key;
    drawItems(table, items, (item) => act(async () => {
      await api(`${Q}/i/${item.item_id}/cancel`, { method: 'PUT' });
      toast(`Item ${item.item_id} canceled.`);
    }));
  };

  const poll = async () => {
    try {
      await load();
    } catch {
      // Transient errors are retried on the next tick; a 401 has already shown the sign-in.
    }
    if (!stopped) {
      clearTimeout(timer);
      timer = setTimeout(poll, pollInterval());
    }
  };

  // A burst of events (a batch of many items) makes one refresh.
  let eventTimer = null;
  const refreshSoon = () => {
    clearTimeout(eventTimer);
    eventTimer = setTimeout(() => { if (!stopped) poll(); }, 150);
  };
  const live = h('span', { class: 'live-state', 'aria-live': 'polite' });
  const drawLive = () => {
    const on = eventsConnected();
    live.dataset.live = String(on);
    live.textContent = on ? '● Live' : '○ Polling';
    live.title = on ? 'Updates arrive as they happen.' : 'Live updates are unavailable; refreshing every few seconds.';
  };
  const offEvents = onEvents(Object.fromEntries(QUEUE_EVENTS.map((e) => [e, refreshSoon])));
  const offConnect = onEvent('connect', () => { drawLive(); refreshSoon(); });
  const offDisconnect = onEvent('disconnect', () => {
    drawLive();
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(poll, pollInterval());
  });

  mount(container,
    h('div', { class: 'page-head' }, h('h1', {}, 'Queue'), live, controls),
    stats, alert, table);
  drawLive();
  await load(true);
  timer = setTimeout(poll, pollInterval());
  return () => {
    stopped = true;
    clearTimeout(timer);
    clearTimeout(eventTimer);
    offEvents();
    offConnect();
    offDisconnect();
  };
}

function stat(value, label) {
  return h('div', { class: 'stat' }, h('b', {}, String(value)), h('span', {}, label));
}

function owner(item) {
  if (item.user_id === 'redacted') return h('span', { class: 'redacted' }, 'Another user');
  if (session.isMe(item.user_id)) return 'You';
  return item.user_display_name || item.user_email || item.user_id;
}

function drawItems(table, items, cancel) {
  if (!items.length) {
    mount(table, h('p', { class: 'empty' }, 'The queue is empty.'));
    return;
  }
  const sorted = [...items].sort((a, b) => b.item_id - a.item_id);
  mount(table, h('table', {},
    h('caption', { class: 'sr-only' }, 'Queue items'),
    h('thead', {}, h('tr', {},
      ['#', 'Status', session.multiuser ? 'User' : null, 'Origin', 'Created', 'Finished', 'Details', ''].filter((x) => x !== null)
        .map((t) => h('th', { scope: 'col' }, t || h('span', { class: 'sr-only' }, 'Actions'))))),
    h('tbody', {}, sorted.map((item) => {
      const mine = session.isMe(item.user_id);
      const canCancel = !TERMINAL.has(item.status) && (mine || session.isAdmin);
      const redacted = item.user_id === 'redacted';
      return h('tr', { dataset: { itemId: item.item_id, status: item.status } },
        h('td', {}, String(item.item_id)),
        h('td', {}, badge(item.status.replace('_', ' '), `status-${item.status}`)),
        session.multiuser ? h('td', {}, owner(item)) : null,
        h('td', {}, redacted ? h('span', { class: 'redacted' }, 'hidden') : (item.origin || '—')),
        h('td', {}, formatDate(item.created_at)),
        h('td', {}, formatDate(item.completed_at)),
        h('td', {}, item.error_message ? h('span', { class: 'hint bad' }, `${item.error_type || 'Error'}: ${item.error_message}`) : ''),
        h('td', { class: 'actions' }, canCancel
          ? h('button', { type: 'button', class: 'btn small danger', 'aria-label': `Cancel item ${item.item_id}`, onclick: () => cancel(item) }, 'Cancel')
          : null));
    }))));
}
