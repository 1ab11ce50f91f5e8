// Fleet: environments × policy sets, each cell the desired version, what the targets run,
// adoption counts and the rollout step; an environment's targets one click away. Counts come
// from /v1/fleet, which applies the ledger's one adoption rule; the page only draws them.

import * as api from './api.js';
import { ago, duration, h, notice, short, throttled, time } from './dom.js';

/** Rows of the targets table per page: enough to scan, few enough to draw at once. */
const PAGE = 200;
/** Heartbeats are not ledger entries, so liveness is refreshed on a timer too. */
const LIVENESS_MS = 5000;

/** Timings of the latest fetches and draws, for the benchmark (`bench/console.py`). */
const perf = (window.pdPerf ??= { fleet: [] });
const PERF_KEPT = 1000;

export function mount(root, route) {
  const env = route.path[0] ?? null;
  const ui = { page: Number(route.query.get('page') ?? 0), filter: route.query.get('q') ?? '', only: route.query.get('only') ?? 'all' };
  let data = null;
  const refresh = throttled(async () => {
    const t0 = performance.now();
    const next = await api.json('/v1/fleet');
    const t1 = performance.now();
    data = next;
    draw();
    const t2 = performance.now();
    if (perf.fleet.length >= PERF_KEPT) perf.fleet.shift();
    perf.fleet.push({ fetch_ms: t1 - t0, draw_ms: t2 - t1, targets: data.envs.reduce((n, e) => n + e.targets.length, 0), at: t2 });
  }, 250);
  function draw() {
    // Redrawn on every event: keep the keyboard where it was.
    const { id, selectionStart } = document.activeElement ?? {};
    root.replaceChildren(env === null ? grid(data) : targets(data, env, ui, draw));
    const again = id ? document.getElementById(id) : null;
    again?.focus();
    if (again && typeof selectionStart === 'number') again.setSelectionRange?.(selectionStart, selectionStart);
  }
  root.append(h('p', { class: 'loading' }, 'Loading the fleet…'));
  refresh();
  const timer = setInterval(refresh, LIVENESS_MS);
  return {
    onEvent: () => refresh(),
    unmount: () => {
      clearInterval(timer);
      refresh.cancel();
    },
  };
}

function header(data, title) {
  return h('header', { class: 'view-head' },
    h('h1', {}, title),
    h('p', { class: 'meta' }, `ledger ${short(data.ledger_id)} · ${data.len} entries · head ${short(data.head)}`));
}

