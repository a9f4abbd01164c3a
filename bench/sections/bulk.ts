/**
 * A bulk read of guest virtual memory: 256 MiB of the direct map into one buffer (every 4 KiB
 * page translated, physically contiguous pages merged into one copy), next to the host copying
 * the same bytes from the same place with no translation. Through the gdbstub a smaller range is
 * read and the rate extrapolated (256 MiB would take minutes).
 */
import type { Kernel } from '../../src/kernel/kernel.ts';
import type { Progress } from '../support/progress.ts';
import { type OpenSource, SOURCE_LABELS } from '../support/sources.ts';
import { measureSlow, type Stats } from '../support/timing.ts';

export interface BulkResult {
  readonly bytes: number;
  /** Extrapolated from `bytes` (gdbstub): the rate, not the time, is what to compare. */
  readonly extrapolated: boolean;
  readonly virtual: Stats;
  readonly physical: Stats;
  /** GB/s (10^9 bytes per second) from the medians. */
  readonly virtualGBs: number;
  readonly physicalGBs: number;
  /** Shared file only: the zero-copy view (readRange) of the same range, GB/s. */
  readonly zeroCopyGBs?: number;
}

const MiB = 1024 * 1024;

/** A run of `bytes` of guest RAM and its direct-map address: from 256 MiB up when RAM allows. */
export function bulkRange(k: Kernel, bytes: number): { gpa: number; va: bigint } {
  const base = k.layout.pageOffsetBase;
  if (base === undefined) throw new Error('the direct map base (page_offset_base) is unknown');
  const ranges = [...k.space.reader.ranges].sort((a, b) => b.size - a.size);
  const r = ranges[0]!;
  if (r.size < bytes) throw new Error(`no ${bytes / MiB} MiB run of guest RAM`);
  const gpa = r.size >= bytes + 256 * MiB ? Math.max(r.start, 256 * MiB) : r.start;
  return { gpa, va: base + BigInt(gpa) };
}

export async function benchBulk(src: OpenSource, buffer: Uint8Array, progress: Progress, quick: boolean): Promise<BulkResult> {
  const k = src.kernel;
  const gdb = src.kind === 'gdb';
  const bytes = gdb ? 4 * MiB : buffer.length;
  const dst = buffer.subarray(0, bytes);
  const { gpa, va } = bulkRange(k, buffer.length);
  const times = gdb || quick ? 2 : 5;
  progress.step(`bulk ${SOURCE_LABELS[src.kind]}`, `${bytes / MiB} MiB of the direct map, ${times}× each`);
  const s = k.space;
  s.read(va, dst); // warm: the translation cache, and the host's own page tables for the mapping
  let physicalRead: () => void;
  const windows = src.memory.windows;
  if (windows) {
    const w = windows.find((x) => gpa >= x.start && gpa + bytes <= x.start + x.size);
    if (!w) throw new Error('the bulk range spans windows');
    physicalRead = () => dst.set(w.u8.subarray(gpa - w.start, gpa - w.start + bytes));
  } else {
    physicalRead = () => src.memory.read(gpa, dst);
  }
  const virtual: Stats[] = [];
  const physical: Stats[] = [];
  // Interleaved, one of each per round, so both see the same load.
  for (let i = 0; i < times; i++) {
    virtual.push(await measureSlow(() => s.read(va, dst), 1));
    physical.push(await measureSlow(physicalRead, 1));
  }
  const merge = (xs: Stats[]): Stats => {
    const w = xs.map((x) => x.medianNs).sort((a, b) => a - b);
    const c = xs.map((x) => x.cpuNs).sort((a, b) => a - b);
    return { medianNs: w[w.length >> 1]!, minNs: w[0]!, cpuNs: c[c.length >> 1]!, runs: xs.length, opsPerRun: 1 };
  };
  const v = merge(virtual);
  const p = merge(physical);
  let zeroCopyGBs: number | undefined;
  if (windows) {
    const z = await measureSlow(() => void s.readRange(va, bytes), times);
    zeroCopyGBs = bytes / z.medianNs;
  }
  return {
    bytes,
    extrapolated: gdb,
    virtual: v,
    physical: p,
    virtualGBs: bytes / v.medianNs,
    physicalGBs: bytes / p.medianNs,
    ...(zeroCopyGBs !== undefined ? { zeroCopyGBs } : {}),
  };
}
