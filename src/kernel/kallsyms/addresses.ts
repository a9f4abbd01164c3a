import { ImageWindow, TABLE_ALIGN, alignUp, vaFromHalves, vaHi, vaLo, type VaRange, type WorkBudget } from './reader.ts';

/**
 * Symbol addresses (scripts/kallsyms.c, write_src; kernel/kallsyms.c, kallsyms_sym_address).
 *
 * - Base-relative (CONFIG_KALLSYMS_BASE_RELATIVE, always on x86-64, and the only form since
 *   6.11): kallsyms_offsets, one s32 per symbol, plus kallsyms_relative_base, a pointer the
 *   kernel relocates with itself under KASLR.
 *   - Without CONFIG_KALLSYMS_ABSOLUTE_PERCPU: address = relative_base + (u32)offset.
 *   - With it (x86-64 SMP): offsets >= 0 are absolute values (per-CPU symbols, whose "address"
 *     is their offset in the per-CPU area), and negative ones mean relative_base - 1 - offset.
 *   relative_base is the lowest address of a relative symbol, so in address order the first
 *   relative offset is 0 (or -1 with absolute per-CPU symbols).
 * - Absolute (older or other configurations): kallsyms_addresses, one unsigned long each.
 *
 * In every form the symbols are sorted by address, which is what finds the table: an array of
 * num_syms values with exactly that shape.
 */
export type AddressTable =
  | {
      readonly kind: 'relative';
      readonly offsetsVa: bigint;
      readonly relativeBase: bigint;
      readonly relativeBaseVa: bigint;
      readonly absolutePercpu: boolean;
    }
  | { readonly kind: 'absolute'; readonly addressesVa: bigint };

/** Addresses as two u32 halves per symbol: no BigInt per symbol. */
export interface DecodedAddresses {
  readonly hi: Uint32Array;
  readonly lo: Uint32Array;
}

type Found = { table: AddressTable; addrs: DecodedAddresses };
type Accept = (addrs: DecodedAddresses) => boolean;

/** Offsets-shaped tables tried, at most: a real kernel has one. */
const MAX_TABLE_TRIES = 16;
/** Candidate bases decoded in full per offsets table, at most. */
const MAX_BASE_TRIES = 16;
/**
 * Symbols share an address now and then (aliases, section markers), but a run that is mostly
 * one value is padding, not a table: a long stretch of zeros is "sorted" too.
 */
const MAX_EQUAL_FRACTION = 0.25;
/**
 * Symbols past the mapped image: the last ones (the early scratch area after _end) lie beyond
 * what a running kernel keeps mapped. The kernel image mapping is at most 1 GiB.
 */
const IMAGE_SLACK = 1n << 30n;
/** Local copies: an imported binding read in a hot loop costs a property load each time. */
const ALIGN = TABLE_ALIGN;
const ALIGN_WORDS = TABLE_ALIGN >>> 2;

/** Where the other kallsyms tables start and end in the window: the address table abuts one of them. */
export interface Neighbours {
  readonly starts: readonly number[];
  readonly ends: readonly number[];
}

/**
 * Find the address table of `n` symbols in the window and decode it. `range` is where the
 * kernel image lies; relative_base must fall inside it. `accept` lets the caller reject a
 * decode (the loader checks linux_banner against it) before the next candidate is tried.
 *
 * All kallsyms tables come from one generated file and lie back to back, so the places next to
 * the tables already found are tried first, each with one pass over n entries. Only if none
 * holds the table is the whole window searched, in time linear in its size.
 */
export function findAddresses(
  win: ImageWindow,
  n: number,
  range: VaRange,
  accept: Accept,
  budget: WorkBudget,
  neighbours?: Neighbours,
): Found | null {
  if (n < 1) return null;
  // Every full pass over a candidate table (shape check, decode) is charged to the budget.
  const charged: Accept = (a) => {
    budget.spend(n);
    return accept(a);
  };
  if (neighbours) {
    for (const off of candidateStarts(neighbours, n)) {
      if (off < 0 || off % ALIGN !== 0) continue;
      budget.spend(n);
      const w = off >>> 2;
      if (w + n <= win.u32.length) {
        const shape = offsetsShapeAt(win.u32, w, n);
        const found = shape && tryRelative(win, w, n, shape, range, charged, budget);
        if (found) return found;
      }
      if ((off >>> 3) + n <= win.u32.length >>> 1 && absoluteShapeAt(win.u32, off >>> 3, n, range)) {
        const found = tryAbsolute(win, off >>> 3, n, charged);
        if (found) return found;
      }
    }
  }
  return searchRelative(win, n, range, charged, budget) ?? searchAbsolute(win, n, range, charged);
}

