// Generate: the text-to-image / image-to-image form (model, prompts, size, steps, CFG, scheduler,
// seed, board, init image with strength), sent to POST /api/v1/generate (generation.md §12)
// without waiting; the run is then followed live from the socket (invocation_progress: the step
// bar and preview; queue_item_status_changed: the end), with a slow poll of the queue item as a
// fallback, and the finished image is read from the item's session results.
// The settings persist in localStorage; "Use these settings" in the gallery fills them from an
// image's metadata (session.pendingRecall).

import { api, mediaQuery } from '../api.js';
import { h, mount, field, openDialog, toast, errorText, errorBox } from '../dom.js';
import { icons } from '../icons.js';
import { session } from '../session.js';
import { onEvents } from '../socket.js';

const STORE_KEY = 'atelier.generate';
const Q = 'api/v1/queue/default';
const POLL_MS = 2500;
const MAX_SEED = 4294967295;
const BASES = { 'sd-1': 'SD 1.x', 'sd-2': 'SD 2.x', sdxl: 'SDXL' };

/** generation.md §10.6, in InvokeAI's order and wording. */
export const SCHEDULERS = [
  ['ddim', 'DDIM'], ['ddpm', 'DDPM'], ['deis', 'DEIS'], ['deis_k', 'DEIS Karras'],
  ['lms', 'LMS'], ['lms_k', 'LMS Karras'], ['pndm', 'PNDM'], ['heun', 'Heun'], ['heun_k', 'Heun Karras'],
  ['euler', 'Euler'], ['euler_k', 'Euler Karras'], ['euler_a', 'Euler Ancestral'],
  ['kdpm_2', 'KDPM 2'], ['kdpm_2_k', 'KDPM 2 Karras'], ['kdpm_2_a', 'KDPM 2 Ancestral'], ['kdpm_2_a_k', 'KDPM 2 Ancestral Karras'],
  ['dpmpp_2s', 'DPM++ 2S'], ['dpmpp_2s_k', 'DPM++ 2S Karras'], ['dpmpp_2m', 'DPM++ 2M'], ['dpmpp_2m_k', 'DPM++ 2M Karras'],
  ['dpmpp_2m_sde', 'DPM++ 2M SDE'], ['dpmpp_2m_sde_k', 'DPM++ 2M SDE Karras'], ['dpmpp_3m', 'DPM++ 3M'], ['dpmpp_3m_k', 'DPM++ 3M Karras'],
  ['dpmpp_sde', 'DPM++ SDE'], ['dpmpp_sde_k', 'DPM++ SDE Karras'], ['er_sde', 'ER-SDE'],
  ['unipc', 'UniPC'], ['unipc_k', 'UniPC Karras'], ['lcm', 'LCM'], ['tcd', 'TCD'],
];

const DEFAULTS = {
  model: '', prompt: '', negative_prompt: '', width: 512, height: 512, steps: 30, cfg_scale: 7.5,
  cfg_rescale_multiplier: 0, scheduler: 'dpmpp_3m_k', seed: 0, random_seed: true, count: 1,
  board_id: 'none', init_image: null, strength: 0.75, vae: '', loras: [],
};
/** InvokeAI's default weight for a newly added LoRA. */
const LORA_WEIGHT = 0.75;
const MAX_COUNT = 100;

const imageUrl = (name, kind = 'full') => `api/v1/images/i/${encodeURIComponent(name)}/${kind}?${mediaQuery()}`;

function loadSettings() {
  try {
    return { ...DEFAULTS, ...JSON.parse(localStorage.getItem(STORE_KEY) || '{}') };
  } catch {
    return { ...DEFAULTS };
  }
}

/** The image of a finished item: the output node's result, else the last image in the session. */
export function resultImages(item) {
  const s = item?.session;
  if (!s?.results) return [];
  const map = s.source_prepared_mapping || {};
  const outputs = Object.keys(map).filter((k) => k.startsWith('canvas_output'));
  const ids = outputs.length ? outputs.flatMap((k) => map[k]) : Object.keys(s.results);
  const image = (r) => (r?.image?.image_name ? { image_name: r.image.image_name, width: r.width, height: r.height } : null);
  const found = ids.map((id) => image(s.results[id])).filter(Boolean);
  if (found.length || !outputs.length) return found;
  return Object.values(s.results).map(image).filter(Boolean).slice(-1);
}

