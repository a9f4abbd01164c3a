import { ImageWindow, TABLE_ALIGN, alignUp, vaFromHalves, vaHi, vaLo, type VaRange } from './reader.ts';

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

/**
 * For every u32 of the window, how many values from it on do not decrease (nonDecreasing) or do
 * not increase (nonIncreasing). Computed once per window from the end, these answer "is there
 * a sorted table of n entries here" in constant time per position — a position-by-position walk
 * would be quadratic over long runs of zeros.
 */
class MonotoneRuns {
  readonly nonDecreasing: Uint32Array;
  readonly nonIncreasing: Uint32Array;
  /** equalBefore[i]: how many k < i have u32[k] === u32[k + 1]. */
  readonly equalBefore: Uint32Array;

  constructor(readonly u32: Uint32Array) {
    const len = u32.length;
    const up = new Uint32Array(len);
    const down = new Uint32Array(len);
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
    const eq = new Uint32Array(len + 1);
    for (let i = 0; i + 1 < len; i++) eq[i + 1] = eq[i]! + (u32[i] === u32[i + 1] ? 1 : 0);
    if (len > 0) eq[len] = eq[len - 1]!;
    this.nonDecreasing = up;
    this.nonIncreasing = down;
    this.equalBefore = eq;
  }

  /** Pairs of equal neighbours among the n values at w. */
  equalPairs(w: number, n: number): number {
    return this.equalBefore[w + n - 1]! - this.equalBefore[w]!;
  }
}

/**
 * Symbols share an address now and then (aliases, section markers), but a run that is mostly
 * one value is padding, not a table: a long stretch of zeros is "sorted" too.
 */
const MAX_EQUAL_FRACTION = 0.25;

interface OffsetsShape {
  /** Leading absolute per-CPU entries. */
  readonly absolute: number;
  readonly percpu: boolean;
}

/** Whether the n u32 at word `w` have the shape of kallsyms_offsets, and which form. */
function offsetsShape(runs: MonotoneRuns, w: number, n: number): OffsetsShape | null {
  const u32 = runs.u32;
  const first = u32[w]!;
  const up = runs.nonDecreasing[w]!;
  if (first === 0 && up >= n) {
    // Plain relative form (no value reaches the sign bit, or it would be the per-CPU form).
    if (u32[w + n - 1]! & 0x8000_0000) return null;
    return { absolute: 0, percpu: false };
  }
  // Absolute per-CPU form: non-negative values rising, then relative_base itself stored as -1,
  // then values falling as addresses rise, all negative.
  const riseEnd = w + Math.min(up, n); // exclusive
  if (u32[riseEnd - 1] !== 0xffff_ffff) return null;
  // First index of the rise whose value has the sign bit: the rise is sorted, so bisect.
  let lo = w;
  let hi = riseEnd - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (u32[mid]! & 0x8000_0000) hi = mid;
    else lo = mid + 1;
  }
  const j = lo;
  if (u32[j] !== 0xffff_ffff) return null;
  if (j + runs.nonIncreasing[j]! < w + n) return null;
  if ((u32[w + n - 1]! & 0x8000_0000) === 0) return null;
  return { absolute: j - w, percpu: true };
}

function isKernelHalf(hi: number): boolean {
  return hi >= 0xffff_8000;
}

/**
 * Find the address table of `n` symbols in the window and decode it. `range` is where the
 * kernel image lies; relative_base must fall inside it. `accept` lets the caller reject a
 * candidate decode (the loader checks linux_banner against it) before the next is tried.
 */
export function findAddresses(
  win: ImageWindow,
  n: number,
  range: VaRange,
  accept: (addrs: DecodedAddresses) => boolean,
): { table: AddressTable; addrs: DecodedAddresses } | null {
  return findRelative(win, n, range, accept) ?? findAbsolute(win, n, range, accept);
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

function findRelative(win: ImageWindow, n: number, range: VaRange, accept: (a: DecodedAddresses) => boolean) {
  const u32 = win.u32;
  if (u32.length < n || n < 1) return null;
  const runs = new MonotoneRuns(u32);
  const valid = (w: number): boolean => {
    const first = u32[w]!;
    if (first !== 0 && first !== 0xffff_ffff) return false;
    return offsetsShape(runs, w, n) !== null && runs.equalPairs(w, n) <= n * MAX_EQUAL_FRACTION;
  };
  for (const w of latestFirst(u32.length - n + 1, ALIGN_WORDS, valid)) {
    const shape = offsetsShape(runs, w, n)!;
    const offsetsEnd = (w + n) << 2;
    let tried = 0;
    for (const baseOff of relativeBaseCandidates(win, offsetsEnd, range)) {
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
          kind: 'relative' as const,
          offsetsVa: win.vaOf(w << 2),
          relativeBase: base,
          relativeBaseVa: win.vaOf(baseOff),
          absolutePercpu: shape.percpu,
        },
        addrs,
      };
    }
  }
  return null;
}

/** Candidate bases decoded in full per offsets table, at most. */
const MAX_BASE_TRIES = 16;
/** Offsets-shaped tables tried, at most: a real kernel has one. */
const MAX_TABLE_TRIES = 16;
const ALIGN = TABLE_ALIGN;
const ALIGN_WORDS = TABLE_ALIGN >>> 2;

function relativeAddress(base: bigint, v: number, percpu: boolean): bigint {
  return base + BigInt(percpu ? ~v >>> 0 : v);
}

/**
 * Where kallsyms_relative_base may be: every kernel so far emits it right after the offsets,
 * so that comes first; then, only if that fails, every 8-aligned pointer into the image in the
 * window, nearest first.
 */
function* relativeBaseCandidates(win: ImageWindow, offsetsEnd: number, range: VaRange): Generator<number> {
  const adjacent = alignUp(offsetsEnd, ALIGN);
  const inRange = (off: number) => {
    const v = win.u64At(off);
    return v >= range.start && v < range.end;
  };
  if (adjacent + 8 <= win.length && inRange(adjacent)) yield adjacent;
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
 * Symbols past the mapped image: the last ones (the early scratch area after _end) lie beyond
 * what a running kernel keeps mapped. The kernel image mapping is at most 1 GiB.
 */
const IMAGE_SLACK = 1n << 30n;

function findAbsolute(win: ImageWindow, n: number, range: VaRange, accept: (a: DecodedAddresses) => boolean) {
  const u32 = win.u32;
  const count = u32.length >>> 1;
  if (count < n || n < 1) return null;
  // Over the window as u64 values: how many from each on do not decrease, and how many equal
  // neighbour pairs come before each — computed once, so each position is tested in O(1).
  const up = new Uint32Array(count);
  const eq = new Uint32Array(count + 1);
  up[count - 1] = 1;
  for (let k = count - 2; k >= 0; k--) {
    const ah = u32[2 * k + 1]!;
    const bh = u32[2 * k + 3]!;
    const al = u32[2 * k]!;
    const bl = u32[2 * k + 2]!;
    up[k] = ah < bh || (ah === bh && al <= bl) ? up[k + 1]! + 1 : 1;
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
    const hi = new Uint32Array(n);
    const lo = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      lo[i] = u32[2 * (k + i)]!;
      hi[i] = u32[2 * (k + i) + 1]!;
    }
    const addrs = { hi, lo };
    if (!accept(addrs)) continue;
    return { table: { kind: 'absolute' as const, addressesVa: win.vaOf(k << 3) }, addrs };
  }
  return null;
}
