// Approvals: packages not yet approved enough, with their author, reason, validation and
// source, and what each changes against the version each environment runs now: both
// tarballs fetched, verified (BLAKE3) and read in the page, text files diffed line by line.
// Signing stays with the approver's own key: the page only shows the command to run.

import * as api from './api.js';
import { diffLines, hunks, lines } from './diff.js';
import { copyButton, h, notice, throttled, time } from './dom.js';
import { policyFiles } from './tar.js';
import { equal } from './verify.js';

export function mount(root) {
  let drawn = '';
  const cache = new Map();
  const files = (pkg) => {
    if (!cache.has(pkg.version)) cache.set(pkg.version, policyFiles(pkg, api.bytes));
    return cache.get(pkg.version);
  };
  const refresh = throttled(async () => {
    const state = await api.json('/v1/state');
    const pending = pendingOf(state);
    // Diffs are redrawn only when what they compare changed, not on every ack.
    const key = JSON.stringify(pending.map((p) => [p.pkg.package.version, p.pkg.approvals.length, p.bases.map((b) => b.version)]));
    if (key === drawn) return;
    drawn = key;
    root.replaceChildren(view(state, pending, files));
  }, 250);
  root.append(h('p', { class: 'loading' }, 'Loading packages…'));
  refresh();
  return { onEvent: (ev) => ['package', 'approve', 'push', 'rollback', 'withdraw', 'env_set', 'key_revoke', 'key_rotate'].includes(ev.kind) && refresh(), unmount: () => refresh.cancel() };
}

/** Packages that are not withdrawn and have fewer approvals than the ledger or some
 * environment's policy asks, each with the versions its set runs in each environment. */
function pendingOf(state) {
  const need = (env) => Math.max(state.approvals_required, state.env[env]?.policy.approvals ?? 0);
  const byVersion = new Map(state.packages.map((p) => [p.package.version, p]));
  return state.packages
    .filter((p) => p.withdrawn === null)
    .map((p) => ({ pkg: p, counted: p.approvals.filter((a) => a.void === null).length }))
    .filter(({ counted }) => state.envs.some((e) => counted < need(e)))
    .reverse()
    .map(({ pkg, counted }) => {
      const bases = new Map();
      for (const env of state.envs) {
        const desired = state.env[env]?.sets[pkg.package.name]?.desired ?? null;
        const version = desired?.version ?? null;
        if (version === pkg.package.version) continue;
        if (!bases.has(version)) bases.set(version, { version, pkg: version && byVersion.get(version), envs: [] });
        bases.get(version).envs.push(env);
      }
      return { pkg, counted, need: Object.fromEntries(state.envs.map((e) => [e, need(e)])), bases: [...bases.values()] };
    });
}

function view(state, pending, files) {
  return h('section', {},
    h('header', { class: 'view-head' }, h('h1', {}, 'Approvals'),
      h('p', { class: 'meta' }, `${pending.length} package(s) waiting · the ledger asks ${state.approvals_required} approval(s)`)),
    pending.length ? pending.map((p) => card(state, p, files)) : notice('ok', 'Every package has the approvals it needs.'));
}

