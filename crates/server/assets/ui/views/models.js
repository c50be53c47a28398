// Models: the installed models for everyone (read-only: name, base, type, format, description,
// and whether the file is missing); for administrators, installing from a server path or a URL
// with a progress bar per install job (polled, and refreshed at once by the admin-only
// model_install_* socket events), editing a model's name and description, and deleting a model.

import { api } from '../api.js';
import { h, mount, field, formDialog, confirmDialog, toast, badge, errorText, errorBox } from '../dom.js';
import { session } from '../session.js';
import { onEvents } from '../socket.js';

const M = 'api/v2/models/';
const TERMINAL = new Set(['completed', 'error', 'cancelled']);
const POLL_MS = 1000;

const BASES = {
  'sd-1': 'SD 1.x', 'sd-2': 'SD 2.x', sdxl: 'SDXL', 'sdxl-refiner': 'SDXL Refiner', 'sd-3': 'SD 3', flux: 'FLUX', any: 'Any',
};
const TYPES = {
  main: 'Main', vae: 'VAE', lora: 'LoRA', controlnet: 'ControlNet', embedding: 'Embedding', ip_adapter: 'IP Adapter',
  t2i_adapter: 'T2I Adapter', clip_vision: 'CLIP Vision', t5_encoder: 'T5 Encoder',
};