/**
 * Where the table would start if it came right after a table found (or after
 * kallsyms_seqs_of_names following one, 3 or 4 bytes a symbol), or right before one (with
 * kallsyms_relative_base and alignment in between).
 */
function* candidateStarts(nb: Neighbours, n: number): Generator<number> {
  for (const e of nb.ends) {
    const a = alignUp(e, ALIGN);
    yield a;
    yield alignUp(a + 3 * n, ALIGN);
    yield alignUp(a + 4 * n, ALIGN);
  }
  for (const s of nb.starts) {
    for (const size of [4 * n, 8 * n]) {
      for (let gap = 0; gap <= 24; gap += 4) yield s - gap - size;
    }
  }
}

interface OffsetsShape {
  /** Leading absolute (per-CPU) entries. */
  readonly absolute: number;
  readonly percpu: boolean;
}

/**
 * Whether the n u32 at word `w` have the shape of kallsyms_offsets, and which form: the plain
 * form rises from 0; the absolute per-CPU form rises through non-negative values, then holds
 * relative_base itself as -1 and falls as addresses rise.
 */
function offsetsShapeAt(u32: Uint32Array, w: number, n: number): OffsetsShape | null {
  const first = u32[w]!;
  if (first !== 0 && first !== 0xffff_ffff) return null;
  let i = 0;
  let prev = 0;
  let equal = 0;
  for (; i < n; i++) {
    const v = u32[w + i]!;
    if (v & 0x8000_0000) break;
    if (v < prev) return null;
    if (v === prev && i > 0) equal++;
    prev = v;
  }
  let shape: OffsetsShape;
  if (i === n) {
    if (first !== 0) return null;
    shape = { absolute: 0, percpu: false };
  } else {
    if (u32[w + i] !== 0xffff_ffff) return null;
    shape = { absolute: i, percpu: true };
    prev = 0xffff_ffff;
    for (i++; i < n; i++) {
      const v = u32[w + i]!;
      if ((v & 0x8000_0000) === 0 || v > prev) return null;
      if (v === prev) equal++;
      prev = v;
    }
  }
  return equal > n * MAX_EQUAL_FRACTION ? null : shape;
}

function isKernelHalf(hi: number): boolean {
  return hi >= 0xffff_8000;
}

function relativeAddress(base: bigint, v: number, percpu: boolean): bigint {
  return base + BigInt(percpu ? ~v >>> 0 : v);
}

/** The offsets table at word w, with each candidate relative_base in turn. */
function tryRelative(win: ImageWindow, w: number, n: number, shape: OffsetsShape, range: VaRange, accept: Accept, budget: WorkBudget): Found | null {
  const u32 = win.u32;
  let tried = 0;
  for (const baseOff of relativeBaseCandidates(win, (w + n) << 2, range, budget)) {
    const base = win.u64At(baseOff);
    // Check the ends before decoding everything.
    const firstVa = relativeAddress(base, u32[w + shape.absolute]!, shape.percpu);
    const lastVa = relativeAddress(base, u32[w + n - 1]!, shape.percpu);
    if (firstVa < range.start || lastVa > range.end + IMAGE_SLACK) continue;
    if (++tried > MAX_BASE_TRIES) break;
    const addrs = decodeRelative(u32, w, n, base, shape.percpu);
    if (!accept(addrs)) continue;
    return {
      table: {
        kind: 'relative',
        offsetsVa: win.vaOf(w << 2),
        relativeBase: base,
        relativeBaseVa: win.vaOf(baseOff),
        absolutePercpu: shape.percpu,
      },
      addrs,
    };
  }
  return null;
}

/**
 * Where kallsyms_relative_base may be: every kernel so far emits it right after the offsets,
 * so that comes first; then, only if that fails, every 8-aligned pointer into the image in the
 * window, nearest first.
 */