export async function render(container) {
  const st = loadSettings();
  const save = () => localStorage.setItem(STORE_KEY, JSON.stringify(st));
  let models = [];
  let boards = [];
  let vaes = []; // installed VAE models
  let loraModels = []; // installed LoRA models
  let run = null; // { items: Map(id → {status, seed}), done }
  let pollTimer = null;
  let stopped = false;

  // ---- fields ----
  const inputs = {
    model: h('select', { name: 'model', id: 'gen-model' }),
    prompt: h('textarea', { name: 'prompt', id: 'gen-prompt', rows: 4, placeholder: 'Describe the image' }),
    negative_prompt: h('textarea', { name: 'negative_prompt', id: 'gen-negative', rows: 2, placeholder: 'What to avoid (optional)' }),
    width: h('input', { type: 'number', name: 'width', id: 'gen-width', min: 64, max: 4096, step: 8, inputmode: 'numeric' }),
    height: h('input', { type: 'number', name: 'height', id: 'gen-height', min: 64, max: 4096, step: 8, inputmode: 'numeric' }),
    steps: h('input', { type: 'number', name: 'steps', id: 'gen-steps', min: 1, max: 200, step: 1, inputmode: 'numeric' }),
    cfg_scale: h('input', { type: 'number', name: 'cfg_scale', id: 'gen-cfg', min: 1, max: 200, step: 0.5, inputmode: 'decimal' }),
    cfg_rescale_multiplier: h('input', { type: 'number', name: 'cfg_rescale_multiplier', id: 'gen-cfg-rescale', min: 0, max: 0.99, step: 0.05, inputmode: 'decimal' }),
    count: h('input', { type: 'number', name: 'count', id: 'gen-count', min: 1, max: MAX_COUNT, step: 1, inputmode: 'numeric' }),
    scheduler: h('select', { name: 'scheduler', id: 'gen-scheduler' }, SCHEDULERS.map(([v, l]) => h('option', { value: v }, l))),
    seed: h('input', { type: 'number', name: 'seed', id: 'gen-seed', min: 0, max: MAX_SEED, step: 1, inputmode: 'numeric' }),
    random_seed: h('input', { type: 'checkbox', name: 'random_seed', id: 'gen-random-seed' }),
    board_id: h('select', { name: 'board_id', id: 'gen-board' }),
    vae: h('select', { name: 'vae', id: 'gen-vae' }),
    strength: h('input', { type: 'range', name: 'strength', id: 'gen-strength', min: 0, max: 1, step: 0.01 }),
  };
  const strengthOut = h('output', { for: 'gen-strength', class: 'range-value' });
  // LoRAs: the chosen ones with their weights, and a picker for more of the model's base.
  const loraList = h('ul', { class: 'lora-list', 'aria-label': 'Chosen LoRAs' });
  const loraAdd = h('select', { id: 'gen-lora-add' });
  const loraErr = h('div', { class: 'hint bad', hidden: true });
  const fieldErrors = {};
  const withError = (name, el) => {
    fieldErrors[name] = h('div', { class: 'hint bad', id: `gen-${name}-error`, hidden: true });
    return [el, fieldErrors[name]];
  };
  const formErr = errorBox();
  const notice = h('div', { class: 'banner info', hidden: true, role: 'status' });
  const modelNote = h('div', { class: 'hint' });
  const initBox = h('div', { class: 'init-box' });
  const invokeBtn = h('button', { type: 'submit', class: 'btn primary wide invoke' }, h('span', { html: icons.generate }), 'Invoke');
  const upload = h('input', { type: 'file', accept: 'image/*', class: 'sr-only', id: 'gen-upload', tabindex: '-1' });

  // ---- output panel ----
  const statusLine = h('div', { class: 'gen-status', 'aria-live': 'polite' }, 'Ready.');
  const bar = h('progress', { max: 1, value: 0, 'aria-label': 'Generation progress', hidden: true });
  const stage = h('div', { class: 'gen-stage' }, h('p', { class: 'muted' }, 'Your image appears here.'));
  const resultMeta = h('div', { class: 'gen-result-meta' });
  // With several images per run: one thumbnail per finished image; a click shows it on the stage.
  const strip = h('div', { class: 'gen-strip', role: 'list', 'aria-label': 'Images of this run', hidden: true });
  const cancelBtn = h('button', { type: 'button', class: 'btn small danger', hidden: true, onclick: () => cancelRun() }, 'Cancel');

  const fill = () => {
    for (const k of ['prompt', 'negative_prompt', 'width', 'height', 'steps', 'cfg_scale', 'cfg_rescale_multiplier', 'scheduler', 'seed', 'count', 'strength']) {
      inputs[k].value = st[k] ?? '';
    }
    inputs.random_seed.checked = !!st.random_seed;
    inputs.seed.disabled = !!st.random_seed;
    if ([...inputs.model.options].some((o) => o.value === st.model)) inputs.model.value = st.model;
    if ([...inputs.board_id.options].some((o) => o.value === st.board_id)) inputs.board_id.value = st.board_id;
    else inputs.board_id.value = 'none';
    strengthOut.value = Number(st.strength).toFixed(2);
    drawInit();
    describeModel();
    drawVaes();
    drawLoras();
  };

  const read = () => {
    st.model = inputs.model.value;
    st.prompt = inputs.prompt.value;
    st.negative_prompt = inputs.negative_prompt.value;
    for (const k of ['width', 'height', 'steps', 'cfg_scale', 'cfg_rescale_multiplier', 'seed', 'count', 'strength']) {
      st[k] = inputs[k].value === '' ? '' : Number(inputs[k].value);
    }
    st.scheduler = inputs.scheduler.value;
    st.random_seed = inputs.random_seed.checked;
    st.board_id = inputs.board_id.value;
    st.vae = inputs.vae.value;
    save();
  };

  const modelByKey = (key) => models.find((m) => m.key === key);
  const baseOf = () => modelByKey(inputs.model.value)?.base;

  // VAEs and LoRAs are offered for the chosen model's base only (the server refuses others).
  const drawVaes = () => {
    const list = vaes.filter((v) => v.base === baseOf());
    mount(inputs.vae, h('option', { value: '' }, 'The model\u2019s own'), list.map((v) => h('option', { value: v.key }, v.name)));
    inputs.vae.value = list.some((v) => v.key === st.vae) ? st.vae : '';
    inputs.vae.disabled = !list.length;
  };
  const drawLoras = () => {
    const base = baseOf();
    st.loras = (st.loras || []).filter((l) => loraModels.some((m) => m.key === l.key && m.base === base));
    const available = loraModels.filter((m) => m.base === base && !st.loras.some((l) => l.key === m.key));
    mount(loraAdd,
      h('option', { value: '' }, available.length ? 'Add a LoRA\u2026' : (loraModels.length ? 'No other LoRA for this model' : 'No LoRA installed')),
      available.map((m) => h('option', { value: m.key }, m.name)));
    loraAdd.disabled = !available.length;
    mount(loraList, st.loras.map((l) => {
      const name = loraModels.find((m) => m.key === l.key)?.name || l.key;
      const weight = h('input', {
        type: 'number', step: 0.05, min: -10, max: 10, inputmode: 'decimal', value: l.weight,
        'aria-label': `Weight of ${name}`,
        oninput: () => { l.weight = weight.value === '' ? NaN : Number(weight.value); save(); },
      });
      return h('li', { class: 'lora-row', dataset: { loraKey: l.key } },
        h('span', { class: 'lora-name', title: name }, name), weight,
        h('button', {
          type: 'button', class: 'btn small', 'aria-label': `Remove LoRA ${name}`,
          onclick: () => { st.loras = st.loras.filter((x) => x !== l); save(); drawLoras(); },
        }, 'Remove'));
    }));
  };
  loraAdd.addEventListener('change', () => {
    if (!loraAdd.value) return;
    st.loras = [...(st.loras || []), { key: loraAdd.value, weight: LORA_WEIGHT }];
    save();
    drawLoras();
    loraList.querySelector('li:last-child input')?.focus();
  });
  const describeModel = () => {
    const m = modelByKey(inputs.model.value);
    modelNote.textContent = m ? `${BASES[m.base] || m.base} · ${m.format}${m.description ? ` · ${m.description}` : ''}` : '';
  };

  // Selecting a model applies its default settings, as InvokeAI does.
  const applyModelDefaults = () => {
    const d = modelByKey(inputs.model.value)?.default_settings;
    if (!d) return;
    for (const [k, key] of [['width', 'width'], ['height', 'height'], ['steps', 'steps'], ['cfg_scale', 'cfg_scale'], ['cfg_rescale_multiplier', 'cfg_rescale_multiplier'], ['scheduler', 'scheduler']]) {
      if (d[key] !== null && d[key] !== undefined && !(k === 'scheduler' && !SCHEDULERS.some(([v]) => v === d[key]))) inputs[k].value = d[key];
    }
    if (d.vae && vaes.some((v) => v.key === d.vae)) st.vae = d.vae;
  };

  // ---- image to image ----
  const drawInit = () => {
    const img = st.init_image;
    mount(initBox,
      img ? h('div', { class: 'init-preview' },
        h('img', { src: imageUrl(img.image_name, 'thumbnail'), alt: `Initial image ${img.image_name}` }),
        h('div', { class: 'init-info' },
          h('div', { class: 'init-name', title: img.image_name }, img.image_name),
          img.width ? h('div', { class: 'hint' }, `${img.width} × ${img.height}`) : null,
          h('button', { type: 'button', class: 'btn small', onclick: () => setInit(null) }, 'Remove'))) : h('p', { class: 'hint' }, 'None: text to image.'),
      h('div', { class: 'row wrap' },
        h('label', {
          class: 'btn small', for: 'gen-upload', role: 'button', tabindex: '0',
          onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); upload.click(); } },
        }, h('span', { html: icons.upload }), 'Upload image'),
        h('button', { type: 'button', class: 'btn small', onclick: pickFromGallery }, 'Choose from gallery')),
      img ? h('div', { class: 'field strength' }, h('label', { for: 'gen-strength' }, 'Strength ', strengthOut), inputs.strength,
        h('div', { class: 'hint' }, 'How much the image may change: 0 keeps it, 1 ignores it.')) : null);
  };

  const setInit = (img) => {
    st.init_image = img ? { image_name: img.image_name, width: img.width, height: img.height } : null;
    if (img?.width && img?.height) {
      // The output takes the initial image's size (rounded down to multiples of 8).
      inputs.width.value = Math.max(64, Math.min(4096, Math.floor(img.width / 8) * 8));
      inputs.height.value = Math.max(64, Math.min(4096, Math.floor(img.height / 8) * 8));
    }
    read();
    drawInit();
  };

  upload.addEventListener('change', async () => {
    const file = upload.files[0];
    upload.value = '';
    if (!file) return;
    formErr.set('');
    try {
      const form = new FormData();
      form.append('file', file, file.name);
      const img = await api('api/v1/images/upload', {
        method: 'POST', body: form, query: { image_category: 'user', is_intermediate: false },
      });
      setInit(img);
      toast('Initial image uploaded.');
    } catch (e) {
      formErr.set(errorText(e));
    }
  });

  async function pickFromGallery() {
    let page;
    try {
      page = await api('api/v1/images/', { query: { offset: 0, limit: 60, is_intermediate: false } });
    } catch (e) {
      formErr.set(errorText(e));
      return;
    }
    const chosen = await openDialog('Choose an initial image', (close) => h('div', { class: 'dialog-body' },
      page.items.length
        ? h('div', { class: 'image-grid picker', role: 'group', 'aria-label': 'Recent images' }, page.items.map((img) => h('button', {
          type: 'button', class: 'tile', 'aria-label': `Use ${img.image_name}`, dataset: { imageName: img.image_name }, onclick: () => close(img),
        }, h('img', { src: `${img.thumbnail_url}${img.thumbnail_url.includes('?') ? '&' : '?'}${mediaQuery()}`, alt: '', loading: 'lazy' }))))
        : h('p', { class: 'muted' }, 'The gallery has no images yet.')), { wide: true });
    if (chosen) setInit(chosen);
  }

  // ---- validation and submit ----
  const validate = () => {
    const problems = {};
    const int = (k, lo, hi, label) => {
      const v = inputs[k].value.trim();
      const n = Number(v);
      if (v === '' || !Number.isInteger(n)) problems[k] = `${label} must be a whole number.`;
      else if (n < lo || n > hi) problems[k] = `${label} must be between ${lo} and ${hi}.`;
      return n;
    };
    if (!inputs.model.value) problems.model = models.length ? 'Choose a model.' : 'No model is installed.';
    if (!inputs.prompt.value.trim()) problems.prompt = 'Enter a prompt.';
    for (const k of ['width', 'height']) {
      const n = int(k, 64, 4096, k === 'width' ? 'Width' : 'Height');
      if (!problems[k] && n % 8 !== 0) problems[k] = `${k === 'width' ? 'Width' : 'Height'} must be a multiple of 8.`;
    }
    int('steps', 1, 200, 'Steps');
    const cfg = inputs.cfg_scale.value.trim();
    if (cfg === '' || !Number.isFinite(Number(cfg)) || Number(cfg) < 1) problems.cfg_scale = 'CFG scale must be a number of at least 1.';
    const rescale = inputs.cfg_rescale_multiplier.value.trim();
    const r = Number(rescale);
    if (rescale !== '' && (!Number.isFinite(r) || r < 0 || r >= 1)) problems.cfg_rescale_multiplier = 'CFG rescale must be at least 0 and below 1.';
    int('count', 1, MAX_COUNT, 'Images');
    if (!inputs.random_seed.checked) int('seed', 0, MAX_SEED, 'Seed');
    for (const [k, box] of Object.entries(fieldErrors)) {
      const msg = problems[k] || '';
      box.textContent = msg;
      box.hidden = !msg;
      const input = inputs[k];
      if (msg) {
        input.setAttribute('aria-invalid', 'true');
        input.setAttribute('aria-describedby', box.id);
      } else {
        input.removeAttribute('aria-invalid');
        if (input.getAttribute('aria-describedby') === box.id) input.removeAttribute('aria-describedby');
      }
    }
    const first = Object.keys(problems)[0];
    if (first) inputs[first].focus();
    return !first;
  };

  /** The request body of POST /api/v1/generate (generation.md §12.1). */
  const requestBody = () => {
    const body = {
      prompt: inputs.prompt.value.trim(),
      negative_prompt: inputs.negative_prompt.value.trim(),
      model: inputs.model.value,
      width: Number(inputs.width.value),
      height: Number(inputs.height.value),
      steps: Number(inputs.steps.value),
      cfg_scale: Number(inputs.cfg_scale.value),
      scheduler: inputs.scheduler.value,
    };
    // Left out at their defaults (0 and 1), so a plain request stays as small as the API's example.
    const rescale = Number(inputs.cfg_rescale_multiplier.value || 0);
    if (rescale > 0) body.cfg_rescale_multiplier = rescale;
    const count = Number(inputs.count.value);
    if (count > 1) body.count = count;
    if (!inputs.random_seed.checked) body.seed = Number(inputs.seed.value);
    if (inputs.board_id.value !== 'none') body.board_id = inputs.board_id.value;
    if (inputs.vae.value) body.vae = inputs.vae.value;
    if (st.loras?.length) body.loras = st.loras.map((l) => ({ model: l.key, weight: l.weight }));
    if (st.init_image) {
      body.init_image = st.init_image.image_name;
      body.strength = Number(inputs.strength.value);
    }
    return body;
  };

  const invoke = async () => {
    formErr.set('');
    read();
    const badLora = (st.loras || []).find((l) => !Number.isFinite(l.weight));
    loraErr.textContent = badLora ? 'Each LoRA weight must be a number.' : '';
    loraErr.hidden = !badLora;
    if (!validate() || badLora) {
      formErr.set('Some settings need attention (marked below).');
      return;
    }
    invokeBtn.disabled = true;
    try {
      const res = await api('api/v1/generate', { method: 'POST', json: requestBody() });
      startRun(res);
    } catch (e) {
      formErr.set(errorText(e));
    } finally {
      invokeBtn.disabled = false;
    }
  };

  // ---- following a run ----
  const startRun = (res) => {
    const ids = res.item_ids || [];
    run = { batch: res.batch_id, items: new Map(ids.map((id, i) => [id, { status: res.status || 'pending', seed: res.seeds?.[i] ?? null }])), shown: new Set() };
    bar.hidden = false;
    bar.value = 0;
    cancelBtn.hidden = false;
    mount(resultMeta);
    mount(strip);
    strip.hidden = true;
    setStatus(ids.length ? `Queued (item ${ids.join(', ')}).` : 'Nothing was queued.');
    if (!ids.length) endRun();
    else schedulePoll(POLL_MS);
  };

  const setStatus = (text) => { statusLine.textContent = text; };
  const endRun = () => {
    cancelBtn.hidden = true;
    clearTimeout(pollTimer);
  };

  const onStatus = async (itemId, status, info = {}) => {
    if (!run?.items.has(itemId)) return;
    const entry = run.items.get(itemId);
    if (entry.status === status && status !== 'completed') return;
    if (['completed', 'failed', 'canceled'].includes(entry.status)) return;
    entry.status = status;
    if (status === 'in_progress') setStatus(`Generating (item ${itemId})…`);
    else if (status === 'completed') await showResult(itemId);
    else if (status === 'failed') {
      setStatus(`Failed: ${[info.error_type, info.error_message].filter(Boolean).join(': ') || 'the generation failed.'}`);
      statusLine.classList.add('bad');
      bar.value = 0;
    } else if (status === 'canceled') {
      setStatus('Canceled.');
      bar.value = 0;
    }
    if ([...run.items.values()].every((i) => ['completed', 'failed', 'canceled'].includes(i.status))) endRun();
  };

  const showResult = async (itemId) => {
    let item;
    try {
      item = await api(`${Q}/i/${itemId}`);
    } catch (e) {
      setStatus(`Finished, but the result could not be read: ${errorText(e)}`);
      return;
    }
    const imgs = resultImages(item);
    if (!imgs.length) {
      setStatus('Finished without an image.');
      return;
    }
    const img = imgs[imgs.length - 1];
    const seed = run.items.get(itemId)?.seed ?? item.field_values?.find?.((f) => f.field_name === 'value' && Number.isInteger(f.value))?.value;
    showImage(img.image_name);
    describeResult(img, seed);
    const total = run.items.size;
    const done = [...run.items.values()].filter((v) => v.status === 'completed').length;
    bar.value = total > 1 ? done / total : 1;
    setStatus(total > 1 && done < total ? `Finished ${done} of ${total}.` : 'Done.');
    if (total > 1) {
      strip.hidden = false;
      strip.append(h('button', {
        type: 'button', class: 'gen-thumb', role: 'listitem', title: img.image_name,
        'aria-label': `Show image ${done} of ${total}${seed !== undefined && seed !== null ? ` (seed ${seed})` : ''}`,
        onclick: () => {
          mount(stage, h('img', { class: 'gen-result', src: imageUrl(img.image_name), alt: `Generated image ${img.image_name}`, dataset: { imageName: img.image_name } }));
          describeResult(img, seed);
        },
      }, h('img', { src: imageUrl(img.image_name, 'thumbnail'), alt: '' })));
    }
  };

  const describeResult = (img, seed) => {
    mount(resultMeta,
      h('span', {}, img.image_name),
      seed !== undefined && seed !== null ? h('span', {}, `Seed ${seed}`) : null,
      seed !== undefined && seed !== null ? h('button', {
        type: 'button', class: 'btn small',
        onclick: () => {
          inputs.random_seed.checked = false;
          inputs.seed.disabled = false;
          inputs.seed.value = seed;
          read();
          toast(`Seed ${seed} kept for the next run.`);
        },
      }, 'Reuse seed') : null,
      h('a', { class: 'btn small', href: imageUrl(img.image_name), download: img.image_name }, h('span', { html: icons.download }), 'Download'),
      h('button', { type: 'button', class: 'btn small', onclick: () => setInit(img) }, 'Use as initial image'));
  };

  const showImage = (name) => {
    if (!run || run.shown.has(name)) return;
    run.shown.add(name);
    mount(stage, h('img', { class: 'gen-result', src: imageUrl(name), alt: `Generated image ${name}`, dataset: { imageName: name } }));
  };

  const showPreview = (image) => {
    let img = stage.querySelector('img.gen-preview');
    if (!img) {
      img = h('img', { class: 'gen-preview', alt: 'Preview of the image being generated' });
      mount(stage, img);
    }
    img.src = image.dataURL;
  };

  const poll = async () => {
    pollTimer = null;
    if (!run || stopped) return;
    const live = [...run.items.entries()].filter(([, v]) => !['completed', 'failed', 'canceled'].includes(v.status));
    for (const [id] of live) {
      try {
        const item = await api(`${Q}/i/${id}`);
        await onStatus(id, item.status, item);
      } catch {
        // Retried on the next tick.
      }
    }
    if (run && [...run.items.values()].some((v) => !['completed', 'failed', 'canceled'].includes(v.status))) schedulePoll(POLL_MS);
  };
  const schedulePoll = (ms) => {
    clearTimeout(pollTimer);
    if (!stopped) pollTimer = setTimeout(poll, ms);
  };

  const cancelRun = async () => {
    if (!run) return;
    for (const [id, v] of run.items) {
      if (['completed', 'failed', 'canceled'].includes(v.status)) continue;
      try {
        await api(`${Q}/i/${id}/cancel`, { method: 'PUT' });
      } catch (e) {
        formErr.set(errorText(e));
      }
    }
    schedulePoll(0);
  };

  const off = onEvents({
    queue_item_status_changed: (e) => onStatus(e.item_id, e.status, e),
    invocation_started: (e) => {
      if (run?.items.has(e.item_id)) setStatus(`Running ${e.invocation?.type || 'node'} (item ${e.item_id})…`);
    },
    invocation_progress: (e) => {
      if (!run?.items.has(e.item_id)) return;
      if (e.percentage !== null && e.percentage !== undefined) bar.value = e.percentage;
      setStatus(e.message || `Generating… ${Math.round((e.percentage || 0) * 100)}%`);
      if (e.image?.dataURL) showPreview(e.image);
    },
    invocation_complete: (e) => {
      if (run?.items.has(e.item_id) && String(e.invocation_source_id || '').startsWith('canvas_output') && e.result?.image?.image_name) {
        showImage(e.result.image.image_name);
      }
    },
  });

  // ---- layout ----
  inputs.random_seed.addEventListener('change', () => {
    inputs.seed.disabled = inputs.random_seed.checked;
    read();
  });
  inputs.strength.addEventListener('input', () => {
    strengthOut.value = Number(inputs.strength.value).toFixed(2);
  });
  inputs.model.addEventListener('change', () => {
    applyModelDefaults();
    describeModel();
    drawVaes();
    drawLoras();
    read();
  });
  inputs.prompt.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      invoke();
    }
  });
  const form = h('form', {
    class: 'gen-form', novalidate: true, 'aria-label': 'Generation settings',
    onsubmit: (e) => { e.preventDefault(); invoke(); },
    onchange: () => read(),
  },
  notice,
  h('div', { class: 'field' }, h('label', { for: 'gen-model' }, 'Model'), ...withError('model', inputs.model), modelNote),
  h('div', { class: 'field' }, h('label', { for: 'gen-prompt' }, 'Prompt'), ...withError('prompt', inputs.prompt)),
  field('Negative prompt', inputs.negative_prompt),
  h('div', { class: 'grid-2' },
    h('div', { class: 'field' }, h('label', { for: 'gen-width' }, 'Width'), ...withError('width', inputs.width)),
    h('div', { class: 'field' }, h('label', { for: 'gen-height' }, 'Height'), ...withError('height', inputs.height)),
    h('div', { class: 'field' }, h('label', { for: 'gen-steps' }, 'Steps'), ...withError('steps', inputs.steps)),
    h('div', { class: 'field' }, h('label', { for: 'gen-cfg' }, 'CFG scale'), ...withError('cfg_scale', inputs.cfg_scale)),
    h('div', { class: 'field' }, h('label', { for: 'gen-cfg-rescale' }, 'CFG rescale'), ...withError('cfg_rescale_multiplier', inputs.cfg_rescale_multiplier)),
    h('div', { class: 'field' }, h('label', { for: 'gen-count' }, 'Images'), ...withError('count', inputs.count))),
  field('Scheduler', inputs.scheduler),
  h('div', { class: 'field' }, h('label', { for: 'gen-seed' }, 'Seed'),
    h('div', { class: 'seed-row' }, inputs.seed,
      h('span', { class: 'check' }, inputs.random_seed, h('label', { for: 'gen-random-seed' }, 'Random'))),
    withError('seed', null)[1]),
  field('Board', inputs.board_id),
  field('VAE', inputs.vae),
  h('fieldset', { class: 'loras' }, h('legend', {}, 'LoRAs'), loraList,
    h('label', { for: 'gen-lora-add', class: 'sr-only' }, 'Add a LoRA'), loraAdd, loraErr),
  h('fieldset', { class: 'img2img' }, h('legend', {}, 'Image to image'), initBox, upload),
  formErr,
  invokeBtn);

  // The controls wait for the data: a value typed before `fill()` below would be overwritten.
  const controls = [...form.querySelectorAll('input, select, textarea, button')];
  for (const c of controls) c.disabled = true;

  mount(container,
    h('div', { class: 'page-head' }, h('h1', {}, 'Generate')),
    h('div', { class: 'gen' },
      form,
      h('section', { class: 'gen-output', 'aria-label': 'Result' },
        h('div', { class: 'gen-output-head' }, statusLine, cancelBtn),
        bar, stage, strip, resultMeta)));

  // ---- data ----
  const [main, gone, boardList, vaeList, loraRecords] = await Promise.all([
    api('api/v2/models/', { query: { model_type: 'main' } }),
    api('api/v2/models/missing').catch(() => ({ models: [] })),
    api('api/v1/boards/', { query: { all: true, order_by: 'board_name', direction: 'ASC' } }).catch(() => []),
    api('api/v2/models/', { query: { model_type: 'vae' } }).catch(() => ({ models: [] })),
    api('api/v2/models/', { query: { model_type: 'lora' } }).catch(() => ({ models: [] })),
  ]);
  if (stopped) return undefined;
  for (const c of controls) c.disabled = false;
  const missing = new Set(gone.models.map((m) => m.key));
  models = main.models.filter((m) => BASES[m.base] && !missing.has(m.key));
  vaes = vaeList.models.filter((m) => !missing.has(m.key));
  loraModels = loraRecords.models.filter((m) => !missing.has(m.key));
  boards = boardList.filter((b) => !b.archived && (session.isAdmin || session.isMe(b.user_id) || b.board_visibility === 'public'));
  mount(inputs.model,
    models.length ? h('option', { value: '' }, 'Choose a model…') : h('option', { value: '' }, 'No models installed'),
    models.map((m) => h('option', { value: m.key }, `${m.name} (${BASES[m.base]})`)));
  mount(inputs.board_id,
    h('option', { value: 'none' }, 'Uncategorized'),
    boards.map((b) => h('option', { value: b.board_id }, session.isMe(b.user_id) ? b.board_name : `${b.board_name} (${b.owner_username || 'shared'})`)));
  fill();
  if (!models.some((m) => m.key === st.model) && models.length === 1) {
    // One model: pick it, with its defaults.
    inputs.model.value = models[0].key;
    applyModelDefaults();
    describeModel();
    read();
  }
  if (!models.length) {
    notice.hidden = false;
    mount(notice, 'No generation model is installed yet. ',
      session.isAdmin ? h('a', { href: '#/models' }, 'Install one on the Models page.') : 'Ask an administrator to install one.');
  }
  if (session.pendingRecall) {
    const meta = session.pendingRecall;
    session.pendingRecall = null;
    recall(meta);
  }

  function recall(meta) {
    const notes = [];
    const m = meta.model && typeof meta.model === 'object' ? meta.model : null;
    if (m) {
      const found = models.find((x) => x.key === m.key) || (m.hash && models.find((x) => x.hash === m.hash))
        || models.find((x) => x.name === m.name && (!m.base || x.base === m.base));
      if (found) st.model = found.key;
      else notes.push(`The model "${m.name || m.key}" is not installed; the current model is kept.`);
    }
    const set = (k, v) => { if (v !== undefined && v !== null && v !== '') st[k] = v; };
    set('prompt', meta.positive_prompt);
    if (meta.negative_prompt !== undefined) st.negative_prompt = meta.negative_prompt ?? '';
    set('width', meta.width);
    set('height', meta.height);
    set('steps', meta.steps);
    set('cfg_scale', meta.cfg_scale);
    st.cfg_rescale_multiplier = Number.isFinite(meta.cfg_rescale_multiplier) ? meta.cfg_rescale_multiplier : 0;
    if (meta.scheduler && SCHEDULERS.some(([v]) => v === meta.scheduler)) st.scheduler = meta.scheduler;
    const installed = (list, ref) => ref && list.find((x) => x.key === ref.key || (ref.hash && x.hash === ref.hash));
    const vae = installed(vaes, meta.vae);
    st.vae = vae ? vae.key : '';
    if (meta.vae && !vae) notes.push(`The VAE "${meta.vae.name || meta.vae.key}" is not installed; the model's own is used.`);
    st.loras = [];
    for (const l of Array.isArray(meta.loras) ? meta.loras : []) {
      const found = installed(loraModels, l.model);
      if (found && Number.isFinite(l.weight)) st.loras.push({ key: found.key, weight: l.weight });
      else notes.push(`The LoRA "${l.model?.name || l.model?.key || '?'}" is not installed; it is left out.`);
    }
    if (Number.isInteger(meta.seed)) {
      st.seed = meta.seed;
      st.random_seed = false;
    }
    if (meta.strength !== undefined && meta.init_image) {
      st.strength = meta.strength;
      st.init_image = { image_name: meta.init_image };
    } else {
      st.init_image = null;
    }
    save();
    fill();
    notice.hidden = false;
    notice.className = notes.length ? 'banner warn' : 'banner info';
    mount(notice, notes.length ? notes.join(' ') : 'Settings taken from the image.');
  }

  return () => {
    stopped = true;
    clearTimeout(pollTimer);
    off();
  };
}
