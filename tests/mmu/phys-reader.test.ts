import { describe, expect, it } from 'vitest';
import { PhysReader } from '../../src/mmu/phys-reader.ts';
import { PhysicalAccessError, ReadOnlyError, UsageError } from '../../src/util/errors.ts';
import { SyntheticMemory, patternByte } from '../support/synthetic-memory.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** RAM: [0, 1 MiB), [1 MiB, 2 MiB) (adjacent windows), [4 GiB, 4 GiB + 1 MiB); holes elsewhere. */
function memory(windows: boolean, readMany = false): SyntheticMemory {
  const mem = new SyntheticMemory({
    ranges: [
      { start: 0, size: 1 * MiB },
      { start: 1 * MiB, size: 1 * MiB },
      { start: 4 * GiB, size: 1 * MiB },
    ],
    windows,
    readMany,
  });
  mem.fillPattern(0, 1 * MiB);
  mem.fillPattern(1 * MiB, 1 * MiB);
  mem.fillPattern(4 * GiB, 1 * MiB);
  return mem;
}

/** Little-endian value of n pattern bytes at gpa. */
function want(gpa: number, n: number): number {
  let v = 0;
  for (let i = n - 1; i >= 0; i--) v = v * 256 + patternByte(gpa + i);
  return v;
}

const MODES = [
  { name: 'windows', windows: true, frozen: false },
  { name: 'page cache (frozen)', windows: false, frozen: true },
  { name: 'no cache (running)', windows: false, frozen: false },
];

describe.each(MODES)('PhysReader: $name', ({ windows, frozen }) => {
  it('reads u8/u16/u32/u64 at any alignment, within and across windows and pages', () => {
    const r = new PhysReader(memory(windows), { frozen });
    const addrs = [0, 4, 0x7ff, 0xffc, 0xffd, 0xfff, 0x1000, 0xfffff, 0xffffc, 0xffffd, 1 * MiB - 1, 4 * GiB, 4 * GiB + 0x1ffb, 4 * GiB + 1 * MiB - 8];
    for (const a of addrs) {
      expect(r.u8(a), `u8 ${a}`).toBe(want(a, 1));
      if (a + 2 <= 2 * MiB || (a >= 4 * GiB && a + 2 <= 4 * GiB + MiB)) expect(r.u16(a), `u16 ${a}`).toBe(want(a, 2));
      if (a + 4 <= 2 * MiB || (a >= 4 * GiB && a + 4 <= 4 * GiB + MiB)) expect(r.u32(a), `u32 ${a}`).toBe(want(a, 4));
      if (a + 8 <= 2 * MiB || (a >= 4 * GiB && a + 8 <= 4 * GiB + MiB)) {
        expect(r.u64(a), `u64 ${a}`).toBe(want(a, 4));
        expect(r.hi).toBe(want(a + 4, 4));
        expect(r.tryU64(a)).toBe(true);
        expect([r.lo, r.hi]).toEqual([want(a, 4), want(a + 4, 4)]);
      }
    }
  });

  it('raises PhysicalAccessError on holes, never zeros; tryU64 says false', () => {
    const r = new PhysReader(memory(windows), { frozen });
    expect(() => r.u32(2 * MiB)).toThrow(PhysicalAccessError);
    expect(() => r.u8(3 * GiB)).toThrow(PhysicalAccessError);
    expect(() => r.u16(2 * MiB - 1)).toThrow(PhysicalAccessError); // last byte of RAM + first of the hole
    expect(() => r.u64(4 * GiB + 1 * MiB - 4)).toThrow(PhysicalAccessError);
    expect(() => r.read(2 * MiB - 16, new Uint8Array(32))).toThrow(PhysicalAccessError);
    expect(r.tryU64(2 * MiB)).toBe(false);
    expect(r.tryU64(2 * MiB - 4)).toBe(false);
    expect(r.tryU64(2 ** 52 - 8)).toBe(false);
    expect(r.isRam(1 * MiB - 8, 16)).toBe(true); // adjacent ranges
    expect(r.isRam(5 * GiB, 1)).toBe(false);
  });

  it('bulk reads across pages, windows and batches', () => {
    const mem = memory(windows);
    const r = new PhysReader(mem, { frozen });
    for (const [gpa, len] of [
      [0x123, 0x3000],
      [1 * MiB - 0x1800, 0x3000],
      [4 * GiB + 0x10, 0x10],
    ] as const) {
      const dst = new Uint8Array(len);
      r.read(gpa, dst);
      expect(dst).toEqual(mem.getBytes(gpa, len));
    }
    const a = new Uint8Array(100);
    const b = new Uint8Array(4096);
    r.readMany([
      { gpa: 4 * GiB + 0x2000, dst: a },
      { gpa: 0x5000, dst: b },
    ]);
    expect(a).toEqual(mem.getBytes(4 * GiB + 0x2000, 100));
    expect(b).toEqual(mem.getBytes(0x5000, 4096));
  });

  it('writes through and drops what it had cached', () => {
    const mem = memory(windows);
    const r = new PhysReader(mem, { frozen });
    expect(r.u32(0x2000)).toBe(want(0x2000, 4));
    const epoch = r.epoch;
    r.write(0x2000, Uint8Array.from([1, 2, 3, 4]));
    expect(r.epoch).toBeGreaterThan(epoch);
    expect(r.u32(0x2000)).toBe(0x04030201);
    const ro = new PhysReader(new SyntheticMemory({ ranges: [{ start: 0, size: 4096 }], writable: false }));
    expect(() => ro.write(0, new Uint8Array(1))).toThrow(ReadOnlyError);
  });
});

