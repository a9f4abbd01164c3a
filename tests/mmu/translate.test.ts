import { describe, expect, it } from 'vitest';
import { AddressSpace } from '../../src/mmu/address-space.ts';
import {
  FAULT_NON_CANONICAL,
  FAULT_NOT_PRESENT,
  FAULT_PS_RESERVED,
  FAULT_RESERVED,
  FAULT_TABLE_NOT_RAM,
  pagingLevels,
  ptiKernelRoot,
  ptiPeerRoot,
  ptiUserRoot,
} from '../../src/mmu/paging.ts';
import { vaHi, vaLo } from '../../src/mmu/va.ts';
import { TranslationError, UsageError } from '../../src/util/errors.ts';
import { PageTableBuilder, SIZE_1G, SIZE_2M, SIZE_4K, SyntheticMemory, canonical } from '../support/synthetic-memory.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** 64 MiB at 0 and 16 MiB at 4 GiB (physical addresses above 2^32), page tables at 1 MiB. */
function setup(levels: 4 | 5, windows = true) {
  const mem = new SyntheticMemory({ ranges: [{ start: 0, size: 64 * MiB }, { start: 4 * GiB, size: 16 * MiB }], windows });
  const b = new PageTableBuilder(mem, { levels, tableArea: { start: 1 * MiB, size: 8 * MiB } });
  return { mem, b };
}

function tr(space: AddressSpace, va: bigint): number {
  return space.translate(vaHi(va), vaLo(va));
}

const KTEXT = 0xffffffff81000000n;
const DIRECT4 = 0xffff888000000000n;
const DIRECT5 = 0xff11000000000000n;

