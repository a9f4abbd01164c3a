import { describe, expect, it } from 'vitest';
import { AddressSpace } from '../../src/mmu/address-space.ts';
import { PhysReader } from '../../src/mmu/phys-reader.ts';
import { vaHi, vaLo } from '../../src/mmu/va.ts';
import { TranslationError } from '../../src/util/errors.ts';
import { PageTableBuilder, SIZE_2M, SIZE_4K, SyntheticMemory } from '../support/synthetic-memory.ts';

const MiB = 1024 * 1024;
const VA = 0xffffc90000000000n; // vmalloc-like
const tr = (s: AddressSpace, va: bigint): number => s.translate(vaHi(va), vaLo(va));

function setup(levels: 4 | 5 = 4, windows = true) {
  const mem = new SyntheticMemory({ ranges: [{ start: 0, size: 64 * MiB }], windows });
  const b = new PageTableBuilder(mem, { levels, tableArea: { start: 1 * MiB, size: 4 * MiB } });
  b.map(VA, 0x2000000, SIZE_4K);
  b.map(VA + 0x1000n, 0x2001000, SIZE_4K);
  return { mem, b };
}

describe.each([true, false])('translation cache (windows: %s)', (windows) => {
  it('serves a frozen guest from the cache until the freeze ends', () => {
    const { mem, b } = setup(4, windows);
    const reader = new PhysReader(mem, { frozen: true });
    const s = new AddressSpace(reader, b.root, 4);
    expect(tr(s, VA)).toBe(0x2000000);
    // The "guest" remaps the page behind our back: a frozen guest cannot, so the cache may keep it.
    b.setEntry(VA, 1, 0x3000000n | 3n);
    expect(tr(s, VA)).toBe(0x2000000);
    s.setFrozen(false); // resume: the cache is flushed and from now on validated
    expect(tr(s, VA)).toBe(0x3000000);
  });

  it('validates every hit while the guest runs: a changed PTE, PDE or PML4E is seen at once', () => {
    const { mem, b } = setup(4, windows);
    const s = new AddressSpace(mem, b.root, 4); // default: running
    expect(tr(s, VA + 8n)).toBe(0x2000008);
    b.setEntry(VA, 1, 0x3000000n | 3n);
    expect(tr(s, VA + 8n)).toBe(0x3000008);
    // A change in the entry's high half only (address bits 32..51).
    b.setEntry(VA, 1, 0x1_0300_0000n | 3n);
    expect(tr(s, VA + 8n)).toBe(0x1_0300_0008);
    // Point the PDE at a new page table that maps the page elsewhere.
    const pt = b.allocTable();
    mem.setU64(pt + b.index(VA, 1) * 8, 0x3400000n | 3n);
    b.setEntry(VA, 2, BigInt(pt) | 7n);
    expect(tr(s, VA + 8n)).toBe(0x3400008);
    // Unmap at the top level.
    b.setEntry(VA, 4, 0n);
    expect(tr(s, VA + 8n)).toBe(-1);
    expect(s.lastFaultLevel).toBe(4);
  });

  it('ignores Accessed/Dirty updates when validating, and still sees everything else', () => {
    const { mem, b } = setup(5, windows);
    const s = new AddressSpace(mem, b.root, 5);
    expect(tr(s, VA)).toBe(0x2000000);
    b.setEntry(VA, 1, b.getEntry(VA, 1) | 0x60n);
    b.setEntry(VA, 3, b.getEntry(VA, 3) | 0x20n);
    expect(tr(s, VA)).toBe(0x2000000);
    b.setEntry(VA, 1, b.getEntry(VA, 1) | (1n << 63n)); // NX changes rights, not the address
    expect(tr(s, VA)).toBe(0x2000000);
    expect(s.describe(VA).nx).toBe(true);
    b.setEntry(VA, 1, b.getEntry(VA, 1) & ~1n);
    expect(tr(s, VA)).toBe(-1);
  });

  it('flushes every space on a shared reader when the freeze changes or memory is invalidated', () => {
    const { mem, b } = setup(4, windows);
    const reader = new PhysReader(mem, { frozen: true });
    const a = new AddressSpace(reader, b.root, 4);
    const c = new AddressSpace(reader, b.root, 4);
    expect(tr(a, VA)).toBe(0x2000000);
    expect(tr(c, VA)).toBe(0x2000000);
    b.setEntry(VA, 1, 0x3000000n | 3n);
    reader.invalidate();
    expect(tr(a, VA)).toBe(0x3000000);
    expect(tr(c, VA)).toBe(0x3000000);
    b.setEntry(VA, 1, 0x3100000n | 3n);
    a.setFrozen(false);
    expect(tr(c, VA)).toBe(0x3100000);
    expect(c.translate(vaHi(VA), vaLo(VA))).toBe(0x3100000);
  });

  it('flushes after a write through the space, even when frozen (the write may change a table)', () => {
    const { mem, b } = setup(4, windows);
    // Map the page table that maps VA into the address space itself, like the direct map does.
    const ptPa = b.entryPa(VA, 1)! & ~0xfff;
    const PTVA = 0xffff888000000000n + BigInt(ptPa);
    b.map(PTVA, ptPa, SIZE_4K);
    const s = new AddressSpace(new PhysReader(mem, { frozen: true }), b.root, 4);
    expect(tr(s, VA)).toBe(0x2000000);
    const entry = new Uint8Array(8);
    new DataView(entry.buffer).setBigUint64(0, 0x3000000n | 3n, true);
    s.write(PTVA + BigInt(b.entryPa(VA, 1)! & 0xfff), entry);
    expect(tr(s, VA)).toBe(0x3000000);
  });

  it('works with the cache disabled and with a tiny cache full of collisions', () => {
    const { mem, b } = setup(4, windows);
    for (let i = 2; i < 300; i++) b.map(VA + BigInt(i * SIZE_4K), 0x2000000 + i * 2 * SIZE_4K, SIZE_4K);
    for (const tlbEntries of [0, 2, 64]) {
      const s = new AddressSpace(new PhysReader(mem, { frozen: true }), b.root, 4, { tlbEntries });
      for (let round = 0; round < 2; round++) {
        for (let i = 2; i < 300; i++) expect(tr(s, VA + BigInt(i * SIZE_4K) + 5n)).toBe(0x2000000 + i * 2 * SIZE_4K + 5);
      }
    }
  });

  it('does not cache faults', () => {
    const { mem, b } = setup(4, windows);
    const s = new AddressSpace(mem, b.root, 4); // running: the guest may map the page any time
    expect(tr(s, VA + 0x5000n)).toBe(-1);
    b.map(VA + 0x5000n, 0x2005000, SIZE_4K);
    expect(tr(s, VA + 0x5000n)).toBe(0x2005000);
  });
});

