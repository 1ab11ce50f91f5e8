// The console's shell: hash routing between the four views, the theme toggle, and one
// event stream shared by whichever view is showing.

import { follow } from './api.js';
import { h } from './dom.js';
import * as fleet from './fleet.js';
import * as rollouts from './rollouts.js';
import * as approvals from './approvals.js';
import * as audit from './audit.js';

const views = { fleet, rollouts, approvals, audit };
const root = document.getElementById('view');
let current = null;

/** `#/audit/12?kind=push` → `{name: 'audit', path: ['12'], query: URLSearchParams}`. */
function route() {
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  const [name, ...rest] = path.split('/').map(decodeURIComponent);
  return { name: views[name] ? name : 'fleet', path: rest.filter(Boolean), query: new URLSearchParams(query ?? '') };
}

function show() {
  const r = route();
  current?.unmount?.();
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.view === r.name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  // Each view draws into a box of its own: a refresh still in flight when the view is left
  // draws into the detached box, never over the next view.
  const box = h('div');
  root.replaceChildren(box);
  root.dataset.view = r.name;
  current = views[r.name].mount(box, r);
  document.title = `pd · ${r.name}`;
}

function theme() {
  const saved = localStorage.getItem('pd-theme');
  if (saved) document.documentElement.dataset.theme = saved;
  document.getElementById('theme').addEventListener('click', () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === 'dark'
      : matchMedia('(prefers-color-scheme: dark)').matches;
    const next = dark ? 'light' : 'dark';
    document.documentElement.dataset.theme = next;
    localStorage.setItem('pd-theme', next);
  });
}

function stream() {
  const badge = document.getElementById('stream');
  follow(
    (ev) => {
      badge.textContent = `live · #${ev.data.seq} ${ev.data.kind}`;
      current?.onEvent?.(ev.data);
    },
    (status) => {
      badge.dataset.status = status;
      if (status === 'offline') badge.textContent = 'offline · reconnecting';
      else if (!badge.textContent.startsWith('live')) badge.textContent = 'live';
    },
  );
}

/** A failed fetch or draw is said on the page (until the next one succeeds), not only in the
 * browser's console. */
const problem = document.getElementById('problem');
addEventListener('pd-error', (ev) => {
  problem.replaceChildren(h('div', { class: 'notice bad', role: 'alert' }, `Could not update this view: ${ev.detail?.message ?? ev.detail}`));
});
addEventListener('pd-ok', () => problem.replaceChildren());

theme();
addEventListener('hashchange', show);
show();
stream();
