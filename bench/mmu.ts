/**
 * Micro-benchmarks of the address-space layer: random 8-byte reads of mapped virtual addresses
 * over a 1 GiB synthetic guest (one ArrayBuffer-backed window, 4 KiB pages).
 *
 *   npx tsx bench/mmu.ts
 *
 * Each benchmark iteration does BATCH reads; the summary divides by BATCH.
 */
import { bench, do_not_optimize, run, summary } from 'mitata';
import { AddressSpace } from '../src/mmu/address-space.ts';
import { PhysReader } from '../src/mmu/phys-reader.ts';
import { vaHi, vaLo } from '../src/mmu/va.ts';
import { PageTableBuilder, SIZE_4K, SyntheticMemory } from '../tests/support/synthetic-memory.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const BATCH = 1024;
const PROBES = 1 << 16;
const HOT_PAGES = Number(process.env.HOT ?? 8192);

const DIRECT4 = 0xffff888000000000n;
const DIRECT5 = 0xff11000000000000n;

console.log('building a 1 GiB guest with 4 KiB pages in 4- and 5-level tables…');
const mem = new SyntheticMemory({ ranges: [{ start: 0, size: GiB + 8 * MiB }] });
const t4 = new PageTableBuilder(mem, { levels: 4, tableArea: { start: GiB, size: 4 * MiB } });
const t5 = new PageTableBuilder(mem, { levels: 5, tableArea: { start: GiB + 4 * MiB, size: 4 * MiB } });
// Virtual page i maps physical page i (a direct map), so the physical limit reads the same bytes.
for (let pa = 0; pa < GiB; pa += SIZE_4K) {
  t4.map(DIRECT4 + BigInt(pa), pa, SIZE_4K);
  t5.map(DIRECT5 + BigInt(pa), pa, SIZE_4K);
}
const ram = mem.windows![0]!.u32;
for (let i = 0; i < GiB / 4; i += 97) ram[i] = i; // some non-zero data (below the page tables)

let seed = 0x2545f491;
const random = (): number => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return seed >>> 0;
};

/** Random 8-aligned offsets: anywhere in the 1 GiB, or within HOT_PAGES random pages. */
function offsets(hot: boolean): Float64Array {
  const pages = Float64Array.from({ length: HOT_PAGES }, () => random() % (GiB / SIZE_4K));
  return Float64Array.from({ length: PROBES }, () => {
    const page = hot ? pages[random() % HOT_PAGES]! : random() % (GiB / SIZE_4K);
    return page * SIZE_4K + (random() % 512) * 8;
  });
}

interface Probes {
  hi: Uint32Array;
  lo: Uint32Array;
  pa: Float64Array;
}
function probes(base: bigint, offs: Float64Array): Probes {
  const hi = new Uint32Array(PROBES);
  const lo = new Uint32Array(PROBES);
  offs.forEach((o, i) => {
    const va = base + BigInt(o);
    hi[i] = vaHi(va);
    lo[i] = vaLo(va);
  });
  return { hi, lo, pa: offs };
}

const hotOffs = offsets(true);
const allOffs = offsets(false);
const hot4 = probes(DIRECT4, hotOffs);
const all4 = probes(DIRECT4, allOffs);
const all5 = probes(DIRECT5, allOffs);

const frozen = new AddressSpace(new PhysReader(mem, { frozen: true }), t4.root, 4, { tlbEntries: 65536 });
const live = new AddressSpace(new PhysReader(mem, { frozen: false }), t4.root, 4, { tlbEntries: 65536 });
const walk4 = new AddressSpace(mem, t4.root, 4, { tlbEntries: 0 });
const walk5 = new AddressSpace(mem, t5.root, 5, { tlbEntries: 0 });
const frozenBigTlb = new AddressSpace(new PhysReader(mem, { frozen: true }), t4.root, 4, { tlbEntries: 1 << 20 });

// Sanity: every kind of read returns the physical truth before anything is measured.
for (let i = 0; i < 1000; i++) {
  const want = ram[hot4.pa[i]! / 4]!;
  for (const s of [frozen, live, walk4]) if (s.readU64(hot4.hi[i]!, hot4.lo[i]!) !== want) throw new Error('benchmark setup is wrong');
  if (walk5.readU64(all5.hi[i]!, all5.lo[i]!) !== ram[all5.pa[i]! / 4]) throw new Error('benchmark setup is wrong (5-level)');
}

let cursor = 0;
function readsVirtual(space: AddressSpace, p: Probes): void {
  let sum = 0;
  let k = cursor;
  for (let i = 0; i < BATCH; i++) {
    k = (k + 1) & (PROBES - 1);
    sum += space.readU64(p.hi[k]!, p.lo[k]!) + space.hi;
  }
  cursor = k;
  do_not_optimize(sum);
}
function readsPhysical(p: Probes): void {
  let sum = 0;
  let k = cursor;
  for (let i = 0; i < BATCH; i++) {
    k = (k + 1) & (PROBES - 1);
    const idx = p.pa[k]! / 4;
    sum += ram[idx]! + ram[idx + 1]!;
  }
  cursor = k;
  do_not_optimize(sum);
}

// Warm the caches used by the "hot" benchmarks.
for (let r = 0; r < 4; r++) for (let i = 0; i < PROBES; i++) {
  frozen.readU64(hot4.hi[i]!, hot4.lo[i]!);
  live.readU64(hot4.hi[i]!, hot4.lo[i]!);
}

