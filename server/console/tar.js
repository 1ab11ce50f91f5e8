// A policy tarball, read in the browser: its BLAKE3 checked against the ledger's first (an
// artifact is never unpacked unverified), gunzipped with DecompressionStream, and its plain
// ustar entries listed, each file's SHA-256 checked against the package entry.

import { blake3, hex, sha256 } from './verify.js';

const MAX_UNPACKED = 64 * 1024 * 1024;

async function gunzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  const reader = stream.getReader();
  const parts = [];
  let size = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > MAX_UNPACKED) throw new Error(`unpacks to more than ${MAX_UNPACKED} bytes`);
    parts.push(value);
  }
  return new Uint8Array(await new Blob(parts).arrayBuffer());
}

function field(block, at, len) {
  const bytes = block.subarray(at, at + len);
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}

/** The regular files of an uncompressed ustar archive: `Map(path → bytes)`. pd writes only
 * plain ustar (no PAX or GNU headers), so anything else is refused, as pd refuses it. */
export function ustar(tar) {
  const files = new Map();
  for (let at = 0; at + 512 <= tar.length;) {
    const block = tar.subarray(at, at + 512);
    if (block.every((b) => b === 0)) break;
    if (field(block, 257, 6) !== 'ustar') throw new Error(`not a ustar header at byte ${at}`);
    const name = field(block, 0, 100), prefix = field(block, 345, 155);
    const size = parseInt(field(block, 124, 12).trim() || '0', 8);
    const type = String.fromCharCode(block[156] || 48);
    if (!Number.isSafeInteger(size) || at + 512 + size > tar.length) throw new Error(`entry ${name} runs past the archive`);
    if (type !== '0' && type !== '5') throw new Error(`entry ${name} is of type ${type}, which pd never writes`);
    if (type === '0') files.set(prefix ? `${prefix}/${name}` : name, tar.slice(at + 512, at + 512 + size));
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return files;
}

/** Fetches, verifies and reads the tarball of package `pkg` (a state `packages[]` item's
 * `package`) with `fetchBytes(path)`. Returns `Map(path → bytes)` of its policy files. */
export async function policyFiles(pkg, fetchBytes) {
  const want = pkg.tarball.blake3;
  const gz = await fetchBytes(`/v1/objects/${want}`);
  const got = hex(blake3(gz));
  if (got !== want) throw new Error(`the tarball of ${pkg.version} hashes to ${got}, not ${want} as the ledger says: refused`);
  const files = ustar(await gunzip(gz));
  files.delete('pd-manifest.json');
  for (const f of pkg.files) {
    const bytes = files.get(f.path);
    const sha = bytes && hex(await sha256(bytes));
    if (sha !== f.sha256) throw new Error(`${f.path} in the tarball of ${pkg.version} does not match the package entry`);
  }
  if (files.size !== pkg.files.length) throw new Error(`the tarball of ${pkg.version} holds files its package entry does not name`);
  return files;
}
