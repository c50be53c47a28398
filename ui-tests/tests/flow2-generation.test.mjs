// Flow 2 of the UI issue for real: an administrator installs a tiny random-weight SD 1.x model
// (written by the engine's `write_tiny` example, diffusers layout), user B signs in, generates on
// the Generate screen and watches the step progress arrive over socket.io, then sees the image,
// which is also in the gallery. No events are played into the page: the engine runs.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, launchBrowser, newPage, screenshot, call, apiLogin, targetDir } from '../lib/harness.mjs';

const ADMIN = { email: 'ada@example.com', name: 'Ada Admin', password: 'Admin-pass-1' };
const BOB = { email: 'bob@example.com', name: 'Bob', password: 'Bob-pass-123' };

let server;
let browser;
let bob;
let modelsDir;

describe('flow 2: a user generates an image and watches its progress', () => {
  before(async () => {
    const writer = process.env.TINY_WRITER || join(targetDir, 'debug', 'examples', 'write_tiny');
    assert.ok(existsSync(writer), `the tiny-model writer is built (${writer})`);
    modelsDir = mkdtempSync(join(tmpdir(), 'atelier-ui-tiny-'));
    execFileSync(writer, [modelsDir]);
    server = await startServer({ multiuser: true });
    await call(server.url, 'POST', 'api/v1/auth/setup', { json: { email: ADMIN.email, display_name: ADMIN.name, password: ADMIN.password } });
    const adminToken = await apiLogin(server.url, ADMIN.email, ADMIN.password);
    await call(server.url, 'POST', 'api/v1/auth/users', {
      token: adminToken, json: { email: BOB.email, display_name: BOB.name, password: BOB.password, is_admin: false },
    });
    const source = encodeURIComponent(join(modelsDir, 'sd1'));
    const job = await call(server.url, 'POST', `api/v2/models/install?source=${source}&inplace=true`, { token: adminToken, json: {} });
    for (let i = 0; i < 200; i += 1) {
      const j = await call(server.url, 'GET', `api/v2/models/install/${job.id}`, { token: adminToken });
      if (['completed', 'error', 'cancelled'].includes(j.status)) {
        assert.equal(j.status, 'completed', JSON.stringify(j));
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    browser = await launchBrowser();
    bob = await newPage(browser);
  });
  after(async () => {
    const errors = bob ? bob.errors.map(String) : [];
    await browser?.close();
    await server?.stop();
    if (modelsDir) rmSync(modelsDir, { recursive: true, force: true });
    assert.deepEqual(errors, [], 'no script errors in the page');
  });

  test('B generates with the tiny model and sees the progress and the image', async () => {
    await bob.goto(server.url);
    await bob.getByLabel('Email').fill(BOB.email);
    await bob.getByLabel('Password', { exact: true }).fill(BOB.password);
    await bob.getByRole('button', { name: 'Sign in' }).click();
    await bob.locator('.shell').waitFor();
    await bob.goto(`${server.url}#/generate`);
    await bob.getByRole('heading', { name: 'Generate' }).waitFor();
    await bob.waitForFunction(() => document.documentElement.dataset.socket === 'connected');
    await bob.getByLabel('Prompt', { exact: true }).fill('a red fox in snow');
    await bob.getByLabel('Scheduler').selectOption('euler');
    await bob.getByLabel('Width').fill('64');
    await bob.getByLabel('Height').fill('64');
    await bob.getByLabel('Steps').fill('8');
    // Record every value the progress bar takes.
    await bob.evaluate(() => {
      window.__progress = [];
      const bar = document.querySelector('progress[aria-label="Generation progress"]');
      new MutationObserver(() => window.__progress.push(Number(bar.value))).observe(bar, { attributes: true });
    });
    const [res] = await Promise.all([
      bob.waitForResponse('**/api/v1/generate'),
      bob.getByRole('button', { name: 'Invoke' }).click(),
    ]);
    assert.equal(res.status(), 202, await res.text());
    const { item_ids: [id] } = await res.json();
    await bob.locator('.gen-status').filter({ hasText: /^(Done\.|Failed)/ }).waitFor({ timeout: 60000 });
    assert.match(await bob.locator('.gen-status').innerText(), /^Done\./);
    const seen = await bob.evaluate(() => window.__progress);
    assert.ok(seen.filter((v) => v > 0 && v < 1).length >= 3, `step progress shown: ${JSON.stringify(seen)}`);
    const img = bob.locator('.gen-output img').last();
    await img.waitFor();
    assert.ok(await img.evaluate((el) => el.complete && el.naturalWidth === 64), 'the generated image is shown');
    await screenshot(bob, '40-generate-real-result');
    const bobToken = await apiLogin(server.url, BOB.email, BOB.password);
    const item = await call(server.url, 'GET', `api/v1/queue/default/i/${id}`, { token: bobToken });
    assert.equal(item.status, 'completed');
    // And it is in B's gallery.
    await bob.goto(`${server.url}#/gallery`);
    await bob.locator('.image-grid .tile').first().waitFor();
    await screenshot(bob, '41-gallery-after-generation');
  });

  test('B makes three images in one run, with CFG rescale, and steps through them', async () => {
    await bob.goto(`${server.url}#/generate`);
    await bob.getByRole('heading', { name: 'Generate' }).waitFor();
    await bob.waitForFunction(() => document.documentElement.dataset.socket === 'connected');
    await bob.getByLabel('Images', { exact: true }).fill('3');
    await bob.getByLabel('CFG rescale').fill('0.5');
    await bob.getByLabel('Random').uncheck();
    await bob.getByLabel('Seed', { exact: true }).fill('7');
    const [res] = await Promise.all([
      bob.waitForResponse('**/api/v1/generate'),
      bob.getByRole('button', { name: 'Invoke' }).click(),
    ]);
    assert.equal(res.status(), 202, await res.text());
    const sent = res.request().postDataJSON();
    assert.equal(sent.count, 3);
    assert.equal(sent.cfg_rescale_multiplier, 0.5);
    const { item_ids: ids, seeds } = await res.json();
    assert.equal(ids.length, 3);
    assert.deepEqual(seeds, [7, 8, 9]);
    await bob.locator('.gen-status').filter({ hasText: /^(Done\.|Failed)/ }).waitFor({ timeout: 90000 });
    assert.match(await bob.locator('.gen-status').innerText(), /^Done\./);
    const thumbs = bob.getByRole('list', { name: 'Images of this run' }).getByRole('listitem');
    assert.equal(await thumbs.count(), 3);
    // Every item completed with its own image; the seeds are shown on the thumbnails.
    const bobToken = await apiLogin(server.url, BOB.email, BOB.password);
    const names = [];
    for (const id of ids) {
      const item = await call(server.url, 'GET', `api/v1/queue/default/i/${id}`, { token: bobToken });
      assert.equal(item.status, 'completed', JSON.stringify(item.error_message));
      const out = Object.values(item.session.results).find((r) => r.image?.image_name && r.type === 'image_output');
      names.push(out.image.image_name);
    }
    assert.equal(new Set(names).size, 3);
    for (const seed of [7, 8, 9]) await bob.getByRole('listitem', { name: new RegExp(`\\(seed ${seed}\\)$`) }).waitFor();
    // A thumbnail brings its image back to the stage, with its seed.
    await thumbs.first().click();
    const first = await bob.locator('.gen-stage img.gen-result').getAttribute('data-image-name');
    assert.ok(names.includes(first), `${first} is one of the run's images`);
    await bob.locator('.gen-result-meta').filter({ hasText: first }).waitFor();
    await screenshot(bob, '42-generate-three-images');
  });
});
