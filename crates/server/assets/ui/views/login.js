// The sign-in form. Used as a page (no session) and as an overlay over the current page when a
// request gets 401 (the page underneath is kept, and the request is retried after signing in).

import { api, setToken, refreshMediaCookie, bumpMediaVersion } from '../api.js';
import { h, mount, field, errorBox } from '../dom.js';

/**
 * container: where to draw. opts: { message, notice, email, onSuccess(user) }.
 * message: shown as a warning (e.g. "Session expired"); notice: shown as information.
 */
export function renderLogin(container, { message, notice, email: prefill = '', onSuccess }) {
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true, value: prefill });
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true });
  const remember = h('input', { type: 'checkbox', name: 'remember_me', id: 'remember-me' });
  const err = errorBox();
  const submit = h('button', { type: 'submit', class: 'btn primary wide' }, 'Sign in');
  const form = h('form', {
    class: 'auth-card',
    novalidate: true,
    'aria-labelledby': 'login-title',
    onsubmit: async (e) => {
      e.preventDefault();
      err.set('');
      if (!email.value.trim() || !password.value) {
        err.set('Enter your email and password.');
        return;
      }
      submit.disabled = true;
      try {
        const res = await api('api/v1/auth/login', {
          method: 'POST',
          auth: false,
          json: { email: email.value.trim(), password: password.value, remember_me: remember.checked },
        });
        setToken(res.token);
        bumpMediaVersion();
        await refreshMediaCookie();
        onSuccess(res.user);
      } catch (ex) {
        password.value = '';
        if (ex.status === 401) err.set('Incorrect email or password');
        else if (ex.status === 403) err.set('Account is disabled');
        else err.set(ex.message);
        password.focus();
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('div', { class: 'brand-lg' }, 'Atelier'),
  h('h1', { id: 'login-title' }, 'Sign in'),
  message ? h('p', { class: 'banner warn', role: 'alert' }, message) : null,
  notice ? h('p', { class: 'banner info', role: 'status' }, notice) : null,
  field('Email', email),
  field('Password', password),
  h('div', { class: 'check' }, remember, h('label', { for: 'remember-me' }, 'Remember me'),
    h('span', { class: 'hint inline' }, '(stay signed in for 7 days)')),
  err,
  submit);
  mount(container, form);
  (prefill ? password : email).focus();
}
