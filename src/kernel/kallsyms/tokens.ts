import { readImage, readTolerant, TABLE_ALIGN, vaAdd, type KernelImageReader, type VaRange, type WorkBudget } from './reader.ts';

/**
 * kallsyms_token_table and kallsyms_token_index (scripts/kallsyms.c, write_src): 256 NUL-terminated
 * strings, and 256 u16 offsets of their starts. Every byte of kallsyms_names is an index into
 * these. They are the anchor of the search: 256 strictly increasing u16 starting at 0 that point
 * exactly at the starts of 256 printable strings laid out back to back is not found by chance.
 */
export interface TokenTable {
  readonly tableVa: bigint;
  readonly indexVa: bigint;
  /** The table as stored: token i is bytes[start[i]] … bytes[start[i] + length[i] - 1]. */
  readonly bytes: Uint8Array;
  readonly start: Uint16Array;
  readonly length: Uint16Array;
  /** Bytes of the table including every NUL. */
  readonly size: number;
}

export const TOKEN_COUNT = 256;
const INDEX_BYTES = TOKEN_COUNT * 2;
/** A token expands to part of one symbol name, which is shorter than KSYM_NAME_LEN (512). */
export const MAX_TOKEN_LENGTH = 512;
/**
 * scripts/kallsyms.c fills all 256 entries unless the symbol set is tiny; an entry can stay
 * empty only when no pair of tokens is worth merging. Require enough real tokens that an
 * increasing run of small numbers elsewhere in memory does not qualify.
 */
const MIN_NONEMPTY_TOKENS = 64;

/** Printable ASCII other than space: the alphabet of kernel symbol names. */
export function isNameChar(c: number): boolean {
  return c > 0x20 && c < 0x7f;
}

/**
 * Parse 256 u16 at `off` as a token index: 0 first, strictly increasing (empty tokens still take
 * their NUL), each token bounded. Returns null if it is not one.
 */
export function parseTokenIndex(bytes: Uint8Array, off: number): Uint16Array | null {
  if (off < 0 || off + INDEX_BYTES > bytes.length) return null;
  if (bytes[off] !== 0 || bytes[off + 1] !== 0) return null;
  const index = new Uint16Array(TOKEN_COUNT);
  let prev = 0;
  let nonEmpty = 0;
  for (let i = 1; i < TOKEN_COUNT; i++) {
    const v = bytes[off + 2 * i]! | (bytes[off + 2 * i + 1]! << 8);
    const step = v - prev;
    if (step < 1 || step > MAX_TOKEN_LENGTH + 1) return null;
    if (step > 1) nonEmpty++;
    index[i] = v;
    prev = v;
  }
  if (nonEmpty + 1 < MIN_NONEMPTY_TOKENS) return null;
  return index;
}

/**
 * Check that `bytes[tableOff…]` holds the 256 tokens `index` points at, and measure them.
 * A token that is a single character is that character itself (scripts/kallsyms.c keeps every
 * character used in a name as its own token), which pins the table down further.
 */
function tokenLengths(bytes: Uint8Array, tableOff: number, index: Uint16Array): Uint16Array | null {
  const length = new Uint16Array(TOKEN_COUNT);
  for (let i = 0; i < TOKEN_COUNT; i++) {
    const s = tableOff + index[i]!;
    // The last token has no successor in the index: it ends at its NUL.
    const limit = i + 1 < TOKEN_COUNT ? tableOff + index[i + 1]! - 1 : Math.min(bytes.length, s + MAX_TOKEN_LENGTH + 1);
    let p = s;
    while (p < limit && bytes[p] !== 0) {
      if (!isNameChar(bytes[p]!)) return null;
      p++;
    }
    if (p >= bytes.length || bytes[p] !== 0) return null;
    if (i + 1 < TOKEN_COUNT && p !== limit) return null;
    const len = p - s;
    if (len === 1 && bytes[s] !== i) return null;
    length[i] = len;
  }
  return length;
}

/**
 * Given a verified token index at `indexVa`, find the token table right before it (the index
 * label follows the table after at most 7 bytes of alignment padding) and verify it.
 */
