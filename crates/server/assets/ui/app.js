// Entry point: decides between setup, sign-in and the app, draws the shell (navigation and the
// user menu) and routes between screens by the URL hash (#/gallery, #/queue, …), so a reload or a
// bookmark returns to the same screen and signing in again never changes the route.

import { api, configure, getToken, setToken, tokenClaims, ApiError } from './api.js';
import { h, mount, openMenu, toast, badge, closeMenus } from './dom.js';
import { icons } from './icons.js';
import { session, SINGLE_USER, userLabel } from './session.js';
import { renderLogin } from './views/login.js';
import { renderSetup } from './views/setup.js';
import { startEvents, stopEvents, restartEvents, onEvents } from './socket.js';

const root = document.getElementById('app');

const ROUTES = {
  generate: { title: 'Generate', load: () => import('./views/generate.js') },
  gallery: { title: 'Gallery', load: () => import('./views/gallery.js') },
  queue: { title: 'Queue', load: () => import('./views/queue.js') },
  workflows: { title: 'Workflows', load: () => import('./views/workflows.js') },
  models: { title: 'Models', load: () => import('./views/models.js') },
  profile: { title: 'My Profile', load: () => import('./views/profile.js'), multiuser: true },
  users: { title: 'User Management', load: () => import('./views/users.js'), admin: true, multiuser: true },
  audit: { title: 'Audit log', load: () => import('./views/audit.js'), admin: true, multiuser: true },
};

let cleanup = null;
let viewEl = null;
let renderSeq = 0;

async function boot() {
  configure({ unauthorized: reauthenticate });
  let status;
  try {
    status = await api('api/v1/auth/status', { auth: false });
  } catch (e) {
    mount(root, h('div', { class: 'auth-page' }, h('div', { class: 'auth-card' },
      h('h1', {}, 'Atelier is unreachable'), h('p', {}, e.message),
      h('button', { class: 'btn primary', onclick: () => location.reload() }, 'Retry'))));
    return;
  }
  session.status = status;
  configure({ multiuserMode: status.multiuser_enabled });
  if (!status.multiuser_enabled) {
    session.user = SINGLE_USER;
    return startApp();
  }
  if (status.setup_required) {
    setToken(null);
    return renderSetup(root, {
      strict: status.strict_password_checking,
      onDone: (email) => showLoginPage({ notice: 'Administrator account created. Sign in to continue.', email }),
    });
  }
  const token = getToken();
  if (!token) return showLoginPage({});
  const claims = tokenClaims(token);
  if (claims?.exp && claims.exp * 1000 <= Date.now()) {
    setToken(null);
    return showLoginPage({ message: 'Session expired. Please sign in again.' });
  }
  try {
    session.user = await api('api/v1/auth/me', { retried: true });
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      setToken(null);
      return showLoginPage({ message: 'Session expired. Please sign in again.' });
    }
    throw e;
  }
  // A reload keeps the token; make sure the media cookie is there too.
  api('api/v1/auth/media-cookie', { method: 'POST', retried: true }).catch(() => {});
  startApp();
}

function showLoginPage(opts) {
  teardownView();
  stopEvents();
  const page = h('div', { class: 'auth-page' });
  mount(root, page);
  renderLogin(page, {
    ...opts,
    onSuccess: (user) => {
      session.user = user;
      startApp();
    },
  });
}

// One overlay for all the requests that got 401 at once.
let reauthPromise = null;
function reauthenticate() {
  if (reauthPromise) return reauthPromise;
  const previous = session.user?.user_id;
  setToken(null);
  closeMenus();
  for (const d of document.querySelectorAll('dialog[open]')) d.close();
  reauthPromise = new Promise((resolve) => {
    const overlay = h('div', { class: 'overlay', role: 'dialog', 'aria-modal': 'true', 'aria-label': 'Sign in again' });
    const shell = root.querySelector('.shell');
    if (shell) shell.inert = true;
    document.body.append(overlay);
    renderLogin(overlay, {
      message: 'Session expired. Please sign in again.',
      email: session.user?.email || '',
      onSuccess: (user) => {
        overlay.remove();
        if (shell) shell.inert = false;
        reauthPromise = null;
        session.user = user;
        if (user.user_id !== previous) {
          // Someone else signed in: nothing of the previous page may stay visible.
          startApp();
        } else {
          updateUserButton();
          restartEvents();
        }
        resolve();
      },
    });
  });
  return reauthPromise;
}

async function logout() {
  try {
    await api('api/v1/auth/logout', { method: 'POST', retried: true });
  } catch {
    // The token is discarded either way.
  }
  setToken(null);
  session.user = null;
  stopActivity?.();
  showLoginPage({ notice: 'You have signed out.' });
}

let userButton = null;

function startApp() {
  teardownView();
  startEvents();
  const activity = h('a', { class: 'activity', href: '#/generate', hidden: true, 'aria-live': 'polite' });
  const nav = h('nav', { class: 'sidebar', 'aria-label': 'Main' },
    h('a', { class: 'brand', href: '#/gallery' }, h('img', { src: 'ui/favicon.svg', alt: '', width: 24, height: 24 }), h('span', {}, 'Atelier')),
    navLink('generate', icons.generate, 'Generate'),
    navLink('gallery', icons.gallery, 'Gallery'),
    navLink('queue', icons.queue, 'Queue'),
    navLink('workflows', icons.workflows, 'Workflows'),
    navLink('models', icons.models, 'Models'),
    h('div', { class: 'spacer' }),
    activity,
    session.multiuser ? (userButton = h('button', {
      type: 'button',
      class: 'user-btn',
      'aria-haspopup': 'menu',
      'aria-expanded': 'false',
      onclick: (e) => openUserMenu(e.currentTarget),
    })) : h('div', { class: 'mode-note', title: 'Anyone who can reach this server has full access.' }, 'Single-user mode'));
  viewEl = h('main', { id: 'view', class: 'view', tabindex: '-1' });
  mount(root, h('div', { class: 'shell' }, nav, viewEl));
  watchActivity(activity);
  updateUserButton();
  route();
}

