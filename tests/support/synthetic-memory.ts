/**
 * Synthetic guest-physical memory and an x86-64 page-table builder, for testing every layer
 * above the sources without a VM.
 */
import { normalizeRanges, rangeIndexFor } from '../../src/source/ranges.ts';
import type { PhysicalMemory, PhysRange, RamWindow } from '../../src/source/types.ts';
import { ReadOnlyError } from '../../src/util/errors.ts';

export interface SyntheticMemoryOptions {
  /** RAM runs (page-aligned, sorted, disjoint). Everything else is a hole. */
  ranges: PhysRange[];
  /** Expose zero-copy windows (like the shared RAM file). Default true. */
  windows?: boolean;
  /** Offer readMany (like a gdb or process_vm_readv source). Default false. */
  readMany?: boolean;
  /** Default true. */
  writable?: boolean;
}

interface Backing {
  readonly start: number;
  readonly size: number;
  readonly u8: Uint8Array;
  readonly u32: Uint32Array;
}

/** A PhysicalMemory over ArrayBuffers, one per RAM range, counting the calls made to it. */
export class SyntheticMemory implements PhysicalMemory {
  readonly kind = 'synthetic';
  readonly description: string;
  readonly ranges: readonly PhysRange[];
  readonly writable: boolean;
  readonly windows?: readonly RamWindow[];
  readMany?: (requests: readonly { gpa: number; dst: Uint8Array }[]) => void;

  /** Calls of read(), of readMany() and of write(), for tests of caching. */
  reads = 0;
  readManyCalls = 0;
  writes = 0;

  private readonly backing: Backing[];

  constructor(options: SyntheticMemoryOptions) {
    // Adjacent runs merge into one RAM range (as sources report them) but keep their own buffers
    // and windows, like one RAM file mapped in two windows.
    this.ranges = normalizeRanges(options.ranges);
    this.writable = options.writable ?? true;
    this.backing = options.ranges.map((r) => {
      const buf = new ArrayBuffer(r.size);
      return { start: r.start, size: r.size, u8: new Uint8Array(buf), u32: new Uint32Array(buf) };
    });
    if (options.windows ?? true) this.windows = this.backing;
    if (options.readMany) {
      this.readMany = (requests) => {
        this.readManyCalls++;
        for (const r of requests) this.copyOut(r.gpa, r.dst);
      };
    }
    this.description = `synthetic ${this.ranges.map((r) => `0x${r.start.toString(16)}+0x${r.size.toString(16)}`).join(', ')}`;
  }

  read(gpa: number, dst: Uint8Array): void {
    this.reads++;
    this.copyOut(gpa, dst);
  }

  write(gpa: number, src: Uint8Array): void {
    if (!this.writable) throw new ReadOnlyError('synthetic memory is read-only');
    this.writes++;
    rangeIndexFor(this.ranges, gpa, src.length);
    this.forPieces(gpa, src.length, (b, off, done, len) => b.u8.set(src.subarray(done, done + len), off));
  }

  close(): void {}

  // ---- direct access for building test data (not counted) ----

  setU64(gpa: number, value: bigint): void {
    const b = this.backingFor(gpa, 8);
    const off = gpa - b.start;
    new DataView(b.u8.buffer).setBigUint64(off, BigInt.asUintN(64, value), true);
  }

  getU64(gpa: number): bigint {
    const b = this.backingFor(gpa, 8);
    return new DataView(b.u8.buffer).getBigUint64(gpa - b.start, true);
  }

  setBytes(gpa: number, bytes: Uint8Array): void {
    rangeIndexFor(this.ranges, gpa, bytes.length);
    this.forPieces(gpa, bytes.length, (b, off, done, len) => b.u8.set(bytes.subarray(done, done + len), off));
  }

  getBytes(gpa: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.copyOut(gpa, out);
    return out;
  }

  /** Fill [gpa, gpa+len) with a byte pattern that encodes the address (distinct per offset). */
  fillPattern(gpa: number, len: number): void {
    const b = this.backingFor(gpa, len);
    for (let i = 0; i < len; i++) b.u8[gpa - b.start + i] = patternByte(gpa + i);
  }

  private copyOut(gpa: number, dst: Uint8Array): void {
    rangeIndexFor(this.ranges, gpa, dst.length); // raises PhysicalAccessError on a hole
    this.forPieces(gpa, dst.length, (b, off, done, len) => dst.set(b.u8.subarray(off, off + len), done));
  }

  /** Split [gpa, gpa+len) (known to be RAM) over the backing buffers. */
  private forPieces(gpa: number, len: number, fn: (b: Backing, off: number, done: number, len: number) => void): void {
    for (let done = 0; done < len; ) {
      const a = gpa + done;
      const b = this.backing.find((x) => a >= x.start && a < x.start + x.size)!;
      const n = Math.min(len - done, b.start + b.size - a);
      fn(b, a - b.start, done, n);
      done += n;
    }
  }

  private backingFor(gpa: number, len: number): Backing {
    const b = this.backing.find((x) => gpa >= x.start && gpa + len <= x.start + x.size);
    if (!b) throw new Error(`test setup: 0x${gpa.toString(16)}+${len} is not inside one RAM buffer`);
    return b;
  }
}

/** The byte `fillPattern` puts at physical address gpa. */
export function patternByte(gpa: number): number {
  return (Math.floor(gpa / 4096) * 31 + (gpa % 4096) * 7 + 13) & 0xff;
}

export const SIZE_4K = 4096;
export const SIZE_2M = 2 * 1024 * 1024;
export const SIZE_1G = 1024 * 1024 * 1024;
export type PageSize = typeof SIZE_4K | typeof SIZE_2M | typeof SIZE_1G;