function grid(data) {
  const sets = [...new Set(data.envs.flatMap((e) => e.slots.map((s) => s.set)))].sort();
  const table = h('table', { class: 'grid', id: 'fleet-grid' },
    h('caption', { class: 'sr-only' }, 'Environments (rows) by policy set (columns)'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Environment'), sets.map((s) => h('th', { scope: 'col' }, s)))),
    h('tbody', {}, data.envs.map((e) => h('tr', {},
      h('th', { scope: 'row' },
        h('a', { href: `#/fleet/${encodeURIComponent(e.env)}`, class: 'env', id: `env-${e.env}` }, e.env),
        h('span', { class: 'sub' }, `${e.targets.length} target${e.targets.length === 1 ? '' : 's'} · min ${e.min_targets}`)),
      sets.map((set) => cell(e, e.slots.find((s) => s.set === set), set, data.now_ms))))));
  return h('section', {}, header(data, 'Fleet'),
    sets.length ? h('div', { class: 'scroll' }, table) : notice('warn', 'Nothing is deployed yet: package, approve and deploy a policy set first.'));
}

function cell(env, slot, set, now) {
  if (!slot) return h('td', { class: 'cell none', 'data-env': env.env, 'data-set': set }, h('span', { class: 'sub' }, 'not deployed'));
  const d = slot.desired;
  const halted = slot.rollout?.next?.step === 'halted';
  const state = slot.adopted ? 'ok' : slot.failed || halted ? 'bad' : 'pending';
  const running = Object.entries(slot.running).map(([v, n]) => `${v} ×${n}`).join(', ');
  return h('td', {
      class: `cell ${state}`, 'data-env': env.env, 'data-set': set, 'data-desired': d?.version ?? '',
      'data-loaded': slot.loaded, 'data-failed': slot.failed, 'data-stale': slot.stale, 'data-targets': slot.targets,
    },
    h('div', { class: 'desired' }, d ? d.version : '—',
      d && h('span', { class: `via ${d.via}` }, `${d.via} #${d.seq}`)),
    h('div', { class: 'counts' },
      h('span', { class: `count ${slot.adopted ? 'ok' : 'pending'}`, title: 'targets that loaded the desired version' }, `${slot.loaded}/${slot.targets} loaded`),
      slot.failed > 0 && h('span', { class: 'count bad' }, `${slot.failed} failed`),
      slot.stale > 0 && h('span', { class: 'count warn' }, `${slot.stale} stale`),
      slot.waiting > 0 && h('span', { class: 'count' }, `${slot.waiting} waiting`),
      slot.queued > 0 && h('span', { class: 'count' }, `${slot.queued} queued`),
      slot.targets < slot.min_targets && h('span', { class: 'count bad' }, `short of ${slot.min_targets}`)),
    h('div', { class: 'running' }, running ? `runs ${running}` : 'no target reports a version'),
    slot.rollout && h('div', { class: `rollout ${halted ? 'bad' : ''}` }, step(slot.rollout, now)));
}

/** Where a rollout stands, as `pd state` says it. */
export function step(r, now) {
  const n = r.waves.length, next = r.next;
  switch (next.step) {
    case 'start': return `wave ${next.wave}/${n} not started`;
    case 'acks': return `wave ${next.wave}/${n} waiting for ${next.waiting.length} target(s)`;
    case 'bake': return `wave ${next.wave}/${n} baking, ${next.until_ms > now ? duration(Math.ceil((next.until_ms - now) / 1000) * 1000) + ' left' : 'time served'}`;
    case 'done': return `all ${n} wave(s) done`;
    case 'halted': return `STOPPED at wave ${next.wave}/${n}: ${next.reason}`;
    default: return '';
  }
}

function status(s) {
  if (!s) return ['—', ''];
  if (typeof s === 'object' && 'failed' in s) return ['failed', s.failed];
  return [s, ''];
}

function targets(data, name, ui, redraw) {
  const env = data.envs.find((e) => e.env === name);
  if (!env) return h('section', {}, notice('bad', `No environment ${name} in this ledger.`), h('a', { href: '#/fleet' }, '← Fleet'));
  const sets = env.slots.map((s) => s.set);
  const q = ui.filter.toLowerCase();
  const matches = (t) => {
    if (q && !t.name.toLowerCase().includes(q) && !(t.labels ?? []).some((l) => l.toLowerCase().includes(q))) return false;
    const states = Object.values(t.status).map((s) => status(s)[0]);
    if (ui.only === 'failed') return states.includes('failed');
    if (ui.only === 'stale') return t.liveness === 'stale';
    if (ui.only === 'waiting') return states.some((s) => s !== 'loaded');
    return true;
  };
  const shown = env.targets.filter(matches);
  const pages = Math.max(1, Math.ceil(shown.length / PAGE));
  ui.page = Math.min(ui.page, pages - 1);
  const rows = shown.slice(ui.page * PAGE, (ui.page + 1) * PAGE);
  const set = (k, v) => {
    ui[k] = v;
    if (k !== 'page') ui.page = 0;
    redraw();
  };
  return h('section', {},
    h('p', {}, h('a', { href: '#/fleet' }, '← Fleet')),
    header(data, `${name}: ${env.targets.length} target${env.targets.length === 1 ? '' : 's'}`),
    h('div', { class: 'slots' }, env.slots.map((s) => h('div', { class: 'slot' },
      h('strong', {}, s.set), ` desired ${s.desired?.version ?? '—'} · ${s.loaded}/${s.targets} loaded`,
      s.failed ? ` · ${s.failed} failed` : '', s.stale ? ` · ${s.stale} stale` : '',
      s.rollout && h('div', { class: 'sub' }, step(s.rollout, data.now_ms), ' · waves ',
        s.rollout.waves.map((w) => `${w.number}: ${w.size} (${w.targets.length}${w.started === null ? ', not started' : ''}${w.baked === false ? ', bake failed' : ''})`).join(' · '))))),
    h('div', { class: 'filters' },
      h('label', {}, 'Find ', h('input', { id: 'target-filter', type: 'search', value: ui.filter, placeholder: 'name or label', oninput: (e) => set('filter', e.target.value) })),
      h('label', {}, 'Show ', h('select', { id: 'target-only', onchange: (e) => set('only', e.target.value) },
        ['all', 'failed', 'stale', 'waiting'].map((o) => h('option', { value: o, selected: o === ui.only }, o)))),
      h('span', { class: 'sub' }, `${shown.length} shown`)),
    h('div', { class: 'scroll' }, h('table', { class: 'targets', id: 'targets' },
      h('thead', {}, h('tr', {}, ['Target', 'Labels', 'Runs', 'Last seen', 'Last ack', 'Status'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.map((t) => targetRow(t, sets, data.now_ms))))),
    pages > 1 && h('nav', { class: 'pager', 'aria-label': 'Pages of targets' },
      h('button', { type: 'button', disabled: ui.page === 0, onclick: () => set('page', ui.page - 1) }, '← Previous'),
      ` page ${ui.page + 1} of ${pages} `,
      h('button', { type: 'button', disabled: ui.page >= pages - 1, onclick: () => set('page', ui.page + 1) }, 'Next →')));
}

function targetRow(t, sets, now) {
  const mine = sets.filter((s) => t.status[s] !== undefined);
  const failures = mine.map((s) => [s, status(t.status[s])]).filter(([, [st]]) => st === 'failed');
  return h('tr', { 'data-target': t.name, class: failures.length ? 'bad' : t.liveness === 'stale' ? 'warn' : '' },
    h('th', { scope: 'row' }, t.name),
    h('td', {}, (t.labels ?? []).map((l) => h('span', { class: 'label' }, l))),
    h('td', { class: 'mono' }, mine.map((s) => h('div', {}, `${s} ${t.running[s] ?? '—'}`))),
    h('td', { class: `live ${t.liveness}`, title: t.last_seen_ms ? time(t.last_seen_ms) : 'no heartbeat received' },
      t.last_seen_ms ? ago(t.last_seen_ms, now) : 'never', t.liveness === 'stale' ? ' (stale)' : ''),
    h('td', { class: 'mono' }, mine.map((s) => {
      const a = t.acks[s];
      return h('div', {}, a ? `${a.version} ${typeof a.outcome === 'string' ? a.outcome : 'failed'} #${a.seq} · ${ago(a.time_ms, now)}` : `${s}: no ack`);
    })),
    h('td', {}, mine.map((s) => {
      const [st, why] = status(t.status[s]);
      return h('div', { class: `status ${st}` }, `${st}${why ? ': ' + why : ''}`);
    })));
}
