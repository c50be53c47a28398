// End-to-end flows of issue 6 in a real headless Chromium against the real server:
// setup and sign-in, user management (with its refusals), private and shared boards, the queue
// seen by an admin and by users, deactivation ending a session, profile changes, workflows, the
// audit log, and single-user mode. Each screen is saved under artifacts/ as a screenshot.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, newPage, screenshot, call, apiLogin, pngBytes,
} from '../lib/harness.mjs';

const ADMIN = { email: 'ada@example.com', name: 'Ada Admin', password: 'Admin-pass-1' };
const BOB = { email: 'bob@example.com', name: 'Bob' };
const CAROL = { email: 'carol@example.com', name: 'Carol', password: 'Carol-pass-1' };
const BOARD = 'Bob private board';

let server;
let browser;
let admin; // Ada's page
let bob; // Bob's page
let carol; // Carol's page

async function signIn(page, email, password, { remember = false } = {}) {
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password', { exact: true }).fill(password);
  if (remember) await page.getByLabel('Remember me').check();
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function openUserMenuItem(page, item) {
  await page.locator('.user-btn').click();
  await page.getByRole('menuitem', { name: item }).click();
}

const boardRow = (page, name) => page.locator(`.board[data-board-name="${name}"]`);
const userRow = (page, email) => page.locator(`tr[data-email="${email}"]`);

async function userAction(page, email, action) {
  await page.getByRole('button', { name: `Actions for ${email}` }).click();
  await page.getByRole('menuitem', { name: action }).click();
}

describe('multi-user', () => {
  before(async () => {
    server = await startServer({ multiuser: true });
    browser = await launchBrowser();
    admin = await newPage(browser);
  });
  after(async () => {
    const errors = [admin, bob, carol].flatMap((p) => (p ? p.errors.map(String) : []));
    await browser?.close();
    await server?.stop();
    assert.deepEqual(errors, [], 'no script errors in the pages');
  });

  test('1. setup with live password feedback, then sign in', async () => {
    await admin.goto(server.url);
    await admin.getByRole('heading', { name: 'Set up the administrator' }).waitFor();
    await admin.getByLabel('Email').fill(ADMIN.email);
    await admin.getByLabel('Display name').fill(ADMIN.name);
    await admin.getByLabel('Password', { exact: true }).fill('short');
    // Not strict (the default): a warning, not a block.
    await admin.getByText('Password strength: weak').waitFor();
    await admin.getByLabel('Password', { exact: true }).fill(ADMIN.password);
    await admin.getByText('Password strength: strong').waitFor();
    await admin.getByLabel('Confirm password').fill('different');
    await admin.getByText('The passwords do not match.').waitFor();
    await screenshot(admin, '01-setup');
    await admin.getByRole('button', { name: 'Create administrator' }).click();
    await admin.getByRole('alert').filter({ hasText: 'The passwords do not match.' }).waitFor();
    await admin.getByLabel('Confirm password').fill(ADMIN.password);
    await admin.getByRole('button', { name: 'Create administrator' }).click();

    await admin.getByRole('heading', { name: 'Sign in' }).waitFor();
    await admin.getByText('Administrator account created').waitFor();
    assert.equal(await admin.getByLabel('Email').inputValue(), ADMIN.email);
    await screenshot(admin, '02-login');
    await signIn(admin, ADMIN.email, 'wrong-password');
    await admin.getByRole('alert').filter({ hasText: 'Incorrect email or password' }).waitFor();
    await signIn(admin, ADMIN.email, ADMIN.password, { remember: true });
    await admin.locator('.shell').waitFor();
    const userBtn = admin.locator('.user-btn');
    await userBtn.getByText('Admin', { exact: true }).waitFor();
    assert.match(await userBtn.innerText(), /Ada Admin/);
    const token = await admin.evaluate(() => localStorage.getItem('auth_token'));
    assert.ok(token && token.split('.').length === 3, 'the token is kept in localStorage');
    const cookies = await admin.context().cookies();
    assert.ok(cookies.some((c) => c.name === 'invokeai_media_token'), 'the media cookie is set');
    await admin.getByRole('heading', { name: 'All images' }).waitFor();
    await screenshot(admin, '03-gallery-empty');
  });

  test('1. the admin creates users B and C (one with a generated password)', async () => {
    await openUserMenuItem(admin, 'User Management');
    await admin.getByRole('heading', { name: 'User Management' }).waitFor();
    await userRow(admin, ADMIN.email).waitFor();

    await admin.getByRole('button', { name: 'Create user' }).click();
    const dlg = admin.getByRole('dialog', { name: 'Create user' });
    await dlg.getByLabel('Email').fill(BOB.email);
    await dlg.getByLabel('Display name').fill(BOB.name);
    await dlg.getByRole('button', { name: 'Generate password' }).click();
    const pw = dlg.getByLabel('Password', { exact: true });
    await admin.waitForFunction(() => document.querySelector('dialog input[name=password]').value.length === 16);
    BOB.password = await pw.inputValue();
    await screenshot(admin, '04-create-user');
    await dlg.getByRole('button', { name: 'Create user' }).click();
    await userRow(admin, BOB.email).waitFor();

    await admin.getByRole('button', { name: 'Create user' }).click();
    await dlg.getByLabel('Email').fill(CAROL.email);
    await dlg.getByLabel('Display name').fill(CAROL.name);
    await dlg.getByLabel('Password', { exact: true }).fill(CAROL.password);
    await dlg.getByRole('button', { name: 'Create user' }).click();
    await userRow(admin, CAROL.email).waitFor();

    // A duplicate is refused with the server's words, in the dialog.
    await admin.getByRole('button', { name: 'Create user' }).click();
    await dlg.getByLabel('Email').fill(CAROL.email);
    await dlg.getByLabel('Password', { exact: true }).fill('x');
    await dlg.getByRole('button', { name: 'Create user' }).click();
    await dlg.getByRole('alert').filter({ hasText: `User with email ${CAROL.email} already exists` }).waitFor();
    await dlg.getByRole('button', { name: 'Cancel' }).click();
    assert.match(await userRow(admin, BOB.email).innerText(), /Active/);
    await screenshot(admin, '05-users');
  });

  test('user management refuses to remove the last administrator', async () => {
    for (const action of ['Revoke admin', 'Deactivate']) {
      await userAction(admin, ADMIN.email, action);
      await admin.getByRole('alert').filter({ hasText: 'Cannot remove the last administrator' }).waitFor();
    }
    await userAction(admin, ADMIN.email, 'Delete…');
    await admin.getByRole('dialog', { name: 'Delete user' }).getByRole('button', { name: 'Delete user' }).click();
    await admin.getByRole('alert').filter({ hasText: 'Cannot remove the last administrator' }).waitFor();
    await screenshot(admin, '06-users-refusal');
    assert.match(await userRow(admin, ADMIN.email).innerText(), /Admin/);
  });

  test('3. C cannot see B\u2019s private board; B shares it and C sees it read-only', async () => {
    bob = await newPage(browser);
    await bob.goto(server.url);
    await signIn(bob, BOB.email, BOB.password);
    await bob.locator('.shell').waitFor();
    assert.doesNotMatch(await bob.locator('.user-btn').innerText(), /Admin/);

    // Bob creates a board and uploads two images into it.
    await bob.getByRole('button', { name: 'New board' }).click();
    await bob.getByRole('dialog', { name: 'Create board' }).getByLabel('Board name').fill(BOARD);
    await bob.getByRole('dialog', { name: 'Create board' }).getByRole('button', { name: 'Create' }).click();
    await bob.getByRole('heading', { name: BOARD }).waitFor();
    await bob.locator('#gallery-upload').setInputFiles([
      { name: 'red.png', mimeType: 'image/png', buffer: pngBytes(64, 48, [220, 40, 40]) },
      { name: 'blue.png', mimeType: 'image/png', buffer: pngBytes(48, 64, [40, 40, 220]) },
    ]);
    await bob.locator('.tile').nth(1).waitFor();
    // Thumbnails load through the media cookie.
    await bob.waitForFunction(() => [...document.querySelectorAll('.tile img')].every((i) => i.complete && i.naturalWidth > 0));
    await screenshot(bob, '07-gallery-board');

    // The viewer: metadata, star, move.
    await bob.locator('.tile').first().click();
    const viewer = bob.getByRole('dialog', { name: 'Image' });
    await viewer.getByText('Size').waitFor();
    await viewer.getByRole('button', { name: 'Star' }).click();
    await viewer.getByRole('button', { name: 'Unstar' }).waitFor();
    await bob.waitForFunction(() => {
      const img = document.querySelector('.viewer-image img');
      return img && img.complete && img.naturalWidth > 0;
    });
    assert.equal(await viewer.getByRole('link', { name: 'Download' }).getAttribute('download') !== null, true);
    await screenshot(bob, '08-image-viewer');
    await viewer.getByRole('button', { name: 'Close' }).click();
    await bob.locator('.tile .tile-star').first().waitFor();

    carol = await newPage(browser);
    await carol.goto(`${server.url}#/gallery`);
    await signIn(carol, CAROL.email, CAROL.password);
    await carol.locator('.shell').waitFor();
    await boardRow(carol, 'Uncategorized').waitFor();
    assert.equal(await boardRow(carol, BOARD).count(), 0, 'Carol cannot see the private board');

    // Bob shares it from the board's context menu.
    await bob.getByRole('button', { name: `Board options for ${BOARD}` }).click();
    await screenshot(bob, '09-board-menu');
    await bob.getByRole('menuitemradio', { name: /Shared/ }).click();
    await boardRow(bob, BOARD).locator('.badge', { hasText: 'Shared' }).waitFor();

    await carol.reload();
    await boardRow(carol, BOARD).waitFor();
    const row = await boardRow(carol, BOARD).innerText();
    assert.match(row, /Shared/);
    assert.match(row, /Read-only/);
    assert.equal(await carol.getByRole('button', { name: `Board options for ${BOARD}` }).count(), 0);
    await boardRow(carol, BOARD).locator('.board-select').click();
    await carol.locator('.tile').nth(1).waitFor();
    assert.equal(await carol.getByRole('button', { name: 'Upload' }).count(), 0);
    await carol.locator('.tile').first().click();
    const cv = carol.getByRole('dialog', { name: 'Image' });
    await cv.getByText('shared with you read-only').waitFor();
    assert.equal(await cv.getByRole('button', { name: 'Delete' }).count(), 0);
    await screenshot(carol, '10-shared-board-readonly');
    await cv.getByRole('button', { name: 'Close' }).click();

    // The admin sees the board with its owner.
    await admin.goto(`${server.url}#/gallery`);
    await boardRow(admin, BOARD).waitFor();
    assert.match(await boardRow(admin, BOARD).innerText(), /by Bob/);
  });

  test('gallery: rename, archive and delete a board keeping its images', async () => {
    await bob.getByRole('button', { name: 'New board' }).click();
    const dlg = bob.getByRole('dialog', { name: 'Create board' });
    await dlg.getByLabel('Board name').fill('Scratch');
    await dlg.getByRole('button', { name: 'Create' }).click();
    await bob.getByRole('heading', { name: 'Scratch' }).waitFor();
    await bob.locator('#gallery-upload').setInputFiles([{ name: 'g.png', mimeType: 'image/png', buffer: pngBytes(16, 16, [0, 160, 0]) }]);
    await bob.locator('.tile').first().waitFor();

    await boardRow(bob, 'Scratch').click({ button: 'right' });
    await bob.getByRole('menuitem', { name: 'Rename…' }).click();
    const rn = bob.getByRole('dialog', { name: 'Rename board' });
    await rn.getByLabel('Board name').fill('Scratch 2');
    await rn.getByRole('button', { name: 'Save' }).click();
    await boardRow(bob, 'Scratch 2').waitFor();

    await bob.getByRole('button', { name: 'Board options for Scratch 2' }).click();
    await bob.getByRole('menuitem', { name: 'Archive' }).click();
    // Archived boards are hidden until "Show archived" is on.
    await bob.waitForFunction(() => !document.querySelector('.board[data-board-name="Scratch 2"]'));
    await bob.getByLabel('Show archived').check();
    await boardRow(bob, 'Scratch 2').locator('.badge', { hasText: 'Archived' }).waitFor();

    await bob.getByRole('button', { name: 'Board options for Scratch 2' }).click();
    await bob.getByRole('menuitem', { name: 'Delete board…' }).click();
    const del = bob.getByRole('dialog', { name: 'Delete board' });
    await del.getByRole('button', { name: 'Delete board and images' }).waitFor();
    await screenshot(bob, '11-delete-board');
    await del.getByRole('button', { name: 'Delete board, keep images' }).click();
    await bob.waitForFunction(() => !document.querySelector('.board[data-board-name="Scratch 2"]'));
    await boardRow(bob, 'Uncategorized').locator('.board-select').click();
    await bob.getByRole('heading', { name: 'Uncategorized' }).waitFor();
    await bob.locator('.tile').first().waitFor();
    assert.equal(await bob.locator('.tile').count(), 1, 'the kept image is in Uncategorized');
  });

  test('the image grid loads more images as it scrolls', async () => {
    const token = await apiLogin(server.url, BOB.email, BOB.password);
    const boards = await call(server.url, 'GET', 'api/v1/boards/?all=true', { token });
    const board = boards.find((b) => b.board_name === BOARD);
    let withMetadata;
    for (let i = 0; i < 70; i++) {
      const form = new FormData();
      form.append('file', new Blob([pngBytes(8, 8, [i * 3, 100, 200 - i * 2])], { type: 'image/png' }), `n${i}.png`);
      if (i === 0) {
        form.append('metadata', JSON.stringify({
          positive_prompt: 'a lighthouse at dusk', seed: 1234, scheduler: 'euler', model: { name: 'tiny-sd' }, steps: 4,
        }));
      }
      const res = await fetch(new URL(`api/v1/images/upload?image_category=general&is_intermediate=false&board_id=${board.board_id}`, server.url), {
        method: 'POST', headers: { Authorization: `Bearer ${token}` }, body: form,
      });
      assert.equal(res.status, 201);
      if (i === 0) withMetadata = (await res.json()).image_name;
    }
    await boardRow(bob, BOARD).locator('.board-select').click();
    await bob.getByRole('heading', { name: BOARD }).waitFor();
    await bob.locator('.tile').nth(59).waitFor();
    assert.equal(await bob.locator('#image-count').innerText(), '72 images');
    await bob.locator('.grid-scroll').evaluate((el) => el.scrollTo(0, el.scrollHeight));
    await bob.locator('.tile').nth(71).waitFor();
    assert.equal(await bob.locator('.tile').count(), 72);

    // The viewer shows the generation parameters from the metadata.
    await bob.locator(`.tile[data-image-name="${withMetadata}"]`).click();
    const meta = bob.getByRole('dialog', { name: 'Image' }).getByRole('definition');
    for (const value of ['a lighthouse at dusk', '1234', 'euler', 'tiny-sd']) {
      await meta.filter({ hasText: new RegExp(`^${value}$`) }).waitFor();
    }
    await bob.getByRole('dialog', { name: 'Image' }).getByRole('button', { name: 'Close' }).click();
  });

  test('4. the admin sees B\u2019s queued item with its owner and cancels it; others see it redacted', async () => {
    await admin.goto(`${server.url}#/queue`);
    await admin.getByRole('heading', { name: 'Queue' }).waitFor();
    await admin.getByRole('button', { name: 'Pause' }).click();
    await admin.getByRole('button', { name: 'Resume' }).waitFor();

    const token = await apiLogin(server.url, BOB.email, BOB.password);
    const graph = { id: 'g1', nodes: { a: { id: 'a', type: 'add', a: 1, b: 2 } }, edges: [] };
    const res = await call(server.url, 'POST', 'api/v1/queue/default/enqueue_batch', {
      token, json: { batch: { graph, runs: 1, origin: 'ui-test' }, prepend: false },
    });
    const id = res.item_ids[0];
    const row = admin.locator(`tr[data-item-id="${id}"]`);
    await row.waitFor({ timeout: 8000 }); // polling picks it up
    assert.match(await row.innerText(), /Bob/);
    assert.match(await row.innerText(), /pending/);
    await screenshot(admin, '12-queue-admin');

    await carol.goto(`${server.url}#/queue`);
    const crow = carol.locator(`tr[data-item-id="${id}"]`);
    await crow.waitFor();
    assert.match(await crow.innerText(), /Another user/);
    assert.equal(await crow.getByRole('button', { name: /Cancel/ }).count(), 0, 'no cancel for others\u2019 items');
    assert.equal(await carol.getByRole('button', { name: 'Pause' }).count() + await carol.getByRole('button', { name: 'Resume' }).count(), 0);
    await screenshot(carol, '13-queue-user');

    await bob.goto(`${server.url}#/queue`);
    const brow = bob.locator(`tr[data-item-id="${id}"]`);
    await brow.waitFor();
    assert.match(await brow.innerText(), /You/);
    await brow.getByRole('button', { name: `Cancel item ${id}` }).waitFor();

    await row.getByRole('button', { name: `Cancel item ${id}` }).click();
    await admin.locator(`tr[data-item-id="${id}"][data-status="canceled"]`).waitFor();
    await admin.getByRole('button', { name: 'Resume' }).click();
    await admin.getByRole('button', { name: 'Pause' }).waitFor();
  });

  test('profile: display name and password change', async () => {
    await openUserMenuItem(carol, 'My Profile');
    await carol.getByRole('heading', { name: 'My Profile' }).waitFor();
    await carol.getByLabel('Display name').fill('Carol C.');
    await carol.getByRole('button', { name: 'Save name' }).click();
    await carol.locator('.user-btn', { hasText: 'Carol C.' }).waitFor();
    await carol.getByLabel('Current password').fill('not-it');
    await carol.getByLabel('New password', { exact: true }).fill('Carol-pass-2');
    await carol.getByLabel('Confirm new password').fill('Carol-pass-2');
    await carol.getByRole('button', { name: 'Change password' }).click();
    await carol.getByRole('alert').filter({ hasText: 'Current password is incorrect' }).waitFor();
    await carol.getByLabel('Current password').fill(CAROL.password);
    await carol.getByRole('button', { name: 'Change password' }).click();
    await carol.getByText('Password changed').waitFor();
    CAROL.password = 'Carol-pass-2';
    await screenshot(carol, '14-profile');
    // The page continues on the replacement token (X-Refreshed-Token).
    await carol.goto(`${server.url}#/gallery`);
    await boardRow(carol, BOARD).waitFor();
    assert.equal(await carol.locator('.overlay').count(), 0);
    await apiLogin(server.url, CAROL.email, CAROL.password);
  });

  test('workflows: share and unshare, seen by others; delete', async () => {
    const token = await apiLogin(server.url, BOB.email, BOB.password);
    const doc = {
      name: 'Bob flow', author: 'Bob', description: 'Adds numbers', version: '1.0.0', contact: '', tags: 'math',
      notes: '', exposedFields: [], meta: { version: '3.0.0', category: 'user' }, nodes: [], edges: [],
    };
    await call(server.url, 'POST', 'api/v1/workflows/', { token, json: { workflow: doc } });
    await bob.goto(`${server.url}#/workflows`);
    const wf = bob.locator('.wf[data-name="Bob flow"]');
    await wf.waitFor();
    await wf.getByRole('button', { name: 'Share' }).click();
    await wf.locator('.badge', { hasText: 'Shared' }).waitFor();
    await screenshot(bob, '15-workflows');

    await carol.goto(`${server.url}#/workflows`);
    const shared = carol.getByRole('region', { name: 'Shared by others' });
    await shared.locator('.wf[data-name="Bob flow"]').waitFor();
    assert.equal(await shared.getByRole('button', { name: /Delete|Share|Unshare/ }).count(), 0);

    await wf.getByRole('button', { name: 'Unshare' }).click();
    await wf.locator('.badge', { hasText: 'Private' }).waitFor();
    await carol.reload();
    await carol.getByRole('region', { name: 'Shared by others' }).getByText('Nobody has shared a workflow yet.').waitFor();

    await wf.getByRole('button', { name: 'Delete Bob flow' }).click();
    await bob.getByRole('dialog', { name: 'Delete workflow' }).getByRole('button', { name: 'Delete' }).click();
    await bob.getByText('You have no workflows yet').waitFor();
  });

  test('5. deactivating B sends B\u2019s open session back to sign-in on the next action', async () => {
    await bob.goto(`${server.url}#/gallery`);
    await boardRow(bob, BOARD).locator('.board-select').click();
    await bob.locator('.tile').first().waitFor();
    const hash = await bob.evaluate(() => location.hash);

    await admin.goto(`${server.url}#/users`);
    await userAction(admin, BOB.email, 'Deactivate');
    await userRow(admin, BOB.email).getByText('Disabled').waitFor();

    await boardRow(bob, 'Uncategorized').locator('.board-select').click();
    const overlay = bob.locator('.overlay');
    await overlay.getByText('Session expired').waitFor();
    await screenshot(bob, '16-session-expired');
    await overlay.getByLabel('Password', { exact: true }).fill(BOB.password);
    await overlay.getByRole('button', { name: 'Sign in' }).click();
    await overlay.getByRole('alert').filter({ hasText: 'Account is disabled' }).waitFor();

    // Re-activated, B signs in again and is back where the page was.
    await userAction(admin, BOB.email, 'Activate');
    await userRow(admin, BOB.email).getByText('Active').waitFor();
    await overlay.getByLabel('Password', { exact: true }).fill(BOB.password);
    await overlay.getByRole('button', { name: 'Sign in' }).click();
    await overlay.waitFor({ state: 'detached' });
    await bob.getByRole('heading', { name: 'Uncategorized' }).waitFor();
    assert.notEqual(await bob.evaluate(() => location.hash), '', 'the route is kept');
    assert.ok(hash.startsWith('#/gallery/'));
  });

  test('admin: grant and revoke admin, audit log, logout', async () => {
    await userAction(admin, CAROL.email, 'Make admin');
    await userRow(admin, CAROL.email).locator('.badge', { hasText: 'Admin' }).waitFor();
    await carol.goto(`${server.url}#/gallery`);
    await carol.locator('.user-btn').getByText('Admin', { exact: true }).waitFor();
    await userAction(admin, CAROL.email, 'Revoke admin');
    await admin.waitForFunction((email) => !document.querySelector(`tr[data-email="${email}"] .badge.admin`), CAROL.email);

    await openUserMenuItem(admin, 'Audit log');
    await admin.getByRole('heading', { name: 'Audit log' }).waitFor();
    await admin.getByRole('cell', { name: 'user created' }).first().waitFor();
    await admin.getByLabel('Action').selectOption('user_deactivated');
    await admin.getByRole('cell', { name: 'user created' }).first().waitFor({ state: 'detached' });
    await admin.getByRole('cell', { name: 'user deactivated' }).first().waitFor();
    await screenshot(admin, '17-audit');

    // A non-admin has no such pages.
    await bob.goto(`${server.url}#/users`);
    await bob.getByText('Only administrators can open this page.').waitFor();
    await bob.locator('.user-btn').click();
    assert.equal(await bob.getByRole('menuitem', { name: 'User Management' }).count(), 0);
    await screenshot(bob, '18-user-menu');
    await bob.getByRole('menuitem', { name: 'Logout' }).click();
    await bob.getByText('You have signed out.').waitFor();
    assert.equal(await bob.evaluate(() => localStorage.getItem('auth_token')), null);
  });

  test('an expired stored token returns to sign-in saying "Session expired"', async () => {
    const page = await newPage(browser);
    // A syntactically valid token whose exp is in the past, stored before the app starts.
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const stale = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ user_id: 'x', email: 'x@example.com', is_admin: false, exp: 1000 })}.sig`;
    await page.addInitScript((t) => localStorage.setItem('auth_token', t), stale);
    await page.goto(server.url);
    await page.getByRole('alert').filter({ hasText: 'Session expired' }).waitFor();
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await page.context().close();
  });

  test('tablet-sized layout', async () => {
    const page = await newPage(browser, { width: 820, height: 1180 });
    await page.goto(server.url);
    await signIn(page, ADMIN.email, ADMIN.password);
    await boardRow(page, BOARD).waitFor();
    await screenshot(page, '19-gallery-tablet');
    await page.goto(`${server.url}#/users`);
    await userRow(page, BOB.email).waitFor();
    await screenshot(page, '20-users-tablet');
    await page.context().close();
  });
});