describe('bulk reads and writes', () => {
  it('readRange returns a zero-copy view when the pages are physically contiguous in one window', () => {
    const { mem, b } = setup();
    b.map(VA + 0x2000n, 0x2100000, SIZE_4K); // breaks contiguity after page 1
    const s = new AddressSpace(mem, b.root, 4);
    const view = s.readRange(VA + 0x10n, 0x1ff0);
    mem.setBytes(0x2001000, Uint8Array.from([0xaa]));
    expect(view[0x1000 - 0x10]).toBe(0xaa); // the view aliases guest memory
    const copy = s.readRange(VA + 0xff0n, 0x1020);
    mem.setBytes(0x2100000, Uint8Array.from([0xbb]));
    expect(copy[0x1010]).toBe(0); // a copy: made before the write
    expect(s.readRange(VA, 0).length).toBe(0);
  });

  it('readRange copies when there are no windows', () => {
    const { mem, b } = setup(4, false);
    mem.fillPattern(0x2000000, 0x2000);
    const s = new AddressSpace(mem, b.root, 4);
    const got = s.readRange(VA, 0x2000);
    expect(got).toEqual(mem.getBytes(0x2000000, 0x2000));
    mem.setBytes(0x2000000, Uint8Array.from([~got[0]! & 0xff]));
    expect(got[0]).not.toBe(mem.getBytes(0x2000000, 1)[0]);
  });

  it('writes across pages, and writes nothing when a later page faults', () => {
    const { mem, b } = setup();
    b.map(VA + 0x2000n, 0x2800000, SIZE_4K);
    const s = new AddressSpace(mem, b.root, 4);
    const data = Uint8Array.from({ length: 0x1800 }, (_, i) => (i * 7) & 0xff);
    s.write(VA + 0xc00n, data);
    expect(s.readBytes(VA + 0xc00n, 0x1800)).toEqual(data);
    expect(mem.getBytes(0x2001000, 0x1000)).toEqual(data.subarray(0x400, 0x1400));
    expect(mem.getBytes(0x2800000, 0x400)).toEqual(data.subarray(0x1400));

    const before = mem.getBytes(0x2800000, SIZE_4K);
    const writes = mem.writes;
    expect(() => s.write(VA + 0x2800n, new Uint8Array(0x1000).fill(0xee))).toThrow(TranslationError);
    expect(mem.writes).toBe(writes);
    expect(mem.getBytes(0x2800000, SIZE_4K)).toEqual(before);
  });

  it('reads a 2 MiB page whole, and rejects absurd lengths', () => {
    const { mem, b } = setup();
    b.map(0xffff888000000000n, 0x2000000, SIZE_2M);
    mem.fillPattern(0x2000000, SIZE_2M);
    const s = new AddressSpace(mem, b.root, 4);
    const got = s.readBytes(0xffff888000000000n, SIZE_2M);
    expect(Buffer.from(got).equals(mem.getBytes(0x2000000, SIZE_2M))).toBe(true);
    expect(() => s.readBytes(0xffff888000000000n, 2 ** 40)).toThrow(/length/);
    expect(() => s.readBytes(0xffff888000000000n, -1)).toThrow(/length/);
  });
});
