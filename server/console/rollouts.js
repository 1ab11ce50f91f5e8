// Rollouts: per version, newest first, the package, its approvals and every step the ledger
// recorded for it (push, waves, gate checks with their values, bakes, freeze overrides and
// rollbacks), with times and signers; from the state's `timeline`.

import * as api from './api.js';
import { h, notice, throttled, time } from './dom.js';

const VERSION = /PD-\d+\.\d+\.\d+/;

export function mount(root, route) {
  const only = { env: route.query.get('env') ?? '' };
  let state = null;
  const refresh = throttled(async () => {
    state = await api.json('/v1/state');
    draw();
  }, 250);
  function draw() {
    root.replaceChildren(view(state, only, draw));
  }
  root.append(h('p', { class: 'loading' }, 'Loading the timeline…'));
  refresh();
  return { onEvent: () => refresh(), unmount: () => refresh.cancel() };
}

function view(state, only, redraw) {
  // Every timeline text names one version (`describe` in ledger/src/rollout.rs): the one
  // pushed, rolled out, gated, baked or overridden, or the one a rollback returned to.
  const steps = state.timeline.filter((s) => !only.env || s.env === only.env);
  const byVersion = new Map(state.packages.map((p) => [p.package.version, { pkg: p, steps: [] }]));
  for (const s of steps) byVersion.get(s.text.match(VERSION)?.[0])?.steps.push(s);
  const shown = [...byVersion.values()].filter((v) => v.steps.length || !only.env).reverse();
  return h('section', {},
    h('header', { class: 'view-head' }, h('h1', {}, 'Rollouts'),
      h('p', { class: 'meta' }, `${state.timeline.length} rollout steps in ${state.len} entries`)),
    h('div', { class: 'filters' }, h('label', {}, 'Environment ',
      h('select', { id: 'rollout-env', onchange: (e) => { only.env = e.target.value; redraw(); } },
        h('option', { value: '' }, 'all'), state.envs.map((e) => h('option', { value: e, selected: e === only.env }, e))))),
    shown.length ? shown.map(({ pkg, steps }) => version(pkg, steps)) : notice('warn', 'No package yet.'));
}

function version(p, steps) {
  const pk = p.package;
  return h('article', { class: 'card', 'data-version': pk.version },
    h('h2', {}, pk.version, ' ', h('span', { class: 'sub' }, pk.name)),
    h('ol', { class: 'timeline' },
      h('li', { class: 'step package' }, stamp(p.seq, p.time_ms, p.author), h('span', { class: 'kind' }, 'package'),
        ` ${pk.files.length} file(s) · ${pk.reason}`, p.withdrawn && h('strong', { class: 'bad' }, ` · withdrawn at #${p.withdrawn.seq}: ${p.withdrawn.reason}`)),
      p.approvals.map((a) => h('li', { class: `step approve${a.void !== null ? ' void' : ''}` }, stamp(a.seq, a.time_ms, a.approver),
        h('span', { class: 'kind' }, 'approve'), ` ${a.reason}`,
        !a.independent && h('span', { class: 'warn' }, ' · admin-custody key (not independent)'),
        a.void !== null && h('span', { class: 'bad' }, ` · void since #${a.void}`))),
      steps.map((s) => h('li', { class: `step ${s.kind} ${/FAILED|rolled back/.test(s.text) ? 'bad' : ''}`, 'data-seq': s.seq },
        stamp(s.seq, s.time_ms, s.actor), h('span', { class: 'kind' }, s.kind.replace('_', ' ')),
        s.env && h('span', { class: 'env-tag' }, s.env), ` ${s.text}`))));
}

function stamp(seq, ms, actor) {
  return h('span', { class: 'stamp' }, h('a', { href: `#/audit/${seq}` }, `#${seq}`), ` ${time(ms)} · `, h('span', { class: 'actor' }, actor), ' ');
}
