import { PhysicalAccessError } from '../util/errors.ts';
import type { PhysRange } from './types.ts';

/** Index of the range holding [gpa, gpa+len), or throw: a read must never straddle a hole. */
export function rangeIndexFor(ranges: readonly PhysRange[], gpa: number, len: number): number {
  for (let i = 0; i < ranges.length; i++) {
    const r = ranges[i]!;
    if (gpa >= r.start && gpa < r.start + r.size) {
      if (gpa + len > r.start + r.size) throw new PhysicalAccessError(gpa, len, 'crosses the end of guest RAM');
      return i;
    }
  }
  throw new PhysicalAccessError(gpa, len);
}

/** Total bytes of RAM in a map. */
export function totalSize(ranges: readonly PhysRange[]): number {
  let n = 0;
  for (const r of ranges) n += r.size;
  return n;
}

/** Sort, check and merge adjacent ranges; throws on overlap (a corrupt dump header). */
export function normalizeRanges(ranges: readonly PhysRange[]): PhysRange[] {
  const sorted = ranges.filter((r) => r.size > 0).slice().sort((a, b) => a.start - b.start);
  const out: PhysRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.start < last.start + last.size) {
      throw new PhysicalAccessError(r.start, r.size, 'overlaps another RAM range');
    }
    if (last && r.start === last.start + last.size) out[out.length - 1] = { start: last.start, size: last.size + r.size };
    else out.push({ start: r.start, size: r.size });
  }
  return out;
}
