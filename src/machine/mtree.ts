import { TargetError } from '../util/errors.ts';
import type { Extent } from '../source/extents.ts';

/**
 * QEMU's flat view of guest-physical memory (HMP `info mtree -f`), and from it where each piece
 * of guest RAM sits in the RAM block. A line of a flat view reads
 *
 *   0000000100000000-000000015fffffff (prio 0, ram): pc.ram @00000000c0000000
 *
 * — an inclusive guest-physical range, the kind of region, the name of the memory region that
 * finally serves it (aliases such as ram-below-4g / ram-above-4g are already resolved), and the
 * offset inside that region when not 0. Regions of the machine's RAM backend are named after
 * the backend's id (`pc.ram` for plain `-m`, the id of a `memory-backend-*` object otherwise).
 */

export interface FlatRange {
  readonly start: number;
  /** Bytes (the printed end is inclusive). */
  readonly size: number;
  readonly priority: number;
  /** 'ram', 'rom', 'romd', 'i/o', 'ramd', 'nv-ram'… as QEMU prints it. */
  readonly type: string;
  readonly region: string;
  /** Offset of `start` inside `region`. */
  readonly offset: number;
}

const RANGE_LINE = /^\s+([0-9a-f]+)-([0-9a-f]+) \(prio (-?\d+), ([^)]*)\): (.*)$/;
const OFFSET_SUFFIX = / @([0-9a-f]+)(?=\s|$)/;
/** Guest-physical addresses fit in 52 bits; larger ends are the 64-bit I/O address space. */
const MAX_PHYS = 2 ** 52;
const MAX_LINES = 100_000;

function hex(s: string): number {
  return s.length > 13 ? Number(BigInt('0x' + s)) : parseInt(s, 16);
}

/**
 * The flat view rendered for address space `addressSpace` ("memory" = what the CPUs and
 * devices see). Throws TargetError when the text has no such view.
 */
export function parseFlatView(text: string, addressSpace = 'memory'): FlatRange[] {
  const lines = text.split(/\r?\n/, MAX_LINES);
  const wanted = `AS "${addressSpace}"`;
  let inView = false;
  let inHeader = false;
  let found = false;
  const out: FlatRange[] = [];
  for (const line of lines) {
    if (line.startsWith('FlatView #')) {
      if (found) break;
      inHeader = true;
      inView = false;
      continue;
    }
    if (inHeader) {
      const t = line.trim();
      if (t.startsWith('AS "')) {
        if (t.startsWith(wanted + ',')) inView = true;
        continue;
      }
      if (t.startsWith('Root memory region')) {
        inHeader = false;
        found = inView;
        continue;
      }
    }
    if (!found) continue;
    const m = RANGE_LINE.exec(line);
    if (!m) {
      if (line.trim() === '') continue;
      if (line.trim() === 'No rendered FlatView') break;
      continue;
    }
    const start = hex(m[1]!);
    const last = hex(m[2]!);
    if (start >= MAX_PHYS) continue;
    let rest = m[5]!;
    let offset = 0;
    const o = OFFSET_SUFFIX.exec(rest);
    if (o) {
      offset = hex(o[1]!);
      rest = rest.slice(0, o.index);
    } else {
      // Accelerator tags (" KVM") follow the name.
      rest = rest.replace(/ (KVM|HVF|WHPX|NVMM)$/, '');
    }
    out.push({ start, size: Math.min(last, MAX_PHYS - 1) - start + 1, priority: Number(m[3]), type: m[4]!, region: rest.trim(), offset });
  }
  if (!found) throw new TargetError(`QEMU's memory tree has no flat view of address space "${addressSpace}"`);
  return out;
}

/**
 * Where the guest sees each part of memory region `region`: extents whose `offset` is the
 * offset inside the region (= inside its RAM block, and so inside a RAM file). Parts of the
 * region that the flat view shadows (VGA window, option ROMs, BIOS) are left out: there the
 * guest does not see RAM.
 */
export function regionExtents(flat: readonly FlatRange[], region: string | readonly string[]): Extent[] {
  const names = typeof region === 'string' ? [region] : region;
  return flat
    .filter((r) => names.includes(r.region) && r.type !== 'i/o')
    .map((r) => ({ gpa: r.start, size: r.size, offset: r.offset }));
}

/** The RAM region with the most guest-visible bytes: the machine's main RAM when nothing names it. */
export function largestRamRegion(flat: readonly FlatRange[]): string | undefined {
  const total = new Map<string, number>();
  for (const r of flat) if (r.type === 'ram') total.set(r.region, (total.get(r.region) ?? 0) + r.size);
  let best: string | undefined;
  for (const [name, size] of total) if (best === undefined || size > total.get(best)!) best = name;
  return best;
}
