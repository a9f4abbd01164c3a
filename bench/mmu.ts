/**
 * Micro-benchmarks of the address-space layer: random 8-byte reads of mapped virtual addresses
 * in a 1 GiB synthetic guest (one ArrayBuffer-backed window, mapped with 4 KiB pages, so a walk
 * always has 4 or 5 levels).
 *
 *   npx tsx bench/mmu.ts                       (BENCH_FILTER=regexp runs some of them)
 *
 * Three groups:
 * - overhead: a working set of HOT_PAGES random pages, small enough to stay in the CPU caches,
 *   so the numbers are the cost of the translation itself;
 * - 1 GiB, independent: reads anywhere in the 1 GiB, each address known in advance (the CPU
 *   overlaps many memory accesses: the physical limit is a throughput, not a latency);
 * - 1 GiB, dependent: each address depends on the value read before, as when following
 *   pointers through kernel structures; every read pays the full memory latency.
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
const HOT_PAGES = 512;

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
// The guest's data is left zero: the dependent chains add the value read (always 0) to the next
// index, which the CPU cannot know before the read completes.
const ram = mem.windows![0]!.u32;

let seed = 0x2545f491;
const random = (): number => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return seed >>> 0;
};

interface Probes {
  hi: Uint32Array;
  lo: Uint32Array;
  /** Physical address of each probe (= its offset in the direct map). */
  pa: Float64Array;
}

/** PROBES random 8-aligned addresses in `pages` random pages (or anywhere when pages = 0). */
function probes(base: bigint, pages: number, from: Probes | null): Probes {
  const pa = from
    ? from.pa
    : (() => {
        const set = Float64Array.from({ length: pages }, () => random() % (GiB / SIZE_4K));
        return Float64Array.from({ length: PROBES }, () => {
          const page = pages > 0 ? set[random() % pages]! : random() % (GiB / SIZE_4K);
          return page * SIZE_4K + (random() % 512) * 8;
        });
      })();
  const hi = new Uint32Array(PROBES);
  const lo = new Uint32Array(PROBES);
  pa.forEach((o, i) => {
    const va = base + BigInt(o);
    hi[i] = vaHi(va);
    lo[i] = vaLo(va);
  });
  return { hi, lo, pa };
}

const hot4 = probes(DIRECT4, HOT_PAGES, null);
const hot5 = probes(DIRECT5, 0, hot4);
const all4 = probes(DIRECT4, 0, null);
const all5 = probes(DIRECT5, 0, all4);

const frozenReader = new PhysReader(mem, { frozen: true });
const liveReader = new PhysReader(mem, { frozen: false });
const frozen = new AddressSpace(frozenReader, t4.root, 4); // default cache: 4096 entries
const live = new AddressSpace(liveReader, t4.root, 4);
const walk4 = new AddressSpace(liveReader, t4.root, 4, { tlbEntries: 0 });
const walk5 = new AddressSpace(liveReader, t5.root, 5, { tlbEntries: 0 });
const frozenBig = new AddressSpace(frozenReader, t4.root, 4, { tlbEntries: 1 << 20 });

// Every kind of read must return the physical truth before anything is measured.
ram[hot4.pa[0]! / 4] = 0x1234;
ram[hot4.pa[0]! / 4 + 1] = 0x5678;
for (const [s, p] of [[frozen, hot4], [live, hot4], [walk4, hot4], [walk5, hot5], [frozenBig, all4]] as const) {
  for (let i = 0; i < PROBES; i += 97) {
    const lo = s.readU64(p.hi[i]!, p.lo[i]!);
    if (lo !== ram[p.pa[i]! / 4] || s.hi !== ram[p.pa[i]! / 4 + 1]) throw new Error('benchmark setup is wrong');
  }
  if (s.readU64(p.hi[0]!, p.lo[0]!) !== ram[p.pa[0]! / 4]) throw new Error('benchmark setup is wrong');
}
ram[hot4.pa[0]! / 4] = 0;
ram[hot4.pa[0]! / 4 + 1] = 0;

/**
 * The measured loops. Each benchmark gets its own copy (`fresh`), compiled from the same source:
 * V8 keeps type feedback per function, and one loop shared by benchmarks of different modes
 * would be optimised for their mixture, which no real caller sees. Loops read constants only
 * (no module variables), so a copy made with `new Function` behaves like the original.
 */
