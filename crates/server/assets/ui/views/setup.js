// Administrator setup, shown while /api/v1/auth/status says setup_required; plus the live
// password-policy feedback that the profile and user-management forms reuse.

import { api } from '../api.js';
import { h, mount, field, errorBox, errorText } from '../dom.js';
import { checkPassword } from '../session.js';

/**
 * A password field (plus an optional confirmation) with live policy feedback.
 * Under the strict policy the feedback blocks (check() throws); otherwise it only warns.
 */
export function passwordInputs({ strict, label = 'Password', confirm = true, name = 'password', autocomplete = 'new-password' }) {
  const pw = h('input', { type: 'password', name, autocomplete, required: true });
  const pw2 = confirm ? h('input', { type: 'password', name: `${name}_confirm`, autocomplete, required: true }) : null;
  const feedback = h('div', { class: 'hint policy', 'aria-live': 'polite' });
  const matchMsg = h('div', { class: 'hint', 'aria-live': 'polite' });
  const update = () => {
    const r = checkPassword(pw.value, strict);
    feedback.className = 'hint policy';
    if (!pw.value) {
      feedback.textContent = strict
        ? 'Needs at least 8 characters, with uppercase, lowercase and a number.'
        : 'Any non-empty password is accepted; 8+ characters with mixed case and a number is stronger.';
    } else if (strict) {
      feedback.textContent = r.ok ? 'Password meets the policy.' : `Password needs ${r.problems.join(' and ')}.`;
      feedback.classList.add(r.ok ? 'good' : 'bad');
    } else {
      feedback.textContent = r.strength === 'strong'
        ? 'Password strength: strong.'
        : `Password strength: ${r.strength}. Consider 8+ characters with uppercase, lowercase and a number.`;
      feedback.classList.add(r.strength === 'strong' ? 'good' : 'warn');
    }
    if (pw2) {
      matchMsg.textContent = pw2.value && pw2.value !== pw.value ? 'The passwords do not match.' : '';
      matchMsg.className = pw2.value && pw2.value !== pw.value ? 'hint bad' : 'hint';
    }
  };
  pw.addEventListener('input', update);
  pw2?.addEventListener('input', update);
  update();
  feedback.id = `pwf${Math.random().toString(36).slice(2)}`;
  pw.setAttribute('aria-describedby', feedback.id);
  const el = [
    h('div', { class: 'field' }, h('label', { for: (pw.id = `${feedback.id}-in`) }, label), pw, feedback),
    pw2 ? field(`Confirm ${label.toLowerCase()}`, pw2, null) : null,
    pw2 ? matchMsg : null,
  ];
  return {
    el,
    input: pw,
    confirmInput: pw2,
    set(value) {
      pw.value = value;
      if (pw2) pw2.value = value;
      update();
    },
    /** Throws a readable error when the form must not be sent. */
    check() {
      const r = checkPassword(pw.value, strict);
      if (!pw.value) throw new Error(`${label} is required.`);
      if (!r.ok) throw new Error(`${label} needs ${r.problems.join(' and ')}.`);
      if (pw2 && pw2.value !== pw.value) throw new Error('The passwords do not match.');
      return pw.value;
    },
  };
}

export function renderSetup(container, { strict, onDone }) {
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'email', required: true, autofocus: true });
  const name = h('input', { type: 'text', name: 'display_name', autocomplete: 'name' });
  const pw = passwordInputs({ strict });
  const err = errorBox();
  const submit = h('button', { type: 'submit', class: 'btn primary wide' }, 'Create administrator');
  const form = h('form', {
    class: 'auth-card',
    novalidate: true,
    'aria-labelledby': 'setup-title',
    onsubmit: async (e) => {
      e.preventDefault();
      err.set('');
      try {
        if (!email.value.trim()) throw new Error('Email is required.');
        const password = pw.check();
        submit.disabled = true;
        await api('api/v1/auth/setup', {
          method: 'POST',
          auth: false,
          json: { email: email.value.trim(), display_name: name.value.trim() || null, password },
        });
        onDone(email.value.trim());
      } catch (ex) {
        err.set(errorText(ex));
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('div', { class: 'brand-lg' }, 'Atelier'),
  h('h1', { id: 'setup-title' }, 'Set up the administrator'),
  h('p', { class: 'muted' }, 'This server runs in multi-user mode and has no administrator yet. Create the first account; it can then add other users.'),
  field('Email', email),
  field('Display name', name, 'Optional. Shown instead of the email address.'),
  pw.el,
  err,
  submit);
  mount(container, h('div', { class: 'auth-page' }, form));
  email.focus();
}
