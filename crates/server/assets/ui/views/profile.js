// My Profile: the signed-in user's display name and password (PATCH /api/v1/auth/me). A password
// change revokes the user's other sessions; this one continues on the replacement token the
// server sends as X-Refreshed-Token (the API client stores it).

import { api } from '../api.js';
import { h, mount, field, errorBox, errorText, toast, badge, formatDate } from '../dom.js';
import { session } from '../session.js';
import { passwordInputs } from './setup.js';

export async function render(container, { refreshUser }) {
  const me = await api('api/v1/auth/me');
  session.user = me;
  refreshUser();

  const name = h('input', { type: 'text', name: 'display_name', value: me.display_name || '', autocomplete: 'name' });
  const nameErr = errorBox();
  const nameForm = h('form', {
    class: 'section narrow',
    'aria-labelledby': 'profile-details',
    onsubmit: async (e) => {
      e.preventDefault();
      nameErr.set('');
      try {
        session.user = await api('api/v1/auth/me', { method: 'PATCH', json: { display_name: name.value.trim() || null } });
        refreshUser();
        toast('Display name saved.');
      } catch (ex) {
        nameErr.set(errorText(ex));
      }
    },
  },
  h('h2', { id: 'profile-details' }, 'Details'),
  h('dl', { class: 'meta' },
    h('dt', {}, 'Email'), h('dd', {}, me.email),
    h('dt', {}, 'Role'), h('dd', {}, me.is_admin ? badge('Admin', 'admin') : 'User'),
    h('dt', {}, 'Last sign-in'), h('dd', {}, formatDate(me.last_login_at))),
  h('div', { style: 'height:0.9rem' }),
  field('Display name', name, 'Shown to others instead of your email address.'),
  nameErr,
  h('button', { type: 'submit', class: 'btn primary' }, 'Save name'));

  const current = h('input', { type: 'password', name: 'current_password', autocomplete: 'current-password' });
  const pw = passwordInputs({ strict: session.status.strict_password_checking, label: 'New password', name: 'new_password' });
  const pwErr = errorBox();
  const pwForm = h('form', {
    class: 'section narrow',
    novalidate: true,
    'aria-labelledby': 'profile-password',
    onsubmit: async (e) => {
      e.preventDefault();
      pwErr.set('');
      try {
        if (!current.value) throw new Error('Enter your current password.');
        const next = pw.check();
        await api('api/v1/auth/me', { method: 'PATCH', json: { current_password: current.value, new_password: next } });
        current.value = '';
        pw.set('');
        toast('Password changed. Your other sessions have been signed out.');
      } catch (ex) {
        pwErr.set(errorText(ex));
      }
    },
  },
  h('h2', { id: 'profile-password' }, 'Change password'),
  field('Current password', current),
  pw.el,
  pwErr,
  h('button', { type: 'submit', class: 'btn primary' }, 'Change password'));

  mount(container, h('div', { class: 'page-head' }, h('h1', {}, 'My Profile')), nameForm, pwForm);
}
