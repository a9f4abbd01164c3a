/**
 * Randomized check of translate() and walk() against a reference model: plain maps from page to
 * mapping, built alongside the page tables. A fixed seed keeps failures reproducible.
 */
import { describe, expect, it } from 'vitest';
import { AddressSpace } from '../../src/mmu/address-space.ts';
import { PhysReader } from '../../src/mmu/phys-reader.ts';
import { vaHi, vaLo } from '../../src/mmu/va.ts';
import { PageTableBuilder, SIZE_1G, SIZE_2M, SIZE_4K, SyntheticMemory, canonical, type PageSize } from '../support/synthetic-memory.ts';

const MiB = 1024 * 1024;

/** xorshift128+ over two uint32 words per step: deterministic, fast, good enough for tests. */
function rng(seed: number): () => number {
  let a = seed >>> 0 || 1;
  let b = 0x9e3779b9;
  let c = 0x85ebca6b;
  let d = 0xc2b2ae35;
  return () => {
    const t = a ^ (a << 11);
    a = b;
    b = c;
    c = d;
    d = (d ^ (d >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return d;
  };
}

interface Mapping {
  va: bigint;
  pa: number;
  size: PageSize;
}

describe.each([4, 5] as const)('%i-level randomized translation', (levels) => {
  it('matches a reference model on thousands of mappings and probes', () => {
    const next = rng(levels * 7919);
    const randBig = (bits: number): bigint => {
      let v = 0n;
      for (let i = 0; i < bits; i += 32) v = (v << 32n) | BigInt(next());
      return v & ((1n << BigInt(bits)) - 1n);
    };
    const vaBits = levels === 5 ? 57 : 48;
    const mem = new SyntheticMemory({ ranges: [{ start: 0, size: 64 * MiB }] });
    const b = new PageTableBuilder(mem, { levels, tableArea: { start: 0, size: 64 * MiB } });

    // Choose 1 GiB regions at random (canonical, both halves), each holding one kind of page.
    const byRegion = new Map<bigint, 'giant' | 'large' | 'small'>();
    const mappings: Mapping[] = [];
    const randomPa = (size: number): number => Number(randBig(46) & ~BigInt(size - 1));
    while (byRegion.size < 60) {
      const region = canonical(randBig(vaBits) & ~BigInt(SIZE_1G - 1), levels);
      if (byRegion.has(region)) continue;
      const kind = (['giant', 'large', 'small'] as const)[next() % 3]!;
      byRegion.set(region, kind);
      if (kind === 'giant') mappings.push({ va: region, pa: randomPa(SIZE_1G), size: SIZE_1G });
      else if (kind === 'large') {
        const used = new Set<number>();
        for (let i = 0; i < 20; i++) {
          const slot = next() % 512;
          if (used.has(slot)) continue;
          used.add(slot);
          mappings.push({ va: region + BigInt(slot * SIZE_2M), pa: randomPa(SIZE_2M), size: SIZE_2M });
        }
      } else {
        for (let t = 0; t < 4; t++) {
          const table = BigInt((next() % 512) * SIZE_2M);
          for (let i = 0; i < 40; i++) {
            const va = region + table + BigInt((next() % 512) * SIZE_4K);
            mappings.push({ va, pa: randomPa(SIZE_4K), size: SIZE_4K });
          }
        }
      }
    }
    // The model: one map per page size (region kinds never overlap). A repeated 4 KiB page is
    // remapped and the last mapping wins, as in the tables.
    const sizes = [SIZE_4K, SIZE_2M, SIZE_1G] as const;
    const model = sizes.map(() => new Map<bigint, Mapping>());
    for (const m of mappings) {
      const flags = { writable: (next() & 1) === 1, user: (next() & 1) === 1, nx: (next() & 1) === 1 };
      b.map(m.va, m.pa, m.size, flags);
      model[sizes.indexOf(m.size)]!.set(m.va / BigInt(m.size), m);
    }
    const ref = (va: bigint): number => {
      for (let i = 0; i < sizes.length; i++) {
        const m = model[i]!.get(va / BigInt(sizes[i]!));
        if (m) return m.pa + Number(va % BigInt(sizes[i]!));
      }
      return -1;
    };

    // Probes: inside every mapping, next to mappings, random canonical and random 64-bit values.
    const probes: bigint[] = [];
    for (const m of mappings) {
      probes.push(m.va + (randBig(32) % BigInt(m.size)));
      probes.push((m.va + BigInt(m.size) + (randBig(16) & 0xfffn)) & ((1n << 64n) - 1n));
      probes.push((m.va - 1n) & ((1n << 64n) - 1n));
    }
    for (let i = 0; i < 2000; i++) probes.push(canonical(randBig(vaBits), levels));
    for (let i = 0; i < 500; i++) probes.push(randBig(64));

    const frozen = new AddressSpace(new PhysReader(mem, { frozen: true }), b.root, levels, { tlbEntries: 256 });
    const live = new AddressSpace(mem, b.root, levels, { tlbEntries: 256 });
    const uncached = new AddressSpace(mem, b.root, levels, { tlbEntries: 0 });
    let mapped = 0;
    for (let round = 0; round < 2; round++) {
      for (const va of probes) {
        const want = ref(va);
        if (want >= 0) mapped++;
        for (const s of [frozen, live, uncached]) {
          const got = s.translate(vaHi(va), vaLo(va));
          if (got !== want) expect.fail(`${levels}-level ${va.toString(16)}: got ${got.toString(16)}, want ${want.toString(16)}`);
        }
      }
    }
    expect(mapped).toBeGreaterThan(mappings.length);
    expect(probes.length).toBeGreaterThan(5000);

    // walk(): every range is backed by the model, and the ranges cover exactly the mapped bytes.
    let covered = 0;
    let previousEnd = -1n;
    for (const r of uncached.walk()) {
      const unsignedVa = r.va;
      expect(unsignedVa >= previousEnd || previousEnd === -1n).toBe(true);
      previousEnd = r.va + BigInt(r.size);
      covered += r.size;
      for (const off of [0, r.size - 1, Math.floor(r.size / 2)]) expect(ref(r.va + BigInt(off))).toBe(r.pa + off);
    }
    let expected = 0;
    const seen = new Set<bigint>();
    for (let i = mappings.length - 1; i >= 0; i--) {
      const m = mappings[i]!;
      if (seen.has(m.va)) continue;
      seen.add(m.va);
      expected += m.size;
    }
    expect(covered).toBe(expected);
  });
});