function card(state, { pkg, counted, need, bases }, files) {
  const pk = pkg.package;
  const command = `pd ledger approve ${pk.version} --reason "…"`;
  const asks = Object.entries(need).map(([env, n]) => `${env} ${n}`).join(', ');
  const groups = state.envs.filter((e) => state.env[e]?.policy.approver_groups.length)
    .map((e) => `${e}: from ${state.env[e].policy.approver_groups.join(', ')}`);
  return h('article', { class: 'card', 'data-version': pk.version },
    h('h2', {}, pk.version, ' ', h('span', { class: 'sub' }, pk.name)),
    h('dl', { class: 'fields' },
      h('dt', {}, 'Author'), h('dd', {}, pkg.author, ` · #${pkg.seq} · ${time(pkg.time_ms)}`),
      h('dt', {}, 'Reason'), h('dd', {}, pk.reason),
      h('dt', {}, 'Approvals'), h('dd', {}, `${counted} counted; environments ask ${asks}`, groups.length ? ` (${groups.join('; ')})` : '',
        pkg.approvals.map((a) => h('div', { class: 'sub' }, `${a.approver} at #${a.seq}: ${a.reason}${a.void !== null ? ` (void since #${a.void})` : ''}`))),
      h('dt', {}, 'Validation'), h('dd', {}, validation(pk.checked)),
      h('dt', {}, 'Source'), h('dd', {}, pk.source ? `git ${pk.source.commit.slice(0, 12)}${pk.source.clean ? '' : ' (working tree had changes)'}` : 'not from a git working tree'),
      h('dt', {}, 'Files'), h('dd', { class: 'mono' }, pk.files.map((f) => h('div', {}, `${f.path} · ${f.size} B`)))),
    h('div', { class: 'command' }, h('code', { class: 'approve-command' }, command), copyButton(command)),
    h('p', { class: 'sub' }, 'Run it on the approver’s own machine, with their own key.'),
    bases.map((b) => h('section', { class: 'changes', 'data-base': b.version ?? 'nothing' },
      h('h3', {}, `Against ${b.version ?? 'nothing'}`, h('span', { class: 'sub' }, b.version
        ? ` — what ${b.envs.join(', ')} ${b.envs.length === 1 ? 'runs' : 'run'} now`
        : ` — no version of ${pk.name} in ${b.envs.join(', ')} yet`)),
      diffOf(pkg, b, files))));
}

function validation(c) {
  const parts = [c.parsed ? '✔ every file non-empty, YAML/JSON/TOML parsed' : '✘ packaged with --no-validate'];
  if (c.schema) parts.push(`✔ JSON Schema ${c.schema.slice(0, 12)}`);
  if (c.command) parts.push(`✔ validator: ${c.command}`);
  return parts.join(' · ');
}

/** A placeholder filled in when both tarballs are read. */
function diffOf(pkg, base, files) {
  const box = h('div', { class: 'diff-box' }, h('p', { class: 'loading' }, 'Reading both tarballs…'));
  Promise.all([files(pkg.package), base.pkg ? files(base.pkg.package) : new Map()])
    .then(([now, before]) => box.replaceChildren(...fileDiffs(before, now)))
    .catch((err) => box.replaceChildren(notice('bad', `Cannot show the changes: ${err.message}`)));
  return box;
}

function fileDiffs(before, now) {
  const paths = [...new Set([...before.keys(), ...now.keys()])].sort();
  const dec = new TextDecoder('utf-8', { fatal: true });
  const text = (b) => { try { return b && dec.decode(b); } catch { return undefined; } };
  const out = [];
  for (const path of paths) {
    const a = before.get(path), b = now.get(path);
    const change = !a ? 'added' : !b ? 'removed' : equal(a, b) ? 'same' : 'modified';
    if (change === 'same') continue;
    const [ta, tb] = [a ? text(a) : '', b ? text(b) : ''];
    if (ta === undefined || tb === undefined) {
      out.push(h('div', { class: `file ${change}`, 'data-path': path }, h('h4', {}, `${path} (${change}, not UTF-8 text)`)));
      continue;
    }
    const ops = diffLines(lines(ta), lines(tb));
    const added = ops.filter((o) => o.op === '+').length, removed = ops.filter((o) => o.op === '-').length;
    out.push(h('div', { class: `file ${change}`, 'data-path': path },
      h('h4', {}, path, h('span', { class: 'sub' }, ` ${change} · +${added} −${removed}`)),
      h('table', { class: 'diff' }, h('tbody', {}, hunks(ops).map((r) => r === null
        ? h('tr', { class: 'skip' }, h('td', { colspan: 3 }, '⋯'))
        : h('tr', { class: { '+': 'add', '-': 'del', ' ': 'ctx' }[r.op] },
          h('td', { class: 'ln' }, r.old ?? ''), h('td', { class: 'ln' }, r.new ?? ''),
          h('td', { class: 'code' }, h('span', { class: 'op', 'aria-hidden': 'true' }, r.op), h('span', { class: 'sr-only' }, { '+': 'added: ', '-': 'removed: ', ' ': '' }[r.op]), h('span', { class: 'line' }, r.line))))))));
  }
  return out.length ? out : [h('p', {}, 'No file changes.')];
}
