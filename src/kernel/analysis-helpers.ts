/**
 * Small readers shared by analyses: fixed-size char arrays and (hi, lo) pointer loads through
 * precomputed member offsets. They exist so hot loops (ps over thousands of tasks) read fields
 * with typed loads and no per-field object.
 */
import type { AddressSpace } from '../mmu/address-space.ts';
import { vaAddHi, vaAddLo } from '../mmu/va.ts';
import { readCString } from './object.ts';

/** A (hi, lo) address that loops re-point instead of allocating. */
export interface Ptr {
  hi: number;
  lo: number;
}

/** Load the pointer at (hi, lo)+off into `out`; returns false for NULL. */
export function loadPtr(space: AddressSpace, hi: number, lo: number, off: number, out: Ptr): boolean {
  const l = space.readU64(vaAddHi(hi, lo, off), vaAddLo(lo, off));
  out.hi = space.hi;
  out.lo = l;
  return out.hi !== 0 || out.lo !== 0;
}

export function u32At(space: AddressSpace, hi: number, lo: number, off: number): number {
  return space.readU32(vaAddHi(hi, lo, off), vaAddLo(lo, off));
}

export function i32At(space: AddressSpace, hi: number, lo: number, off: number): number {
  return space.readU32(vaAddHi(hi, lo, off), vaAddLo(lo, off)) | 0;
}

/** An unsigned 64-bit field as a number (exact below 2^53: counters, sizes, nanoseconds). */
export function u64At(space: AddressSpace, hi: number, lo: number, off: number): number {
  const l = space.readU64(vaAddHi(hi, lo, off), vaAddLo(lo, off));
  return space.hi * 4294967296 + l;
}

export function charsAt(space: AddressSpace, hi: number, lo: number, off: number, len: number): string {
  return readCString(space, vaAddHi(hi, lo, off), vaAddLo(lo, off), len);
}
