// Audit: the ledger, filterable by kind, environment, actor and time. An entry opens with
// its fields, its signer and the signer's custody, and an inclusion proof that this page
// checks itself (verify.js): the entry's BLAKE3 id, the SHA-256 audit path up to the newest
// checkpoint's root, and the checkpoint's Ed25519 note signature by a log key of the ledger.

import * as api from './api.js';
import { h, notice, short, throttled, time } from './dom.js';
import { checkInclusion } from './verify.js';

/** Entries loaded at first, and per "older" click. */
const WINDOW = 2000;

export function mount(root, route) {
  return route.path[0] === undefined ? list(root, route.query) : entry(root, Number(route.path[0]));
}

/** Entries `from..to` as JSON, in as many pages as the server cuts them into. */
async function entries(from, to) {
  const out = [];
  while (from < to) {
    const page = await api.json(`/v1/entries?from=${from}&limit=${to - from}`);
    if (!page.length) break;
    out.push(...page);
    from += page.length;
  }
  return out;
}

function envOf(e) {
  const b = e.body[e.kind] ?? {};
  return b.env ?? b.stage?.env ?? '';
}

function summary(e) {
  const b = e.body[e.kind] ?? {};
  const what = b.version ?? b.stage?.version ?? b.name ?? '';
  const extra = e.kind === 'ack' ? (typeof b.outcome === 'string' ? b.outcome : `failed: ${b.outcome?.failed}`)
    : e.kind === 'gate' ? `${b.gate} ${b.passed ? 'held' : 'FAILED'} (${b.value})`
    : e.kind === 'checkpoint' ? `${b.size} entries, root ${short(b.root)}`
    : b.reason ?? '';
  return [what, extra].filter(Boolean).join(' · ');
}