describe('strict password policy', () => {
  test('setup is blocked until the password meets the policy', async () => {
    const s = await startServer({ multiuser: true, config: 'strict_password_checking: true\n' });
    const b = await launchBrowser();
    try {
      const page = await newPage(b);
      await page.goto(s.url);
      await page.getByLabel('Email').fill('root@example.com');
      await page.getByLabel('Password', { exact: true }).fill('abcdefgh');
      await page.getByText('Password needs uppercase, lowercase and a number.').waitFor();
      await page.getByLabel('Confirm password').fill('abcdefgh');
      await page.getByRole('button', { name: 'Create administrator' }).click();
      await page.getByRole('alert').filter({ hasText: 'Password needs uppercase, lowercase and a number.' }).waitFor();
      await screenshot(page, '21-setup-strict');
      const status = await call(s.url, 'GET', 'api/v1/auth/status');
      assert.equal(status.setup_required, true, 'nothing was sent');
      await page.getByLabel('Password', { exact: true }).fill('Abcdefg1');
      await page.getByLabel('Confirm password').fill('Abcdefg1');
      await page.getByText('Password meets the policy.').waitFor();
      await page.getByRole('button', { name: 'Create administrator' }).click();
      await page.getByRole('heading', { name: 'Sign in' }).waitFor();
      assert.deepEqual(page.errors.map(String), []);
    } finally {
      await b.close();
      await s.stop();
    }
  });
});

