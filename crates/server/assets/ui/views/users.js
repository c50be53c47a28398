// User Management (admins): list, create (with a generated password), edit name and password,
// activate/deactivate, grant/revoke admin, delete. Refusals from the server (the last
// administrator, the system user) are shown as the server words them.

import { api } from '../api.js';
import { h, mount, field, formDialog, confirmDialog, toast, badge, formatDate, errorText, openMenu, errorBox } from '../dom.js';
import { icons } from '../icons.js';
import { session, userLabel } from '../session.js';
import { passwordInputs } from './setup.js';

// The page's alert: refusals stay visible until the next action.
let alertBox = null;

export async function render(container, { refreshUser }) {
  const list = h('div', { class: 'table-wrap' });
  alertBox = errorBox();
  const refresh = async () => {
    const users = await api('api/v1/auth/users');
    drawTable(list, users, refresh, refreshUser);
  };
  mount(container,
    h('div', { class: 'page-head' },
      h('h1', {}, 'User Management'),
      h('button', { type: 'button', class: 'btn primary', onclick: () => createUser(refresh) },
        h('span', { html: icons.plus }), 'Create user')),
    alertBox,
    list);
  await refresh();
}

function drawTable(list, users, refresh, refreshUser) {
  if (!users.length) {
    mount(list, h('p', { class: 'empty' }, 'No users yet.'));
    return;
  }
  const rows = users.map((u) => {
    const me = u.user_id === session.user.user_id;
    const more = h('button', {
      type: 'button',
      class: 'icon-btn',
      'aria-haspopup': 'menu',
      'aria-label': `Actions for ${u.email}`,
      html: icons.more,
      onclick: (e) => openMenu(e.currentTarget, [
        { label: 'Edit…', onSelect: () => editUser(u, refresh, refreshUser) },
        { label: u.is_active ? 'Deactivate' : 'Activate', onSelect: () => patch(u, { is_active: !u.is_active }, u.is_active ? 'deactivated' : 'activated', refresh) },
        { label: u.is_admin ? 'Revoke admin' : 'Make admin', onSelect: () => patch(u, { is_admin: !u.is_admin }, u.is_admin ? 'is no longer an administrator' : 'is now an administrator', refresh) },
        'separator',
        { label: 'Delete…', danger: true, onSelect: () => deleteUser(u, refresh) },
      ]),
    });
    return h('tr', { dataset: { email: u.email } },
      h('td', {}, h('div', {}, h('strong', {}, u.display_name || '—'), me ? h('span', { class: 'muted' }, ' (you)') : null),
        h('div', { class: 'muted' }, u.email)),
      h('td', {}, u.is_admin ? badge('Admin', 'admin') : 'User'),
      h('td', {}, u.is_active ? badge('Active', 'good') : badge('Disabled', 'bad')),
      h('td', {}, formatDate(u.last_login_at)),
      h('td', {}, formatDate(u.created_at)),
      h('td', { class: 'actions' }, more));
  });
  mount(list, h('table', {},
    h('caption', { class: 'sr-only' }, 'Users'),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'User'), h('th', { scope: 'col' }, 'Role'), h('th', { scope: 'col' }, 'Status'),
      h('th', { scope: 'col' }, 'Last login'), h('th', { scope: 'col' }, 'Created'), h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
    h('tbody', {}, rows)));
}

async function patch(u, changes, what, refresh) {
  alertBox.set('');
  try {
    await api(`api/v1/auth/users/${encodeURIComponent(u.user_id)}`, { method: 'PATCH', json: changes });
    toast(`${userLabel(u)} ${what}.`);
  } catch (e) {
    alertBox.set(errorText(e));
  }
  await refresh();
}

/** A password field with a "Generate" button that fills in (and reveals) a strong password. */
function passwordWithGenerator(opts) {
  const pw = passwordInputs(opts);
  const gen = h('button', {
    type: 'button',
    class: 'btn small',
    onclick: async () => {
      const { password } = await api('api/v1/auth/generate-password');
      pw.set(password);
      pw.input.type = 'text';
      if (pw.confirmInput) pw.confirmInput.type = 'text';
      pw.input.focus();
      pw.input.select();
    },
  }, 'Generate password');
  return { ...pw, el: [...pw.el, h('div', { class: 'field' }, gen, h('span', { class: 'hint' }, 'Copy it now and give it to the user; it is not shown again.'))] };
}

function createUser(refresh) {
  const strict = session.status.strict_password_checking;
  const email = h('input', { type: 'email', name: 'email', required: true, autocomplete: 'off' });
  const name = h('input', { type: 'text', name: 'display_name', autocomplete: 'off' });
  const pw = passwordWithGenerator({ strict, confirm: false });
  const admin = h('input', { type: 'checkbox', name: 'is_admin', id: 'new-user-admin' });
  return formDialog('Create user', () => [
    field('Email', email),
    field('Display name', name, 'Optional.'),
    pw.el,
    h('div', { class: 'check' }, admin, h('label', { for: 'new-user-admin' }, 'Administrator')),
  ], async () => {
    if (!email.value.trim()) throw new Error('Email is required.');
    const password = pw.check();
    const u = await api('api/v1/auth/users', {
      method: 'POST',
      json: { email: email.value.trim(), display_name: name.value.trim() || null, password, is_admin: admin.checked },
    });
    toast(`User ${u.email} created.`);
    await refresh();
  }, { submitLabel: 'Create user' });
}

function editUser(u, refresh, refreshUser) {
  const strict = session.status.strict_password_checking;
  const name = h('input', { type: 'text', name: 'display_name', value: u.display_name || '', autocomplete: 'off' });
  const change = h('input', { type: 'checkbox', id: 'edit-change-pw' });
  const pw = passwordWithGenerator({ strict, confirm: false, label: 'New password' });
  const pwBox = h('div', { hidden: true }, pw.el);
  change.addEventListener('change', () => { pwBox.hidden = !change.checked; });
  return formDialog(`Edit ${u.email}`, () => [
    field('Display name', name),
    h('div', { class: 'check' }, change, h('label', { for: 'edit-change-pw' }, 'Set a new password (signs the user out everywhere)')),
    pwBox,
  ], async () => {
    const body = { display_name: name.value.trim() || null };
    if (change.checked) body.password = pw.check();
    const updated = await api(`api/v1/auth/users/${encodeURIComponent(u.user_id)}`, { method: 'PATCH', json: body });
    if (updated.user_id === session.user.user_id) {
      session.user = updated;
      refreshUser();
    }
    toast(`${updated.email} saved.`);
    await refresh();
  });
}

async function deleteUser(u, refresh) {
  const ok = await confirmDialog('Delete user',
    `Delete ${u.email}? They can no longer sign in. Their boards, images and workflows stay on the server.`,
    { confirmLabel: 'Delete user', danger: true });
  if (!ok) return;
  alertBox.set('');
  try {
    await api(`api/v1/auth/users/${encodeURIComponent(u.user_id)}`, { method: 'DELETE' });
    toast(`${u.email} deleted.`);
  } catch (e) {
    alertBox.set(errorText(e));
  }
  await refresh();
}
