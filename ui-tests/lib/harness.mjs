// Test harness: starts the real `atelier` binary over a temporary root, launches Debian's
// Chromium through playwright-core, and offers small API helpers (for arranging data the test is
// not about) and screenshot saving.

import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as zlib from 'node:zlib';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '..', '..');
export const artifacts = resolve(here, '..', 'artifacts');
mkdirSync(artifacts, { recursive: true });

export const targetDir = process.env.CARGO_TARGET_DIR ? resolve(repoRoot, process.env.CARGO_TARGET_DIR) : join(repoRoot, 'target');
export const binary = process.env.ATELIER_BIN || join(targetDir, 'debug', 'atelier');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';

/** Starts a server; resolves with { url, root, stop() }. config: extra invokeai.yaml lines. */
export async function startServer({ multiuser = true, config = '' } = {}) {
  const root = mkdtempSync(join(tmpdir(), 'atelier-ui-'));
  writeFileSync(join(root, 'invokeai.yaml'), `schema_version: 4.0.3\nmultiuser: ${multiuser}\n${config}`);
  const child = spawn(binary, ['serve', '--root', root, '--host', '127.0.0.1', '--port', '0'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  let log = '';
  const url = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`server did not start:\n${log}`)), 30000);
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const m = log.match(/listening on (http:\/\/[^\s]+)/);
      if (m) {
        clearTimeout(timer);
        ok(m[1].replace(/\u001b\[[0-9;]*m/g, ''));
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`server exited with ${code}:\n${log}`));
    });
  });
  return {
    url: `${url}/`,
    root,
    log: () => log,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/**
 * Launches headless Chromium with the flags that work as root in a container (PITFALLS.md).
 * Playwright gives each launch a fresh temporary profile (its own --user-data-dir).
 */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
    ],
  });
}

/** A fresh browser context (own storage, cookies) and page; page errors fail the test. */
export async function newPage(browser, { width = 1280, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 4\d\d /.test(m.text())) page.errors.push(new Error(m.text()));
  });
  page.setDefaultTimeout(10000);
  return page;
}

/** Saves a full-page screenshot under artifacts/ and checks the layout is usable. */
export async function screenshot(page, name) {
  await page.waitForTimeout(150);
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: false });
  // Usable layout: nothing overflows the viewport horizontally, and the page shows content.
  const { overflow, textLength } = await page.evaluate(() => ({
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    textLength: document.body.innerText.trim().length,
  }));
  if (overflow > 1) throw new Error(`${name}: page overflows horizontally by ${overflow}px`);
  if (textLength < 10) throw new Error(`${name}: page is (nearly) empty`);
}

/** Minimal API client for arranging state (sign-in, enqueue) outside the browser. */
export async function call(base, method, path, { token, json } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(new URL(path, base), { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!res.ok) throw new Error(`${method} ${path} → ${res.status}: ${text}`);
  return body;
}

export async function apiLogin(base, email, password) {
  return (await call(base, 'POST', 'api/v1/auth/login', { json: { email, password } })).token;
}

/**
 * A safetensors file with the given tensors (F16, zero-filled): only the header matters to the
 * model probe. Mirrors crates/server/tests/models.rs `write_safetensors`.
 */
export function writeSafetensors(path, tensors) {
  const header = {};
  let offset = 0;
  for (const [name, shape] of tensors) {
    const len = shape.reduce((a, b) => a * b, 1) * 2;
    header[name] = { dtype: 'F16', shape, data_offsets: [offset, offset + len] };
    offset += len;
  }
  header.__metadata__ = { format: 'pt' };
  const text = Buffer.from(JSON.stringify(header));
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(text.length));
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, Buffer.concat([size, text, Buffer.alloc(offset)]));
}

/** A single-file SD 1.x checkpoint as far as the probe can tell (models.rs `sd1`): two keys. */
export function writeSd1Checkpoint(path) {
  const unet = 'model.diffusion_model.';
  writeSafetensors(path, [
    [`${unet}input_blocks.0.0.weight`, [320, 4, 3, 3]],
    [`${unet}input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight`, [4, 768]],
  ]);
}

/** A small valid PNG (solid colour), for uploads. */
export function pngBytes(width = 8, height = 8, rgb = [200, 80, 40]) {
  const { deflateSync, crc32 } = zlibHelpers();
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (width * 3 + 1)] = 0;
    for (let x = 0; x < width; x++) raw.set(rgb, y * (width * 3 + 1) + 1 + x * 3);
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0); ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; ihdr[9] = 2; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0)),
  ]);
}

function zlibHelpers() {
  const table = new Int32Array(256).map((_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c;
  });
  const crc32 = (buf) => {
    let c = -1;
    for (const b of buf) c = table[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ -1) >>> 0;
  };
  return { deflateSync: zlib.deflateSync, crc32 };
}
