/**
 * Virtual addresses in two representations.
 *
 * x86-64 virtual addresses are 64-bit; kernel ones (0xffff…) exceed 2^53, so a JavaScript number
 * cannot hold them. At the friendly API edges they are bigint. On hot paths (translation, typed
 * reads) they travel as two uint32 halves (hi, lo): no BigInt is allocated per access.
 *
 * Every function here is allocation-free except those that return a bigint or a string.
 */
import { UsageError } from '../util/errors.ts';

/**
 * Initial value of number fields that will hold physical addresses or uint32 values: -0 is a
 * zero V8 stores as a double, so the field has a double layout from the start. Starting from a
 * small integer, the first value above 2^30 would change the object's layout, and objects of one
 * class with different layouts keep V8 from inlining the hot path.
 */
export const DOUBLE_ZERO = -0;

const TWO_32 = 4294967296;
const MASK_32 = 0xffff_ffffn;
const TWO_64 = 1n << 64n;

/** High 32 bits of a 64-bit address (bits beyond 64 are ignored). */
export function vaHi(va: bigint): number {
  return Number((va >> 32n) & MASK_32);
}

/** Low 32 bits of a 64-bit address. */
export function vaLo(va: bigint): number {
  return Number(va & MASK_32);
}

/** The bigint address of (hi, lo); both halves are taken as uint32. */
export function vaFromParts(hi: number, lo: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/**
 * Whether (hi, lo) is canonical: bits 63 … (vaBits-1) all equal, vaBits = 48 for 4-level paging
 * and 57 for 5-level. Only `hi` decides it; `lo` is accepted so call sites read naturally.
 */
export function isCanonical(hi: number, _lo: number, levels: 4 | 5): boolean {
  // Arithmetic shift of the signed high half leaves only the sign-extension bits: all 0 or all 1.
  const top = (hi | 0) >> (levels === 5 ? 24 : 15);
  return top === 0 || top === -1;
}

/** `isCanonical` for a bigint address. */
export function isCanonicalVa(va: bigint, levels: 4 | 5): boolean {
  return isCanonical(vaHi(va), 0, levels);
}

/** An address as "0x" + 16 hex digits, from a bigint or from (hi, lo). */
export function hexVa(va: bigint): string;
export function hexVa(hi: number, lo: number): string;
export function hexVa(a: bigint | number, lo?: number): string {
  const hi = typeof a === 'bigint' ? vaHi(a) : a >>> 0;
  const low = typeof a === 'bigint' ? vaLo(a) : (lo ?? 0) >>> 0;
  return '0x' + hi.toString(16).padStart(8, '0') + low.toString(16).padStart(8, '0');
}

/**
 * Low half of (hi, lo) + delta. `delta` is any integer with |delta| < 2^52 (field offsets,
 * strides, negative container_of offsets). Pair with `vaAddHi` for the high half.
 */
export function vaAddLo(lo: number, delta: number): number {
  return (lo + delta) >>> 0;
}

/** High half of (hi, lo) + delta: carries into, or borrows from, hi; wraps modulo 2^64. */
export function vaAddHi(hi: number, lo: number, delta: number): number {
  return (hi + Math.floor(((lo >>> 0) + delta) / TWO_32)) >>> 0;
}

/**
 * A reusable, mutable (hi, lo) address for loops that step through guest structures without
 * allocating: `p.set(hi, lo).add(off)` then read `p.hi`, `p.lo`.
 */
export class VaCursor {
  hi = DOUBLE_ZERO;
  lo = DOUBLE_ZERO;

  set(hi: number, lo: number): this {
    this.hi = hi >>> 0;
    this.lo = lo >>> 0;
    return this;
  }

  setVa(va: bigint): this {
    this.hi = vaHi(va);
    this.lo = vaLo(va);
    return this;
  }

  /** Add an integer offset (|delta| < 2^52), carrying or borrowing into the high half. */
  add(delta: number): this {
    const sum = this.lo + delta;
    this.hi = (this.hi + Math.floor(sum / TWO_32)) >>> 0;
    this.lo = sum >>> 0;
    return this;
  }

  toBigInt(): bigint {
    return vaFromParts(this.hi, this.lo);
  }
}

/**
 * Page number of (hi, lo) as a number: hi * 2^20 + (lo >>> 12). At most 52 bits, so exact in a
 * double; usable as a Map key or hash input without BigInt.
 */
export function vaPageKey(hi: number, lo: number): number {
  return (hi >>> 0) * 1048576 + (lo >>> 12);
}

/** High half of the first address of the page with this key. */
export function pageKeyHi(key: number): number {
  return Math.floor(key / 1048576) >>> 0;
}

/** Low half of the first address of the page with this key. */
export function pageKeyLo(key: number): number {
  return ((key % 1048576) * 4096) >>> 0;
}

/** First address of the page with this key, as bigint. */
export function pageKeyVa(key: number): bigint {
  return vaFromParts(pageKeyHi(key), pageKeyLo(key));
}

/** Throws UsageError unless `va` is a 64-bit unsigned value: the check at the bigint API edges. */
export function checkVa(va: bigint): bigint {
  if (typeof va !== 'bigint' || va < 0n || va >= TWO_64) {
    throw new UsageError(`virtual address ${String(va)} is outside 0 … 0xffffffffffffffff`);
  }
  return va;
}