export interface MapFlags {
  writable?: boolean; // default true
  user?: boolean; // default false
  nx?: boolean; // default false
  /** Extra bits OR-ed into the leaf entry (e.g. reserved bits for fault tests). */
  extra?: bigint;
}

const P = 1n;
const RW = 2n;
const US = 4n;
const PS = 0x80n;
const NX = 1n << 63n;
const ADDR = 0x000f_ffff_ffff_f000n;

/** Index-shift of each level, by level number (1 = PT … 5 = PML5). */
const SHIFT: Record<number, number> = { 1: 12, 2: 21, 3: 30, 4: 39, 5: 48 };
const LEVEL_OF_SIZE: Record<number, number> = { [SIZE_4K]: 1, [SIZE_2M]: 2, [SIZE_1G]: 3 };

/**
 * Builds 4- or 5-level page tables in a SyntheticMemory. Tables are allocated from `tableArea`
 * (zeroed pages); intermediate entries are present, writable and user, so leaf flags decide
 * unless a test edits an entry with `setEntry`.
 */
export class PageTableBuilder {
  readonly levels: 4 | 5;
  readonly root: number;
  private next: number;
  private readonly end: number;

  constructor(
    readonly memory: SyntheticMemory,
    options: { levels: 4 | 5; tableArea: PhysRange },
  ) {
    this.levels = options.levels;
    this.next = options.tableArea.start;
    this.end = options.tableArea.start + options.tableArea.size;
    this.root = this.allocTable();
  }

  /** A fresh zeroed 4 KiB page from the table area. */
  allocTable(): number {
    if (this.next + SIZE_4K > this.end) throw new Error('page-table area exhausted');
    const pa = this.next;
    this.next += SIZE_4K;
    this.memory.setBytes(pa, new Uint8Array(SIZE_4K));
    return pa;
  }

  get tablesUsed(): number {
    return (this.next - this.root) / SIZE_4K;
  }

  /** Map one page of `size` at `va` (aligned) to `pa` (aligned). */
  map(va: bigint, pa: number, size: PageSize = SIZE_4K, flags: MapFlags = {}): void {
    const leafLevel = LEVEL_OF_SIZE[size]!;
    if (va % BigInt(size) !== 0n || pa % size !== 0) throw new Error(`unaligned ${size}-byte mapping 0x${va.toString(16)} -> 0x${pa.toString(16)}`);
    const entryPa = this.ensurePath(va, leafLevel);
    let e = BigInt(pa) | P;
    if (flags.writable ?? true) e |= RW;
    if (flags.user) e |= US;
    if (flags.nx) e |= NX;
    if (size !== SIZE_4K) e |= PS;
    if (flags.extra) e |= flags.extra;
    this.memory.setU64(entryPa, e);
  }

  /** Map [va, va+len) to [pa, pa+len) with pages of `size`. */
  mapRange(va: bigint, pa: number, len: number, size: PageSize = SIZE_4K, flags: MapFlags = {}): void {
    for (let off = 0; off < len; off += size) this.map(va + BigInt(off), pa + off, size, flags);
  }

  /** Clear the entry at `level` for `va` (its path must exist). */
  unmap(va: bigint, level = 1): void {
    this.setEntry(va, level, 0n);
  }

  /** Physical address of the entry at `level` on the path of `va`, or null if a table above is absent. */
  entryPa(va: bigint, level: number): number | null {
    let table = this.root;
    for (let l = this.levels; l >= level; l--) {
      const pa = table + this.index(va, l) * 8;
      if (l === level) return pa;
      const e = this.memory.getU64(pa);
      if ((e & P) === 0n || (e & PS) !== 0n) return null;
      table = Number(e & ADDR);
    }
    return null;
  }

  getEntry(va: bigint, level: number): bigint {
    const pa = this.entryPa(va, level);
    if (pa === null) throw new Error(`no table at level ${level} for 0x${va.toString(16)}`);
    return this.memory.getU64(pa);
  }

  setEntry(va: bigint, level: number, value: bigint): void {
    const pa = this.entryPa(va, level);
    if (pa === null) throw new Error(`no table at level ${level} for 0x${va.toString(16)}`);
    this.memory.setU64(pa, value);
  }

  /** Table index of `va` at `level`. */
  index(va: bigint, level: number): number {
    return Number((va >> BigInt(SHIFT[level]!)) & 511n);
  }

  /** Entry address for `leafLevel`, creating the tables above it. */
  private ensurePath(va: bigint, leafLevel: number): number {
    let table = this.root;
    for (let l = this.levels; l > leafLevel; l--) {
      const pa = table + this.index(va, l) * 8;
      const e = this.memory.getU64(pa);
      if ((e & P) === 0n) {
        const t = this.allocTable();
        this.memory.setU64(pa, BigInt(t) | P | RW | US);
        table = t;
      } else {
        if ((e & PS) !== 0n) throw new Error(`0x${va.toString(16)} is inside a large page at level ${l}`);
        table = Number(e & ADDR);
      }
    }
    return table + this.index(va, leafLevel) * 8;
  }
}

/** Sign-extend a 48- or 57-bit address to a canonical 64-bit one. */
export function canonical(va: bigint, levels: 4 | 5): bigint {
  const bits = levels === 5 ? 57n : 48n;
  const low = va & ((1n << bits) - 1n);
  return (low >> (bits - 1n)) & 1n ? low | (((1n << 64n) - 1n) ^ ((1n << bits) - 1n)) : low;
}
