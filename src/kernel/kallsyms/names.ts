import { GuestDataError } from '../../util/errors.ts';
import { ImageWindow, TABLE_ALIGN, type WorkBudget } from './reader.ts';
import { TOKEN_COUNT, type TokenTable } from './tokens.ts';

/**
 * kallsyms_names, kallsyms_markers and kallsyms_num_syms (scripts/kallsyms.c, write_src).
 *
 * kallsyms_names is one entry per symbol, in address order: a length, then that many token
 * indices. The length is one byte up to 0x7f; since 6.1 ("kallsyms: support big kernel
 * symbols") longer entries take two bytes, ULEB128 style: (len & 0x7f) | 0x80, len >> 7.
 * Before 6.1 the length was a single byte. The expansion starts with the symbol's type letter.
 *
 * kallsyms_markers holds the offset in kallsyms_names of every 256th entry: u32 in current
 * kernels, unsigned long (u64) in older ones. kallsyms_num_syms is a u32 (unsigned long in old
 * kernels; its low half reads the same).
 *
 * The three are checked against each other: walking 256 entries from the names start must land
 * exactly on each marker in turn, and num_syms must be what the markers count allows.
 */
export interface NamesTable {
  readonly namesVa: bigint;
  readonly namesSize: number;
  readonly count: number;
  readonly numSymsVa: bigint;
  readonly markersVa: bigint;
  readonly markerWidth: 4 | 8;
  /** Two-byte lengths for entries of 128 tokens or more (6.1 and later). */
  readonly bigLengths: boolean;
}

/** Longest entry accepted: a name is shorter than KSYM_NAME_LEN (512), plus its type letter. */
export const MAX_ENTRY_LENGTH = 1024;
/**
 * Upper bound on symbols, far above any kernel (an allyesconfig build has under a million);
 * kallsyms_seqs_of_names long stored symbol indices in three bytes.
 */
export const MAX_SYMBOLS = 1 << 24;
const BLOCK = 256;
/** Local copy: an imported binding read in a hot loop costs a property load each time. */
const ALIGN = TABLE_ALIGN;
const MIN_BLOCK_BYTES = BLOCK * 2;
const MAX_BLOCK_BYTES = BLOCK * (MAX_ENTRY_LENGTH + 2);

/** Per-token facts the walk needs, computed once. */
export class TokenFacts {
  /** 1 when the token starts with an ASCII letter: the first token of an entry must. */
  readonly startsWithType = new Uint8Array(TOKEN_COUNT);
  readonly length = new Uint16Array(TOKEN_COUNT);

  constructor(
    readonly tokens: TokenTable,
    readonly budget: WorkBudget,
  ) {
    for (let i = 0; i < TOKEN_COUNT; i++) {
      const len = tokens.length[i]!;
      this.length[i] = len;
      if (len > 0 && isTypeLetter(tokens.bytes[tokens.start[i]!]!)) this.startsWithType[i] = 1;
    }
  }
}

export function isTypeLetter(c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
}

/**
 * End offset of the entry at `q`, or -1 when the bytes there cannot be an entry: a zero or
 * oversized length, an entry past `limit`, a first token that is not a type letter, or an
 * entry that expands to a type letter and no name.
 */
export function entryEnd(b: Uint8Array, q: number, limit: number, big: boolean, facts: TokenFacts): number {
  if (q >= limit) return -1;
  let len = b[q]!;
  let first = q + 1;
  if (len >= 0x80 && big) {
    const high = b[q + 1]!;
    // The writer uses two bytes only when one does not do, so the high byte is never 0.
    if (high === 0 || high >= 0x80) return -1;
    len = (len & 0x7f) | (high << 7);
    first = q + 2;
  }
  if (len === 0 || len > MAX_ENTRY_LENGTH) return -1;
  const next = first + len;
  if (next > limit) return -1;
  const t = b[first]!;
  if (facts.startsWithType[t] === 0) return -1;
  if (len === 1 && facts.length[t] < 2) return -1;
  return next;
}

