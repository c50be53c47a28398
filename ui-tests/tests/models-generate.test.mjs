// End-to-end flows of the model manager, Generate and live-update screens (issue 6, part 2) in a
// real headless Chromium against the real server: installing a tiny SD 1.x checkpoint from a
// server path with its progress, editing and deleting it, the read-only view of a non-admin; the
// Generate screen's validation, the exact JSON it sends to POST /api/v1/generate, refusals shown
// in words, live progress and the finished image (progress events played into the page, since
// they need a real diffusion model), a real submission followed through the socket to its end,
// "Use these settings" from the gallery; the queue updating from socket events with polling
// pushed out of the way; and running a workflow. Screenshots land in artifacts/.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  startServer, launchBrowser, newPage, screenshot, call, apiLogin, pngBytes, writeSd1Checkpoint, writeSafetensors,
} from '../lib/harness.mjs';

const ADMIN = { email: 'ada@example.com', name: 'Ada Admin', password: 'Admin-pass-1' };
const BOB = { email: 'bob@example.com', name: 'Bob', password: 'Bob-pass-123' };
const MODEL = 'Tiny SD1';

let server;
let browser;
let admin;
let bob;
let modelsDir;
let modelKey;
let adminToken;
let bobToken;
let bobId;

async function signIn(page, who, hash = '') {
  await page.goto(`${server.url}${hash}`);
  await page.getByLabel('Email').fill(who.email);
  await page.getByLabel('Password', { exact: true }).fill(who.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('.shell').waitFor();
}

/** Installs a file in place as the admin and waits for its job; returns the job. */
async function installFile(path) {
  const job = await call(server.url, 'POST', `api/v2/models/install?source=${encodeURIComponent(path)}&inplace=true`, { token: adminToken, json: {} });
  for (let i = 0; i < 200; i += 1) {
    const j = await call(server.url, 'GET', `api/v2/models/install/${job.id}`, { token: adminToken });
    if (['completed', 'error', 'cancelled'].includes(j.status)) {
      assert.equal(j.status, 'completed', JSON.stringify(j));
      return j;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`install of ${path} did not finish`);
}

async function uploadImage(token, { metadata, name = 'x.png', rgb = [30, 120, 200] } = {}) {
  const form = new FormData();
  form.append('file', new Blob([pngBytes(64, 64, rgb)], { type: 'image/png' }), name);
  if (metadata) form.append('metadata', JSON.stringify(metadata));
  const res = await fetch(new URL('api/v1/images/upload?image_category=general&is_intermediate=false', server.url), {
    method: 'POST', headers: { Authorization: `Bearer ${token}` }, body: form,
  });
  assert.equal(res.status, 201);
  return res.json();
}

const modelRow = (page, name) => page.locator(`tr[data-model-name="${name}"]`);

describe('models, generate and live updates', () => {
  before(async () => {
    server = await startServer({ multiuser: true });
    await call(server.url, 'POST', 'api/v1/auth/setup', { json: { email: ADMIN.email, display_name: ADMIN.name, password: ADMIN.password } });
    adminToken = await apiLogin(server.url, ADMIN.email, ADMIN.password);
    await call(server.url, 'POST', 'api/v1/auth/users', {
      token: adminToken, json: { email: BOB.email, display_name: BOB.name, password: BOB.password, is_admin: false },
    });
    bobToken = await apiLogin(server.url, BOB.email, BOB.password);
    bobId = (await call(server.url, 'GET', 'api/v1/auth/me', { token: bobToken })).user_id;
    modelsDir = mkdtempSync(join(tmpdir(), 'atelier-ui-models-'));
    browser = await launchBrowser();
    admin = await newPage(browser);
    bob = await newPage(browser);
  });
  after(async () => {
    const errors = [admin, bob].flatMap((p) => (p ? p.errors.map(String) : []));
    await browser?.close();
    await server?.stop();
    if (modelsDir) rmSync(modelsDir, { recursive: true, force: true });
    // Requests the tests refuse on purpose (422/409 fulfilments) log console errors; those are
    // filtered by the harness like the other 4xx.
    assert.deepEqual(errors, [], 'no script errors in the pages');
  });

  test('models: an admin installs a checkpoint from a server path, with progress, then edits it', async () => {
    await signIn(admin, ADMIN, '#/models');
    await admin.getByRole('heading', { name: 'Models', exact: true }).waitFor();
    await admin.getByText('No models are installed yet').waitFor();

    // A source the server cannot use is refused in its words.
    await admin.getByLabel('Path or URL').fill('/no/such/model.safetensors');
    await admin.getByRole('button', { name: 'Install', exact: true }).click();
    await admin.getByRole('alert').filter({ hasText: "Unsupported model source: '/no/such/model.safetensors'" }).waitFor();

    // A file the probe does not recognise ends as a failed job with the reason.
    const junk = join(modelsDir, 'notes.safetensors');
    writeFileSync(junk, 'not a model');
    await admin.getByLabel('Path or URL').fill(junk);
    await admin.getByRole('button', { name: 'Install', exact: true }).click();
    const junkJob = admin.locator('.job', { hasText: junk });
    await junkJob.locator('[data-status], .badge', { hasText: 'Failed' }).first().waitFor();
    assert.ok((await junkJob.getByRole('alert').innerText()).length > 5, 'the failure is explained');

    const file = join(modelsDir, 'tiny-sd1.safetensors');
    writeSd1Checkpoint(file);
    await admin.getByLabel('Path or URL').fill(file);
    await admin.getByRole('button', { name: 'Install', exact: true }).click();
    const job = admin.locator('.job', { hasText: file });
    await job.getByText('Installed as "tiny-sd1"').waitFor();
    assert.equal(await job.locator('progress').evaluate((p) => p.value), 1, 'the progress bar is full');
    const row = modelRow(admin, 'tiny-sd1');
    await row.waitFor();
    const text = await row.innerText();
    for (const want of ['SD 1.x', 'Main', 'checkpoint']) assert.match(text, new RegExp(want));
    modelKey = await row.getAttribute('data-model-key');
    await screenshot(admin, '23-models-admin');

    await admin.getByRole('button', { name: 'Edit tiny-sd1' }).click();
    const dlg = admin.getByRole('dialog', { name: 'Edit tiny-sd1' });
    await dlg.getByLabel('Name').fill(MODEL);
    await dlg.getByLabel('Description').fill('A two-tensor test checkpoint');
    await screenshot(admin, '24-models-edit');
    await dlg.getByRole('button', { name: 'Save' }).click();
    await modelRow(admin, MODEL).getByText('A two-tensor test checkpoint').waitFor();
    const rec = await call(server.url, 'GET', `api/v2/models/i/${modelKey}`, { token: adminToken });
    assert.equal(rec.name, MODEL);
    assert.equal(rec.description, 'A two-tensor test checkpoint');

    await admin.getByRole('button', { name: 'Clear finished' }).click();
    await admin.waitForFunction(() => !document.querySelector('.job'));
  });

  test('models: a non-admin sees the models read-only', async () => {
    await signIn(bob, BOB, '#/models');
    const row = modelRow(bob, MODEL);
    await row.waitFor();
    assert.match(await row.innerText(), /SD 1\.x/);
    assert.equal(await bob.getByLabel('Path or URL').count(), 0, 'no install form');
    assert.equal(await bob.getByRole('button', { name: /^(Edit|Delete) / }).count(), 0, 'no edit or delete');
    await bob.getByText('Models are installed and managed by administrators.').waitFor();
    await screenshot(bob, '25-models-user');
    // And the server agrees.
    await assert.rejects(call(server.url, 'DELETE', `api/v2/models/i/${modelKey}`, { token: bobToken }), /403/);
  });

  test('generate: validates, sends the right JSON, and shows refusals readably', async () => {
    await bob.goto(`${server.url}#/generate`);
    await bob.getByRole('heading', { name: 'Generate' }).waitFor();
    // The only installed main model is picked, with its defaults (SD1: 512 × 512).
    await bob.waitForFunction((key) => document.querySelector('#gen-model').value === key, modelKey);
    assert.equal(await bob.getByLabel('Width').inputValue(), '512');
    assert.equal(await bob.getByLabel('Scheduler').inputValue(), 'dpmpp_3m_k');
    const schedulers = await bob.getByLabel('Scheduler').locator('option').evaluateAll((o) => o.map((x) => x.value));
    assert.equal(schedulers.length, 31);

    const sent = [];
    let answer = null;
    await bob.route('**/api/v1/generate', async (route) => {
      sent.push(route.request().postDataJSON());
      if (answer) await route.fulfill(answer);
      else await route.continue();
    });

    // Invalid settings never reach the server.
    await bob.getByLabel('Width').fill('500');
    await bob.getByLabel('Steps').fill('0');
    await bob.getByLabel('Images', { exact: true }).fill('0');
    await bob.getByLabel('CFG rescale').fill('1');
    await bob.getByRole('button', { name: 'Invoke' }).click();
    await bob.getByText('Enter a prompt.').waitFor();
    await bob.getByText('Width must be a multiple of 8.').waitFor();
    await bob.getByText('Steps must be between 1 and 200.').waitFor();
    await bob.getByText('Images must be between 1 and 100.').waitFor();
    await bob.getByText('CFG rescale must be at least 0 and below 1.').waitFor();
    assert.equal(await bob.getByLabel('Prompt', { exact: true }).getAttribute('aria-invalid'), 'true');
    await screenshot(bob, '26-generate-invalid');
    assert.equal(sent.length, 0);
    // Back to the defaults (a field's change, on leaving it, is what the screen remembers).
    await bob.getByLabel('Images', { exact: true }).fill('1');
    await bob.getByLabel('CFG rescale').fill('0');
    await bob.getByLabel('CFG rescale').press('Tab');

    // A separate VAE and a LoRA for SD 1.x (headers only: the probe reads nothing else), and an
    // SDXL VAE, which the SD 1.x model must not offer.
    writeSafetensors(join(modelsDir, 'tiny-vae.safetensors'), [['encoder.conv_in.weight', [128, 3, 3, 3]], ['decoder.conv_out.weight', [3, 128, 3, 3]]]);
    writeSafetensors(join(modelsDir, 'tiny-xl-vae.safetensors'), [['encoder.conv_in.weight', [128, 3, 3, 3]], ['decoder.conv_out.weight', [3, 128, 3, 3]]]);
    const k = 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k';
    writeSafetensors(join(modelsDir, 'tiny-lora.safetensors'), [[`${k}.lora_down.weight`, [4, 768]], [`${k}.lora_up.weight`, [320, 4]], [`${k}.alpha`, []]]);
    await installFile(join(modelsDir, 'tiny-vae.safetensors'));
    await installFile(join(modelsDir, 'tiny-xl-vae.safetensors'));
    await installFile(join(modelsDir, 'tiny-lora.safetensors'));
    const installed = await call(server.url, 'GET', 'api/v2/models/', { token: bobToken });
    const keyOf = (name) => installed.models.find((m) => m.name === name)?.key;
    assert.ok(keyOf('tiny-vae') && keyOf('tiny-lora'), JSON.stringify(installed.models.map((m) => [m.name, m.type, m.base])));

    // A board of Bob's, and an initial image from the gallery.
    const board = await call(server.url, 'POST', `api/v1/boards/?board_name=${encodeURIComponent('Bob renders')}`, { token: bobToken });
    const init = await uploadImage(bobToken, { name: 'init.png', rgb: [200, 180, 20] });
    await bob.reload();
    await bob.getByRole('heading', { name: 'Generate' }).waitFor();
    await bob.waitForFunction(() => document.querySelector('#gen-board option:nth-child(2)'));

    await bob.getByLabel('Prompt', { exact: true }).fill('a lighthouse at dusk');
    await bob.getByLabel('Negative prompt').fill('blurry');
    await bob.getByLabel('Width').fill('256');
    await bob.getByLabel('Height').fill('320');
    await bob.getByLabel('Steps').fill('4');
    await bob.getByLabel('CFG scale').fill('6.5');
    await bob.getByLabel('Scheduler').selectOption('euler');
    await bob.getByLabel('Random').uncheck();
    await bob.getByLabel('Seed').fill('42');
    await bob.getByLabel('Board').selectOption(board.board_id);
    answer = { status: 422, contentType: 'application/json', body: JSON.stringify({ detail: [{ type: 'value_error', loc: ['body', 'scheduler'], msg: "Value error, scheduler 'euler' is not supported by this server", input: 'euler' }] }) };
    await bob.getByRole('button', { name: 'Invoke' }).click();
    await bob.getByRole('alert').filter({ hasText: "scheduler: Value error, scheduler 'euler' is not supported by this server" }).waitFor();
    assert.deepEqual(sent[0], {
      prompt: 'a lighthouse at dusk', negative_prompt: 'blurry', model: modelKey, width: 256, height: 320,
      steps: 4, cfg_scale: 6.5, scheduler: 'euler', seed: 42, board_id: board.board_id,
    });

    // Several images and CFG rescale are sent only when they differ from the API's defaults; so
    // are a separate VAE and LoRAs, offered for the model's base only.
    await bob.getByLabel('Images', { exact: true }).fill('4');
    await bob.getByLabel('CFG rescale').fill('0.7');
    const vaeOptions = await bob.getByLabel('VAE', { exact: true }).locator('option').allInnerTexts();
    assert.deepEqual(vaeOptions, ['The model\u2019s own', 'tiny-vae']);
    await bob.getByLabel('VAE', { exact: true }).selectOption({ label: 'tiny-vae' });
    await bob.getByLabel('Add a LoRA').selectOption({ label: 'tiny-lora' });
    await bob.getByLabel('Weight of tiny-lora').fill('0.6');
    assert.equal(await bob.getByLabel('Add a LoRA').isDisabled(), true, 'no other LoRA to add');
    answer = { status: 409, contentType: 'application/json', body: JSON.stringify({ detail: 'The queue is full.' }) };
    await bob.getByRole('button', { name: 'Invoke' }).click();
    await bob.getByRole('alert').filter({ hasText: 'The queue is full.' }).waitFor();
    assert.equal(sent[1].count, 4);
    assert.equal(sent[1].cfg_rescale_multiplier, 0.7);
    assert.equal(sent[1].vae, keyOf('tiny-vae'));
    assert.deepEqual(sent[1].loras, [{ model: keyOf('tiny-lora'), weight: 0.6 }]);
    await screenshot(bob, '26b-generate-vae-lora');
    await bob.getByLabel('Images', { exact: true }).fill('1');
    await bob.getByLabel('CFG rescale').fill('0');
    await bob.getByLabel('VAE', { exact: true }).selectOption('');
    await bob.getByRole('button', { name: 'Remove LoRA tiny-lora' }).click();
    assert.equal(await bob.getByRole('list', { name: 'Chosen LoRAs' }).locator('li').count(), 0);
    // The later tests expect the main model alone.
    for (const name of ['tiny-vae', 'tiny-xl-vae', 'tiny-lora']) {
      await call(server.url, 'DELETE', `api/v2/models/i/${keyOf(name) || installed.models.find((m) => m.name === name).key}`, { token: adminToken });
    }

    // Image to image: picked from the gallery, with a strength; the size follows the image.
    await bob.getByRole('button', { name: 'Choose from gallery' }).click();
    await bob.getByRole('dialog', { name: 'Choose an initial image' }).getByRole('button', { name: `Use ${init.image_name}` }).click();
    await bob.getByRole('img', { name: `Initial image ${init.image_name}` }).waitFor();
    assert.equal(await bob.getByLabel('Width').inputValue(), '64');
    await bob.getByLabel('Strength').fill('0.4');
    answer = {
      status: 202, contentType: 'application/json',
      body: JSON.stringify({ queue_id: 'default', batch_id: 'b-1', item_ids: [9999], seeds: [42], status: 'pending' }),
    };
    // The item is served from here too: pending, then completed with the uploaded image.
    let itemState = 'pending';
    await bob.route('**/api/v1/queue/default/i/9999', (route) => route.fulfill({
      status: 200,
      contentType: 'application/json',
      body: JSON.stringify({
        item_id: 9999, status: itemState, queue_id: 'default', batch_id: 'b-1', user_id: 'x',
        session: {
          id: 's', results: { 'canvas_output:n12-x': { type: 'image_output', image: { image_name: init.image_name }, width: 64, height: 64 } },
          source_prepared_mapping: { 'canvas_output:n12': ['canvas_output:n12-x'] },
        },
      }),
    }));
    await bob.getByRole('button', { name: 'Invoke' }).click();
    await bob.getByText('Queued (item 9999).').waitFor();
    assert.deepEqual(sent[2], {
      prompt: 'a lighthouse at dusk', negative_prompt: 'blurry', model: modelKey, width: 64, height: 64,
      steps: 4, cfg_scale: 6.5, scheduler: 'euler', seed: 42, board_id: board.board_id,
      init_image: init.image_name, strength: 0.4,
    });

    // Live progress as the socket would deliver it: step bar and preview.
    const preview = `data:image/png;base64,${pngBytes(16, 16, [90, 90, 240]).toString('base64')}`;
    const play = (event, data) => bob.evaluate(([e, d]) => import(new URL('ui/socket.js', document.baseURI).href).then((m) => m.emitLocal(e, d)), [event, data]);
    await play('queue_item_status_changed', { item_id: 9999, status: 'in_progress', user_id: bobId });
    await play('invocation_progress', {
      item_id: 9999, user_id: bobId, percentage: 0.5, message: 'Denoising 2/4', image: { width: 16, height: 16, dataURL: preview }, invocation_source_id: 'denoise_latents:n11',
    });
    await bob.getByText('Denoising 2/4').waitFor();
    assert.equal(await bob.getByRole('progressbar', { name: 'Generation progress' }).evaluate((p) => p.value), 0.5);
    await bob.getByRole('img', { name: 'Preview of the image being generated' }).waitFor();
    await bob.locator('.activity', { hasText: 'Generating' }).waitFor();
    await screenshot(bob, '27-generate-progress');
    itemState = 'completed';
    await play('queue_item_status_changed', { item_id: 9999, status: 'completed', user_id: bobId });
    await bob.getByRole('img', { name: `Generated image ${init.image_name}` }).waitFor();
    await bob.getByText('Seed 42').waitFor();
    await bob.waitForFunction(() => {
      const img = document.querySelector('img.gen-result');
      return img && img.complete && img.naturalWidth > 0;
    });
    await screenshot(bob, '28-generate-done');
    await bob.unroute('**/api/v1/generate');
    await bob.unroute('**/api/v1/queue/default/i/9999');
  });

  test('generate: a real submission is enqueued and followed to its end through the socket', async () => {
    await bob.goto(`${server.url}#/generate`);
    await bob.getByRole('heading', { name: 'Generate' }).waitFor();
    await bob.waitForFunction(() => document.documentElement.dataset.socket === 'connected');
    // Back to text to image, with a scheduler this server implements.
    await bob.getByRole('button', { name: 'Remove' }).click();
    await bob.getByLabel('Scheduler').selectOption('euler');
    await bob.getByLabel('Width').fill('64');
    await bob.getByLabel('Height').fill('64');
    const [res] = await Promise.all([
      bob.waitForResponse('**/api/v1/generate'),
      bob.getByRole('button', { name: 'Invoke' }).click(),
    ]);
    assert.equal(res.status(), 202);
    const { item_ids: [id] } = await res.json();
    // The checkpoint holds two tensors: whatever the engine makes of it, the run must end and
    // say so (an image, or the failure in words).
    await bob.locator('.gen-status').filter({ hasText: /^(Done\.|Failed: .{10,})/ }).waitFor({ timeout: 30000 })
      .catch(async (e) => { throw new Error(`${e.message}\nstatus line: ${await bob.locator('.gen-status').innerText()}`); });
    const item = await call(server.url, 'GET', `api/v1/queue/default/i/${id}`, { token: bobToken });
    assert.ok(['completed', 'failed'].includes(item.status));
    if (item.status === 'failed') assert.match(await bob.locator('.gen-status').innerText(), new RegExp(item.error_type));
  });

  test('gallery: "Use these settings" fills the Generate screen from the image metadata', async () => {
    const img = await uploadImage(bobToken, {
      name: 'recall.png',
      metadata: {
        positive_prompt: 'a red fox in snow', negative_prompt: 'lowres', seed: 1938271, steps: 12, cfg_scale: 5,
        scheduler: 'dpmpp_2m_k', width: 384, height: 448, model: { key: modelKey, hash: 'blake3:x', name: MODEL, base: 'sd-1', type: 'main' },
      },
    });
    await bob.goto(`${server.url}#/gallery`);
    await bob.locator(`.tile[data-image-name="${img.image_name}"]`).click();
    const viewer = bob.getByRole('dialog', { name: 'Image' });
    await viewer.getByRole('button', { name: 'Use these settings' }).click();
    await bob.getByRole('heading', { name: 'Generate' }).waitFor();
    await bob.getByText('Settings taken from the image.').waitFor();
    const values = await bob.evaluate(() => Object.fromEntries(
      ['gen-model', 'gen-prompt', 'gen-negative', 'gen-width', 'gen-height', 'gen-steps', 'gen-cfg', 'gen-scheduler', 'gen-seed']
        .map((id) => [id, document.getElementById(id).value]),
    ));
    assert.deepEqual(values, {
      'gen-model': modelKey, 'gen-prompt': 'a red fox in snow', 'gen-negative': 'lowres', 'gen-width': '384', 'gen-height': '448',
      'gen-steps': '12', 'gen-cfg': '5', 'gen-scheduler': 'dpmpp_2m_k', 'gen-seed': '1938271',
    });
    assert.equal(await bob.getByLabel('Random').isChecked(), false);
    await screenshot(bob, '29-generate-recalled');
  });

  test('queue: the socket client brings new items in live (polling pushed out to 10 minutes)', async () => {
    await bob.evaluate(() => localStorage.setItem('atelier.queuePollMs', '600000'));
    await bob.goto(`${server.url}#/queue`);
    await bob.getByRole('heading', { name: 'Queue' }).waitFor();
    await bob.locator('.live-state[data-live="true"]').waitFor();
    // The list is drawn after the live marker: count once it is there (earlier tests left items).
    await bob.locator('tbody tr').first().waitFor();
    const before = await bob.locator('tbody tr').count();
    const graph = { id: 'g-live', nodes: { a: { id: 'a', type: 'add', a: 1, b: 2 } }, edges: [] };
    const res = await call(server.url, 'POST', 'api/v1/queue/default/enqueue_batch', {
      token: bobToken, json: { batch: { graph, runs: 1, origin: 'live-test' }, prepend: false },
    });
    const id = res.item_ids[0];
    // Well inside the (pushed-out) poll: only an event can have done this.
    await bob.locator(`tr[data-item-id="${id}"][data-status="completed"]`).waitFor({ timeout: 5000 });
    assert.equal(await bob.locator('tbody tr').count(), before + 1);

    // The admin's page too (admins get everyone's events), including a cancel by the owner.
    await admin.evaluate(() => localStorage.setItem('atelier.queuePollMs', '600000'));
    await admin.goto(`${server.url}#/queue`);
    await admin.locator('.live-state[data-live="true"]').waitFor();
    await admin.getByRole('button', { name: 'Pause' }).click();
    await admin.getByRole('button', { name: 'Resume' }).waitFor();
    const second = await call(server.url, 'POST', 'api/v1/queue/default/enqueue_batch', {
      token: bobToken, json: { batch: { graph, runs: 1, origin: 'live-test' }, prepend: false },
    });
    const id2 = second.item_ids[0];
    await admin.locator(`tr[data-item-id="${id2}"][data-status="pending"]`).waitFor({ timeout: 5000 });
    await screenshot(admin, '30-queue-live');
    await call(server.url, 'PUT', `api/v1/queue/default/i/${id2}/cancel`, { token: bobToken });
    await admin.locator(`tr[data-item-id="${id2}"][data-status="canceled"]`).waitFor({ timeout: 5000 });
    await bob.locator(`tr[data-item-id="${id2}"][data-status="canceled"]`).waitFor({ timeout: 5000 });
    await admin.getByRole('button', { name: 'Resume' }).click();
    await admin.getByRole('button', { name: 'Pause' }).waitFor();
  });

  test('workflows: "Run" enqueues a workflow\u2019s graph; workflows without one have no Run', async () => {
    const editorShape = {
      name: 'Adder', author: 'Bob', description: 'Adds two numbers', version: '1.0.0', contact: '', tags: '', notes: '',
      exposedFields: [], meta: { version: '3.0.0', category: 'user' },
      nodes: [
        { id: 'add1', type: 'invocation', position: { x: 0, y: 0 }, data: { id: 'add1', type: 'add', version: '1.0.1', label: '', notes: '', isOpen: true, isIntermediate: true, useCache: false, inputs: { a: { name: 'a', label: '', value: 2 }, b: { name: 'b', label: '', value: 3 } } } },
        { id: 'add2', type: 'invocation', position: { x: 300, y: 0 }, data: { id: 'add2', type: 'add', version: '1.0.1', label: '', notes: '', isOpen: true, isIntermediate: true, useCache: false, inputs: { a: { name: 'a', label: '', value: 0 }, b: { name: 'b', label: '', value: 10 } } } },
        { id: 'note', type: 'notes', position: { x: 0, y: 200 }, data: { id: 'note', type: 'notes', label: 'n', notes: 'hello', isOpen: true } },
      ],
      edges: [{ id: 'e1', type: 'default', source: 'add1', sourceHandle: 'value', target: 'add2', targetHandle: 'a' }],
    };
    const empty = { ...editorShape, name: 'Empty', nodes: [], edges: [] };
    await call(server.url, 'POST', 'api/v1/workflows/', { token: bobToken, json: { workflow: editorShape } });
    await call(server.url, 'POST', 'api/v1/workflows/', { token: bobToken, json: { workflow: empty } });
    await bob.goto(`${server.url}#/workflows`);
    const wf = bob.locator('.wf[data-name="Adder"]');
    await wf.waitFor();
    await bob.locator('.wf[data-name="Empty"]').waitFor();
    assert.equal(await bob.getByRole('button', { name: 'Run Empty' }).count(), 0, 'no graph, no Run');
    await screenshot(bob, '31-workflows-run');
    await wf.getByRole('button', { name: 'Run Adder' }).click();
    await bob.getByText('"Adder" enqueued (1 item)').waitFor();
    const items = await call(server.url, 'GET', 'api/v1/queue/default/list_all', { token: bobToken });
    const item = items.filter((i) => i.origin === 'workflows').at(-1);
    assert.ok(item, 'the workflow was enqueued');
    let full;
    for (let i = 0; i < 50; i++) {
      full = await call(server.url, 'GET', `api/v1/queue/default/i/${item.item_id}`, { token: bobToken });
      if (['completed', 'failed'].includes(full.status)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(full.status, 'completed', full.error_message);
    const outputs = Object.values(full.session.results).map((r) => r.value).sort((a, b) => a - b);
    assert.deepEqual(outputs, [5, 15], 'the edge fed 2 + 3 into the second node');
  });

  test('models: an admin deletes a model after confirming', async () => {
    await admin.goto(`${server.url}#/models`);
    await modelRow(admin, MODEL).waitFor();
    await admin.getByRole('button', { name: `Delete ${MODEL}` }).click();
    const dlg = admin.getByRole('dialog', { name: 'Delete model' });
    await dlg.getByText('stays where it is').waitFor(); // installed in place: the file is kept
    await dlg.getByRole('button', { name: 'Cancel' }).click();
    await modelRow(admin, MODEL).waitFor();
    await admin.getByRole('button', { name: `Delete ${MODEL}` }).click();
    await dlg.getByRole('button', { name: 'Delete' }).click();
    await admin.getByText('No models are installed yet').waitFor();
    const list = await call(server.url, 'GET', 'api/v2/models/', { token: adminToken });
    assert.equal(list.models.length, 0);
  });

  test('tablet-sized Generate and Models screens', async () => {
    const page = await newPage(browser, { width: 820, height: 1180 });
    await signIn(page, ADMIN, '#/generate');
    await page.getByRole('heading', { name: 'Generate' }).waitFor();
    await page.getByText('No generation model is installed yet.').waitFor();
    await screenshot(page, '32-generate-tablet');
    await page.goto(`${server.url}#/models`);
    await page.getByLabel('Path or URL').waitFor();
    await screenshot(page, '33-models-tablet');
    assert.deepEqual(page.errors.map(String), []);
    await page.context().close();
  });
});