export function formatBytes(n) {
  if (!Number.isFinite(n) || n <= 0) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

export async function render(container) {
  const admin = session.isAdmin;
  const alert = errorBox();
  const list = h('div', { class: 'table-wrap' });
  const jobsBox = h('div', { class: 'jobs', 'aria-label': 'Install jobs', role: 'region' });
  const filter = h('input', { type: 'search', id: 'model-filter', placeholder: 'Filter by name, base or type', autocomplete: 'off' });
  let models = [];
  let missing = new Set();
  let jobs = [];
  let stopped = false;
  let pollTimer = null;

  // ---- installed models ----
  const loadModels = async () => {
    const [all, gone] = await Promise.all([api(M), api(`${M}missing`).catch(() => ({ models: [] }))]);
    if (stopped) return;
    models = all.models;
    missing = new Set(gone.models.map((m) => m.key));
    drawModels();
  };

  const drawModels = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = q ? models.filter((m) => [m.name, m.base, m.type, m.format, m.description, BASES[m.base], TYPES[m.type]]
      .some((v) => v && String(v).toLowerCase().includes(q))) : models;
    if (!models.length) {
      mount(list, h('p', { class: 'empty' }, admin
        ? 'No models are installed yet. Install one from a path on the server or a URL above.'
        : 'No models are installed yet. An administrator can install them.'));
      return;
    }
    mount(list, h('table', {},
      h('caption', { class: 'sr-only' }, 'Installed models'),
      h('thead', {}, h('tr', {}, ['Name', 'Base', 'Type', 'Format', 'Size', 'Description', admin ? '' : null]
        .filter((x) => x !== null)
        .map((t) => h('th', { scope: 'col' }, t || h('span', { class: 'sr-only' }, 'Actions'))))),
      h('tbody', {}, shown.length ? shown.map(row) : h('tr', {}, h('td', { colspan: admin ? 7 : 6, class: 'empty' }, 'No model matches the filter.')))));
  };

  const row = (m) => h('tr', { dataset: { modelKey: m.key, modelName: m.name } },
    h('th', { scope: 'row', class: 'model-name' }, m.name,
      missing.has(m.key) ? h('span', {}, ' ', badge('File missing', 'bad')) : null,
      h('div', { class: 'hint model-source', title: m.source }, m.source_type === 'url' ? 'From a URL' : m.path)),
    h('td', {}, badge(BASES[m.base] || m.base)),
    h('td', {}, TYPES[m.type] || m.type),
    h('td', {}, m.format),
    h('td', { class: 'num' }, formatBytes(m.file_size)),
    h('td', { class: 'model-desc' }, m.description || h('span', { class: 'muted' }, '—')),
    admin ? h('td', { class: 'actions' },
      h('button', { type: 'button', class: 'btn small', 'aria-label': `Edit ${m.name}`, onclick: () => editModel(m) }, 'Edit'),
      h('button', { type: 'button', class: 'btn small danger', 'aria-label': `Delete ${m.name}`, onclick: () => deleteModel(m) }, 'Delete')) : null);

  const editModel = async (m) => {
    const name = h('input', { type: 'text', name: 'name', value: m.name, required: true, autocomplete: 'off' });
    const desc = h('textarea', { name: 'description', rows: 3 });
    desc.value = m.description || '';
    const saved = await formDialog(`Edit ${m.name}`, () => [field('Name', name), field('Description', desc)], async () => {
      const n = name.value.trim();
      if (!n) throw new Error('Name is required.');
      return api(`${M}i/${encodeURIComponent(m.key)}`, { method: 'PATCH', json: { name: n, description: desc.value.trim() } });
    });
    if (saved && typeof saved === 'object') {
      toast(`Model "${saved.name}" saved.`);
      await loadModels();
    }
  };

  const deleteModel = async (m) => {
    const inside = !m.path.startsWith('/');
    const ok = await confirmDialog('Delete model', inside
      ? `Delete "${m.name}"? Its files in the models folder are deleted too. This cannot be undone.`
      : `Delete "${m.name}"? It is unregistered; the file at ${m.path} stays where it is.`, { confirmLabel: 'Delete', danger: true });
    if (!ok) return;
    alert.set('');
    try {
      await api(`${M}i/${encodeURIComponent(m.key)}`, { method: 'DELETE' });
      toast(`Model "${m.name}" deleted.`);
    } catch (e) {
      alert.set(errorText(e));
    }
    await loadModels();
  };

  // ---- install (admins) ----
  const source = h('input', { type: 'text', name: 'source', id: 'model-source', required: true, autocomplete: 'off', placeholder: '/models/dreamshaper_8.safetensors or https://…' });
  const inplace = h('input', { type: 'checkbox', id: 'model-inplace', checked: true });
  const installErr = errorBox();
  const installBtn = h('button', { type: 'submit', class: 'btn primary' }, 'Install');
  const installForm = h('form', {
    class: 'section install-form',
    'aria-label': 'Install a model',
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      installErr.set('');
      const src = source.value.trim();
      if (!src) {
        installErr.set('Enter a path on the server or a URL.');
        source.focus();
        return;
      }
      installBtn.disabled = true;
      try {
        const job = await api(`${M}install`, { method: 'POST', query: { source: src, inplace: inplace.checked }, json: {} });
        upsertJob(job);
        source.value = '';
        toast(`Installing ${sourceLabel(job)}…`);
        schedulePoll(0);
      } catch (ex) {
        installErr.set(errorText(ex));
      } finally {
        installBtn.disabled = false;
      }
    },
  },
  h('h2', {}, 'Install a model'),
  h('div', { class: 'row wrap' },
    field('Path or URL', source, 'A model file or diffusers folder on the server, or an http(s) URL to download.'),
    installBtn),
  h('div', { class: 'check' }, inplace, h('label', { for: 'model-inplace' }, 'Leave local files where they are (otherwise they are moved into the models folder)')),
  installErr);

  const upsertJob = (job) => {
    const i = jobs.findIndex((j) => j.id === job.id);
    if (i >= 0) jobs[i] = job;
    else jobs.push(job);
    drawJobs();
  };

  const drawJobs = () => {
    if (!jobs.length) {
      mount(jobsBox);
      return;
    }
    const finished = jobs.some((j) => TERMINAL.has(j.status));
    mount(jobsBox,
      h('div', { class: 'jobs-head' }, h('h2', {}, 'Install jobs'),
        finished ? h('button', {
          type: 'button', class: 'btn small',
          onclick: async () => {
            try {
              await api(`${M}install`, { method: 'DELETE' });
              jobs = jobs.filter((j) => !TERMINAL.has(j.status));
              drawJobs();
            } catch (e) {
              alert.set(errorText(e));
            }
          },
        }, 'Clear finished') : null),
      h('ul', { class: 'job-list' }, [...jobs].sort((a, b) => b.id - a.id).map(jobRow)));
  };

  const jobRow = (job) => {
    const total = job.total_bytes || 0;
    const done = job.status === 'completed';
    const pct = done ? 1 : total ? Math.min(1, job.bytes / total) : null;
    const label = sourceLabel(job);
    const bar = h('progress', { max: 1, 'aria-label': `Progress of ${label}` });
    if (pct !== null) bar.value = pct;
    if (job.status === 'error' || job.status === 'cancelled') bar.value = 0;
    const text = {
      waiting: 'Waiting',
      downloading: total ? `Downloading ${formatBytes(job.bytes)} of ${formatBytes(total)}` : 'Downloading',
      downloads_done: 'Downloaded',
      running: 'Installing',
      paused: 'Paused',
      completed: `Installed${job.config_out ? ` as "${job.config_out.name}"` : ''}`,
      error: 'Failed',
      cancelled: 'Cancelled',
    }[job.status] || job.status;
    const live = !TERMINAL.has(job.status);
    return h('li', { class: `job job-${job.status}`, dataset: { jobId: job.id, status: job.status } },
      h('div', { class: 'job-line' },
        h('span', { class: 'job-source', title: label }, label),
        badge(text, job.status === 'completed' ? 'good' : job.status === 'error' ? 'bad' : ''),
        live ? h('button', {
          type: 'button', class: 'btn small', 'aria-label': `Cancel install of ${label}`,
          onclick: async () => {
            try {
              await api(`${M}install/${job.id}`, { method: 'DELETE' });
            } catch (e) {
              alert.set(errorText(e));
            }
            schedulePoll(0);
          },
        }, 'Cancel') : null),
      bar,
      job.status === 'error' ? h('div', { class: 'hint bad', role: 'alert' }, installError(job)) : null);
  };

  // One poll loop for every live job; the socket events only make it run sooner.
  const poll = async () => {
    pollTimer = null;
    const live = jobs.filter((j) => !TERMINAL.has(j.status));
    if (!live.length || stopped) return;
    let finished = false;
    await Promise.all(live.map(async (j) => {
      try {
        const fresh = await api(`${M}install/${j.id}`);
        if (TERMINAL.has(fresh.status)) {
          finished = true;
          if (fresh.status === 'completed') toast(`Model "${fresh.config_out?.name || sourceLabel(fresh)}" installed.`);
        }
        upsertJob(fresh);
      } catch (e) {
        // A vanished job (server restart) is dropped; anything else is retried.
        if (e.status === 404) {
          jobs = jobs.filter((x) => x.id !== j.id);
          drawJobs();
        }
      }
    }));
    if (stopped) return;
    if (finished) await loadModels();
    if (jobs.some((j) => !TERMINAL.has(j.status))) schedulePoll(POLL_MS);
  };
  const schedulePoll = (ms) => {
    if (stopped) return;
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, ms);
  };

  filter.addEventListener('input', drawModels);
  mount(container,
    h('div', { class: 'page-head' }, h('h1', {}, 'Models'),
      h('div', { class: 'filter' }, h('label', { for: 'model-filter', class: 'sr-only' }, 'Filter models'), filter)),
    admin ? installForm : h('p', { class: 'muted' }, 'Models are installed and managed by administrators.'),
    admin ? jobsBox : null,
    alert,
    h('h2', { class: 'sr-only' }, 'Installed models'),
    list);

  let off = () => {};
  if (admin) {
    const refresh = () => schedulePoll(0);
    off = onEvents({
      model_install_download_progress: (e) => {
        const j = jobs.find((x) => x.id === e.id);
        if (j && !TERMINAL.has(j.status)) upsertJob({ ...j, status: 'downloading', bytes: e.bytes, total_bytes: e.total_bytes });
        else if (!j) refresh();
      },
      model_install_downloads_complete: refresh,
      model_install_started: refresh,
      model_install_complete: refresh,
      model_install_error: refresh,
      model_install_cancelled: refresh,
    });
    try {
      jobs = await api(`${M}install`);
      drawJobs();
      schedulePoll(0);
    } catch (e) {
      alert.set(errorText(e));
    }
  }
  await loadModels();
  return () => {
    stopped = true;
    clearTimeout(pollTimer);
    off();
  };
}

function sourceLabel(job) {
  const s = job.source || {};
  return s.path || s.url || s.repo_id || job.local_path || `job ${job.id}`;
}

/** A job's failure in words: the message, with the error class when the message is bare. */
function installError(job) {
  const msg = job.error || job.error_reason || 'The install failed.';
  return job.error_reason && job.error && !job.error.includes(job.error_reason) ? `${job.error_reason}: ${msg}` : msg;
}
