// Every data call of the console goes to the server's /v1 API with the read token, if the
// server asks for one: a 401 opens the token dialog, and the token stays in this tab's
// sessionStorage (never in the page's URL, never written by the server).

const TOKEN = 'pd-token';
let asking = null;

/** An API answer that is not 2xx, with the server's own message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
  }
}

function headers(extra = {}) {
  const token = sessionStorage.getItem(TOKEN);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** Asks for the token once, however many requests were refused meanwhile. */
function askToken(wrong) {
  asking ??= new Promise((resolve) => {
    const dialog = document.getElementById('token');
    const form = dialog.querySelector('form');
    dialog.querySelector('.wrong').hidden = !wrong;
    form.onsubmit = (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN, form.elements.token.value.trim());
      form.reset();
      dialog.close();
      asking = null;
      resolve();
    };
    dialog.showModal();
  });
  return asking;
}

/** GET `path` with `extra` headers and the token; a 401 asks for the token and tries again. */
async function request(path, extra = {}) {
  for (;;) {
    const sent = sessionStorage.getItem(TOKEN);
    const r = await fetch(path, { headers: headers(extra), cache: 'no-store' });
    if (r.status !== 401) return r;
    if (sessionStorage.getItem(TOKEN) === sent) sessionStorage.removeItem(TOKEN);
    await askToken(sent !== null);
  }
}

async function ok(r) {
  if (r.ok) return r;
  const body = await r.json().catch(() => ({}));
  throw new ApiError(r.status, body.error ?? r.statusText);
}

/** GET a JSON answer. */
export async function json(path) {
  return (await ok(await request(path, { Accept: 'application/json' }))).json();
}

/** GET a text answer. */
export async function text(path) {
  return (await ok(await request(path))).text();
}

/** GET raw bytes. */
export async function bytes(path) {
  return new Uint8Array(await (await ok(await request(path))).arrayBuffer());
}

/** Follows `/v1/events` for as long as the page lives: each event to `onEvent({id, event,
 * data})`, `onStatus('live' | 'offline')` as the stream comes and goes. A broken stream is
 * resumed from the last event seen (`Last-Event-ID`), after a pause that grows to 10 s.
 * Read with fetch, not EventSource, because EventSource cannot send the token. */
export async function follow(onEvent, onStatus) {
  let last = null, pause = 500;
  for (;;) {
    try {
      const r = await ok(await request('/v1/events', last === null ? {} : { 'Last-Event-ID': last }));
      onStatus('live');
      pause = 500;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '', ev = {};
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, '');
          buf = buf.slice(nl + 1);
          if (line === '') {
            if (ev.data !== undefined) {
              if (ev.id !== undefined) last = ev.id;
              onEvent({ id: ev.id, event: ev.event ?? 'message', data: JSON.parse(ev.data) });
            }
            ev = {};
          } else if (!line.startsWith(':')) {
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
            ev[field] = field === 'data' && ev.data !== undefined ? `${ev.data}\n${value}` : value;
          }
        }
      }
    } catch {
      // Offline, or the stream broke: resumed below.
    }
    onStatus('offline');
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(pause * 2, 10000);
  }
}