function* relativeBaseCandidates(win: ImageWindow, offsetsEnd: number, range: VaRange, budget: WorkBudget): Generator<number> {
  const adjacent = alignUp(offsetsEnd, ALIGN);
  const inRange = (off: number) => {
    const v = win.u64At(off);
    return v >= range.start && v < range.end;
  };
  if (adjacent + 8 <= win.length && inRange(adjacent)) yield adjacent;
  budget.spend(win.length >>> 3);
  const others: number[] = [];
  const u32 = win.u32;
  const startHi = vaHi(range.start);
  const endHi = vaHi(range.end - 1n);
  for (let w = 0; w + 1 < u32.length; w += ALIGN_WORDS) {
    const h = u32[w + 1]!;
    if (h < startHi || h > endHi || w << 2 === adjacent) continue;
    if (inRange(w << 2)) others.push(w << 2);
  }
  others.sort((a, b) => Math.abs(a - offsetsEnd) - Math.abs(b - offsetsEnd));
  yield* others;
}

function decodeRelative(u32: Uint32Array, w: number, n: number, base: bigint, percpu: boolean): DecodedAddresses {
  const hi = new Uint32Array(n);
  const lo = new Uint32Array(n);
  const baseHi = vaHi(base);
  const baseLo = vaLo(base);
  for (let i = 0; i < n; i++) {
    const v = u32[w + i]!;
    if (percpu && (v & 0x8000_0000) === 0) {
      // An absolute per-CPU value: a small non-negative number.
      hi[i] = 0;
      lo[i] = v;
      continue;
    }
    // percpu: base - 1 - (s32)v = base + (~v as u32); plain: base + v. Both add a u32 to base.
    const add = percpu ? ~v >>> 0 : v;
    const sum = baseLo + add;
    lo[i] = sum >>> 0;
    hi[i] = (baseHi + (sum > 0xffff_ffff ? 1 : 0)) >>> 0;
  }
  return { hi, lo };
}

/**
 * n u64 at u64 index k, sorted, not mostly equal, ending inside the image, and each either a
 * kernel address or a small absolute value (per-CPU offsets, which sort first).
 */
function absoluteShapeAt(u32: Uint32Array, k: number, n: number, range: VaRange): boolean {
  const lastHi = u32[2 * (k + n) - 1]!;
  if (!isKernelHalf(lastHi)) return false;
  const last = vaFromHalves(lastHi, u32[2 * (k + n) - 2]!);
  if (last < range.start || last > range.end + IMAGE_SLACK) return false;
  if (!kernelOrSmall(u32, k, n)) return false;
  let equal = 0;
  for (let i = 1; i < n; i++) {
    const ah = u32[2 * (k + i) - 1]!;
    const al = u32[2 * (k + i) - 2]!;
    const bh = u32[2 * (k + i) + 1]!;
    const bl = u32[2 * (k + i)]!;
    if (bh < ah || (bh === ah && bl < al)) return false;
    if (bh === ah && bl === al) equal++;
  }
  return equal <= n * MAX_EQUAL_FRACTION;
}

function kernelOrSmall(u32: Uint32Array, k: number, n: number): boolean {
  for (let i = 0; i < n; i++) {
    const h = u32[2 * (k + i) + 1]!;
    if (h !== 0 && !isKernelHalf(h)) return false;
  }
  return true;
}

function tryAbsolute(win: ImageWindow, k: number, n: number, accept: Accept): Found | null {
  const u32 = win.u32;
  const hi = new Uint32Array(n);
  const lo = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    lo[i] = u32[2 * (k + i)]!;
    hi[i] = u32[2 * (k + i) + 1]!;
  }
  const addrs = { hi, lo };
  if (!accept(addrs)) return null;
  return { table: { kind: 'absolute', addressesVa: win.vaOf(k << 3) }, addrs };
}

/**
 * Positions that pass `valid`, grouped in families of neighbours, each family latest first.
 * Zeros before a table make the positions before it look like the table too (a prefix of
 * zeros is still sorted), shifted by a few entries; the real table is the last of its family.
 * Stops after MAX_TABLE_TRIES candidates.
 */
function* latestFirst(count: number, step: number, valid: (i: number) => boolean): Generator<number> {
  let family: number[] = [];
  let tries = 0;
  for (let i = 0; i < count; i += step) {
    if (valid(i)) {
      family.push(i);
      continue;
    }
    for (let k = family.length - 1; k >= 0; k--) {
      if (++tries > MAX_TABLE_TRIES) return;
      yield family[k]!;
    }
    family = [];
  }
  for (let k = family.length - 1; k >= 0 && ++tries <= MAX_TABLE_TRIES; k--) yield family[k]!;
}

/**
 * For every u32 of the window, how many values from it on do not decrease (up) or do not
 * increase (down), and how many equal neighbour pairs come before it. Computed once per
 * window, these answer "is there a sorted table of n entries here" in constant time per
 * position — testing position by position would be quadratic over long runs of zeros.
 */