function virtualLoop(space: AddressSpace, hi: Uint32Array, lo: Uint32Array, state: Int32Array): number {
  let sum = 0;
  let k = state[0]!;
  for (let i = 0; i < 1024; i++) {
    k = (k + 1) & 65535;
    sum += space.readU64(hi[k]!, lo[k]!) + space.hi;
  }
  state[0] = k;
  return sum;
}
function physicalLoop(ram: Uint32Array, pa: Float64Array, state: Int32Array): number {
  let sum = 0;
  let k = state[0]!;
  for (let i = 0; i < 1024; i++) {
    k = (k + 1) & 65535;
    const idx = pa[k]! / 4;
    sum += ram[idx]! + ram[idx + 1]!;
  }
  state[0] = k;
  return sum;
}
function virtualChainLoop(space: AddressSpace, hi: Uint32Array, lo: Uint32Array, state: Int32Array): number {
  let k = state[0]!;
  for (let i = 0; i < 1024; i++) k = (k + 1 + space.readU64(hi[k]!, lo[k]!) + space.hi) & 65535;
  state[0] = k;
  return k;
}
function physicalChainLoop(ram: Uint32Array, pa: Float64Array, state: Int32Array): number {
  let k = state[0]!;
  for (let i = 0; i < 1024; i++) {
    const idx = pa[k]! / 4;
    k = (k + 1 + ram[idx]! + ram[idx + 1]!) & 65535;
  }
  state[0] = k;
  return k;
}
if (BATCH !== 1024 || PROBES !== 65536) throw new Error('the loops above hard-code BATCH and PROBES');

function fresh<F extends (...args: never[]) => unknown>(f: F): F {
  return new Function(`return ${String(f)}`)() as F;
}
const state = new Int32Array(1);
const virtualReads = (space: AddressSpace, p: Probes): (() => void) => {
  const loop = fresh(virtualLoop);
  return () => do_not_optimize(loop(space, p.hi, p.lo, state));
};
const physicalReads = (p: Probes): (() => void) => {
  const loop = fresh(physicalLoop);
  return () => do_not_optimize(loop(ram, p.pa, state));
};
const virtualChain = (space: AddressSpace, p: Probes): (() => void) => {
  const loop = fresh(virtualChainLoop);
  return () => do_not_optimize(loop(space, p.hi, p.lo, state));
};
const physicalChain = (p: Probes): (() => void) => {
  const loop = fresh(physicalChainLoop);
  return () => do_not_optimize(loop(ram, p.pa, state));
};

// Fill the caches the "hot" benchmarks rely on.
for (let r = 0; r < 2; r++) {
  for (let i = 0; i < PROBES; i++) {
    frozen.readU64(hot4.hi[i]!, hot4.lo[i]!);
    live.readU64(hot4.hi[i]!, hot4.lo[i]!);
    frozenBig.readU64(all4.hi[i]!, all4.lo[i]!);
  }
}

summary(() => {
  bench(`overhead: physical limit (${HOT_PAGES} pages)`, physicalReads(hot4));
  bench('overhead: hot cache, frozen', virtualReads(frozen, hot4));
  bench('overhead: hot cache, live (validated)', virtualReads(live, hot4));
  bench('overhead: full walk, 4-level (cache off)', virtualReads(walk4, hot4));
  bench('overhead: full walk, 5-level (cache off)', virtualReads(walk5, hot5));
});
summary(() => {
  bench('1 GiB independent: physical limit', physicalReads(all4));
  bench('1 GiB independent: cache 2^20, frozen', virtualReads(frozenBig, all4));
  bench('1 GiB independent: full walk, 4-level', virtualReads(walk4, all4));
  bench('1 GiB independent: full walk, 5-level', virtualReads(walk5, all5));
});
summary(() => {
  bench('1 GiB dependent: physical', physicalChain(all4));
  bench('1 GiB dependent: cache 2^20, frozen', virtualChain(frozenBig, all4));
  bench('1 GiB dependent: full walk, 4-level', virtualChain(walk4, all4));
  bench('1 GiB dependent: full walk, 5-level', virtualChain(walk5, all5));
});

const result = await run(process.env.BENCH_FILTER ? { filter: new RegExp(process.env.BENCH_FILTER) } : {});
// On a shared machine the minimum is the least disturbed figure; the median shows the spread.
console.log(`\nper 8-byte read (batches of ${BATCH})                    min       p50       avg`);
const ns = (v: number): string => `${(v / BATCH).toFixed(1).padStart(7)} ns`;
for (const t of result.benchmarks) {
  const st = t.runs[0]?.stats;
  if (st) console.log(`  ${t.alias.padEnd(46)} ${ns(st.min)} ${ns(st.p50)} ${ns(st.avg)}`);
}
