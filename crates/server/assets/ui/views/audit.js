// Audit log (admins): GET /api/v1/auth/audit, newest first, 50 a page, filtered by action.

import { api } from '../api.js';
import { h, mount, field, formatDate } from '../dom.js';

const ACTIONS = [
  'login_succeeded', 'login_failed', 'login_throttled', 'setup', 'user_created', 'user_updated',
  'user_deleted', 'user_promoted', 'user_demoted', 'user_activated', 'user_deactivated',
  'password_reset', 'password_changed', 'content_reassigned',
];
const LIMIT = 50;

export async function render(container) {
  let offset = 0;
  const action = h('select', { name: 'action' },
    h('option', { value: '' }, 'All actions'),
    ACTIONS.map((a) => h('option', { value: a }, a.replace(/_/g, ' '))));
  const table = h('div', { class: 'table-wrap' });
  const pager = h('div', { class: 'pager' });

  const load = async () => {
    const page = await api('api/v1/auth/audit', { query: { offset, limit: LIMIT, action: action.value || null } });
    if (!page.items.length) {
      mount(table, h('p', { class: 'empty' }, 'No audit records.'));
    } else {
      mount(table, h('table', {},
        h('caption', { class: 'sr-only' }, 'Audit log'),
        h('thead', {}, h('tr', {}, ['When', 'Action', 'By', 'Subject', 'Client', 'Detail'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, page.items.map((r) => h('tr', {},
          h('td', {}, formatDate(r.created_at)),
          h('td', {}, r.action.replace(/_/g, ' ')),
          h('td', {}, r.actor_email || '—'),
          h('td', {}, r.subject_email || '—'),
          h('td', {}, r.client || '—'),
          h('td', {}, r.detail || ''))))));
    }
    const last = Math.min(offset + LIMIT, page.total);
    mount(pager,
      h('span', { class: 'muted' }, page.total ? `${offset + 1}–${last} of ${page.total}` : ''),
      h('button', { type: 'button', class: 'btn small', disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - LIMIT); load(); } }, 'Newer'),
      h('button', { type: 'button', class: 'btn small', disabled: last >= page.total, onclick: () => { offset += LIMIT; load(); } }, 'Older'));
  };
  action.addEventListener('change', () => { offset = 0; load(); });
  mount(container,
    h('div', { class: 'page-head' }, h('h1', {}, 'Audit log'),
      h('div', { style: 'min-width:14rem' }, field('Action', action))),
    table, pager);
  await load();
}