const NAMES = {
  physHot: 'physical limit (Uint32Array, hot set)',
  frozen: 'hot cache, frozen',
  live: 'hot cache, live (validated)',
  physAll: 'physical limit (Uint32Array, 1 GiB)',
  bigTlb: 'cache 2^20 entries, frozen, 1 GiB random',
  walk4: 'full walk, 4-level (cache off)',
  walk5: 'full walk, 5-level (cache off)',
};

summary(() => {
  bench(NAMES.physHot, () => readsPhysical(hot4));
  bench(NAMES.frozen, () => readsVirtual(frozen, hot4));
  bench(NAMES.live, () => readsVirtual(live, hot4));
});
summary(() => {
  bench(NAMES.physAll, () => readsPhysical(all4));
  bench(NAMES.bigTlb, () => readsVirtual(frozenBigTlb, all4));
  bench(NAMES.walk4, () => readsVirtual(walk4, all4));
  bench(NAMES.walk5, () => readsVirtual(walk5, all5));
});

if (process.env.MANUAL) {
  const time = (name: string, fn: () => void): void => {
    let best = Infinity;
    for (let k = 0; k < 30; k++) {
      const c0 = process.cpuUsage();
      for (let r = 0; r < 64; r++) fn();
      const c = process.cpuUsage(c0);
      best = Math.min(best, ((c.user + c.system) * 1000) / (64 * BATCH));
    }
    console.log(name.padEnd(44), best.toFixed(1), 'ns');
  };
  const translateOnly = (space: AddressSpace, p: Probes): void => {
    let sum = 0;
    let k = cursor;
    for (let i = 0; i < BATCH; i++) {
      k = (k + 1) & (PROBES - 1);
      sum += space.translate(p.hi[k]!, p.lo[k]!);
    }
    cursor = k;
    do_not_optimize(sum);
  };
  let misses = 0;
  for (let i = 0; i < PROBES; i++) if (frozen.translate(hot4.hi[i]!, hot4.lo[i]!) !== hot4.pa[i]) misses++;
  console.log('mismatches', misses);
  time('translate only, frozen', () => translateOnly(frozen, hot4));
  const physOnly = (r: PhysReader, p: Probes): void => {
    let sum = 0;
    let k = cursor;
    for (let i = 0; i < BATCH; i++) {
      k = (k + 1) & (PROBES - 1);
      sum += r.u64(p.pa[k]!) + r.hi;
    }
    cursor = k;
    do_not_optimize(sum);
  };
  time('reader.u64 only', () => physOnly(frozen.reader, hot4));
  const combo = (space: AddressSpace, p: Probes): void => {
    let sum = 0;
    let k = cursor;
    const r = space.reader;
    for (let i = 0; i < BATCH; i++) {
      k = (k + 1) & (PROBES - 1);
      const pa = space.translate(p.hi[k]!, p.lo[k]!);
      sum += r.u64(pa) + r.hi;
    }
    cursor = k;
    do_not_optimize(sum);
  };
  time('translate + reader.u64', () => combo(frozen, hot4));
  time('readU64', () => readsVirtual(frozen, hot4));
  const combo2 = (space: AddressSpace, p: Probes): void => {
    let sum = 0;
    let k = cursor;
    for (let i = 0; i < BATCH; i++) {
      k = (k + 1) & (PROBES - 1);
      const pa = space.translate(p.hi[k]!, p.lo[k]!);
      sum += ram[pa / 4]!;
    }
    cursor = k;
    do_not_optimize(sum);
  };
  time('translate + ram[pa/4]', () => combo2(frozen, hot4));
  const combo3 = (p: Probes): void => {
    let sum = 0;
    let k = cursor;
    for (let i = 0; i < BATCH; i++) {
      k = (k + 1) & (PROBES - 1);
      sum += ram[p.pa[k]! / 4]! + p.hi[k]! + p.lo[k]!;
    }
    cursor = k;
    do_not_optimize(sum);
  };
  time('ram[pa/4] with hi/lo loads', () => combo3(hot4));
  time('translate + reader.u64', () => combo(frozen, hot4));
  for (let rep = 0; rep < 2; rep++) {
    time(NAMES.physHot, () => readsPhysical(hot4));
    time(NAMES.frozen, () => readsVirtual(frozen, hot4));
    time(NAMES.live, () => readsVirtual(live, hot4));
    time(NAMES.physAll, () => readsPhysical(all4));
    time(NAMES.bigTlb, () => readsVirtual(frozenBigTlb, all4));
    time(NAMES.walk4, () => readsVirtual(walk4, all4));
    time(NAMES.walk5, () => readsVirtual(walk5, all5));
  }
  process.exit(0);
}
const result = await run();
// On a shared machine the minimum is the least disturbed figure; the median shows the spread.
console.log(`\nper 8-byte read (batches of ${BATCH}):           min       p50       avg`);
const ns = (v: number): string => `${(v / BATCH).toFixed(1).padStart(7)} ns`;
for (const t of result.benchmarks) {
  const st = t.runs[0]?.stats;
  if (st) console.log(`  ${t.alias.padEnd(42)} ${ns(st.min)} ${ns(st.p50)} ${ns(st.avg)}`);
}