/** Offset after walking `count` entries from `q`, or -1 if any of them is not an entry. */
function walk(b: Uint8Array, q: number, count: number, limit: number, big: boolean, facts: TokenFacts): number {
  let i = 0;
  for (; i < count; i++) {
    q = entryEnd(b, q, limit, big, facts);
    if (q < 0) break;
  }
  facts.budget.spend(i + 1);
  return q;
}

/** Number of entries that walk validly from `q`, up to `max`. */
function walkableCount(b: Uint8Array, q: number, max: number, limit: number, big: boolean, facts: TokenFacts): number {
  let n = 0;
  while (n < max) {
    q = entryEnd(b, q, limit, big, facts);
    if (q < 0) break;
    n++;
  }
  facts.budget.spend(n + 1);
  return n;
}

/** A run of increasing values starting at 0 that could be kallsyms_markers. */
interface MarkerRun {
  readonly off: number;
  readonly width: 4 | 8;
  readonly values: readonly number[];
}

/** Every plausible kallsyms_markers of one width in the window, keyed by its second value (block 0's size). */
function findMarkerRuns(win: ImageWindow, width: 4 | 8, budget: WorkBudget): Map<number, MarkerRun[]> {
  const bySecond = new Map<number, MarkerRun[]>();
  const u32 = win.u32;
  const maxRun = Math.ceil(MAX_SYMBOLS / BLOCK);
  const stride = width >>> 2;
  const wide = width === 8;
  for (let w = 0; w + 2 * stride < u32.length; w += ALIGN >>> 2) {
    if (u32[w] !== 0) continue;
    const second = u32[w + stride]!;
    if (second < MIN_BLOCK_BYTES || second > MAX_BLOCK_BYTES) continue;
    if (wide && (u32[w + 1] !== 0 || u32[w + stride + 1] !== 0)) continue;
    const values = [0];
    let prev = 0;
    for (let k = w + stride; k + stride - 1 < u32.length && values.length < maxRun; k += stride) {
      const v = u32[k]!;
      if (wide && u32[k + 1] !== 0) break;
      const step = v - prev;
      if (step < MIN_BLOCK_BYTES || step > MAX_BLOCK_BYTES) break;
      values.push(v);
      prev = v;
    }
    budget.spend(values.length);
    const run: MarkerRun = { off: w << 2, width, values };
    const list = bySecond.get(second);
    if (list) list.push(run);
    else bySecond.set(second, [run]);
  }
  return bySecond;
}

/**
 * How many of the run's markers the names stream at `p` agrees with: marker k must be the
 * offset of entry 256·k. Returns the number of markers matched (at least 1: marker 0 is 0).
 */
function markersMatched(b: Uint8Array, p: number, run: MarkerRun, big: boolean, facts: TokenFacts): number {
  let q = p;
  let k = 1;
  for (; k < run.values.length; k++) {
    q = walk(b, q, BLOCK, b.length, big, facts);
    if (q < 0 || q - p !== run.values[k]) break;
  }
  return k;
}

/**
 * Find kallsyms_names, kallsyms_markers and kallsyms_num_syms in the window. Tries the
 * two-byte-length encoding first: it reads the older one-byte encoding the same unless an
 * entry is exactly 128 tokens long, while the reverse fails on any long entry. u32 markers
 * (current kernels) are tried before u64 ones (older kernels), and the cheap search next to
 * num_syms before the general one.
 */
export function findNames(win: ImageWindow, tokens: TokenTable, budget: WorkBudget): NamesTable | null {
  const facts = new TokenFacts(tokens, budget);
  const byWidth: Map<number, MarkerRun[]>[] = [];
  for (const width of [4, 8] as const) {
    const runs = findMarkerRuns(win, width, budget);
    byWidth.push(runs);
    if (runs.size === 0) continue;
    for (const big of [true, false]) {
      const found = findNamesAdjacent(win, runs, big, facts);
      if (found) return found;
    }
  }
  for (const runs of byWidth) {
    if (runs.size === 0) continue;
    for (const big of [true, false]) {
      const found = findNamesAnywhere(win, runs, big, facts);
      if (found) return found;
    }
  }
  return null;
}

/**
 * A markers table has one entry per 256 symbols. The run found may continue a few values into
 * whatever follows the table, if that happens to keep rising by plausible steps.
 */
