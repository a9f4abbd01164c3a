/**
 * Random 8-byte reads of kernel virtual addresses, per source:
 * - hot cache, frozen: every translation cached and served as is (the guest paused);
 * - hot cache, live: every cached translation re-validated, entry by entry, before use;
 * - full walk: no translation cache, 4 or 5 paging-structure reads per address;
 * - physical: the same bytes read at their guest-physical addresses with no translation — for
 *   the shared file a typed-array load from the mapping (the host's own limit), for the other
 *   sources one read of the source.
 * Sources without zero-copy windows keep whole pages while frozen: the "hot" figures there are
 * reads of cached pages. The benchmark's readers are sized so the whole sample stays cached.
 */
import { do_not_optimize } from 'mitata';
import { AddressSpace } from '../../src/mmu/address-space.ts';
import { PhysReader } from '../../src/mmu/phys-reader.ts';
import type { Progress } from '../support/progress.ts';
import { firstOf, type AddressSample } from '../support/samples.ts';
import { type OpenSource, physicalIndex, SOURCE_LABELS } from '../support/sources.ts';
import { measure, type Stats } from '../support/timing.ts';

export interface ReadsResult {
  readonly addresses: number;
  readonly pages: number;
  readonly hotFrozen: Stats;
  readonly hotLive: Stats;
  readonly fullWalk: Stats;
  readonly physical: Stats;
}

/** Operations per timed call, and addresses used, by source (the slow ones get fewer). */
const PLAN = {
  file: { batch: 1024, addresses: Infinity, runs: 21 },
  proc: { batch: 64, addresses: 1500, runs: 9 },
  gdb: { batch: 4, addresses: 120, runs: 5 },
} as const;

export async function benchReads(src: OpenSource, all: AddressSample, progress: Progress, quick: boolean): Promise<ReadsResult> {
  const plan = PLAN[src.kind];
  const s = firstOf(all, plan.addresses);
  const runs = quick ? 5 : plan.runs;
  const layout = src.kernel.layout;
  const label = SOURCE_LABELS[src.kind];
  // Own reader: a page cache that holds the whole sample, so that "hot" is hot.
  const reader = new PhysReader(src.memory, { cachePages: 1 << 16 });
  const hot = new AddressSpace(reader, layout.root, layout.levels, { tlbEntries: 1 << 15 });
  const walk = new AddressSpace(reader, layout.root, layout.levels, { tlbEntries: 0 });

  let cursor = 0;
  const n = s.count;
  const virtualReads = (space: AddressSpace) => (): void => {
    let sum = 0;
    let k = cursor;
    for (let i = 0; i < plan.batch; i++) {
      k = k + 1 === n ? 0 : k + 1;
      sum += space.readU64(s.hi[k]!, s.lo[k]!) + space.hi;
    }
    cursor = k;
    do_not_optimize(sum);
  };
  let physical: () => void;
  if (src.memory.windows) {
    const { words, index } = physicalIndex(src.memory.windows, s.pa);
    physical = () => {
      let sum = 0;
      let k = cursor;
      for (let i = 0; i < plan.batch; i++) {
        k = k + 1 === n ? 0 : k + 1;
        const w = words[k]!;
        const x = index[k]!;
        sum += w[x]! + w[x + 1]!;
      }
      cursor = k;
      do_not_optimize(sum);
    };
  } else {
    const buf = new Uint8Array(8);
    const dv = new DataView(buf.buffer);
    physical = () => {
      let sum = 0;
      let k = cursor;
      for (let i = 0; i < plan.batch; i++) {
        k = k + 1 === n ? 0 : k + 1;
        src.memory.read(s.pa[k]!, buf);
        sum += dv.getUint32(0, true) + dv.getUint32(4, true);
      }
      cursor = k;
      do_not_optimize(sum);
    };
  }
  // Sanity first: every way of reading gives the same value for every address.
  checkSame(hot, walk, src, s);

  // Frozen: the guest paused (the gdbstub keeps it stopped while connected anyway).
  progress.step(`reads ${label}`, `hot cache, frozen (${n} addresses, ${s.pages} pages)`);
  const pause = src.kind !== 'gdb';
  if (pause) await src.machine.pause();
  let frozen: Map<string, Stats>;
  try {
    reader.setFrozen(true);
    for (let pass = 0; pass < 2; pass++) virtualReads(hot)();
    for (let i = 0; i < Math.ceil((2 * n) / plan.batch); i++) virtualReads(hot)();
    frozen = measure([{ name: 'hot', fn: virtualReads(hot), ops: plan.batch }], { runs, maxCaseMs: 4000 });
  } finally {
    reader.setFrozen(false);
    if (pause) await src.machine.resume();
  }

  progress.step(`reads ${label}`, 'hot cache live, full walk, physical');
  for (let i = 0; i < Math.ceil((2 * n) / plan.batch); i++) virtualReads(hot)();
  const live = measure(
    [
      { name: 'live', fn: virtualReads(hot), ops: plan.batch },
      { name: 'walk', fn: virtualReads(walk), ops: plan.batch },
      { name: 'physical', fn: physical, ops: plan.batch },
    ],
    { runs, maxCaseMs: src.kind === 'file' ? 4000 : 8000, warmupMs: src.kind === 'gdb' ? 1 : 100 },
  );
  return {
    addresses: n,
    pages: s.pages,
    hotFrozen: frozen.get('hot')!,
    hotLive: live.get('live')!,
    fullWalk: live.get('walk')!,
    physical: live.get('physical')!,
  };
}

function checkSame(hot: AddressSpace, walk: AddressSpace, src: OpenSource, s: AddressSample): void {
  const buf = new Uint8Array(8);
  const dv = new DataView(buf.buffer);
  // Text does not change under us; data may (a running guest), so only text is compared exactly.
  let compared = 0;
  for (let k = 0; k < s.count && compared < 50; k++) {
    if (s.cls[k] !== 1) continue;
    const a = hot.readU64(s.hi[k]!, s.lo[k]!);
    const ah = hot.hi;
    const b = walk.readU64(s.hi[k]!, s.lo[k]!);
    const bh = walk.hi;
    src.memory.read(s.pa[k]!, buf);
    if (a !== b || ah !== bh || a !== dv.getUint32(0, true) || ah !== dv.getUint32(4, true)) {
      throw new Error(`reads disagree at sample ${k} through ${SOURCE_LABELS[src.kind]}`);
    }
    compared++;
  }
}