// A small "Generating… 40%" line in the sidebar while one of my items runs, whatever the screen.
let stopActivity = null;
function watchActivity(el) {
  stopActivity?.();
  let hideTimer = null;
  const show = (text, pct) => {
    clearTimeout(hideTimer);
    el.hidden = false;
    mount(el, h('span', { class: 'activity-text' }, text),
      h('span', { class: 'bar', 'aria-hidden': 'true' }, h('span', { style: `width:${Math.round((pct ?? 0) * 100)}%` })));
    el.title = text;
  };
  const mine = (e) => !e || !session.multiuser || e.user_id === session.user?.user_id;
  const running = new Set(); // items seen in progress: only those report their end
  stopActivity = onEvents({
    invocation_progress: (e) => {
      if (mine(e)) show(`Generating… ${e.percentage != null ? `${Math.round(e.percentage * 100)}%` : ''}`.trim(), e.percentage);
    },
    queue_item_status_changed: (e) => {
      if (!mine(e)) return;
      if (e.status === 'in_progress') {
        running.add(e.item_id);
        show('Generating…', 0);
      } else if (['completed', 'failed', 'canceled'].includes(e.status) && running.delete(e.item_id)) {
        show(e.status === 'completed' ? 'Done' : e.status === 'failed' ? 'Failed' : 'Canceled', e.status === 'completed' ? 1 : 0);
        hideTimer = setTimeout(() => { el.hidden = true; }, 4000);
      }
    },
  });
}

function navLink(name, icon, label) {
  return h('a', { class: 'nav-link', href: `#/${name}`, dataset: { route: name } },
    h('span', { class: 'nav-icon', html: icon }), h('span', { class: 'nav-label' }, label));
}

function updateUserButton() {
  if (!userButton) return;
  const u = session.user;
  mount(userButton,
    h('span', { class: 'nav-icon', html: icons.person }),
    h('span', { class: 'nav-label user-name' }, userLabel(u)),
    u.is_admin ? badge('Admin', 'admin') : null);
  userButton.setAttribute('aria-label', `Account: ${userLabel(u)}${u.is_admin ? ' (Admin)' : ''}`);
}

function openUserMenu(anchor) {
  const u = session.user;
  openMenu(anchor, [
    { heading: `${u.email}${u.is_admin ? ' · Admin' : ''}` },
    { label: 'My Profile', onSelect: () => go('profile') },
    u.is_admin ? { label: 'User Management', onSelect: () => go('users') } : null,
    u.is_admin ? { label: 'Audit log', onSelect: () => go('audit') } : null,
    'separator',
    { label: 'Logout', onSelect: logout },
  ].filter(Boolean));
}

function go(name) {
  if (location.hash === `#/${name}`) route();
  else location.hash = `#/${name}`;
}

function teardownView() {
  if (cleanup) {
    try {
      cleanup();
    } catch {
      // A screen that fails to clean up must not block the next one.
    }
  }
  cleanup = null;
  userButton = null;
}

async function route() {
  if (!viewEl || !session.user) return;
  const [name = 'gallery', ...rest] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const def = ROUTES[name] || ROUTES.gallery;
  const key = ROUTES[name] ? name : 'gallery';
  for (const a of root.querySelectorAll('.nav-link')) {
    if (a.dataset.route === key) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (cleanup) {
    const c = cleanup;
    cleanup = null;
    try { c(); } catch { /* see teardownView */ }
  }
  const seq = ++renderSeq;
  document.title = `${def.title} · Atelier`;
  if (session.multiuser) {
    // Roles and names can change while the page is open; every navigation re-reads them.
    try {
      session.user = await api('api/v1/auth/me');
      updateUserButton();
    } catch {
      // A 401 has already shown the sign-in form; anything else leaves the last known user.
    }
    if (seq !== renderSeq || !viewEl) return;
  }
  if ((def.admin && !session.isAdmin) || (def.multiuser && !session.multiuser)) {
    mount(viewEl, h('div', { class: 'page' }, h('h1', {}, def.title),
      h('p', { class: 'muted' }, def.multiuser && !session.multiuser
        ? 'Not available in single-user mode.'
        : 'Only administrators can open this page.')));
    return;
  }
  const mod = await def.load();
  if (seq !== renderSeq || !viewEl) return;
  const container = h('div', { class: `page page-${key}` });
  mount(viewEl, container);
  try {
    cleanup = (await mod.render(container, { params: rest, refreshUser: updateUserButton, logout })) || null;
  } catch (e) {
    if (seq === renderSeq) {
      mount(container, h('h1', {}, def.title), h('p', { class: 'form-error', role: 'alert' }, e.message));
    }
  }
}

window.addEventListener('hashchange', () => {
  closeMenus();
  route();
});
window.addEventListener('unhandledrejection', (e) => {
  if (e.reason instanceof ApiError) {
    toast(e.reason.message, 'error');
    e.preventDefault();
  }
});

boot();
