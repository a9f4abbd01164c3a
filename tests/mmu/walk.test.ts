import { describe, expect, it } from 'vitest';
import { AddressSpace, type MappedRange } from '../../src/mmu/address-space.ts';
import { Warnings } from '../../src/util/warnings.ts';
import { PageTableBuilder, SIZE_1G, SIZE_2M, SIZE_4K, SyntheticMemory, canonical } from '../support/synthetic-memory.ts';

const MiB = 1024 * 1024;

function setup(levels: 4 | 5) {
  const mem = new SyntheticMemory({ ranges: [{ start: 0, size: 64 * MiB }] });
  const b = new PageTableBuilder(mem, { levels, tableArea: { start: 1 * MiB, size: 16 * MiB } });
  return { mem, b, space: () => new AddressSpace(mem, b.root, levels) };
}

const range = (va: bigint, pa: number, size: number, pageSize: number, rights: Partial<MappedRange> = {}): MappedRange => ({
  va,
  pa,
  size,
  pageSize,
  writable: true,
  user: false,
  nx: false,
  ...rights,
});

describe.each([4, 5] as const)('%i-level walk()', (levels) => {
  const top = canonical(1n << BigInt(levels === 5 ? 56 : 47), levels); // first upper-half address
  const lowEnd = 1n << BigInt(levels === 5 ? 56 : 47); // end of the lower half

  it('merges physically contiguous pages with equal rights, and splits where either changes', () => {
    const { b, space } = setup(levels);
    const V = 0xffffffff81000000n;
    b.mapRange(V, 0x2000000, 16 * SIZE_4K, SIZE_4K); // one range
    b.map(V + 0x10000n, 0x2010000, SIZE_4K, { writable: false }); // contiguous, other rights
    b.map(V + 0x11000n, 0x2800000, SIZE_4K, { writable: false }); // rights equal, not contiguous
    b.mapRange(0x400000n, 0x3000000, 8 * SIZE_4K, SIZE_4K, { user: true, nx: true });
    expect([...space().walk()]).toEqual([
      range(0x400000n, 0x3000000, 8 * SIZE_4K, SIZE_4K, { user: true, nx: true }),
      range(V, 0x2000000, 16 * SIZE_4K, SIZE_4K),
      range(V + 0x10000n, 0x2010000, SIZE_4K, SIZE_4K, { writable: false }),
      range(V + 0x11000n, 0x2800000, SIZE_4K, SIZE_4K, { writable: false }),
    ]);
  });

  it('merges large pages across table boundaries, but not with pages of another size', () => {
    const { b, space } = setup(levels);
    const D = canonical(0xff11000000000000n, levels);
    // 2 MiB pages spanning the boundary between two PDs (two PDPTEs), then 4 KiB pages contiguous with them.
    const start = D + BigInt(SIZE_1G) - 2n * BigInt(SIZE_2M);
    b.mapRange(start, 0, 4 * SIZE_2M, SIZE_2M);
    b.mapRange(start + 4n * BigInt(SIZE_2M), 4 * SIZE_2M, 4 * SIZE_4K, SIZE_4K);
    b.map(D + 8n * BigInt(SIZE_1G), 0, SIZE_1G);
    b.map(D + 9n * BigInt(SIZE_1G), SIZE_1G, SIZE_1G);
    expect([...space().walk()]).toEqual([
      range(start, 0, 4 * SIZE_2M, SIZE_2M),
      range(start + 4n * BigInt(SIZE_2M), 4 * SIZE_2M, 4 * SIZE_4K, SIZE_4K),
      range(D + 8n * BigInt(SIZE_1G), 0, 2 * SIZE_1G, SIZE_1G),
    ]);
  });

  it('clips to [start, end) at page granularity, inside large pages too', () => {
    const { b, space } = setup(levels);
    const D = canonical(0xff11000000000000n, levels);
    b.map(D, 0, SIZE_2M);
    b.mapRange(D + BigInt(SIZE_2M), 0x4000000, 4 * SIZE_4K);
    const got = [...space().walk({ start: D + 0x1ff800n, end: D + BigInt(SIZE_2M) + 0x1001n })];
    expect(got).toEqual([range(D + 0x1ff000n, 0x1ff000, SIZE_4K, SIZE_2M), range(D + BigInt(SIZE_2M), 0x4000000, 2 * SIZE_4K, SIZE_4K)]);
    expect([...space().walk({ start: D + 0x1000n, end: D + 0x1000n })]).toEqual([]);
    expect([...space().walk({ maxRanges: 1 })]).toHaveLength(1);
  });

  it('orders lower half before upper half and never merges across the canonical hole', () => {
    const { b, space } = setup(levels);
    b.map(lowEnd - 0x1000n, 0x2000000, SIZE_4K);
    b.map(top, 0x2001000, SIZE_4K); // physically contiguous with the page above
    b.map(0xfffffffffffff000n, 0x2002000, SIZE_4K);
    const got = [...space().walk()];
    expect(got).toEqual([
      range(lowEnd - 0x1000n, 0x2000000, SIZE_4K, SIZE_4K),
      range(top, 0x2001000, SIZE_4K, SIZE_4K),
      range(0xfffffffffffff000n, 0x2002000, SIZE_4K, SIZE_4K),
    ]);
    // A start or end inside the hole clamps to its edges.
    const inHole = canonical(0n, levels) + lowEnd + 0x1000n;
    expect([...space().walk({ start: inHole })].map((r) => r.va)).toEqual([top, 0xfffffffffffff000n]);
    expect([...space().walk({ end: inHole })].map((r) => r.va)).toEqual([lowEnd - 0x1000n]);
  });

  it('agrees with translate() on every page it reports', () => {
    const { b, space } = setup(levels);
    b.mapRange(0xffffffff81000000n, 0x2000000, 40 * SIZE_4K);
    b.map(0xffffffffc0000000n, 0x200000, SIZE_2M, { nx: true });
    const s = space();
    for (const r of s.walk()) {
      for (let off = 0; off < r.size; off += SIZE_4K) {
        expect(s.translateVa(r.va + BigInt(off))).toBe(r.pa + off);
        expect(s.describe(r.va + BigInt(off))).toMatchObject({ writable: r.writable, user: r.user, nx: r.nx, pageSize: r.pageSize });
      }
    }
  });

  it('skips non-present, reserved and unreadable entries; records a table outside RAM', () => {
    const { b, space } = setup(levels);
    const V = 0xffffffff81000000n;
    b.mapRange(V, 0x2000000, 4 * SIZE_4K);
    b.setEntry(V + 0x1000n, 1, b.getEntry(V + 0x1000n, 1) & ~1n); // not present
    b.map(0xffffffff82000000n, 0x2200000, SIZE_2M, { extra: 1n << 14n }); // reserved bit in a 2 MiB leaf
    b.map(0x7f0000000000n & ((1n << 47n) - 1n), 0x3000000, SIZE_4K, { user: true });
    b.setEntry(0x7f0000000000n, 2, 0x30000000n | 7n); // PT in a hole
    const warnings = new Warnings();
    const got = [...space().walk({ warnings })];
    expect(got.map((r) => [r.va, r.size])).toEqual([
      [V, SIZE_4K],
      [V + 0x2000n, 2 * SIZE_4K],
    ]);
    expect(warnings.items).toHaveLength(1);
    expect(warnings.items[0]!.message).toMatch(/table at physical 0x30000000 is not in guest RAM/);
  });

  it('bounds itself on self-referencing tables', () => {
    const { mem, b, space } = setup(levels);
    for (let i = 0; i < 512; i++) mem.setU64(b.root + i * 8, BigInt(b.root) | 7n);
    const warnings = new Warnings();
    const got = [...space().walk({ maxTables: 100, warnings })];
    expect(got.length).toBeGreaterThan(0);
    expect(got.every((r) => r.pa === b.root && r.size === SIZE_4K)).toBe(true);
    expect(warnings.items.some((w) => /stopped after 100 page tables/.test(w.message))).toBe(true);
    expect([...space().walk({ maxRanges: 1000 })]).toHaveLength(1000);
  });
});
