/**
 * Mapped kernel virtual addresses to read in the benchmark, in three classes: the direct map
 * (slab objects, page tables…), the kernel image's text, and vmalloc space with the module
 * area (stacks, module code and data). Each address is checked to translate to guest RAM, and
 * carries its guest-physical address so that the "physical limit" reads the very same bytes.
 */
import type { Kernel } from '../../src/kernel/kernel.ts';
import { vaFromParts, vaHi, vaLo } from '../../src/mmu/va.ts';

export type SampleClass = 'direct map' | 'kernel text' | 'vmalloc/modules';
export const SAMPLE_CLASSES: readonly SampleClass[] = ['direct map', 'kernel text', 'vmalloc/modules'];

export interface AddressSample {
  readonly count: number;
  readonly hi: Uint32Array;
  readonly lo: Uint32Array;
  /** Guest-physical address of each, when sampled. */
  readonly pa: Float64Array;
  /** Index into SAMPLE_CLASSES. */
  readonly cls: Uint8Array;
  /** Addresses per class actually found (a class can come up short on a small guest). */
  readonly perClass: Readonly<Record<SampleClass, number>>;
  /** Distinct 4 KiB pages among them. */
  readonly pages: number;
}

/** Deterministic xorshift32, so two runs read the same addresses. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

const MODULES_START = 0xffff_ffff_c000_0000n;
const MODULES_END = 0xffff_ffff_ff00_0000n;

/** `perClass` random 8-byte-aligned addresses of each class that translate to RAM. */
export function sampleKernelAddresses(k: Kernel, perClass: number, seed = 1): AddressSample {
  const random = rng(seed);
  const space = k.space;
  const reader = space.reader;
  const his: number[] = [];
  const los: number[] = [];
  const pas: number[] = [];
  const classes: number[] = [];
  const found: Record<SampleClass, number> = { 'direct map': 0, 'kernel text': 0, 'vmalloc/modules': 0 };
  const take = (cls: number, va: bigint): boolean => {
    const a = va & ~7n;
    const pa = space.tryTranslate(a);
    if (pa === null || !reader.isRam(pa, 8)) return false;
    his.push(vaHi(a));
    los.push(vaLo(a));
    pas.push(pa);
    classes.push(cls);
    return true;
  };
  const pick = (cls: number, candidate: () => bigint | undefined): void => {
    let got = 0;
    for (let tries = 0; got < perClass && tries < perClass * 50; tries++) {
      const va = candidate();
      if (va !== undefined && take(cls, va)) got++;
    }
    found[SAMPLE_CLASSES[cls]!] = got;
  };

  // Direct map: page_offset_base + a random RAM address.
  const base = k.layout.pageOffsetBase;
  const ranges = reader.ranges;
  const ramBytes = ranges.reduce((n, r) => n + r.size, 0);
  if (base !== undefined) {
    pick(0, () => {
      let off = Math.floor(random() * ramBytes);
      for (const r of ranges) {
        if (off < r.size) return base + BigInt(r.start + off);
        off -= r.size;
      }
      return undefined;
    });
  }

  // Kernel text: _text … _etext.
  const text = k.symbols.lookup('_text') ?? k.layout.textBase;
  const etext = k.symbols.lookup('_etext') ?? text + 0x100_0000n;
  const textSize = Number(etext - text);
  pick(1, () => text + BigInt(Math.floor(random() * textSize)));

  // vmalloc and modules: what is mapped there, from the page tables themselves.
  const runs: { va: bigint; size: number }[] = [];
  const walkArea = (start: bigint, end: bigint): void => {
    for (const m of space.walk({ start, end, maxRanges: 200_000, warnings: k.warnings })) {
      if (reader.isRam(m.pa, Math.min(m.size, 4096))) runs.push({ va: m.va, size: m.size });
    }
  };
  if (k.layout.vmallocBase !== undefined) {
    // VMALLOC_SIZE_TB: 32 TiB with 4-level paging, 12800 TiB with 5-level.
    const size = (k.layout.levels === 5 ? 12800n : 32n) << 40n;
    walkArea(k.layout.vmallocBase, k.layout.vmallocBase + size);
  }
  walkArea(MODULES_START, MODULES_END);
  const runBytes = runs.reduce((n, r) => n + r.size, 0);
  if (runBytes > 0) {
    pick(2, () => {
      let off = Math.floor(random() * runBytes);
      for (const r of runs) {
        if (off < r.size) return r.va + BigInt(off);
        off -= r.size;
      }
      return undefined;
    });
  }

  // Shuffle so that consecutive reads hop between classes, as real work does.
  const order = his.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const n = order.length;
  const sample = {
    count: n,
    hi: Uint32Array.from(order, (i) => his[i]!),
    lo: Uint32Array.from(order, (i) => los[i]!),
    pa: Float64Array.from(order, (i) => pas[i]!),
    cls: Uint8Array.from(order, (i) => classes[i]!),
    perClass: found,
    pages: 0,
  };
  const pageSet = new Set<bigint>();
  for (let i = 0; i < n; i++) pageSet.add(vaFromParts(sample.hi[i]!, sample.lo[i]!) >> 12n);
  return { ...sample, pages: pageSet.size };
}

/** The first `n` addresses of a sample (for slow sources). */
export function firstOf(s: AddressSample, n: number): AddressSample {
  const m = Math.min(n, s.count);
  return { ...s, count: m, hi: s.hi.subarray(0, m), lo: s.lo.subarray(0, m), pa: s.pa.subarray(0, m), cls: s.cls.subarray(0, m) };
}
