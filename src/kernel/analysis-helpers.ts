/**
 * Small readers shared by analyses: fixed-size char arrays and (hi, lo) pointer loads through
 * precomputed member offsets. They exist so hot loops (ps over thousands of tasks) read fields
 * with typed loads and no per-field object.
 */
import type { AddressSpace } from '../mmu/address-space.ts';
import type { PhysReader } from '../mmu/phys-reader.ts';
import { vaAddHi, vaAddLo, vaFromParts } from '../mmu/va.ts';
import { readCString } from './object.ts';

/** A (hi, lo) address that loops re-point instead of allocating. */
export interface Ptr {
  hi: number;
  lo: number;
}

/** Load the pointer at (hi, lo)+off into `out`; returns false for NULL. */
export function loadPtr(space: AddressSpace, hi: number, lo: number, off: number, out: Ptr): boolean {
  const l = space.readU64(vaAddHi(hi, lo, off), vaAddLo(lo, off));
  out.hi = space.hi;
  out.lo = l;
  return out.hi !== 0 || out.lo !== 0;
}

export function u32At(space: AddressSpace, hi: number, lo: number, off: number): number {
  return space.readU32(vaAddHi(hi, lo, off), vaAddLo(lo, off));
}

export function i32At(space: AddressSpace, hi: number, lo: number, off: number): number {
  return space.readU32(vaAddHi(hi, lo, off), vaAddLo(lo, off)) | 0;
}

/** An unsigned 64-bit field as a number (exact below 2^53: counters, sizes, nanoseconds). */
export function u64At(space: AddressSpace, hi: number, lo: number, off: number): number {
  const l = space.readU64(vaAddHi(hi, lo, off), vaAddLo(lo, off));
  return space.hi * 4294967296 + l;
}

export function charsAt(space: AddressSpace, hi: number, lo: number, off: number, len: number): string {
  return readCString(space, vaAddHi(hi, lo, off), vaAddLo(lo, off), len);
}

/** Pages of one object a FieldReader remembers: fields further out are read through the space. */
const OBJECT_PAGES = 4;
const latin1 = new TextDecoder('latin1');

/**
 * Reads the fields of one object after another, translating each page of the current object
 * once: a task's pid, tgid, comm, state and start time cost one or two translations instead of
 * one each. Point it at an object with `at(hi, lo)`, then read fields by offset.
 *
 * Nothing is allocated per object or per field (strings aside), even where V8 does not inline
 * these methods: physical addresses, which exceed 2^30 and would be boxed as arguments or
 * results of calls, stay in Float64Arrays (AddressSpace.translateTo, PhysReader.tryU64At), and
 * 64-bit values come back through `lo`/`hi`. Addresses may be given as int32 or uint32 halves.
 *
 * A translation is as fresh as the first field read on its page: for a running guest that is
 * microseconds before the other fields of the same page, the same window a single
 * translate-then-read already has. Fields that cross a page boundary, or lie beyond the first
 * OBJECT_PAGES pages, are read through the address space as usual. A fault throws the space's
 * TranslationError, as a plain read would.
 */
export class FieldReader {
  readonly space: AddressSpace;
  private readonly reader: PhysReader;
  private baseHi = 0;
  private baseLo = 0;
  /** Offset of the object in its first page. */
  private baseOff = 0;
  /** Physical page of each page of the object from the base's page on; -1 = not translated yet. */
  private readonly pagePa = new Float64Array(OBJECT_PAGES).fill(-1);
  /** Physical address of the field being read. */
  private readonly addr = new Float64Array(1);
  /** Halves of the last 64-bit value loaded. */
  private readonly out = new Uint32Array(2);
  private readonly bytes = new Uint8Array(64);

  constructor(space: AddressSpace) {
    this.space = space;
    this.reader = space.reader;
  }

  /** Low and high 32 bits of the value the last `load64`/`u64` read. */
  get lo(): number {
    return this.out[0]!;
  }
  get hi(): number {
    return this.out[1]!;
  }

  /** Start reading the object at (hi, lo). */
  at(hi: number, lo: number): this {
    this.baseHi = hi | 0;
    this.baseLo = lo | 0;
    this.baseOff = lo & 0xfff;
    const p = this.pagePa;
    for (let i = 0; i < OBJECT_PAGES; i++) p[i] = -1;
    return this;
  }

  u32(off: number): number {
    const r = this.reader;
    if (this.locate(off, 8) && r.tryU64At(this.addr, 0)) return r.lo;
    return this.space.readU32(vaAddHi(this.baseHi, this.baseLo, off) | 0, vaAddLo(this.baseLo, off) | 0);
  }

  i32(off: number): number {
    return this.u32(off) | 0;
  }