const RUN_OVERSHOOT = 8;

/** The markers run whose block sizes match the stream at `p` for `blocks` blocks, if any. */
function matchingRun(win: ImageWindow, p: number, blocks: number, runs: Map<number, MarkerRun[]>, big: boolean, facts: TokenFacts): MarkerRun | undefined {
  const b = win.bytes;
  const afterFirst = walk(b, p, BLOCK, b.length, big, facts);
  if (afterFirst < 0) return undefined;
  const list = runs.get(afterFirst - p);
  if (!list) return undefined;
  for (const run of list) {
    if (run.values.length < blocks || run.values.length > blocks + RUN_OVERSHOOT) continue;
    if (markersMatched(b, p, run, big, facts) >= blocks) return run;
  }
  return undefined;
}

/**
 * Every kernel version so far puts kallsyms_num_syms immediately before kallsyms_names, so
 * try that first: it finds the table with one cheap test per position. Everything it finds is
 * verified as fully as what the general search finds.
 */
function findNamesAdjacent(win: ImageWindow, runs: Map<number, MarkerRun[]>, big: boolean, facts: TokenFacts): NamesTable | null {
  const b = win.bytes;
  // fits[k] = 1 when some run is long enough for k blocks, but not much longer.
  let maxBlocks = 0;
  for (const list of runs.values()) for (const r of list) maxBlocks = Math.max(maxBlocks, r.values.length);
  const fits = new Uint8Array(maxBlocks + 1);
  for (const list of runs.values()) {
    for (const r of list) {
      const len = r.values.length;
      for (let k = Math.max(1, len - RUN_OVERSHOOT); k <= len; k++) fits[k] = 1;
    }
  }
  const u32 = win.u32;
  for (let p = ALIGN; p < b.length; p += ALIGN) {
    for (let gap = 8; gap >= 4; gap -= 4) {
      const n = u32[(p - gap) >>> 2]!;
      if (n <= BLOCK || n > MAX_SYMBOLS) continue;
      const blocks = Math.ceil(n / BLOCK);
      if (blocks > maxBlocks || fits[blocks] === 0) continue;
      if (entryEnd(b, p, b.length, big, facts) < 0) continue;
      const run = matchingRun(win, p, blocks, runs, big, facts);
      if (!run) continue;
      const end = walk(b, p + run.values[blocks - 1]!, n - (blocks - 1) * BLOCK, b.length, big, facts);
      if (end < 0) continue;
      return {
        namesVa: win.vaOf(p),
        namesSize: end - p,
        count: n,
        numSymsVa: win.vaOf(p - gap),
        markersVa: win.vaOf(run.off),
        markerWidth: run.width,
        bigLengths: big,
      };
    }
  }
  return null;
}

/**
 * The general search: any aligned position where the stream agrees with a markers run. The
 * count is then how far the last block walks, and it must be declared by a u32 somewhere in
 * the window (the nearest one is taken as kallsyms_num_syms). A count the kernel does not
 * state is never guessed: a names table cut short would otherwise decode as a smaller one.
 */
function findNamesAnywhere(win: ImageWindow, runs: Map<number, MarkerRun[]>, big: boolean, facts: TokenFacts): NamesTable | null {
  const b = win.bytes;
  for (let p = 0; p < b.length; p += ALIGN) {
    if (entryEnd(b, p, b.length, big, facts) < 0) continue;
    const afterFirst = walk(b, p, BLOCK, b.length, big, facts);
    if (afterFirst < 0) continue;
    const list = runs.get(afterFirst - p);
    if (!list) continue;
    for (const run of list) {
      // Every marker must agree (but the few a run may overshoot by): a stream entered
      // mid-way can match a marker or two by chance when names are regular.
      const blocks = markersMatched(b, p, run, big, facts);
      if (blocks < 2 || blocks < run.values.length - RUN_OVERSHOOT) continue;
      const lastBlock = p + run.values[blocks - 1]!;
      const walkable = walkableCount(b, lastBlock, BLOCK, b.length, big, facts);
      if (walkable === 0) continue;
      const n = (blocks - 1) * BLOCK + walkable;
      facts.budget.spend(win.length >>> 2);
      const declared = nearestU32(win, p, n);
      if (declared < 0) continue;
      const end = walk(b, lastBlock, walkable, b.length, big, facts);
      return {
        namesVa: win.vaOf(p),
        namesSize: end - p,
        count: n,
        numSymsVa: win.vaOf(declared),
        markersVa: win.vaOf(run.off),
        markerWidth: run.width,
        bigLengths: big,
      };
    }
  }
  return null;
}

