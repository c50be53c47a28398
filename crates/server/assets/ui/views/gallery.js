// Gallery: boards on the left (mine, plus others' shared and public boards, marked as such;
// Uncategorized; "show archived"), each with a context menu (rename, archive, visibility, delete);
// the selected board's images on the right in a grid that loads more as it scrolls, and a viewer
// with the image's metadata, star, move to a board, download, delete and "Use these settings"
// (fills the Generate screen from the image's metadata).

import { api, mediaQuery } from '../api.js';
import { h, mount, openDialog, confirmDialog, promptDialog, openMenu, toast, badge, formatDate, errorText, errorBox } from '../dom.js';
import { icons } from '../icons.js';
import { session } from '../session.js';

const PAGE = 60;
const ALL = 'all';
const NONE = 'none';

const mediaUrl = (url) => `${url}${url.includes('?') ? '&' : '?'}${mediaQuery()}`;
const thumbUrl = (name) => mediaUrl(`api/v1/images/i/${encodeURIComponent(name)}/thumbnail`);

export async function render(container, { params }) {
  const state = {
    boards: [],
    selected: params[0] || ALL,
    showArchived: false,
    images: [],
    total: 0,
    loading: false,
    generation: 0,
  };
  const alert = errorBox();
  const boardList = h('ul', { class: 'board-list', 'aria-label': 'Boards' });
  const archived = h('input', { type: 'checkbox', id: 'show-archived' });
  const head = h('div', { class: 'images-head' });
  const grid = h('div', { class: 'image-grid', role: 'list', 'aria-label': 'Images' });
  const gridStatus = h('div', { class: 'grid-status', 'aria-live': 'polite' });
  const sentinel = h('div', { class: 'sentinel' });
  const scroller = h('div', { class: 'grid-scroll' }, grid, gridStatus, sentinel);
  const upload = h('input', { type: 'file', accept: 'image/*', multiple: true, class: 'sr-only', id: 'gallery-upload', tabindex: '-1' });

  const boardById = (id) => state.boards.find((b) => b.board_id === id);
  const mine = (b) => session.isMe(b.user_id);
  const canAdmin = (b) => session.isAdmin || mine(b);
  const canWrite = (b) => session.isAdmin || mine(b) || b.board_visibility === 'public';

  // ---- boards ----
  async function loadBoards() {
    state.boards = await api('api/v1/boards/', {
      query: { all: true, order_by: 'board_name', direction: 'ASC', include_archived: state.showArchived },
    });
    if (![ALL, NONE].includes(state.selected) && !boardById(state.selected)) {
      // Deleted, archived while hidden, or no longer visible: fall back to everything.
      state.selected = ALL;
      history.replaceState(null, '', '#/gallery');
      drawHead();
      resetImages();
    }
    drawBoards();
  }

  function drawBoards() {
    const own = state.boards.filter(mine);
    const others = state.boards.filter((b) => !mine(b));
    mount(boardList,
      boardItem({ id: ALL, name: session.isAdmin && session.multiuser ? 'All images' : 'All my images' }),
      boardItem({ id: NONE, name: 'Uncategorized' }),
      h('li', { class: 'board-group', role: 'presentation' }, session.multiuser ? 'My boards' : 'Boards'),
      own.length ? own.map((b) => boardItem({ board: b })) : h('li', { class: 'hint', style: 'padding:0 0.5rem' }, 'No boards yet.'),
      others.length ? [
        h('li', { class: 'board-group', role: 'presentation' }, session.isAdmin ? 'Other users\u2019 boards' : 'Shared with me'),
        others.map((b) => boardItem({ board: b })),
      ] : null);
  }

  function boardItem({ id, name, board }) {
    const boardId = board ? board.board_id : id;
    const label = board ? board.board_name : name;
    const current = state.selected === boardId;
    const cover = board?.cover_image_name
      ? h('img', { class: 'board-cover', src: thumbUrl(board.cover_image_name), alt: '', loading: 'lazy' })
      : h('span', { class: 'board-cover', html: board ? icons.gallery : (id === ALL ? icons.gallery : icons.lock) });
    const meta = [];
    if (board) {
      const n = board.image_count + board.asset_count;
      meta.push(h('span', {}, `${n} item${n === 1 ? '' : 's'}`));
      if (board.board_visibility !== 'private') meta.push(badge(board.board_visibility === 'shared' ? 'Shared' : 'Public', board.board_visibility));
      if (!mine(board)) {
        if (board.owner_username) meta.push(h('span', {}, `by ${board.owner_username}`));
        if (!canWrite(board)) meta.push(badge('Read-only'));
      }
      if (board.archived) meta.push(badge('Archived'));
    }
    const select = h('button', {
      type: 'button',
      class: 'board-select',
      'aria-current': current ? 'true' : null,
      onclick: () => selectBoard(boardId),
    }, cover, h('span', { class: 'board-text' },
      h('span', { class: 'board-name' }, label),
      meta.length ? h('span', { class: 'board-meta' }, meta) : null));
    const li = h('li', { class: `board${board?.archived ? ' archived' : ''}`, 'aria-current': current ? 'true' : null, dataset: { boardId, boardName: label } }, select);
    if (board && canAdmin(board)) {
      const more = h('button', {
        type: 'button',
        class: 'icon-btn',
        'aria-haspopup': 'menu',
        'aria-label': `Board options for ${label}`,
        html: icons.more,
        onclick: (e) => boardMenu(board, e.currentTarget),
      });
      li.append(more);
      li.addEventListener('contextmenu', (e) => {
        e.preventDefault();
        boardMenu(board, more, { x: e.clientX, y: e.clientY });
      });
    }
    return li;
  }

  function boardMenu(board, anchor, at) {
    const vis = (v, label) => ({
      label,
      checked: board.board_visibility === v,
      onSelect: () => updateBoard(board, { board_visibility: v },
        v === 'private' ? 'is private' : v === 'shared' ? 'is shared (others can view it)' : 'is public (others can view and add to it)'),
    });
    openMenu(anchor, [
      { label: 'Rename…', onSelect: () => renameBoard(board) },
      { label: board.archived ? 'Unarchive' : 'Archive', onSelect: () => updateBoard(board, { archived: !board.archived }, board.archived ? 'unarchived' : 'archived') },
      'separator',
      { heading: 'Visibility' },
      vis('private', 'Private'),
      vis('shared', 'Shared (view only)'),
      vis('public', 'Public (everyone can add)'),
      'separator',
      { label: 'Delete board…', danger: true, onSelect: () => deleteBoard(board) },
    ], at);
  }

  async function act(fn) {
    alert.set('');
    try {
      await fn();
    } catch (e) {
      alert.set(errorText(e));
    }
  }

  async function updateBoard(board, changes, what) {
    await act(async () => {
      const b = await api(`api/v1/boards/${encodeURIComponent(board.board_id)}`, { method: 'PATCH', json: changes });
      toast(`Board "${b.board_name}" ${what}.`);
    });
    await loadBoards();
    drawHead();
  }

  async function renameBoard(board) {
    const name = await promptDialog('Rename board', 'Board name', board.board_name, { validate: checkName });
    if (name) await updateBoard(board, { board_name: name }, 'renamed');
  }

  async function createBoard() {
    const name = await promptDialog('Create board', 'Board name', '', { submitLabel: 'Create', validate: checkName });
    if (!name) return;
    await act(async () => {
      const b = await api('api/v1/boards/', { method: 'POST', query: { board_name: name } });
      toast(`Board "${b.board_name}" created.`);
      state.selected = b.board_id;
    });
    await loadBoards();
    selectBoard(state.selected);
  }

  async function deleteBoard(board) {
    const choice = await openDialog('Delete board', (close) => [
      h('div', { class: 'dialog-body' },
        h('p', {}, `Delete the board "${board.board_name}"?`),
        h('p', { class: 'muted' }, 'Keeping the images moves them to Uncategorized. Deleting them cannot be undone.')),
      h('footer', { class: 'dialog-foot' },
        h('button', { type: 'button', class: 'btn', onclick: () => close(undefined) }, 'Cancel'),
        h('button', { type: 'button', class: 'btn danger', onclick: () => close('all') }, 'Delete board and images'),
        h('button', { type: 'button', class: 'btn primary', autofocus: true, onclick: () => close('keep') }, 'Delete board, keep images')),
    ]);
    if (!choice) return;
    await act(async () => {
      await api(`api/v1/boards/${encodeURIComponent(board.board_id)}`, { method: 'DELETE', query: { include_images: choice === 'all' } });
      toast(choice === 'all' ? `Board "${board.board_name}" and its images deleted.` : `Board "${board.board_name}" deleted; its images are in Uncategorized.`);
    });
    if (state.selected === board.board_id) state.selected = ALL;
    await loadBoards();
    selectBoard(state.selected);
  }

  function selectBoard(id) {
    state.selected = id;
    history.replaceState(null, '', `#/gallery/${encodeURIComponent(id)}`);
    drawBoards();
    drawHead();
    resetImages();
  }

  // ---- images ----
  function drawHead() {
    const b = boardById(state.selected);
    const title = state.selected === ALL ? (session.isAdmin && session.multiuser ? 'All images' : 'All my images')
      : state.selected === NONE ? 'Uncategorized' : b?.board_name || 'Board';
    const writable = !b || canWrite(b);
    mount(head,
      h('h2', { id: 'images-title' }, title,
        b && b.board_visibility !== 'private' ? badge(b.board_visibility === 'shared' ? 'Shared' : 'Public', b.board_visibility) : null,
        b && !writable ? badge('Read-only') : null),
      h('span', { class: 'muted', id: 'image-count' }, state.total ? `${state.total} image${state.total === 1 ? '' : 's'}` : ''),
      writable ? h('label', {
        class: 'btn', for: 'gallery-upload', role: 'button', tabindex: '0',
        onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); upload.click(); } },
      }, h('span', { html: icons.upload }), 'Upload') : null);
  }

  function resetImages() {
    state.generation += 1;
    state.images = [];
    state.total = 0;
    state.done = false;
    grid.replaceChildren();
    gridStatus.textContent = '';
    loadMore();
  }

  async function loadMore() {
    if (state.loading || state.done) return;
    state.loading = true;
    const gen = state.generation;
    gridStatus.textContent = 'Loading…';
    try {
      const page = await api('api/v1/images/', {
        query: {
          offset: state.images.length,
          limit: PAGE,
          is_intermediate: false,
          board_id: state.selected === ALL ? null : state.selected,
        },
      });
      if (gen !== state.generation) return;
      const start = state.images.length;
      state.images.push(...page.items);
      state.total = page.total;
      state.done = state.images.length >= page.total || page.items.length === 0;
      page.items.forEach((img, i) => grid.append(tile(img, start + i)));
      gridStatus.textContent = state.images.length ? '' : 'No images here yet.';
      const count = document.getElementById('image-count');
      if (count) count.textContent = `${state.total} image${state.total === 1 ? '' : 's'}`;
    } catch (e) {
      if (gen === state.generation) gridStatus.textContent = errorText(e);
      state.done = true;
    } finally {
      if (gen === state.generation) state.loading = false;
    }
    // Keep filling while the sentinel is still on screen (tall windows, small pages).
    if (gen === state.generation && !state.done && isVisible(sentinel, scroller)) loadMore();
  }

  function tile(img, index) {
    return h('button', {
      type: 'button',
      class: 'tile',
      role: 'listitem',
      'aria-label': `Image ${img.image_name}${img.starred ? ' (starred)' : ''}`,
      dataset: { imageName: img.image_name },
      onclick: () => openViewer(index),
    },
    h('img', { src: mediaUrl(img.thumbnail_url), alt: '', loading: 'lazy', width: 256, height: 256 }),
    img.starred ? h('span', { class: 'tile-star', html: icons.starFilled }) : null);
  }

  // ---- viewer ----
  async function openViewer(index) {
    let i = index;
    let changed = false;
    await openDialog('Image', (close) => {
      const body = h('div', { class: 'viewer' });
      const show = async () => {
        const img = state.images[i];
        const board = img.board_id ? boardById(img.board_id) : null;
        const readOnly = !session.isAdmin && board && !mine(board) && board.board_visibility !== 'public';
        const side = h('div', { class: 'viewer-side' });
        const err = errorBox();
        mount(body,
          h('div', { class: 'viewer-image' }, h('img', { src: mediaUrl(img.image_url), alt: `Image ${img.image_name}` })),
          side);
        const change = async (fn) => {
          err.set('');
          try {
            await fn();
            changed = true;
          } catch (e) {
            err.set(errorText(e));
            return false;
          }
          return true;
        };
        const starBtn = h('button', {
          type: 'button', class: 'btn small', 'aria-pressed': String(img.starred),
          onclick: () => change(async () => {
            await api(img.starred ? 'api/v1/images/unstar' : 'api/v1/images/star', { method: 'POST', json: { image_names: [img.image_name] } });
            img.starred = !img.starred;
            show();
          }),
        }, h('span', { html: img.starred ? icons.starFilled : icons.star }), img.starred ? 'Unstar' : 'Star');
        const download = h('a', { class: 'btn small', href: mediaUrl(img.image_url), download: img.image_name },
          h('span', { html: icons.download }), 'Download');
        const del = h('button', {
          type: 'button', class: 'btn small danger',
          onclick: async () => {
            if (!await confirmDialog('Delete image', `Delete ${img.image_name}? This cannot be undone.`, { confirmLabel: 'Delete', danger: true })) return;
            if (await change(() => api(`api/v1/images/i/${encodeURIComponent(img.image_name)}`, { method: 'DELETE' }))) {
              toast('Image deleted.');
              close();
            }
          },
        }, h('span', { html: icons.trash }), 'Delete');
        const targets = state.boards.filter((b) => !b.archived && canWrite(b));
        const move = h('select', { name: 'move_to', id: 'viewer-move', 'aria-label': 'Move to board' },
          h('option', { value: NONE, selected: !img.board_id }, 'Uncategorized'),
          targets.map((b) => h('option', { value: b.board_id, selected: b.board_id === img.board_id }, b.board_name)));
        const moveBtn = h('button', {
          type: 'button', class: 'btn small',
          onclick: () => change(async () => {
            const to = move.value;
            if ((to === NONE && !img.board_id) || to === img.board_id) return;
            if (to === NONE) await api('api/v1/board_images/', { method: 'DELETE', json: { image_name: img.image_name } });
            else await api('api/v1/board_images/', { method: 'POST', json: { board_id: to, image_name: img.image_name } });
            img.board_id = to === NONE ? null : to;
            toast(`Moved to ${to === NONE ? 'Uncategorized' : boardById(to)?.board_name}.`);
            show();
          }),
        }, 'Move');
        mount(side,
          h('div', { class: 'viewer-actions' },
            h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Previous image', disabled: i === 0, html: icons.left, onclick: () => { i -= 1; show(); } }),
            h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Next image', disabled: i >= state.images.length - 1, html: icons.right, onclick: () => next() }),
            readOnly ? null : starBtn, download, readOnly ? null : del),
          readOnly ? h('p', { class: 'hint' }, 'This board is shared with you read-only.') : h('div', { class: 'row' },
            h('div', { class: 'field', style: 'margin:0' }, h('label', { for: 'viewer-move' }, 'Board'), move), moveBtn),
          err,
          h('dl', { class: 'meta', 'aria-label': 'Image details' },
            h('dt', {}, 'Name'), h('dd', {}, img.image_name),
            h('dt', {}, 'Size'), h('dd', {}, `${img.width} × ${img.height}`),
            h('dt', {}, 'Created'), h('dd', {}, formatDate(img.created_at)),
            h('dt', {}, 'Board'), h('dd', {}, img.board_id ? (board?.board_name || img.board_id) : 'Uncategorized')),
          h('div', { class: 'meta-box' }, h('p', { class: 'hint' }, 'Loading metadata…')));
        const metaBox = side.querySelector('.meta-box');
        try {
          const meta = await api(`api/v1/images/i/${encodeURIComponent(img.image_name)}/metadata`);
          if (state.images[i] === img) {
            mount(metaBox, metadataView(meta, () => {
              // "Use these settings": the Generate screen picks them up when it opens.
              session.pendingRecall = meta;
              close();
              location.hash = '#/generate';
            }));
          }
        } catch (e) {
          mount(metaBox, h('p', { class: 'hint bad' }, errorText(e)));
        }
      };
      const next = async () => {
        if (i + 1 >= state.images.length && !state.done) await loadMore();
        if (i + 1 < state.images.length) {
          i += 1;
          show();
        }
      };
      body.addEventListener('keydown', (e) => {
        if (e.target.closest('select, input')) return;
        if (e.key === 'ArrowLeft' && i > 0) { i -= 1; show(); }
        if (e.key === 'ArrowRight') next();
      });
      body.tabIndex = -1;
      show();
      return body;
    }, { wide: true });
    if (changed) {
      resetImages();
      loadBoards();
    }
  }

  // ---- page ----
  upload.addEventListener('change', async () => {
    const files = [...upload.files];
    upload.value = '';
    if (!files.length) return;
    const board = [ALL, NONE].includes(state.selected) ? null : state.selected;
    await act(async () => {
      for (const f of files) {
        const form = new FormData();
        form.append('file', f, f.name);
        await api('api/v1/images/upload', {
          method: 'POST',
          body: form,
          query: { image_category: 'general', is_intermediate: false, board_id: board },
        });
      }
      toast(`${files.length} image${files.length === 1 ? '' : 's'} uploaded.`);
    });
    resetImages();
    loadBoards();
  });
  archived.addEventListener('change', async () => {
    state.showArchived = archived.checked;
    await loadBoards();
  });

  mount(container, h('div', { class: 'gallery' },
    h('aside', { class: 'boards', 'aria-label': 'Boards panel' },
      h('div', { class: 'boards-head' }, h('h1', {}, 'Boards'),
        h('button', { type: 'button', class: 'btn small', onclick: createBoard }, h('span', { html: icons.plus }), 'New board')),
      h('div', { class: 'boards-opts' }, h('div', { class: 'check' }, archived, h('label', { for: 'show-archived' }, 'Show archived'))),
      boardList),
    h('section', { class: 'images', 'aria-labelledby': 'images-title' }, head, h('div', { style: 'padding:0 1.25rem' }, alert), scroller, upload)));

  await loadBoards();
  drawHead();
  resetImages();
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadMore();
  }, { root: scroller, rootMargin: '400px' });
  observer.observe(sentinel);
  return () => observer.disconnect();
}

