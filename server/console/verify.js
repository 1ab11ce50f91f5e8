// What the audit view checks itself, with no help from the server: BLAKE3 entry ids,
// the RFC 6962 / RFC 9162 SHA-256 Merkle audit path, and C2SP signed-note checkpoints with
// Ed25519 (WebCrypto). Mirrors ledger/src/merkle.rs, note.rs and proof.rs.

const enc = new TextEncoder();

/** Lowercase hex of bytes. */
export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Bytes of a hex string; throws on odd length or a non-hex digit. */
export function unhex(s) {
  if (s.length % 2 || /[^0-9a-f]/i.test(s)) throw new Error(`not hex: ${s.slice(0, 20)}…`);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function b64decode(s) {
  const bin = atob(s);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export async function sha256(...parts) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', concat(...parts)));
}

// ---- BLAKE3 (one-shot, the reference algorithm; entries and policy tarballs are small) ----

const IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
const PERM = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
const CHUNK_START = 1, CHUNK_END = 2, PARENT = 4, ROOT = 8;
const CHUNK_LEN = 1024;

function g(s, a, b, c, d, x, y) {
  s[a] = (s[a] + s[b] + x) | 0;
  s[d] = ((s[d] ^ s[a]) >>> 16) | ((s[d] ^ s[a]) << 16);
  s[c] = (s[c] + s[d]) | 0;
  s[b] = ((s[b] ^ s[c]) >>> 12) | ((s[b] ^ s[c]) << 20);
  s[a] = (s[a] + s[b] + y) | 0;
  s[d] = ((s[d] ^ s[a]) >>> 8) | ((s[d] ^ s[a]) << 24);
  s[c] = (s[c] + s[d]) | 0;
  s[b] = ((s[b] ^ s[c]) >>> 7) | ((s[b] ^ s[c]) << 25);
}

function compress(cv, m, counter, len, flags) {
  const s = [...cv, IV[0], IV[1], IV[2], IV[3], counter >>> 0, Math.floor(counter / 2 ** 32), len, flags];
  for (let r = 0; r < 7; r++) {
    g(s, 0, 4, 8, 12, m[0], m[1]);
    g(s, 1, 5, 9, 13, m[2], m[3]);
    g(s, 2, 6, 10, 14, m[4], m[5]);
    g(s, 3, 7, 11, 15, m[6], m[7]);
    g(s, 0, 5, 10, 15, m[8], m[9]);
    g(s, 1, 6, 11, 12, m[10], m[11]);
    g(s, 2, 7, 8, 13, m[12], m[13]);
    g(s, 3, 4, 9, 14, m[14], m[15]);
    m = PERM.map((i) => m[i]);
  }
  return s.slice(0, 8).map((w, i) => (w ^ s[i + 8]) >>> 0);
}

function words(bytes, at) {
  const block = new Uint8Array(64);
  block.set(bytes.subarray(at, at + 64));
  const view = new DataView(block.buffer);
  return Array.from({ length: 16 }, (_, i) => view.getUint32(4 * i, true));
}

function chunkCv(data, index, root) {
  let cv = IV;
  const blocks = Math.max(1, Math.ceil(data.length / 64));
  for (let b = 0; b < blocks; b++) {
    const last = b === blocks - 1;
    const flags = (b === 0 ? CHUNK_START : 0) | (last ? CHUNK_END | root : 0);
    const len = last ? data.length - 64 * b : 64;
    cv = compress(cv, words(data, 64 * b), index, len, flags);
  }
  return cv;
}

function subtreeCv(input, first, count, root) {
  if (count === 1) {
    return chunkCv(input.subarray(first * CHUNK_LEN, (first + 1) * CHUNK_LEN), first, root);
  }
  let left = 1;
  while (left * 2 < count) left *= 2;
  const l = subtreeCv(input, first, left, 0);
  const r = subtreeCv(input, first + left, count - left, 0);
  return compress(IV, [...l, ...r], 0, 64, PARENT | root);
}

/** BLAKE3 of `input` (Uint8Array), 32 bytes. */
export function blake3(input) {
  const chunks = Math.max(1, Math.ceil(input.length / CHUNK_LEN));
  const out = new Uint8Array(32);
  const view = new DataView(out.buffer);
  subtreeCv(input, 0, chunks, ROOT).forEach((w, i) => view.setUint32(4 * i, w, true));
  return out;
}

// ---- RFC 6962 Merkle tree (SHA-256) ----

/** The RFC 9162 §2.1.3.2 check: does `path` lead from leaf `index` of a tree of `size`
 * leaves, whose leaf hash is `leaf`, to `root`? */
export async function verifyInclusion(index, size, leaf, path, root) {
  if (index >= size) return `entry #${index} is not in a tree of ${size} entries`;
  let fn = index, sn = size - 1, r = leaf;
  for (const p of path) {
    if (sn === 0) return 'the audit path is longer than the tree is deep';
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(Uint8Array.of(1), p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = await sha256(Uint8Array.of(1), r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) return 'the audit path is shorter than the tree is deep';
  return equal(r, root) ? null : 'the audit path does not lead to the checkpoint’s root hash';
}

// ---- C2SP signed notes ----

/** A checkpoint note: the signed text, origin, size, root and signature lines. */
export function parseNote(note) {
  const cut = note.indexOf('\n\n');
  if (cut < 0) throw new Error('no blank line before the signatures');
  const text = note.slice(0, cut + 1);
  const [origin, size, root] = text.split('\n');
  if (!/^(0|[1-9][0-9]*)$/.test(size ?? '')) throw new Error('the size line is not a decimal number');
  const rootBytes = b64decode(root ?? '');
  if (rootBytes.length !== 32) throw new Error('the root line is not 32 bytes of base64');
  const signatures = note
    .slice(cut + 2)
    .split('\n')
    .filter((l) => l !== '')
    .map((line) => {
      const m = /^\u2014 (\S+) (\S+)$/.exec(line);
      if (!m) throw new Error(`not a signature line: ${line}`);
      const blob = b64decode(m[2]);
      return { name: m[1], keyId: blob.subarray(0, 4), sig: blob.subarray(4) };
    });
  return { text, origin, size: Number(size), root: rootBytes, signatures };
}

async function keyId(name, key) {
  return (await sha256(enc.encode(name + '\n'), Uint8Array.of(1), key)).subarray(0, 4);
}

/** `name+keyid+base64(0x01‖key)` → `{name, key}`, with the key id checked. */
export async function parseVkey(vkey) {
  // The base64 part may hold '+' itself: split at the first two only.
  const [name, id] = vkey.split('+', 2);
  const b64 = vkey.slice(name.length + (id ?? '').length + 2);
  const raw = b64decode(b64 ?? '');
  if (raw.length !== 33 || raw[0] !== 1) throw new Error('the verifier key is not an Ed25519 key');
  const key = raw.subarray(1);
  if (hex(await keyId(name, key)) !== id) throw new Error('the verifier key’s id does not match its name and key');
  return { name, key };
}

/** Whether a signature line of `note` by `name` with Ed25519 `key` verifies (WebCrypto). */
export async function noteSignedBy(note, name, key) {
  const id = await keyId(name, key);
  const pub = await crypto.subtle.importKey('raw', key, { name: 'Ed25519' }, false, ['verify']);
  for (const s of note.signatures) {
    if (s.name !== name || !equal(s.keyId, id) || s.sig.length !== 64) continue;
    if (await crypto.subtle.verify({ name: 'Ed25519' }, pub, s.sig, enc.encode(note.text))) return true;
  }
  return false;
}

// ---- The entry's bytes (canonical CBOR), decoded to compare with what the page shows ----

/** Decodes one CBOR item (the subset pd writes: ints, bytes, text, arrays, maps, simple). */
export function cborDecode(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const dec = new TextDecoder('utf-8', { fatal: true });
  function arg(info) {
    if (info < 24) return info;
    const n = { 24: 1, 25: 2, 26: 4, 27: 8 }[info];
    if (!n) throw new Error('unsupported CBOR length');
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 256 + view.getUint8(at + i);
    at += n;
    return v;
  }
  function item() {
    const b = view.getUint8(at++);
    const major = b >> 5, info = b & 31;
    if (major === 7) {
      if (info < 20 || info > 22) throw new Error('unsupported CBOR simple value');
      return [false, true, null][info - 20];
    }
    const n = arg(info);
    switch (major) {
      case 0: return n;
      case 1: return -1 - n;
      case 2: at += n; return bytes.slice(at - n, at);
      case 3: at += n; return dec.decode(bytes.subarray(at - n, at));
      case 4: return Array.from({ length: n }, item);
      case 5: {
        const m = {};
        for (let i = 0; i < n; i++) {
          const k = item();
          m[k] = item();
        }
        return m;
      }
      default: throw new Error(`unsupported CBOR major type ${major}`);
    }
  }
  const v = item();
  if (at !== bytes.length) throw new Error('trailing bytes after the entry');
  return v;
}

/** Checks an inclusion proof file (`pd-proof/v1`, kind `inclusion`) against the entry the
 * page shows (`shown`: seq, id, prev, time_ms, actor, kind) and the ledger's log keys
 * (`logKeys`: name → hex Ed25519 public key of keys with the log or admin role). Returns one
 * line per check, `{what, ok, detail}`; the proof holds only if every one is ok. */
/** A value as JSON with sorted keys and byte strings as hex: how the server's JSON of a body
 * and the body decoded from its CBOR compare. */
function canonical(v) {
  if (v instanceof Uint8Array) return JSON.stringify(hex(v));
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  return JSON.stringify(v);
}

export async function checkInclusion(proof, shown, logKeys) {
  const steps = [];
  const step = (what, ok, detail = '') => steps.push({ what, ok, detail });
  try {
    if (proof.format !== 'pd-proof/v1' || proof.kind !== 'inclusion') throw new Error(`not an inclusion proof (${proof.format}, ${proof.kind})`);
    const bytes = unhex(proof.entry);
    const id = hex(blake3(bytes));
    step('the proven entry’s BLAKE3 is the id shown', id === shown.id, id);
    const e = cborDecode(bytes);
    const same = e.seq === shown.seq && hex(e.prev) === shown.prev && e.time_ms === shown.time_ms && e.actor === shown.actor && Object.keys(e.body)[0] === shown.kind && canonical(e.body) === canonical(shown.body);
    step('the proven entry’s fields and body are the ones shown', same, `#${e.seq} ${Object.keys(e.body)[0]} by ${e.actor}`);
    const note = parseNote(proof.checkpoint);
    step('the checkpoint names this ledger', note.origin === `pd.ledger/${shown.ledger}`, note.origin);
    const leaf = await sha256(Uint8Array.of(0), unhex(id));
    const path = proof.hashes.map(unhex);
    const bad = await verifyInclusion(shown.seq, note.size, leaf, path, note.root);
    step(`SHA-256 audit path (${path.length} hashes) to the root of ${note.size} entries`, bad === null, bad ?? hex(note.root));
    let signer = null;
    for (const vk of proof.keys) {
      const { name, key } = await parseVkey(vk);
      const known = Object.entries(logKeys).find(([, k]) => k === hex(key));
      if (known && (await noteSignedBy(note, name, key))) signer = { vkey: vk, key: known[0] };
    }
    step('Ed25519 note signature by a log key of this ledger', signer !== null, signer ? `${signer.key}: ${signer.vkey}` : `keys offered: ${proof.keys.join(', ')}`);
  } catch (err) {
    step('the proof reads', false, String(err.message ?? err));
  }
  return steps;
}