class MonotoneRuns {
  readonly up: Uint32Array;
  readonly down: Uint32Array;
  readonly equalBefore: Uint32Array;

  constructor(readonly u32: Uint32Array) {
    const len = u32.length;
    const up = new Uint32Array(len);
    const down = new Uint32Array(len);
    const eq = new Uint32Array(len + 1);
    if (len > 0) {
      up[len - 1] = 1;
      down[len - 1] = 1;
    }
    for (let i = len - 2; i >= 0; i--) {
      const a = u32[i]!;
      const b = u32[i + 1]!;
      up[i] = a <= b ? up[i + 1]! + 1 : 1;
      down[i] = a >= b ? down[i + 1]! + 1 : 1;
    }
    for (let i = 0; i + 1 < len; i++) eq[i + 1] = eq[i]! + (u32[i] === u32[i + 1] ? 1 : 0);
    if (len > 0) eq[len] = eq[len - 1]!;
    this.up = up;
    this.down = down;
    this.equalBefore = eq;
  }

  /** offsetsShapeAt in constant time (a bisection aside). */
  shape(w: number, n: number): OffsetsShape | null {
    const u32 = this.u32;
    const first = u32[w]!;
    if (first !== 0 && first !== 0xffff_ffff) return null;
    if (this.equalBefore[w + n - 1]! - this.equalBefore[w]! > n * MAX_EQUAL_FRACTION) return null;
    const up = this.up[w]!;
    if (first === 0 && up >= n) return u32[w + n - 1]! & 0x8000_0000 ? null : { absolute: 0, percpu: false };
    const riseEnd = w + Math.min(up, n); // exclusive
    if (u32[riseEnd - 1] !== 0xffff_ffff) return null;
    // The rise is sorted: bisect for its first value with the sign bit.
    let lo = w;
    let hi = riseEnd - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (u32[mid]! & 0x8000_0000) hi = mid;
      else lo = mid + 1;
    }
    if (u32[lo] !== 0xffff_ffff) return null;
    if (lo + this.down[lo]! < w + n) return null;
    if ((u32[w + n - 1]! & 0x8000_0000) === 0) return null;
    return { absolute: lo - w, percpu: true };
  }
}

function searchRelative(win: ImageWindow, n: number, range: VaRange, accept: Accept, budget: WorkBudget): Found | null {
  const u32 = win.u32;
  if (u32.length < n) return null;
  const runs = new MonotoneRuns(u32);
  for (const w of latestFirst(u32.length - n + 1, ALIGN_WORDS, (w) => runs.shape(w, n) !== null)) {
    const found = tryRelative(win, w, n, runs.shape(w, n)!, range, accept, budget);
    if (found) return found;
  }
  return null;
}

function searchAbsolute(win: ImageWindow, n: number, range: VaRange, accept: Accept): Found | null {
  const u32 = win.u32;
  const count = u32.length >>> 1;
  if (count < n) return null;
  // The same run lengths over the window read as u64 values.
  const up = new Uint32Array(count);
  const eq = new Uint32Array(count + 1);
  up[count - 1] = 1;
  for (let k = count - 2; k >= 0; k--) {
    const ah = u32[2 * k + 1]!;
    const bh = u32[2 * k + 3]!;
    up[k] = ah < bh || (ah === bh && u32[2 * k]! <= u32[2 * k + 2]!) ? up[k + 1]! + 1 : 1;
  }
  for (let k = 0; k + 1 < count; k++) {
    eq[k + 1] = eq[k]! + (u32[2 * k] === u32[2 * k + 2] && u32[2 * k + 1] === u32[2 * k + 3] ? 1 : 0);
  }
  const valid = (k: number): boolean => {
    if (up[k]! < n) return false;
    if (eq[k + n - 1]! - eq[k]! > n * MAX_EQUAL_FRACTION) return false;
    const lastHi = u32[2 * (k + n) - 1]!;
    if (!isKernelHalf(lastHi)) return false;
    const last = vaFromHalves(lastHi, u32[2 * (k + n) - 2]!);
    return last >= range.start && last <= range.end + IMAGE_SLACK;
  };
  for (const k of latestFirst(count - n + 1, 1, valid)) {
    if (!kernelOrSmall(u32, k, n)) continue;
    const found = tryAbsolute(win, k, n, accept);
    if (found) return found;
  }
  return null;
}