export function tokenTableBefore(reader: KernelImageReader, indexVa: bigint, index: Uint16Array, floor: bigint): TokenTable | null {
  const last = index[TOKEN_COUNT - 1]!;
  // Room for every token but the last, the last one, its NUL and the padding.
  let span = last + MAX_TOKEN_LENGTH + 1 + TABLE_ALIGN;
  if (indexVa - BigInt(span) < floor) span = Number(indexVa - floor);
  if (span <= 0) return null;
  const before = new Uint8Array(span);
  const spanVa = vaAdd(indexVa, -span);
  if (readTolerant(reader, spanVa, before) === span) return null;
  for (let pad = 0; pad < TABLE_ALIGN; pad++) {
    const nul = span - 1 - pad;
    if (before[nul] !== 0) break; // padding is zeros: the last token's NUL is at or before here
    let s = nul;
    while (s > 0 && before[s - 1] !== 0 && nul - s <= MAX_TOKEN_LENGTH) s--;
    const tableOff = s - last;
    if (tableOff < 0 || s === 0) continue;
    const length = tokenLengths(before, tableOff, index);
    if (!length) continue;
    const size = nul + 1 - tableOff;
    return {
      tableVa: vaAdd(spanVa, tableOff),
      indexVa,
      bytes: before.slice(tableOff, tableOff + size),
      start: index,
      length,
      size,
    };
  }
  return null;
}

/** How far apart chunks of a scan are read; they overlap by one token index. */
const SCAN_CHUNK = 1 << 20;
/** Local copies: an imported binding read in a hot loop costs a property load each time. */
const ALIGN_WORDS = TABLE_ALIGN >>> 2;
const MAX_STEP = MAX_TOKEN_LENGTH + 1;

/**
 * Every token table in `range`, lowest address first. A generator, so that the caller stops
 * reading memory at the first table that decodes.
 */
export function* findTokenTables(reader: KernelImageReader, range: VaRange, budget: WorkBudget): Generator<TokenTable> {
  const start = (range.start + BigInt(TABLE_ALIGN - 1)) & ~BigInt(TABLE_ALIGN - 1);
  if (range.end <= start) return;
  const total = range.end - start;
  const scratch = new Uint8Array(SCAN_CHUNK + INDEX_BYTES);
  for (let chunk = 0n; chunk < total; chunk += BigInt(SCAN_CHUNK)) {
    const len = Number(total - chunk < BigInt(scratch.length) ? total - chunk : BigInt(scratch.length));
    const chunkVa = start + chunk;
    const { bytes: view, missing } = readImage(reader, chunkVa, len, scratch);
    if (missing === len) continue;
    const u32 = new Uint32Array(view.buffer, view.byteOffset, len >>> 2);
    for (const w of indexCandidates(u32, Math.min(SCAN_CHUNK, len - INDEX_BYTES) >>> 2)) {
      const off = w << 2;
      budget.spend(TOKEN_COUNT);
      const index = parseTokenIndex(view, off);
      if (!index) continue;
      budget.spend(index[TOKEN_COUNT - 1]! + MAX_TOKEN_LENGTH);
      const table = tokenTableBefore(reader, chunkVa + BigInt(off), index, range.start);
      if (table) yield table;
    }
  }
}

/**
 * Word offsets below `words` where a token index may start. A plain function, not part of the
 * generator above: V8 optimizes a long loop while it runs (on-stack replacement) only outside
 * generators, and this loop is the whole scan.
 */
function indexCandidates(u32: Uint32Array, words: number): number[] {
  const out: number[] = [];
  for (let w = 0; w < words; w += ALIGN_WORDS) {
    // Nearly every position fails this first test; keep it in the loop, not behind a call.
    if ((u32[w]! & 0xffff) !== 0) continue;
    if (looksLikeIndexStart(u32, w)) out.push(w);
  }
  return out;
}

/** The first 16 u16 at word `w` start at 0 and rise by at most one token each. */
function looksLikeIndexStart(u32: Uint32Array, w: number): boolean {
  const a = u32[w]!;
  if ((a & 0xffff) !== 0) return false;
  let prev = 0;
  let v = a >>> 16;
  if (v === 0 || v > MAX_STEP) return false;
  prev = v;
  for (let k = 1; k < 8; k++) {
    const x = u32[w + k]!;
    v = x & 0xffff;
    if (v <= prev || v - prev > MAX_STEP) return false;
    prev = v;
    v = x >>> 16;
    if (v <= prev || v - prev > MAX_STEP) return false;
    prev = v;
  }
  return true;
}
