// Line diffs of policy files: the common head and tail are cut, and the middle is compared
// by longest common subsequence (policy files are small; a huge middle is shown whole).

const MAX_CELLS = 4_000_000;

/** `[{op: ' ' | '-' | '+', line}]` turning `a` into `b` (arrays of lines). */
export function diffLines(a, b) {
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  const x = a.slice(head, a.length - tail), y = b.slice(head, b.length - tail);
  const out = a.slice(0, head).map((line) => ({ op: ' ', line }));
  if (x.length * y.length > MAX_CELLS) {
    out.push(...x.map((line) => ({ op: '-', line })), ...y.map((line) => ({ op: '+', line })));
  } else {
    // lcs[i][j]: longest common subsequence of x[i..] and y[j..].
    const w = y.length + 1;
    const lcs = new Uint32Array((x.length + 1) * w);
    for (let i = x.length - 1; i >= 0; i--) {
      for (let j = y.length - 1; j >= 0; j--) {
        lcs[i * w + j] = x[i] === y[j] ? lcs[(i + 1) * w + j + 1] + 1 : Math.max(lcs[(i + 1) * w + j], lcs[i * w + j + 1]);
      }
    }
    let i = 0, j = 0;
    while (i < x.length || j < y.length) {
      if (i < x.length && j < y.length && x[i] === y[j]) {
        out.push({ op: ' ', line: x[i++] });
        j++;
      } else if (i < x.length && (j === y.length || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1])) {
        out.push({ op: '-', line: x[i++] });
      } else {
        out.push({ op: '+', line: y[j++] });
      }
    }
  }
  out.push(...a.slice(a.length - tail).map((line) => ({ op: ' ', line })));
  return out;
}

/** The diff cut to hunks with `context` unchanged lines around each change; `null` rows
 * stand for skipped lines. Each kept row carries its old and new line numbers. */
export function hunks(ops, context = 3) {
  let old = 0, nu = 0;
  const rows = ops.map((o) => ({ ...o, old: o.op === '+' ? null : ++old, new: o.op === '-' ? null : ++nu }));
  const keep = rows.map(() => false);
  rows.forEach((r, i) => {
    if (r.op === ' ') return;
    for (let k = Math.max(0, i - context); k <= Math.min(rows.length - 1, i + context); k++) keep[k] = true;
  });
  const out = [];
  rows.forEach((r, i) => {
    if (keep[i]) out.push(r);
    else if (out.length === 0 || out[out.length - 1] !== null) out.push(null);
  });
  return out;
}

/** Splits text into lines (without the final newline's empty line). */
export function lines(text) {
  const l = text.split('\n');
  if (l[l.length - 1] === '') l.pop();
  return l;
}
