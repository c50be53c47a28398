// Workflows library: my workflows plus those others share, share/unshare, delete, and import a
// workflow from a .json file. (Running a workflow waits for the generation screens.)

import { api } from '../api.js';
import { h, mount, confirmDialog, toast, badge, formatDate, errorText, errorBox } from '../dom.js';
import { icons } from '../icons.js';
import { session } from '../session.js';

const W = 'api/v1/workflows/';

export async function render(container) {
  const alert = errorBox();
  const body = h('div');
  const fileInput = h('input', {
    type: 'file', accept: '.json,application/json', class: 'sr-only', id: 'wf-import', tabindex: '-1',
    onchange: async () => {
      const file = fileInput.files[0];
      fileInput.value = '';
      if (!file) return;
      alert.set('');
      try {
        const doc = JSON.parse(await file.text());
        delete doc.id;
        doc.meta = { version: '3.0.0', ...(doc.meta || {}), category: 'user' };
        const rec = await api(W, { method: 'POST', json: { workflow: doc } });
        toast(`Workflow "${rec.name}" imported.`);
        await load();
      } catch (e) {
        alert.set(e instanceof SyntaxError ? 'That file is not valid JSON.' : errorText(e));
      }
    },
  });

  let names = new Map();
  const load = async () => {
    const [mine, shared] = await Promise.all([
      api(W, { query: { categories: 'user', order_by: 'name' } }),
      api(W, { query: { categories: 'user', is_public: true, order_by: 'name' } }),
    ]);
    const all = new Map();
    for (const w of [...mine.items, ...shared.items]) all.set(w.workflow_id, w);
    const list = [...all.values()];
    const own = list.filter((w) => session.isMe(w.user_id));
    const others = list.filter((w) => !session.isMe(w.user_id) && w.is_public);
    const othersPrivate = list.filter((w) => !session.isMe(w.user_id) && !w.is_public);
    mount(body,
      group('My workflows', own, 'You have no workflows yet. Import one from a .json file.'),
      session.multiuser ? group('Shared by others', others, 'Nobody has shared a workflow yet.') : null,
      session.isAdmin && othersPrivate.length ? group('Other users\u2019 private workflows', othersPrivate, '') : null);
  };

  const group = (title, items, emptyText) => h('section', { class: 'section', 'aria-label': title },
    h('h2', {}, title),
    items.length
      ? h('div', { class: 'wf-list' }, items.map(row))
      : h('p', { class: 'muted' }, emptyText));

  const row = (w) => {
    const canWrite = session.isMe(w.user_id) || session.isAdmin;
    const owner = session.isMe(w.user_id) ? null : (names.get(w.user_id) || (w.user_id === 'system' ? 'System' : 'another user'));
    return h('div', { class: 'wf', dataset: { name: w.name } },
      h('div', { class: 'wf-main' },
        h('div', { class: 'wf-name' }, w.name || '(untitled)',
          w.is_public ? badge('Shared', 'shared') : badge('Private'),
          owner ? h('span', { class: 'muted' }, `by ${owner}`) : null),
        w.description ? h('div', { class: 'wf-desc' }, w.description) : null,
        h('div', { class: 'hint' }, `Updated ${formatDate(w.updated_at)}${w.tags ? ` · ${w.tags}` : ''}`)),
      canWrite && session.multiuser ? h('button', {
        type: 'button',
        class: 'btn small',
        onclick: () => act(async () => {
          await api(`${W}i/${encodeURIComponent(w.workflow_id)}/is_public`, { method: 'PATCH', json: { is_public: !w.is_public } });
          toast(w.is_public ? `"${w.name}" is private again.` : `"${w.name}" is shared with everyone.`);
        }),
      }, w.is_public ? 'Unshare' : 'Share') : null,
      canWrite ? h('button', {
        type: 'button',
        class: 'btn small danger',
        'aria-label': `Delete ${w.name}`,
        onclick: async () => {
          if (!await confirmDialog('Delete workflow', `Delete "${w.name}"? This cannot be undone.`, { confirmLabel: 'Delete', danger: true })) return;
          act(async () => {
            await api(`${W}i/${encodeURIComponent(w.workflow_id)}`, { method: 'DELETE' });
            toast(`"${w.name}" deleted.`);
          });
        },
      }, 'Delete') : null);
  };

  const act = async (fn) => {
    alert.set('');
    try {
      await fn();
    } catch (e) {
      alert.set(errorText(e));
    }
    await load();
  };

  mount(container,
    h('div', { class: 'page-head' }, h('h1', {}, 'Workflows'),
      h('label', { class: 'btn', for: 'wf-import', tabindex: '0', role: 'button',
        onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); fileInput.click(); } } },
      h('span', { html: icons.upload }), 'Import workflow…'),
      fileInput),
    alert, body);
  if (session.isAdmin && session.multiuser) {
    try {
      names = new Map((await api('api/v1/auth/users')).map((u) => [u.user_id, u.display_name || u.email]));
    } catch {
      // Owner names are a nicety.
    }
  }
  await load();
}