describe.each([4, 5] as const)('%i-level translation', (levels) => {
  const direct = levels === 5 ? DIRECT5 : DIRECT4;

  it('translates 4 KiB pages, kernel text and user space', () => {
    const { mem, b } = setup(levels);
    b.map(KTEXT, 0x2000000, SIZE_4K);
    b.map(KTEXT + 0x1000n, 0x2345000, SIZE_4K);
    b.map(0x400000n, 0x3000000, SIZE_4K, { user: true });
    const s = new AddressSpace(mem, b.root, levels);
    expect(tr(s, KTEXT)).toBe(0x2000000);
    expect(tr(s, KTEXT + 0xabcn)).toBe(0x2000abc);
    expect(tr(s, KTEXT + 0x1fffn)).toBe(0x2345fff);
    expect(tr(s, 0x400123n)).toBe(0x3000123);
    expect(tr(s, KTEXT + 0x2000n)).toBe(-1);
    expect(s.lastFaultLevel).toBe(1);
    expect(s.lastFaultReason).toBe(FAULT_NOT_PRESENT);
  });

  it('translates 2 MiB pages at the PDE level', () => {
    const { mem, b } = setup(levels);
    b.map(direct + 0x200000n, 0x4000000 - SIZE_2M, SIZE_2M);
    const s = new AddressSpace(mem, b.root, levels);
    for (const off of [0, 0x1000, 0x12345, SIZE_2M - 1]) {
      expect(tr(s, direct + 0x200000n + BigInt(off))).toBe(0x4000000 - SIZE_2M + off);
    }
    const d = s.describe(direct + 0x212345n);
    expect(d.pageSize).toBe(SIZE_2M);
    expect(d.steps.map((x) => x.level)).toEqual(levels === 5 ? [5, 4, 3, 2] : [4, 3, 2]);
    expect(d.fault).toBeNull();
  });

  it('translates 1 GiB pages at the PDPTE level, above 4 GiB physical', () => {
    const { mem, b } = setup(levels);
    b.map(direct + 0x40000000n, 4 * GiB, SIZE_1G);
    mem.setU64(4 * GiB + 0x123458, 0x1122334455667788n);
    const s = new AddressSpace(mem, b.root, levels);
    expect(tr(s, direct + 0x40000000n)).toBe(4 * GiB);
    expect(tr(s, direct + 0x7fffffffn)).toBe(5 * GiB - 1);
    expect(s.readU64Big(direct + 0x40123458n)).toBe(0x1122334455667788n);
    expect(s.describe(direct + 0x40000000n).pageSize).toBe(SIZE_1G);
  });

  it('keeps the PAT bit of a large-page entry out of the address', () => {
    const { mem, b } = setup(levels);
    b.map(direct, 0x600000, SIZE_2M, { extra: 0x1000n });
    b.map(direct + BigInt(SIZE_1G), 0, SIZE_1G, { extra: 0x1000n });
    const s = new AddressSpace(mem, b.root, levels);
    expect(tr(s, direct + 0x5000n)).toBe(0x605000);
    expect(tr(s, direct + BigInt(SIZE_1G) + 0x5000n)).toBe(0x5000);
  });

  it('names the level of a non-present entry, at every level', () => {
    for (let level = 1; level <= levels; level++) {
      const { mem, b } = setup(levels);
      b.map(KTEXT, 0x2000000, SIZE_4K);
      b.map(KTEXT + 0x1000n, 0x2001000, SIZE_4K);
      b.unmap(KTEXT, level);
      const s = new AddressSpace(mem, b.root, levels);
      expect(tr(s, KTEXT + 8n)).toBe(-1);
      expect(s.lastFaultLevel).toBe(level);
      expect(s.lastFaultReason).toBe(FAULT_NOT_PRESENT);
      let err: unknown;
      try {
        s.readU64(vaHi(KTEXT + 8n), vaLo(KTEXT + 8n));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(TranslationError);
      const te = err as TranslationError;
      expect(te.level).toBe(level);
      expect(te.va).toBe(KTEXT + 8n);
      expect(te.message).toMatch(/^virtual 0xffffffff81000008: not present at (PTE|PDE|PDPTE|PML4E|PML5E)$/);
      expect(() => s.translateVa(KTEXT)).toThrow(TranslationError);
      expect(s.tryTranslate(KTEXT)).toBeNull();
    }
  });

  it('faults on non-canonical addresses without reading tables', () => {
    const { mem, b } = setup(levels);
    const s = new AddressSpace(mem, b.root, levels);
    const bad = levels === 5 ? 0x0100000000000000n : 0x0000800000000000n;
    expect(tr(s, bad)).toBe(-1);
    expect(s.lastFaultReason).toBe(FAULT_NON_CANONICAL);
    expect(s.lastFaultLevel).toBe(levels);
    expect(tr(s, 0x8000000000000000n)).toBe(-1);
    expect(s.lastFaultReason).toBe(FAULT_NON_CANONICAL);
    // An address canonical only under LA57 is an ordinary miss there.
    if (levels === 5) {
      expect(tr(s, 0x0000800000000000n)).toBe(-1);
      expect(s.lastFaultReason).toBe(FAULT_NOT_PRESENT);
    }
  });

  it('treats PS at the top levels and large-page reserved bits as faults', () => {
    const { mem, b } = setup(levels);
    b.map(KTEXT, 0x2000000, SIZE_4K);
    const top = b.getEntry(KTEXT, levels);
    b.setEntry(KTEXT, levels, top | 0x80n);
    const s = new AddressSpace(mem, b.root, levels);
    expect(tr(s, KTEXT)).toBe(-1);
    expect(s.lastFaultLevel).toBe(levels);
    expect(s.lastFaultReason).toBe(FAULT_PS_RESERVED);
    if (levels === 5) {
      // PS in a PML4E under LA57 is reserved too.
      b.setEntry(KTEXT, 5, top);
      b.setEntry(KTEXT, 4, b.getEntry(KTEXT, 4) | 0x80n);
      s.flush();
      expect(tr(s, KTEXT)).toBe(-1);
      expect(s.lastFaultLevel).toBe(4);
    }

    const t = setup(levels);
    t.b.map(direct, 0x400000, SIZE_2M, { extra: 1n << 13n }); // bit 13: reserved in a 2 MiB PDE
    t.b.map(direct + BigInt(SIZE_1G), 0, SIZE_1G, { extra: 1n << 29n }); // bit 29: reserved in a 1 GiB PDPTE
    const u = new AddressSpace(t.mem, t.b.root, levels);
    expect(tr(u, direct)).toBe(-1);
    expect([u.lastFaultLevel, u.lastFaultReason]).toEqual([2, FAULT_RESERVED]);
    expect(tr(u, direct + BigInt(SIZE_1G))).toBe(-1);
    expect([u.lastFaultLevel, u.lastFaultReason]).toEqual([3, FAULT_RESERVED]);
  });

  it('treats address bits above MAXPHYADDR as reserved when told the width', () => {
    const { mem, b } = setup(levels);
    b.map(KTEXT, 0x2000000, SIZE_4K, { extra: 1n << 45n });
    expect(tr(new AddressSpace(mem, b.root, levels), KTEXT)).toBe(2 ** 45 + 0x2000000);
    const narrow = new AddressSpace(mem, b.root, levels, { physAddrBits: 40 });
    expect(tr(narrow, KTEXT)).toBe(-1);
    expect([narrow.lastFaultLevel, narrow.lastFaultReason]).toEqual([1, FAULT_RESERVED]);
  });

  it('combines rights over the path: writable and user need every level, NX any level', () => {
    const { mem, b } = setup(levels);
    b.map(0x400000n, 0x3000000, SIZE_4K, { user: true, writable: true });
    b.map(0x401000n, 0x3001000, SIZE_4K, { user: true, writable: false, nx: true });
    b.map(KTEXT, 0x2000000, SIZE_4K, { writable: false });
    const s = new AddressSpace(mem, b.root, levels);
    expect(s.describe(0x400000n)).toMatchObject({ writable: true, user: true, nx: false });
    expect(s.describe(0x401000n)).toMatchObject({ writable: false, user: true, nx: true });
    expect(s.describe(KTEXT)).toMatchObject({ writable: false, user: false, nx: false });
    // Clear R/W and U/S in the PDE, set XD in the PDPTE: the leaf's rights are overruled.
    b.setEntry(0x400000n, 2, b.getEntry(0x400000n, 2) & ~6n);
    b.setEntry(0x400000n, 3, b.getEntry(0x400000n, 3) | (1n << 63n));
    expect(s.describe(0x400000n)).toMatchObject({ writable: false, user: false, nx: true, pa: 0x3000000 });
  });

  it('faults where a table lies outside guest RAM, at the level it could not read', () => {
    const { mem, b } = setup(levels);
    b.map(KTEXT, 0x2000000, SIZE_4K);
    b.setEntry(KTEXT, 2, 0x10000000n | 0x3n); // PDE → a "page table" in the hole at 256 MiB
    const s = new AddressSpace(mem, b.root, levels);
    expect(tr(s, KTEXT)).toBe(-1);
    expect([s.lastFaultLevel, s.lastFaultReason]).toEqual([1, FAULT_TABLE_NOT_RAM]);
    const gone = new AddressSpace(mem, 0x20000000, levels);
    expect(tr(gone, KTEXT)).toBe(-1);
    expect(gone.lastFaultLevel).toBe(levels);
  });

  it('terminates on tables that point at themselves', () => {
    const { mem, b } = setup(levels);
    // Every entry of the root points back at the root: each level re-reads the same table.
    for (let i = 0; i < 512; i++) mem.setU64(b.root + i * 8, BigInt(b.root) | 0x7n);
    const s = new AddressSpace(mem, b.root, levels);
    // The walk reads one entry per level and ends at the PTE level, mapping the root page itself.
    expect(tr(s, 0x1234n)).toBe(b.root + 0x234);
    expect(s.describe(0x1234n).steps).toHaveLength(levels);
    expect(tr(s, canonical(0xffff_ffff_ffff_f000n, levels))).toBe(b.root);
  });

  it('reads values across page boundaries and reports the page that faults', () => {
    const { mem, b } = setup(levels);
    b.map(KTEXT, 0x2000000, SIZE_4K);
    b.map(KTEXT + 0x1000n, 0x2800000, SIZE_4K); // not physically contiguous
    mem.setBytes(0x2000ff8, Uint8Array.from([0, 1, 2, 3, 4, 5, 6, 7]));
    mem.setBytes(0x2800000, Uint8Array.from([8, 9, 10, 11, 12, 13, 14, 15]));
    const s = new AddressSpace(mem, b.root, levels);
    const hi = vaHi(KTEXT);
    const at = (off: number): number => vaLo(KTEXT) + off;
    expect(s.readU64Big(KTEXT + 0xffcn)).toBe(0x0b0a090807060504n);
    expect(s.readU64(hi, at(0xffd))).toBe(0x08070605);
    expect(s.hi).toBe(0x0c0b0a09);
    expect(s.readU32(hi, at(0xffe))).toBe(0x09080706);
    expect(s.readU16(hi, at(0xfff))).toBe(0x0807);
    expect(s.readU8(hi, at(0x1000))).toBe(8);
    expect(Array.from(s.readBytes(KTEXT + 0xffan, 8))).toEqual([2, 3, 4, 5, 6, 7, 8, 9]);
    // The next page is unmapped: the error names its first address.
    const end = KTEXT + 0x1ffcn;
    expect(() => s.readU64Big(end)).toThrow(expect.objectContaining({ va: KTEXT + 0x2000n, level: 1 }));
    expect(() => s.readBytes(KTEXT + 0x1000n, 0x1001)).toThrow(TranslationError);
  });

  it('raises PhysicalAccessError for a mapping into a physical hole, never zeros', () => {
    const { mem, b } = setup(levels);
    b.map(KTEXT, 0x8000000, SIZE_4K); // 128 MiB: between the two RAM ranges
    const s = new AddressSpace(mem, b.root, levels);
    expect(tr(s, KTEXT)).toBe(0x8000000);
    expect(() => s.readU32(vaHi(KTEXT), vaLo(KTEXT))).toThrow(/physical 0x8000000 \(\+4\) is not guest RAM/);
    expect(() => s.readBytes(KTEXT, 16)).toThrow(/is not guest RAM/);
  });

  it('reads a 5-page buffer that alternates physical ranges', () => {
    const { mem, b } = setup(levels);
    const pas = [0x3000000, 4 * GiB + 0x5000, 0x3001000, 0x3002000, 4 * GiB];
    pas.forEach((pa, i) => {
      b.map(KTEXT + BigInt(i * SIZE_4K), pa, SIZE_4K);
      mem.fillPattern(pa, SIZE_4K);
    });
    const s = new AddressSpace(mem, b.root, levels);
    const got = s.readBytes(KTEXT + 0x10n, 5 * SIZE_4K - 0x20);
    const want = new Uint8Array(got.length);
    for (let i = 0; i < got.length; i++) {
      const off = 0x10 + i;
      want[i] = mem.getBytes(pas[Math.floor(off / SIZE_4K)]! + (off % SIZE_4K), 1)[0]!;
    }
    expect(got).toEqual(want);
  });
});

describe('construction and helpers', () => {
  it('rejects bad roots and levels with one-line usage errors', () => {
    const { mem } = setup(4);
    expect(() => new AddressSpace(mem, 0x1001, 4)).toThrow(UsageError);
    expect(() => new AddressSpace(mem, -4096, 4)).toThrow(UsageError);
    expect(() => new AddressSpace(mem, 2 ** 52, 4)).toThrow(UsageError);
    expect(() => new AddressSpace(mem, 0, 3 as 4)).toThrow(UsageError);
    expect(() => new AddressSpace(mem, 0, 4, { tlbEntries: -1 })).toThrow(UsageError);
  });

  it('takes root and mode from vCPU registers', () => {
    const { mem, b } = setup(5);
    b.map(KTEXT, 0x2000000, SIZE_4K);
    const vcpu = {
      cr0: 0x80050033n,
      cr3: BigInt(b.root) | 0x8000_0000_0000_0801n, // no-flush bit 63 and a PCID
      cr4: 0x3726e0n | (1n << 12n),
      efer: 0xd01n,
    };
    const s = AddressSpace.forVcpu(mem, vcpu);
    expect(s.levels).toBe(5);
    expect(s.root).toBe(b.root);
    expect(tr(s, KTEXT + 4n)).toBe(0x2000004);
    expect(pagingLevels({ ...vcpu, cr4: 0x3726e0n })).toBe(4);
    expect(() => pagingLevels({ ...vcpu, efer: 0n })).toThrow(/only 4- and 5-level/);
    expect(() => pagingLevels({ ...vcpu, cr0: 0x11n })).toThrow(/paging mode is none/);
  });

  it('pairs PTI roots by bit 12', () => {
    expect(ptiPeerRoot(0x1234000)).toBe(0x1235000);
    expect(ptiPeerRoot(0x1235000)).toBe(0x1234000);
    expect(ptiKernelRoot(0x1235000)).toBe(0x1234000);
    expect(ptiUserRoot(0x1234000)).toBe(0x1235000);
    expect(ptiPeerRoot(2 ** 40 + 0x1000)).toBe(2 ** 40);
  });
});