/** Offset of the 4-aligned u32 equal to `value` nearest to offset `p`, or -1. */
function nearestU32(win: ImageWindow, p: number, value: number): number {
  const u32 = win.u32;
  let best = -1;
  let bestDistance = Infinity;
  for (let w = 0; w < u32.length; w++) {
    if (u32[w] !== value) continue;
    const d = Math.abs((w << 2) - p);
    if (d < bestDistance) {
      best = w << 2;
      bestDistance = d;
    }
  }
  return best;
}

/** Decoded names: symbol i is names[i], of type letter types[i]. */
export interface DecodedNames {
  readonly names: string[];
  readonly types: Uint8Array;
  /** Names cut at MAX_NAME_LENGTH characters. */
  readonly truncated: number;
}

/** Names are shorter than KSYM_NAME_LEN (512); anything longer is cut here. */
export const MAX_NAME_LENGTH = 1023;
/** All names together; a real kernel needs a few MiB. Beyond this the table is hostile. */
export const MAX_NAMES_TEXT = 128 << 20;

/**
 * Expand every entry of a table findNames() verified. The token bytes are copied into one
 * buffer with newlines between names, which is turned into strings in one pass: one latin1
 * decode and one split is far cheaper than 100 000 small decodes. Tokens are printable (checked
 * when the table was found), so a name never contains the separator.
 */
export function decodeNames(win: ImageWindow, table: NamesTable, tokens: TokenTable): DecodedNames {
  const b = win.bytes;
  const start = win.offsetOf(table.namesVa);
  const limit = start + table.namesSize;
  const tokBytes = tokens.bytes;
  const tokStart = tokens.start;
  const tokLen = tokens.length;
  const n = table.count;
  const types = new Uint8Array(n);
  let out: Uint8Array = new Uint8Array(Math.min(MAX_NAMES_TEXT, Math.max(4096, table.namesSize * 3)));
  let o = 0;
  let q = start;
  let truncated = 0;
  for (let i = 0; i < n; i++) {
    let len = b[q]!;
    q++;
    if (len >= 0x80 && table.bigLengths) {
      len = (len & 0x7f) | (b[q]! << 7);
      q++;
    }
    const end = q + len;
    if (end > limit) throw new GuestDataError(`kallsyms: symbol ${i} runs past the end of kallsyms_names`);
    if (o + MAX_NAME_LENGTH + 1 > out.length) out = grow(out, o + MAX_NAME_LENGTH + 1);
    const nameStart = o;
    const nameLimit = o + MAX_NAME_LENGTH;
    // The first character of the expansion is the type letter, not part of the name.
    let first = true;
    for (; q < end; q++) {
      const t = b[q]!;
      let s = tokStart[t]!;
      let e = s + tokLen[t]!;
      if (first && s < e) {
        types[i] = tokBytes[s]!;
        s++;
        first = false;
      }
      if (o + (e - s) > nameLimit) e = s + (nameLimit - o);
      while (s < e) out[o++] = tokBytes[s++]!;
    }
    if (o === nameLimit && nameLimit > nameStart) truncated++;
    out[o++] = 0x0a;
  }
  const names = Buffer.from(out.buffer, out.byteOffset, o - 1).toString('latin1').split('\n');
  return { names, types, truncated };
}

function grow(buf: Uint8Array, need: number): Uint8Array {
  if (need > MAX_NAMES_TEXT) throw new GuestDataError(`kallsyms: names expand to more than ${MAX_NAMES_TEXT >> 20} MiB`);
  const next = new Uint8Array(Math.min(MAX_NAMES_TEXT, Math.max(need, buf.length * 2)));
  next.set(buf);
  return next;
}
