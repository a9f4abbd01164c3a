import { GuestDataError, isVmlensError } from '../../util/errors.ts';

/**
 * What kallsyms decoding needs of the guest: bytes of the kernel image by virtual address.
 * The address-space layer provides this for a live guest or a dump; tests provide it over a
 * vmlinux file. `read` throws a VmlensError when any byte of the request is unmapped.
 */
export interface KernelImageReader {
  read(va: bigint, dst: Uint8Array): void;
  /**
   * Optional: the bytes of [va, va + len), as a view of guest memory where the source maps it
   * (no copy), else a copy. Throws like read(). The address-space layer's readRange is this.
   */
  readRange?(va: bigint, len: number): Uint8Array;
}

/** A half-open range of kernel virtual addresses, [start, end). */
export interface VaRange {
  readonly start: bigint;
  readonly end: bigint;
}

export const PAGE_SIZE = 4096;
/** Labels in the generated kallsyms assembly are `.balign 8` on 64-bit kernels (ALGN in write_src). */
export const TABLE_ALIGN = 8;
const U64 = (1n << 64n) - 1n;

/** Upper and lower 32-bit halves of a 64-bit virtual address. */
export function vaHi(va: bigint): number {
  return Number((va >> 32n) & 0xffff_ffffn);
}
export function vaLo(va: bigint): number {
  return Number(va & 0xffff_ffffn);
}
export function vaFromHalves(hi: number, lo: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** `va + delta` wrapped to 64 bits, as address arithmetic is. */
export function vaAdd(va: bigint, delta: number | bigint): bigint {
  return (va + BigInt(delta)) & U64;
}

export function hex(va: bigint | number): string {
  return `0x${va.toString(16)}`;
}

/**
 * Fill `dst` from `va`, tolerating unmapped pages: a running kernel unmaps parts of its own
 * image (freed init memory, the gaps between text, rodata and data), so a scan over the image
 * must step over holes instead of failing. Unreadable pages are left as zeros — no table the
 * scanners look for can be made of zeros. Returns the number of bytes that could not be read.
 */
export function readTolerant(reader: KernelImageReader, va: bigint, dst: Uint8Array): number {
  try {
    reader.read(va, dst);
    return 0;
  } catch (e) {
    if (!isVmlensError(e)) throw e;
  }
  let missing = 0;
  let off = 0;
  while (off < dst.length) {
    const pageVa = vaAdd(va, off);
    const inPage = PAGE_SIZE - Number(pageVa & BigInt(PAGE_SIZE - 1));
    const len = Math.min(inPage, dst.length - off);
    const piece = dst.subarray(off, off + len);
    try {
      reader.read(pageVa, piece);
    } catch (e) {
      if (!isVmlensError(e)) throw e;
      piece.fill(0);
      missing += len;
    }
    off += len;
  }
  return missing;
}

/**
 * [va, va + len) of the image: a view when the reader offers one and every page is mapped,
 * otherwise a copy with unmapped pages as zeros. `scratch`, if given and large enough, is
 * filled instead of a new buffer. The result is 4-byte aligned, for u32 views over it.
 */
export function readImage(reader: KernelImageReader, va: bigint, len: number, scratch?: Uint8Array): { bytes: Uint8Array; missing: number } {
  if (reader.readRange) {
    try {
      const view = reader.readRange(va, len);
      if (view.length === len && view.byteOffset % 4 === 0) return { bytes: view, missing: 0 };
    } catch (e) {
      if (!isVmlensError(e)) throw e;
    }
  }
  const bytes = scratch && scratch.length >= len ? scratch.subarray(0, len) : new Uint8Array(len);
  const missing = readTolerant(reader, va, bytes);
  return { bytes, missing };
}

/**
 * [base, base + bytes.length) of the image (a copy or a view), with little-endian accessors by offset.
 * Scanners work on offsets into one window so that inner loops see plain numbers only.
 */
export class ImageWindow {
  readonly u32: Uint32Array;
  readonly end: bigint;

  readonly bytes: Uint8Array;

  constructor(
    readonly base: bigint,
    bytes: Uint8Array,
    /** Bytes of the window that were unmapped (read as zeros). */
    readonly missing = 0,
  ) {
    if (bytes.byteOffset % 4 !== 0) throw new Error('ImageWindow needs a 4-byte aligned buffer');
    // Always a plain Uint8Array (not a Buffer or other subclass): the scanners' element loads
    // stay monomorphic, which is several times faster.
    this.bytes = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
    this.u32 = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
    this.end = base + BigInt(bytes.length);
  }

  static read(reader: KernelImageReader, base: bigint, length: number): ImageWindow {
    const { bytes, missing } = readImage(reader, base, length);
    return new ImageWindow(base, bytes, missing);
  }

  get length(): number {
    return this.bytes.length;
  }

  /** The part [from, to) of this window, sharing its bytes; `from` is rounded down to 8. */
  slice(from: number, to: number): ImageWindow {
    const start = Math.max(0, from - (from % 8));
    const end = Math.min(this.bytes.length, Math.max(start, to));
    return new ImageWindow(this.base + BigInt(start), this.bytes.subarray(start, end));
  }

  vaOf(offset: number): bigint {
    return this.base + BigInt(offset);
  }

  /** Offset of `va` in the window, or -1 when outside. */
  offsetOf(va: bigint): number {
    if (va < this.base || va >= this.end) return -1;
    return Number(va - this.base);
  }

  u16At(off: number): number {
    const b = this.bytes;
    return b[off]! | (b[off + 1]! << 8);
  }

  /** u32 at a 4-aligned offset. */
  u32At(off: number): number {
    return this.u32[off >>> 2]!;
  }

  /** u32 at any offset. */
  u32AtUnaligned(off: number): number {
    const b = this.bytes;
    return (b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24)) >>> 0;
  }

  u64At(off: number): bigint {
    return vaFromHalves(this.u32AtUnaligned(off + 4), this.u32AtUnaligned(off));
  }
}

/** Align `n` up to a multiple of `a` (a power of two). */
export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * A bound on the work one decode may do. Single passes over memory are bounded by the range
 * itself; what is charged here is the work repeated per candidate (walking names from a
 * position, decoding a table to test it), which a guest that fills memory with near-tables
 * (regular patterns that pass every cheap test) could make quadratic. Running out is a clear
 * error rather than a hang. Debian kernels use some 2 million steps.
 */
export class WorkBudget {
  constructor(private left: number) {}

  spend(steps: number): void {
    this.left -= steps;
    if (this.left < 0) throw new GuestDataError('kallsyms: gave up: memory holds too many near-copies of the symbol tables to search');
  }
}

/** Steps one loadKallsyms may take: some 50 times what a Debian kernel needs. */
export const DEFAULT_WORK_BUDGET = 100_000_000;