  /** Load a u64 into `lo`/`hi`. */
  load64(off: number): void {
    const r = this.reader;
    if (this.locate(off, 8) && r.tryU64At(this.addr, 0)) {
      this.out[0] = r.lo;
      this.out[1] = r.hi;
      return;
    }
    const s = this.space;
    this.out[0] = s.readU64(vaAddHi(this.baseHi, this.baseLo, off) | 0, vaAddLo(this.baseLo, off) | 0);
    this.out[1] = s.hi;
  }

  /** A u64: returns the low half and leaves the high half in `hi`. */
  u64(off: number): number {
    this.load64(off);
    return this.out[0]!;
  }

  /** An unsigned 64-bit field as a number (exact below 2^53: counters, nanoseconds). */
  num64(off: number): number {
    this.load64(off);
    return this.out[1]! * 4294967296 + this.out[0]!;
  }

  /** Load the pointer at `off` into `out`; false for NULL. */
  ptr(off: number, out: Ptr): boolean {
    this.load64(off);
    const lo = this.out[0]!;
    const hi = this.out[1]!;
    out.lo = lo;
    out.hi = hi;
    return hi !== 0 || lo !== 0;
  }

  /** A fixed-size char array (comm…) up to its first NUL, decoded as Latin-1 like the kernel's bytes. */
  chars(off: number, len: number): string {
    const n = Math.min(len, this.bytes.length);
    const b = this.bytes;
    this.copy(off, b, 0, n);
    let end = 0;
    while (end < n && b[end] !== 0) end++;
    return latin1.decode(b.subarray(0, end));
  }

  /** Copy `len` bytes at `off` into `dst` at `at` (no string made: for tables that decode lazily). */
  copy(off: number, dst: Uint8Array, at: number, len: number): void {
    if (len <= 0) return;
    const r = this.reader;
    if (len % 8 === 0 && this.locate(off, len)) {
      const a = this.addr;
      const base = a[0]!;
      for (let i = 0; i < len; i += 8) {
        a[0] = base + i;
        if (!r.tryU64At(a, 0)) break;
        const lo = r.lo;
        const hi = r.hi;
        dst[at + i] = lo & 0xff;
        dst[at + i + 1] = (lo >>> 8) & 0xff;
        dst[at + i + 2] = (lo >>> 16) & 0xff;
        dst[at + i + 3] = lo >>> 24;
        dst[at + i + 4] = hi & 0xff;
        dst[at + i + 5] = (hi >>> 8) & 0xff;
        dst[at + i + 6] = (hi >>> 16) & 0xff;
        dst[at + i + 7] = hi >>> 24;
        if (i + 8 === len) return;
      }
    }
    this.space.read(vaFromParts(vaAddHi(this.baseHi, this.baseLo, off), vaAddLo(this.baseLo, off)), dst.subarray(at, at + len));
  }

  /**
   * Put the guest-physical address of [off, off+size) of the object in `addr[0]`; false when
   * it crosses a page or lies beyond the pages remembered (the caller then reads through the
   * space, which also raises any fault).
   */
  private locate(off: number, size: number): boolean {
    const rel = this.baseOff + off;
    if (rel < 0) return false;
    const page = rel >>> 12;
    if (page >= OBJECT_PAGES || (rel + size - 1) >>> 12 !== page) return false;
    const pp = this.pagePa;
    if (pp[page]! < 0) {
      const l = vaAddLo(this.baseLo, off) | 0;
      if (!this.space.translateTo(vaAddHi(this.baseHi, this.baseLo, off) | 0, l, pp, page)) {
        pp[page] = -1;
        return false;
      }
      pp[page] = pp[page]! - (l & 0xfff);
    }
    this.addr[0] = pp[page]! + (rel & 0xfff);
    return true;
  }
}

/**
 * Run one scan (a walk over many guest objects) reading each guest page at most once.
 *
 * Sources without zero-copy windows — the QEMU process through /proc/PID/mem, a gdbstub — pay a
 * system call or a network round trip per read, and for a running guest the reader caches
 * nothing, so every field and every re-validated page-table entry would be one. For the
 * duration of `fn` the reader keeps whole pages (its frozen mode): the scan then sees each page
 * as it was when first read, and translates through those same pages, so every translation is
 * exact for what the scan read. At the end the cache and every translation built from it are
 * dropped (the reader's epoch advances), so nothing outlives the scan. A walk over a running
 * guest is never atomic, with or without this; callers detect lists that changed under them.
 *
 * Zero-copy sources (the shared RAM file) and guests already known frozen are left as they
 * are: their reads cost no more than a cache would.
 */
export function scanOnce<T>(space: AddressSpace, fn: () => T): T {
  const r = space.reader;
  if (r.hasWindows || r.frozen) return fn();
  r.setFrozen(true);
  try {
    return fn();
  } finally {
    r.setFrozen(false);
  }
}
