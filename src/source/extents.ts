import { PhysicalAccessError } from '../util/errors.ts';
import type { Warnings } from '../util/warnings.ts';
import type { PhysRange } from './types.ts';

/**
 * Where a run of guest-physical memory lives in its backing store: a file offset (RAM file,
 * dump) or a host virtual address (QEMU's own memory, read through /proc/PID/mem).
 */
export interface Extent {
  /** Guest-physical start. */
  readonly gpa: number;
  readonly size: number;
  /** Offset of byte `gpa` in the backing store. */
  readonly offset: number;
}

/** Upper bound on extents we keep, so a hostile dump header cannot make us allocate without end. */
export const MAX_EXTENTS = 1 << 20;

/**
 * Sort extents by guest-physical address and merge runs that continue each other in both
 * spaces. Overlaps are allowed only where both extents say the same thing (a `paging=true`
 * ELF dump describes one physical page once per virtual mapping); a contradiction keeps the
 * first description, drops the rest of the other and records a warning — or throws when no
 * warnings sink is given.
 */
export function normalizeExtents(extents: readonly Extent[], warnings?: Warnings, where = 'memory map'): Extent[] {
  const sorted = extents
    .filter((e) => e.size > 0)
    .slice()
    .sort((a, b) => a.gpa - b.gpa || a.offset - b.offset);
  const out: { gpa: number; size: number; offset: number }[] = [];
  for (const e of sorted) {
    let { gpa, size, offset } = e;
    const last = out[out.length - 1];
    if (last) {
      const lastEnd = last.gpa + last.size;
      if (gpa < lastEnd) {
        if (offset - gpa !== last.offset - last.gpa) {
          if (!warnings) throw new PhysicalAccessError(gpa, size, 'is described twice with different contents');
          warnings.warn(where, `physical 0x${gpa.toString(16)} (+${size}) described twice with different file offsets; keeping the first`);
        }
        const end = gpa + size;
        if (end <= lastEnd) continue;
        offset += lastEnd - gpa;
        size = end - lastEnd;
        gpa = lastEnd;
      }
      if (gpa === last.gpa + last.size && offset === last.offset + last.size) {
        last.size += size;
        continue;
      }
    }
    out.push({ gpa, size, offset });
  }
  return out;
}

/** The RAM map (`PhysicalMemory.ranges`) of a sorted extent list: adjacent runs become one range. */
export function rangesOf(extents: readonly Extent[]): PhysRange[] {
  const out: { start: number; size: number }[] = [];
  for (const e of extents) {
    const last = out[out.length - 1];
    if (last && last.start + last.size === e.gpa) last.size += e.size;
    else out.push({ start: e.gpa, size: e.size });
  }
  return out;
}

/**
 * Index of the extent holding `gpa` in a sorted, non-overlapping list, or -1. Binary search:
 * `paging=true` dumps can leave thousands of extents.
 */
export function findExtent(extents: readonly { readonly gpa: number; readonly size: number }[], gpa: number): number {
  let lo = 0;
  let hi = extents.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const e = extents[mid]!;
    if (gpa < e.gpa) hi = mid - 1;
    else if (gpa >= e.gpa + e.size) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/**
 * Visit the pieces of [gpa, gpa+len) extent by extent. Checks the whole span first, so a
 * write that meets a hole changes nothing. `visit(extent, offsetInStore, dstPos, n)`.
 */
export function forEachPiece(
  extents: readonly Extent[],
  gpa: number,
  len: number,
  visit: (e: Extent, storeOffset: number, pos: number, n: number) => void,
): void {
  if (!(gpa >= 0) || !Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || len < 0) {
    throw new PhysicalAccessError(gpa, len, 'is not a valid physical address');
  }
  if (len === 0) return;
  let i = findExtent(extents, gpa);
  if (i < 0) throw new PhysicalAccessError(gpa, len);
  // Check contiguity across extents before touching anything.
  let covered = extents[i]!.gpa + extents[i]!.size;
  for (let j = i + 1; covered < gpa + len; j++) {
    const next = extents[j];
    if (!next || next.gpa !== covered) throw new PhysicalAccessError(gpa, len, 'crosses the end of guest RAM');
    covered += next.size;
  }
  let pos = 0;
  while (pos < len) {
    const e = extents[i]!;
    const at = gpa + pos;
    const n = Math.min(len - pos, e.gpa + e.size - at);
    visit(e, e.offset + (at - e.gpa), pos, n);
    pos += n;
    i++;
  }
}

/** Largest window; also the alignment at which windows are cut (see `windowCuts`). */
export const WINDOW_SPAN = 1 << 30;

/**
 * Cut extents into window-sized pieces at 1 GiB-aligned guest-physical boundaries. No piece
 * crosses such a boundary, so a reader can index windows by `gpa / 2^30`, and no 1 GiB (or
 * smaller) page ever straddles two windows.
 */
export function windowCuts(extents: readonly Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    let at = e.gpa;
    const end = e.gpa + e.size;
    while (at < end) {
      const boundary = (Math.floor(at / WINDOW_SPAN) + 1) * WINDOW_SPAN;
      const n = Math.min(end, boundary) - at;
      out.push({ gpa: at, size: n, offset: e.offset + (at - e.gpa) });
      at += n;
    }
  }
  return out;
}

export const PAGE_SIZE = 4096;

export function isPageAligned(n: number): boolean {
  return n % PAGE_SIZE === 0;
}