describe('PhysReader page cache', () => {
  it('fills whole pages once while frozen and serves later reads from them', () => {
    const mem = memory(false);
    const r = new PhysReader(mem, { frozen: true });
    for (let i = 0; i < 512; i++) r.u64(0x3000 + i * 8);
    expect(r.cacheFills).toBe(1);
    expect(mem.reads).toBe(1);
    r.u8(0x3fff);
    r.u32(0x3ffe + 0x1000); // crosses into the next page: one more fill
    expect(r.cacheFills).toBe(3);
  });

  it('is bounded and evicts', () => {
    const mem = memory(false);
    const r = new PhysReader(mem, { frozen: true, cachePages: 8 });
    for (let p = 0; p < 64; p++) r.u32(p * 4096);
    expect(r.cacheFills).toBe(64);
    const before = r.cacheFills;
    for (let p = 0; p < 64; p++) r.u32(p * 4096);
    // At most 8 of the 64 pages can still be cached.
    expect(r.cacheFills - before).toBeGreaterThanOrEqual(56);
    // A small working set stays: 6 pages read over and over are fetched once each.
    const small = new PhysReader(mem, { frozen: true, cachePages: 64 });
    for (let round = 0; round < 10; round++) for (let p = 0; p < 6; p++) small.u32(p * 4096 * 64);
    expect(small.cacheFills).toBe(6);
    expect(() => new PhysReader(mem, { cachePages: -1 })).toThrow(UsageError);
  });

  it('reads straight from the source while the guest runs, and sees its changes', () => {
    const mem = memory(false);
    const r = new PhysReader(mem, { frozen: false });
    r.u32(0x3000);
    mem.setBytes(0x3000, Uint8Array.from([9, 9, 9, 9]));
    expect(r.u32(0x3000)).toBe(0x09090909);
    expect(r.cacheFills).toBe(0);
    expect(mem.reads).toBe(2);
  });

  it('is dropped by invalidate() and by any change of the freeze', () => {
    const mem = memory(false);
    const r = new PhysReader(mem, { frozen: true });
    expect(r.u32(0x3000)).toBe(want(0x3000, 4));
    mem.setBytes(0x3000, Uint8Array.from([7, 7, 7, 7]));
    expect(r.u32(0x3000)).toBe(want(0x3000, 4)); // frozen: the cached page is served
    r.invalidate();
    expect(r.u32(0x3000)).toBe(0x07070707);
    mem.setBytes(0x3000, Uint8Array.from([6, 6, 6, 6]));
    r.setFrozen(false);
    expect(r.u32(0x3000)).toBe(0x06060606);
    r.setFrozen(true);
    expect(r.u32(0x3000)).toBe(0x06060606);
  });

  it('fetches the missing pages of a bulk read in one readMany batch', () => {
    const mem = memory(false, true);
    const r = new PhysReader(mem, { frozen: true });
    const dst = new Uint8Array(5 * 4096);
    r.read(0x10800, dst);
    expect(dst).toEqual(mem.getBytes(0x10800, dst.length));
    expect(mem.readManyCalls).toBe(1);
    expect(mem.reads).toBe(0);
    expect(r.cacheFills).toBe(6);
    r.read(0x10800, dst); // all cached now
    expect(mem.readManyCalls).toBe(1);
  });

  it('reads a running guest without windows in one source call per bulk read', () => {
    const mem = memory(false, true);
    const r = new PhysReader(mem);
    const dst = new Uint8Array(5 * 4096);
    r.read(0x10800, dst);
    expect(dst).toEqual(mem.getBytes(0x10800, dst.length));
    expect(mem.reads).toBe(1);
  });
});

describe('PhysReader windows', () => {
  it('gives zero-copy views inside one window only', () => {
    const mem = memory(true);
    const r = new PhysReader(mem);
    const v = r.view(0x1000, 16)!;
    mem.setBytes(0x1000, Uint8Array.from([0x5a]));
    expect(v[0]).toBe(0x5a);
    expect(r.view(1 * MiB - 8, 16)).toBeNull(); // spans two windows
    expect(r.view(3 * GiB, 1)).toBeNull();
    expect(r.hasWindows).toBe(true);
    expect(new PhysReader(memory(false)).view(0, 1)).toBeNull();
  });
});
