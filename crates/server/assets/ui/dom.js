// Small DOM helpers shared by every screen: element creation, dialogs, menus, toasts and
// formatting. No framework: screens build their DOM with h() and re-render the parts that change.

/** Creates an element. attrs: properties/attributes; `on*` functions become listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'html') el.innerHTML = v; // trusted, static markup only (icons)
    else if (k in el && typeof v !== 'string') el[k] = v;
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of el. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let fieldSeq = 0;
/** A labelled form field. input: an element; hint/error areas are wired with aria-describedby. */
export function field(label, input, hint) {
  const id = input.id || `f${++fieldSeq}`;
  input.id = id;
  const hintEl = hint ? h('div', { class: 'hint', id: `${id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hintEl);
}

/** A region for form errors; set(text) shows it, set('') hides it. */
export function errorBox() {
  const el = h('div', { class: 'form-error', role: 'alert', hidden: true });
  el.set = (text) => {
    el.textContent = text || '';
    el.hidden = !text;
  };
  return el;
}

/** The readable message of a thrown error (an ApiError carries the server's `detail`). */
export function errorText(err) {
  if (!err) return '';
  return err.message || String(err);
}

/** Opens a modal <dialog>. build(close) returns its content; resolves with close()'s value. */
export function openDialog(title, build, { wide = false } = {}) {
  return new Promise((resolve) => {
    const dlg = h('dialog', { class: wide ? 'dialog wide' : 'dialog', 'aria-labelledby': `dlg-title-${++fieldSeq}` });
    const titleId = dlg.getAttribute('aria-labelledby');
    let result;
    const close = (value) => {
      result = value;
      dlg.close();
    };
    dlg.addEventListener('close', () => {
      dlg.remove();
      resolve(result);
    });
    mount(
      dlg,
      h('header', { class: 'dialog-head' },
        h('h2', { id: titleId }, title),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close', onclick: () => close(undefined) }, '✕')),
      build(close),
    );
    document.body.append(dlg);
    dlg.showModal();
    const first = dlg.querySelector('[autofocus], input, select, textarea, .dialog-body button, footer button');
    if (first) first.focus();
  });
}

/** A yes/no confirmation. Resolves true when confirmed. */
export function confirmDialog(title, message, { confirmLabel = 'Confirm', danger = false } = {}) {
  return openDialog(title, (close) => [
    h('div', { class: 'dialog-body' }, h('p', {}, message)),
    h('footer', { class: 'dialog-foot' },
      h('button', { type: 'button', class: 'btn', onclick: () => close(false) }, 'Cancel'),
      h('button', { type: 'button', class: danger ? 'btn danger' : 'btn primary', onclick: () => close(true) }, confirmLabel)),
  ]).then((v) => v === true);
}

/**
 * A dialog around a form. fields(): elements; submit(form) may throw (the message is shown and
 * the dialog stays open) or return a value that resolves the promise.
 */
export function formDialog(title, fields, submit, { submitLabel = 'Save', wide = false } = {}) {
  return openDialog(title, (close) => {
    const err = errorBox();
    const btn = h('button', { type: 'submit', class: 'btn primary' }, submitLabel);
    const form = h('form', {
      class: 'dialog-form',
      novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        err.set('');
        btn.disabled = true;
        try {
          const value = await submit(form);
          close(value === undefined ? true : value);
        } catch (ex) {
          err.set(errorText(ex));
        } finally {
          btn.disabled = false;
        }
      },
    },
    h('div', { class: 'dialog-body' }, fields(), err),
    h('footer', { class: 'dialog-foot' },
      h('button', { type: 'button', class: 'btn', onclick: () => close(undefined) }, 'Cancel'),
      btn));
    return form;
  }, { wide });
}

/** Asks for one line of text. Resolves with the text, or undefined when cancelled. */
export function promptDialog(title, label, value = '', { submitLabel = 'Save', validate } = {}) {
  const input = h('input', { type: 'text', name: 'value', value, required: true, autocomplete: 'off' });
  return formDialog(title, () => field(label, input), () => {
    const v = input.value.trim();
    if (!v) throw new Error(`${label} is required`);
    if (validate) validate(v);
    return v;
  }, { submitLabel });
}

/**
 * A popup menu anchored to a button, keyboard-driven (arrows, Home/End, Escape).
 * items: [{label, onSelect, danger?, checked?, disabled?}] or 'separator'.
 */
export function openMenu(anchor, items, { x, y } = {}) {
  closeMenus();
  const menu = h('div', { class: 'menu', role: 'menu' });
  const buttons = [];
  for (const item of items) {
    if (item === 'separator') {
      menu.append(h('div', { class: 'menu-sep', role: 'separator' }));
      continue;
    }
    if (item.heading) {
      menu.append(h('div', { class: 'menu-heading' }, item.heading));
      continue;
    }
    const b = h('button', {
      type: 'button',
      role: item.checked === undefined ? 'menuitem' : 'menuitemradio',
      'aria-checked': item.checked === undefined ? null : String(!!item.checked),
      class: item.danger ? 'menu-item danger' : 'menu-item',
      disabled: item.disabled,
      onclick: () => {
        closeMenus();
        anchor?.focus?.();
        item.onSelect();
      },
    }, item.checked ? '✓ ' : '', item.label);
    buttons.push(b);
    menu.append(b);
  }
  menu.addEventListener('keydown', (e) => {
    const i = buttons.indexOf(document.activeElement);
    const move = (j) => buttons[(j + buttons.length) % buttons.length]?.focus();
    if (e.key === 'ArrowDown') { e.preventDefault(); move(i + 1); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); move(i - 1); }
    else if (e.key === 'Home') { e.preventDefault(); move(0); }
    else if (e.key === 'End') { e.preventDefault(); move(-1); }
    else if (e.key === 'Escape' || e.key === 'Tab') { e.preventDefault(); closeMenus(); anchor?.focus?.(); }
  });
  document.body.append(menu);
  const r = anchor?.getBoundingClientRect?.();
  let left = x ?? (r ? r.left : 0);
  let top = y ?? (r ? r.bottom + 4 : 0);
  const mr = menu.getBoundingClientRect();
  if (left + mr.width > innerWidth - 8) left = Math.max(8, innerWidth - mr.width - 8);
  if (top + mr.height > innerHeight - 8) top = Math.max(8, (r ? r.top : top) - mr.height - 4);
  menu.style.left = `${left}px`;
  menu.style.top = `${top}px`;
  anchor?.setAttribute?.('aria-expanded', 'true');
  menu.anchor = anchor;
  setTimeout(() => document.addEventListener('pointerdown', outside, true));
  buttons.find((b) => !b.disabled)?.focus();
  return menu;
}

function outside(e) {
  if (!e.target.closest('.menu')) closeMenus();
}

export function closeMenus() {
  document.removeEventListener('pointerdown', outside, true);
  for (const m of document.querySelectorAll('.menu')) {
    m.anchor?.setAttribute?.('aria-expanded', 'false');
    m.remove();
  }
}

/** A short message at the bottom of the screen. */
export function toast(text, kind = 'info') {
  const box = document.getElementById('toasts');
  const t = h('div', { class: `toast ${kind}` }, text);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

/** Formats a server timestamp (naive UTC or with Z) in the browser's locale. */
export function formatDate(s) {
  if (!s) return '—';
  let iso = String(s).replace(' ', 'T');
  if (!/[zZ]|[+-]\d\d:\d\d$/.test(iso)) iso += 'Z';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return s;
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** A badge. */
export function badge(text, kind = '') {
  return h('span', { class: `badge ${kind}`.trim() }, text);
}