function list(root, query) {
  const f = { kind: query.get('kind') ?? '', env: query.get('env') ?? '', actor: query.get('actor') ?? '', since: query.get('since') ?? '', until: query.get('until') ?? '' };
  let loaded = [], first = 0, len = 0, envs = [];
  const draw = () => {
    const { id } = document.activeElement ?? {};
    root.replaceChildren(view());
    if (id) document.getElementById(id)?.focus();
  };
  const refresh = throttled(async () => {
    if (!envs.length) envs = (await api.json('/v1/state')).envs;
    const head = await api.json('/v1/head');
    if (!loaded.length) first = Math.max(0, head.len - WINDOW);
    loaded.push(...(await entries(first + loaded.length, head.len)));
    len = head.len;
    draw();
  }, 250);
  async function older() {
    const from = Math.max(0, first - WINDOW);
    loaded = [...(await entries(from, first)), ...loaded];
    first = from;
    draw();
  }
  function setFilter(k, v) {
    f[k] = v;
    const q = new URLSearchParams(Object.entries(f).filter(([, x]) => x));
    history.replaceState(null, '', `#/audit${q.size ? '?' + q : ''}`);
    draw();
  }
  const utc = (s) => (s ? Date.parse(`${s}Z`) : NaN);
  function view() {
    const kinds = [...new Set(loaded.map((e) => e.kind))].sort();
    const actors = [...new Set(loaded.map((e) => e.actor))].sort();
    const [since, until] = [utc(f.since), utc(f.until)];
    const shown = loaded.filter((e) => (!f.kind || e.kind === f.kind) && (!f.env || envOf(e) === f.env) && (!f.actor || e.actor === f.actor)
      && !(e.time_ms < since) && !(e.time_ms > until)).reverse();
    const select = (id, key, label, options) => h('label', {}, `${label} `, h('select', { id, onchange: (e) => setFilter(key, e.target.value) },
      h('option', { value: '' }, 'all'), options.map((o) => h('option', { value: o, selected: o === f[key] }, o))));
    return h('section', {},
      h('header', { class: 'view-head' }, h('h1', {}, 'Audit'),
        h('p', { class: 'meta' }, `${len} entries · showing #${first}–#${len - 1}, ${shown.length} match`)),
      h('div', { class: 'filters' },
        select('f-kind', 'kind', 'Kind', kinds), select('f-env', 'env', 'Environment', envs), select('f-actor', 'actor', 'Actor', actors),
        h('label', {}, 'Since (UTC) ', h('input', { id: 'f-since', type: 'datetime-local', step: 1, value: f.since, onchange: (e) => setFilter('since', e.target.value) })),
        h('label', {}, 'Until (UTC) ', h('input', { id: 'f-until', type: 'datetime-local', step: 1, value: f.until, onchange: (e) => setFilter('until', e.target.value) })),
        first > 0 && h('button', { type: 'button', onclick: older }, `Load ${Math.min(first, WINDOW)} older`)),
      h('div', { class: 'scroll' }, h('table', { class: 'entries', id: 'entries' },
        h('thead', {}, h('tr', {}, ['#', 'Time', 'Kind', 'Env', 'Actor', 'What'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, shown.slice(0, 1000).map((e) => h('tr', { 'data-seq': e.seq, 'data-kind': e.kind },
          h('td', {}, h('a', { href: `#/audit/${e.seq}` }, `#${e.seq}`)), h('td', { class: 'nowrap' }, time(e.time_ms)),
          h('td', {}, h('span', { class: `kind ${e.kind}` }, e.kind)), h('td', {}, envOf(e)), h('td', {}, e.actor), h('td', {}, summary(e))))))),
      shown.length > 1000 && h('p', { class: 'sub' }, `The newest 1000 of ${shown.length} matches are shown; narrow the filters to see others.`));
  }
  root.append(h('p', { class: 'loading' }, 'Loading the ledger…'));
  refresh();
  return { onEvent: () => refresh(), unmount: () => refresh.cancel() };
}

function entry(root, seq) {
  let done = false;
  const refresh = throttled(async () => {
    const [page, state] = await Promise.all([api.json(`/v1/entries?from=${seq}&limit=1`), api.json('/v1/state')]);
    const e = page[0];
    if (!e || e.seq !== seq) {
      root.replaceChildren(notice('bad', `No entry #${seq} in this ledger.`));
      return;
    }
    const proof = h('section', { id: 'proof', class: 'proof', 'data-verdict': 'checking' }, h('h2', {}, 'Inclusion proof'), h('p', { class: 'loading' }, 'Checking…'));
    root.replaceChildren(detail(e, state), proof, h('h2', {}, 'Body'), h('pre', { class: 'body' }, JSON.stringify(e.body, null, 2)));
    done = await prove(proof, e, state);
  }, 250);
  root.append(h('p', { class: 'loading' }, `Loading entry #${seq}…`));
  refresh();
  // An entry after the newest checkpoint is proven as soon as a checkpoint covers it.
  return { onEvent: (ev) => !done && ev.kind === 'checkpoint' && refresh(), unmount: () => refresh.cancel() };
}

function detail(e, state) {
  const key = state.keys[e.actor];
  const custody = key ? (key.decl.custody === 'admin' ? 'admin (generated in the admin’s home: not independent of the admin)' : 'holder (generated by its holder, who proved possession at enrolment)') : 'unknown key';
  return h('section', { class: 'entry' },
    h('p', {}, h('a', { href: '#/audit' }, '← Audit')),
    h('header', { class: 'view-head' }, h('h1', {}, `#${e.seq} ${e.kind}`), h('p', { class: 'meta' }, summary(e))),
    h('dl', { class: 'fields' },
      h('dt', {}, 'Id (BLAKE3)'), h('dd', { class: 'mono', id: 'entry-id' }, e.id),
      h('dt', {}, 'Previous'), h('dd', { class: 'mono' }, e.prev),
      h('dt', {}, 'Appended'), h('dd', {}, time(e.time_ms)),
      h('dt', {}, 'Signer'), h('dd', {}, e.actor, key && ` · ${key.decl.roles.join(', ')}${key.decl.env ? ` in ${key.decl.env}` : ''}${key.revoked ? ` · revoked at #${key.revoked.seq} (${key.revoked.kind})` : ''}`),
      h('dt', {}, 'Custody'), h('dd', { id: 'custody' }, custody),
      h('dt', {}, 'Public key'), h('dd', { class: 'mono' }, key?.decl.public_key ?? '—', key?.past.length ? ` (and ${key.past.length} earlier key(s))` : ''),
      h('dt', {}, 'Signature'), h('dd', { class: 'mono wrap' }, e.sig)));
}

/** Log keys of the ledger, current and past: name → hex public key(s). */
function logKeys(state) {
  const out = {};
  for (const k of Object.values(state.keys)) {
    if (!k.decl.roles.some((r) => r === 'log' || r === 'admin')) continue;
    out[k.decl.name] = k.decl.public_key;
    k.past.forEach((p, i) => (out[`${k.decl.name} (key ${i + 1})`] = p.public_key));
  }
  return out;
}

/** Fetches and checks the proof, drawing each check; true once a verdict is final. */
async function prove(box, e, state) {
  let proof;
  try {
    proof = await api.json(`/v1/proofs/inclusion?seq=${e.seq}`);
  } catch (err) {
    const uncovered = err.status === 404;
    box.dataset.verdict = uncovered ? 'uncovered' : 'failed';
    box.replaceChildren(h('h2', {}, 'Inclusion proof'), notice(uncovered ? 'warn' : 'bad',
      uncovered ? `Not under a signed checkpoint yet (${err.message}). The server signs one after each push or rollback and at least every minute while entries come; this page checks again when it does.`
        : `PROOF FAILED: the server did not give a proof (${err.message}).`));
    return !uncovered;
  }
  let steps;
  try {
    steps = await checkInclusion(proof, { ...e, ledger: state.ledger_id }, logKeys(state));
  } catch (err) {
    steps = [{ what: 'the proof reads', ok: false, detail: String(err.message ?? err) }];
  }
  const ok = steps.every((s) => s.ok);
  const note = proof.checkpoint ?? '';
  box.dataset.verdict = ok ? 'verified' : 'failed';
  box.replaceChildren(h('h2', {}, 'Inclusion proof'),
    ok ? notice('ok', h('strong', {}, '✔ VERIFIED in this browser: '), `entry #${e.seq} is in the log whose signed checkpoint covers ${note.split('\n')[1]} entries.`)
      : notice('bad', h('strong', {}, '✘ PROOF FAILED: '), 'this server’s answer does not prove the entry is in the signed log. Do not trust what it shows until this is explained.'),
    h('ul', { class: 'checks' }, steps.map((s) => h('li', { class: s.ok ? 'ok' : 'bad' }, s.ok ? '✔ ' : '✘ ', s.what, s.detail && h('div', { class: 'mono wrap sub' }, s.detail)))),
    h('details', {}, h('summary', {}, 'Checkpoint note, log keys and audit path'),
      h('pre', { class: 'body' }, note),
      h('p', {}, 'Verifier keys the proof names (compare with `pd key export NAME --vkey`):'),
      h('ul', { class: 'mono wrap' }, (proof.keys ?? []).map((k) => h('li', {}, k))),
      h('ol', { class: 'mono wrap' }, (proof.hashes ?? []).map((x) => h('li', {}, x)))));
  return true;
}
