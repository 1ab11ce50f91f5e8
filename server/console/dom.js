// Building the page without innerHTML: every ledger string becomes a text node, so nothing a
// signer wrote can turn into markup or script (the CSP forbids inline script anyway).

/** An element: `h('a', {href: '#/x', class: 'y', onclick: f}, 'text', child, [more])`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  el.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false).map((c) => (c instanceof Node ? c : String(c))));
  return el;
}

/** `YYYY-MM-DD HH:MM:SS` UTC, as `pd` prints times. */
export function time(ms) {
  return ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + ' UTC' : '—';
}

/** `5s ago`, `3m ago`, `2h ago`, `4d ago`. */
export function ago(ms, now = Date.now()) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** A duration in ms as `1m30s`, `250ms`. */
export function duration(ms) {
  if (ms % 1000) return `${ms}ms`;
  const parts = [[Math.floor(ms / 3600000), 'h'], [Math.floor(ms / 60000) % 60, 'm'], [Math.floor(ms / 1000) % 60, 's']];
  return parts.filter(([n]) => n).map(([n, u]) => `${n}${u}`).join('') || '0s';
}

/** The first 12 hex digits of a hash, as `pd` prints them. */
export function short(hash) {
  return hash ? hash.slice(0, 12) : '—';
}

/** Runs `fn` at most once per `gapMs`, never twice at once, and once more after a call that
 * came while it ran: what keeps 100 events a second from turning into 100 fetches. */
export function throttled(fn, gapMs) {
  let running = false, again = false, last = -Infinity, timer = null;
  async function run() {
    timer = null;
    running = true;
    again = false;
    last = performance.now();
    try {
      await fn();
      dispatchEvent(new CustomEvent('pd-ok'));
    } catch (err) {
      console.error(err);
      dispatchEvent(new CustomEvent('pd-error', { detail: err }));
    } finally {
      running = false;
      if (again) schedule();
    }
  }
  function schedule() {
    if (running) {
      again = true;
    } else if (timer === null) {
      timer = setTimeout(run, Math.max(0, last + gapMs - performance.now()));
    }
  }
  schedule.cancel = () => clearTimeout(timer);
  return schedule;
}

/** A button that copies `text`, saying so. */
export function copyButton(text, label = 'Copy') {
  const b = h('button', { type: 'button', class: 'copy' }, label);
  b.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(text);
      b.textContent = 'Copied';
    } catch {
      b.textContent = 'Select and copy';
    }
    setTimeout(() => (b.textContent = label), 1500);
  });
  return b;
}

/** A notice box: `kind` is `ok`, `warn` or `bad`. */
export function notice(kind, ...children) {
  return h('div', { class: `notice ${kind}`, role: kind === 'bad' ? 'alert' : 'status' }, ...children);
}