describe('single-user mode', () => {
  test('6. opens straight into the app with no sign-in (here behind a base_url sub-path)', async () => {
    const s = await startServer({ multiuser: false, config: 'base_url: /invoke\n' });
    s.url = `${s.url}invoke/`;
    const b = await launchBrowser();
    try {
      const page = await newPage(b);
      await page.goto(s.url);
      await page.locator('.shell').waitFor();
      await page.getByText('Single-user mode').waitFor();
      assert.equal(await page.getByRole('button', { name: 'Sign in' }).count(), 0);
      await page.getByRole('button', { name: 'New board' }).click();
      await page.getByRole('dialog', { name: 'Create board' }).getByLabel('Board name').fill('Solo');
      await page.getByRole('dialog', { name: 'Create board' }).getByRole('button', { name: 'Create' }).click();
      await page.getByRole('heading', { name: 'Solo' }).waitFor();
      await page.locator('#gallery-upload').setInputFiles([{ name: 's.png', mimeType: 'image/png', buffer: pngBytes(32, 32) }]);
      await page.waitForFunction(() => [...document.querySelectorAll('.tile img')].some((i) => i.complete && i.naturalWidth > 0));
      await screenshot(page, '22-single-user');
      await page.goto(`${s.url}#/queue`);
      await page.getByRole('button', { name: 'Pause' }).waitFor();
      await page.goto(`${s.url}#/workflows`);
      await page.getByRole('heading', { name: 'Workflows', exact: true }).waitFor();
      assert.deepEqual(page.errors.map(String), []);
    } finally {
      await b.close();
      await s.stop();
    }
  });
});
