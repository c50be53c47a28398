// Workflows library: my workflows plus those others share, share/unshare, delete, import a
// workflow from a .json file, and "Run": enqueue the workflow's graph through enqueue_batch.
// Run is offered only when the document carries a graph the queue accepts: a `graph` object, a
// `nodes` map (already graph-shaped), or InvokeAI's editor shape (a `nodes` array of invocation
// nodes whose inputs hold values, and `edges` between handles), converted as InvokeAI's editor
// does when it enqueues.

import { api } from '../api.js';
import { h, mount, confirmDialog, toast, badge, formatDate, errorText, errorBox } from '../dom.js';
import { icons } from '../icons.js';
import { session } from '../session.js';

const W = 'api/v1/workflows/';

const randomId = () => (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`).replace(/-/g, '').slice(0, 12);

/** The graph of a workflow document that enqueue_batch accepts, or null (see the header). */
export function workflowGraph(doc) {
  if (!doc || typeof doc !== 'object') return null;
  const isMap = (v) => v && typeof v === 'object' && !Array.isArray(v);
  if (isMap(doc.graph) && isMap(doc.graph.nodes) && Object.keys(doc.graph.nodes).length) {
    return { id: doc.graph.id || `workflow:${randomId()}`, edges: [], ...doc.graph };
  }
  if (isMap(doc.nodes) && Object.keys(doc.nodes).length) {
    return { id: `workflow:${randomId()}`, nodes: doc.nodes, edges: Array.isArray(doc.edges) ? doc.edges : [] };
  }
  if (!Array.isArray(doc.nodes)) return null;
  const invocations = doc.nodes.filter((n) => n && n.type === 'invocation' && n.data?.id && n.data?.type);
  if (!invocations.length) return null;
  const ids = new Set(invocations.map((n) => n.data.id));
  const edges = (Array.isArray(doc.edges) ? doc.edges : [])
    .filter((e) => e && (e.type === 'default' || e.type === undefined) && ids.has(e.source) && ids.has(e.target) && e.sourceHandle && e.targetHandle);
  const connected = new Set(edges.map((e) => `${e.target}\u0000${e.targetHandle}`));
  const nodes = {};
  for (const { data } of invocations) {
    const node = { id: data.id, type: data.type, is_intermediate: data.isIntermediate ?? true, use_cache: data.useCache ?? true };
    for (const [name, input] of Object.entries(data.inputs || {})) {
      if (connected.has(`${data.id}\u0000${name}`)) continue;
      if (input && typeof input === 'object' && 'value' in input && input.value !== undefined) node[name] = input.value;
    }
    nodes[data.id] = node;
  }
  return {
    id: `workflow:${randomId()}`,
    nodes,
    edges: edges.map((e) => ({ source: { node_id: e.source, field: e.sourceHandle }, destination: { node_id: e.target, field: e.targetHandle } })),
  };
}

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
  const docs = new Map(); // workflow_id → { updated_at, doc }
  const load = async () => {
    const [mine, shared] = await Promise.all([
      api(W, { query: { categories: 'user', order_by: 'name' } }),
      api(W, { query: { categories: 'user', is_public: true, order_by: 'name' } }),
    ]);
    const all = new Map();
    for (const w of [...mine.items, ...shared.items]) all.set(w.workflow_id, w);
    const list = [...all.values()];
    // The list carries no documents; read each one to know whether it can run.
    await Promise.all(list.map(async (w) => {
      if (docs.has(w.workflow_id) && docs.get(w.workflow_id).updated_at === w.updated_at) return;
      try {
        const rec = await api(`${W}i/${encodeURIComponent(w.workflow_id)}`);
        docs.set(w.workflow_id, { updated_at: w.updated_at, doc: rec.workflow });
      } catch {
        docs.set(w.workflow_id, { updated_at: w.updated_at, doc: null });
      }
    }));
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
      runnable(w) ? h('button', {
        type: 'button',
        class: 'btn small primary',
        'aria-label': `Run ${w.name}`,
        onclick: (e) => runWorkflow(w, e.currentTarget),
      }, h('span', { html: icons.play }), 'Run') : null,
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

  const runnable = (w) => !!workflowGraph(docs.get(w.workflow_id)?.doc);

  const runWorkflow = async (w, btn) => {
    alert.set('');
    const doc = docs.get(w.workflow_id)?.doc;
    const graph = workflowGraph(doc);
    if (!graph) return;
    btn.disabled = true;
    try {
      const res = await api('api/v1/queue/default/enqueue_batch', {
        method: 'POST',
        json: { batch: { graph, runs: 1, origin: 'workflows', destination: 'gallery', workflow: doc }, prepend: false },
      });
      if (!res.enqueued) throw new Error('The queue is full: nothing was enqueued.');
      toast(`"${w.name}" enqueued (${res.enqueued} item${res.enqueued === 1 ? '' : 's'}). Follow it on the Queue page.`);
    } catch (e) {
      alert.set(errorText(e));
    } finally {
      btn.disabled = false;
    }
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