function checkName(name) {
  if (name.length > 300) throw new Error('Board names are at most 300 characters.');
}

function isVisible(el, root) {
  const r = el.getBoundingClientRect();
  const rr = root.getBoundingClientRect();
  return r.top < rr.bottom + 400;
}

/** The generation parameters InvokeAI writes into image metadata, then the raw JSON. */
const RECALL_KEYS = ['positive_prompt', 'negative_prompt', 'seed', 'model', 'steps', 'cfg_scale', 'scheduler', 'width', 'height'];

function metadataView(meta, useSettings) {
  if (!meta || typeof meta !== 'object' || !Object.keys(meta).length) return h('p', { class: 'hint' }, 'No generation metadata.');
  const model = meta.model && typeof meta.model === 'object' ? meta.model.name || meta.model.key : meta.model;
  const rows = [
    ['Prompt', meta.positive_prompt],
    ['Negative prompt', meta.negative_prompt],
    ['Model', model],
    ['Seed', meta.seed],
    ['Scheduler', meta.scheduler],
    ['Steps', meta.steps],
    ['CFG scale', meta.cfg_scale],
    ['Size', meta.width && meta.height ? `${meta.width} × ${meta.height}` : null],
    ['Strength', meta.strength],
  ].filter(([, v]) => v !== undefined && v !== null && v !== '');
  return h('div', {},
    RECALL_KEYS.some((k) => meta[k] !== undefined && meta[k] !== null) ? h('button', {
      type: 'button', class: 'btn small recall', onclick: useSettings,
    }, 'Use these settings') : null,
    rows.length ? h('dl', { class: 'meta', 'aria-label': 'Generation metadata' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))])) : null,
    h('details', {}, h('summary', {}, 'All metadata'), h('pre', { class: 'meta-raw' }, JSON.stringify(meta, null, 2))));
}
