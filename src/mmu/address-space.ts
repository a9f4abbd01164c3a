/**
 * One guest virtual address space: a page-table root, a paging format, and a translation cache.
 *
 * Hot methods take addresses as (hi, lo) uint32 halves and allocate nothing (see va.ts); the
 * bigint methods are the friendly edge. Reads fault with TranslationError naming the address and
 * the level whose entry stopped the walk.
 */
import type { PhysicalMemory } from '../source/types.ts';
import { cr3Root, type VcpuState } from '../machine/types.ts';
import { TranslationError, UsageError } from '../util/errors.ts';
import type { Warnings } from '../util/warnings.ts';
import { PhysReader, type PhysReadRequest } from './phys-reader.ts';
import {
  FAULT_NON_CANONICAL,
  PageWalker,
  pagingFormat,
  pagingLevels,
  PERM_NX,
  PERM_USER,
  PERM_WRITABLE,
  PTE_ADDR_HI,
  PTE_ADDR_LO,
  PTE_PRESENT,
  PTE_PS,
  type PagingFormat,
  type WalkerOptions,
} from './paging.ts';
import { checkVa, DOUBLE_ZERO, vaFromParts, vaHi, vaLo } from './va.ts';

const PAGE = 4096;
const TWO_32 = 4294967296;
/** Largest single virtual read or write: a guard against lengths taken from hostile guest data. */
export const MAX_TRANSFER = 256 * 1024 * 1024;

export interface AddressSpaceOptions extends WalkerOptions {
  /** Translation-cache entries (rounded up to a power of two). Default 4096; 0 disables it. */
  tlbEntries?: number;
  /** Used only when constructed from a PhysicalMemory: whether the guest is frozen (PhysReader). */
  frozen?: boolean;
}

/** A run of virtual pages mapped to contiguous physical memory with the same page size and rights. */
export interface MappedRange {
  readonly va: bigint;
  readonly pa: number;
  /** Bytes. */
  readonly size: number;
  readonly pageSize: number;
  /** Effective rights: writable and user only if every level allows it; nx if any level forbids execution. */
  readonly writable: boolean;
  readonly user: boolean;
  readonly nx: boolean;
}

export interface WalkOptions {
  /** First virtual address of interest (rounded down to its page). Default 0. */
  start?: bigint;
  /** End (exclusive) of the addresses of interest (rounded up to a page). Default 2^64. */
  end?: bigint;
  /** Stop after this many ranges. Default 1,000,000. */
  maxRanges?: number;
  /** Stop after reading this many page tables (a guard against hostile, looping tables). Default 131,072. */
  maxTables?: number;
  /** Where to record a stop for a table outside RAM or an exhausted budget. */
  warnings?: Warnings;
}

/** One paging-structure entry read during a translation (for `vtop`-style display). */
export interface TranslationStep {
  readonly level: number;
  readonly entryPa: number;
  readonly entry: bigint;
}

export interface TranslationReport {
  readonly va: bigint;
  /** Physical address, or null on a fault. */
  readonly pa: number | null;
  readonly pageSize: number;
  readonly writable: boolean;
  readonly user: boolean;
  readonly nx: boolean;
  /** Entries read, top level first. */
  readonly steps: readonly TranslationStep[];
  readonly fault: { readonly level: number; readonly reason: string } | null;
}

export class AddressSpace {
  readonly reader: PhysReader;
  readonly format: PagingFormat;
  readonly levels: 4 | 5;
  // Number fields start as numbers, never undefined; doubles where values exceed 2^30 (see DOUBLE_ZERO).
  readonly root: number = DOUBLE_ZERO;

  /**
   * Out-parameter of `readU64`: the high 32 bits of the value it just read. `readU64` returns the
   * low 32 bits; read `space.hi` immediately after, before any other read through this space.
   */
  get hi(): number {
    return this.out[0]!;
  }
  /** After `translate` returned -1: the level (1 = PTE … 5 = PML5E) and why. */
  lastFaultLevel = 0;
  lastFaultReason = '';

  private readonly walker: PageWalker;
  /** Backing of `hi`: a Uint32Array stores a uint32 without boxing it (see PhysReader.out). */
  private readonly out = new Uint32Array(1);
  private readonly scratch = new Uint8Array(8);
  private readonly scratchDv = new DataView(this.scratch.buffer);

  // ---- translation cache ----------------------------------------------------------------------
  //
  // Direct-mapped, keyed by 4 KiB virtual page number (hi * 2^20 + lo >>> 12); a large page is
  // cached one 4 KiB page at a time. Each entry keeps the physical page and, for validation, the
  // physical address and value of every paging-structure entry the walk read.
  //
  // The rule: it never serves a stale mapping.
  // - Frozen guest (paused, or a dump; PhysReader.frozen): nothing can change the tables except
  //   vmlens itself, so entries are served directly. Any change of the frozen flag, any
  //   PhysReader.invalidate() and any write through the reader advance the reader's epoch; a
  //   space that sees a new epoch flushes before its next lookup.
  // - Running guest: a hit is served only after re-reading each entry on its path and finding it
  //   unchanged (ignoring Accessed/Dirty, which the walk never looks at). The argument: a walk is
  //   a function of the root, the address and the values it reads; the address it reads at each
  //   level is a function of the root or of the previous entry's value. If every value read is
  //   the same, the walk reads the same addresses, gets the same values, and reaches the same
  //   result — so the cached result is exactly what a fresh walk would give now. If one differs,
  //   the cache walks afresh.
  // Faults are never cached: an unmapped page is walked again on every access.
  private tlbOn = false;
  private readonly tlbShift: number = 31;
  /** hi >> signShift is 0 or -1 exactly for canonical addresses (bits 47 or 56 … 63 equal). */
  private readonly signShift: number = 15;
  /** Per slot: [key, physical page], side by side so a lookup touches one cache line. */
  private readonly tlb: Float64Array;
  /**
   * Per slot: the walk's entries (5 × [entry address f64, value lo u32, value hi u32]), one
   * buffer seen two ways, and how many. Allocated on the first fill: spaces made to probe a
   * candidate root and dropped never pay for them.
   */
  private tlbPath64 = new Float64Array(0);
  private tlbPath32 = new Uint32Array(0);
  private tlbDepth = new Uint8Array(0);
  private epoch = 0;
  private frozen = false;

  constructor(memory: PhysReader | PhysicalMemory, root: number, levels: 4 | 5, options: AddressSpaceOptions = {}) {
    if (levels !== 4 && levels !== 5) throw new UsageError(`paging levels must be 4 or 5, not ${String(levels)}`);
    if (!Number.isSafeInteger(root) || root < 0 || root >= 2 ** 52 || root % PAGE !== 0) {
      throw new UsageError(`page-table root ${String(root)} is not a page-aligned physical address below 2^52`);
    }
    this.reader = memory instanceof PhysReader ? memory : new PhysReader(memory, { frozen: options.frozen ?? false });
    this.format = pagingFormat(levels);
    this.levels = levels;
    this.signShift = levels === 5 ? 24 : 15;
    this.root = root;
    this.walker = new PageWalker(this.reader, this.format, root, options);
    const want = options.tlbEntries ?? 4096;
    if (!Number.isInteger(want) || want < 0 || want > 1 << 22) throw new UsageError(`translation cache size must be 0 … ${1 << 22} entries, not ${want}`);
    this.tlbOn = want > 0;
    // Two slots at least, so the hash's shift count stays below 32; a disabled cache is never filled.
    const size = Math.max(2, want === 0 ? 2 : 1 << Math.ceil(Math.log2(want)));
    this.tlbShift = 32 - Math.log2(size);
    this.tlb = new Float64Array(size * 2);
    this.flush();
    this.epoch = this.reader.epoch;
    this.frozen = this.reader.frozen;
  }

  /** The space a vCPU is in, from its control registers. Throws UsageError outside long mode. */
  static forVcpu(memory: PhysReader | PhysicalMemory, vcpu: Pick<VcpuState, 'cr0' | 'cr3' | 'cr4' | 'efer'>, options?: AddressSpaceOptions): AddressSpace {
    return new AddressSpace(memory, cr3Root(vcpu.cr3), pagingLevels(vcpu), options);
  }

  /** Declare the guest frozen or running (see the cache rule above); shared by every space on the same reader. */
  setFrozen(frozen: boolean): void {
    this.reader.setFrozen(frozen);
    this.sync();
  }

  /** Drop every cached translation of this space. */
  flush(): void {
    const t = this.tlb;
    for (let i = 0; i < t.length; i += 2) t[i] = -1; // no page has key -1
  }

  // ---- hot path: (hi, lo) -------------------------------------------------------------------

  /** Guest-physical address of (hi, lo), or -1 on a fault (then see lastFaultLevel/lastFaultReason). */
  translate(hi: number, lo: number): number {
    if (this.epoch !== this.reader.epoch) this.sync();
    const vpn = lo >>> 12;
    const slot = Math.imul(vpn ^ hi, 0x9e3779b1) >>> this.tlbShift;
    const t = this.tlb;
    if (t[2 * slot] === (hi >>> 0) * 1048576 + vpn && (this.frozen || this.validate(slot))) return t[2 * slot + 1]! + (lo & 0xfff);
    // Kept small so V8 inlines it into callers. The calls below may not be inlined, so they get
    // small integers only (a larger number would be boxed per call): the high half as int32,
    // which fits once the address is known canonical, and the page number; the result comes
    // back in a field.
    const top = hi >> this.signShift;
    if (top !== 0 && top !== -1) return this.nonCanonical();
    return this.miss(hi | 0, vpn, slot) ? this.walker.pagePa + (lo & 0xfff) : -1;
  }

  /**
   * `translate`, leaving the guest-physical address in `out[index]`; false on a fault. Nothing
   * is allocated even where V8 does not inline the call (an address above 2^30 returned as a
   * number would be boxed): for loops that translate once and read many fields of a page.
   */
  translateTo(hi: number, lo: number, out: Float64Array, index: number): boolean {
    const pa = this.translate(hi, lo);
    if (pa < 0) return false;
    out[index] = pa;
    return true;
  }

  readU8(hi: number, lo: number): number {
    const pa = this.translate(hi, lo);
    if (pa < 0) throw this.faultError(hi, lo);
    return this.reader.u8(pa);
  }

  readU16(hi: number, lo: number): number {
    const pa = this.translate(hi, lo);
    if (pa < 0) throw this.faultError(hi, lo);
    if ((lo & 0xfff) <= PAGE - 2) return this.reader.u16(pa);
    return this.readAcross(hi, lo, 2);
  }

  readU32(hi: number, lo: number): number {
    const pa = this.translate(hi, lo);
    if (pa < 0) throw this.faultError(hi, lo);
    if ((lo & 0xfff) <= PAGE - 4) return this.reader.u32(pa);
    return this.readAcross(hi, lo, 4);
  }

  /** Reads a u64: returns its low 32 bits and leaves the high 32 bits in `this.hi`. */
  readU64(hi: number, lo: number): number {
    const pa = this.translate(hi, lo);
    if (pa < 0) throw this.faultError(hi, lo);
    if ((lo & 0xfff) <= PAGE - 8) {
      const r = this.reader;
      const low = r.u64(pa);
      this.out[0] = r.hi;
      return low;
    }
    return this.readAcross(hi, lo, 8);
  }

  // ---- friendly edge: bigint ------------------------------------------------------------------

  readU64Big(va: bigint): bigint {
    checkVa(va);
    const lo = this.readU64(vaHi(va), vaLo(va));
    return vaFromParts(this.hi, lo);
  }

  /** Guest-physical address of `va`; throws TranslationError on a fault. */
  translateVa(va: bigint): number {
    checkVa(va);
    const hi = vaHi(va);
    const lo = vaLo(va);
    const pa = this.translate(hi, lo);
    if (pa < 0) throw this.faultError(hi, lo);
    return pa;
  }

  /** Guest-physical address of `va`, or null on a fault. */
  tryTranslate(va: bigint): number | null {
    checkVa(va);
    const pa = this.translate(vaHi(va), vaLo(va));
    return pa < 0 ? null : pa;
  }

  /** Fill `dst` from `va` (any length, across pages). Every page is translated before any byte is read. */
  read(va: bigint, dst: Uint8Array): void {
    checkVa(va);
    const n = dst.length;
    if (n === 0) return;
    if (n > MAX_TRANSFER) throw new UsageError(`read of ${n} bytes exceeds the ${MAX_TRANSFER}-byte limit of one read`);
    const hi = vaHi(va);
    const lo = vaLo(va);
    if (n <= PAGE - (lo & 0xfff)) {
      const pa = this.translate(hi, lo);
      if (pa < 0) throw this.faultError(hi, lo);
      this.reader.read(pa, dst);
      return;
    }
    const r = this.reader;
    if (r.hasWindows || r.frozen) {
      r.readMany(this.pieces(hi, lo, dst, r.hasWindows));
      return;
    }
    // A source without windows (a process's memory, a gdbstub) while the guest runs: each
    // page-table entry read is a system call or a round trip, and every page of a long read would
    // re-read the same few tables. So the pages are translated against one snapshot of the tables
    // (the reader keeps whole pages meanwhile; each translation is exact for that snapshot), the
    // snapshot and the translations made from it are dropped, and the data is read afresh —
    // contiguous pages as one request, since nothing is cached by page now.
    let pieces: PhysReadRequest[];
    r.setFrozen(true);
    try {
      pieces = this.pieces(hi, lo, dst, true);
    } finally {
      r.setFrozen(false);
    }
    r.readMany(pieces);
  }

  readBytes(va: bigint, len: number): Uint8Array {
    checkLength(len);
    const out = new Uint8Array(len);
    this.read(va, out);
    return out;
  }

  /**
   * Bytes of [va, va+len). When the range is physically contiguous inside one zero-copy window
   * the result is a view of guest memory — no copy, and for a running guest its bytes change
   * under the caller; otherwise a copy.
   */
  readRange(va: bigint, len: number): Uint8Array {
    checkVa(va);
    checkLength(len);
    if (len === 0) return new Uint8Array(0);
    if (this.reader.hasWindows) {
      const hi = vaHi(va);
      const lo = vaLo(va);
      const pa = this.translate(hi, lo);
      if (pa < 0) throw this.faultError(hi, lo);
      const contiguousEnd = this.contiguousFrom(hi, lo, pa, len);
      if (contiguousEnd >= len) {
        const view = this.reader.view(pa, len);
        if (view) return view;
      }
    }
    return this.readBytes(va, len);
  }

  /**
   * Write `src` at `va` through PhysicalMemory.write. Every page is translated first, so a fault
   * writes nothing. Page protections are not enforced: they bind the guest, not the host. Cached
   * translations are flushed afterwards (the reader's epoch advances on every write).
   */
  write(va: bigint, src: Uint8Array): void {
    checkVa(va);
    if (src.length > MAX_TRANSFER) throw new UsageError(`write of ${src.length} bytes exceeds the ${MAX_TRANSFER}-byte limit of one write`);
    if (src.length === 0) return;
    const pieces = this.pieces(vaHi(va), vaLo(va), src);
    for (const p of pieces) this.reader.write(p.gpa, p.dst);
  }

  /** Every entry read to translate `va`, and the outcome (uncached: a fresh walk). For `vtop`. */
  describe(va: bigint): TranslationReport {
    checkVa(va);
    const w = this.walker;
    const ok = w.walk(vaHi(va), vaLo(va) >>> 12);
    const steps: TranslationStep[] = [];
    for (let i = 0; i < w.depth; i++) {
      steps.push({ level: this.format.table[i]!.level, entryPa: w.pathPa[i]!, entry: vaFromParts(w.pathHi[i]!, w.pathLo[i]!) });
    }
    const perms = ok ? w.perms : 0;
    return {
      va,
      pa: ok ? w.pagePa + (vaLo(va) & 0xfff) : null,
      pageSize: ok ? w.pageSize : 0,
      writable: (perms & PERM_WRITABLE) !== 0,
      user: (perms & PERM_USER) !== 0,
      nx: (perms & PERM_NX) !== 0,
      steps,
      fault: ok ? null : { level: w.faultLevel, reason: w.faultReason },
    };
  }

  /**
   * Mapped ranges in ascending address order: adjacent pages merge when their physical pages are
   * contiguous and their page size and rights agree. Bounded by maxRanges and maxTables; a table
   * outside RAM or an exhausted budget is recorded in `warnings` and skipped or ends the walk.
   */
  *walk(options: WalkOptions = {}): Generator<MappedRange, void, undefined> {
    yield* enumerateMappings(this.reader, this.format, this.root, this.walker.reservedHi, options);
  }

  // ---- internals ------------------------------------------------------------------------------

  private sync(): void {
    this.epoch = this.reader.epoch;
    this.frozen = this.reader.frozen;
    this.flush();
  }

  /** Re-read the entries a cached walk read; true if none changed (see the cache rule). */
  private validate(slot: number): boolean {
    const r = this.reader;
    const base = slot * 5;
    const d = this.tlbDepth[slot]!;
    const p64 = this.tlbPath64;
    const p32 = this.tlbPath32;
    for (let k = 0; k < d; k++) {
      const e = base + k; // entry k of the slot: f64 index 2e, u32 indexes 4e+2, 4e+3
      if (!r.tryU64At(p64, 2 * e)) return false;
      // Accessed (bit 5) and Dirty (bit 6) are ignored: the CPU sets them as it runs, a walk never looks.
      if (((r.lo ^ p32[4 * e + 2]!) & ~0x60) !== 0 || r.hi !== p32[4 * e + 3]!) return false;
    }
    return true;
  }

  private allocatePaths(): void {
    const size = this.tlb.length / 2;
    const path = new ArrayBuffer(size * 5 * 16);
    this.tlbPath64 = new Float64Array(path);
    this.tlbPath32 = new Uint32Array(path);
    this.tlbDepth = new Uint8Array(size);
  }

  private nonCanonical(): number {
    this.lastFaultLevel = this.levels;
    this.lastFaultReason = FAULT_NON_CANONICAL;
    return -1;
  }

  /** Walk for a TLB miss and fill the slot; the page is left in `walker.pagePa`. */
  private miss(hi: number, vpn: number, slot: number): boolean {
    const w = this.walker;
    if (!w.walk(hi, vpn)) {
      this.lastFaultLevel = w.faultLevel;
      this.lastFaultReason = w.faultReason;
      return false;
    }
    if (this.tlbOn) {
      if (this.tlbDepth.length === 0) this.allocatePaths();
      this.tlb[2 * slot] = (hi >>> 0) * 1048576 + vpn;
      this.tlb[2 * slot + 1] = w.pagePa;
      const d = w.depth;
      this.tlbDepth[slot] = d;
      const base = slot * 5;
      for (let k = 0; k < d; k++) {
        const e = base + k;
        this.tlbPath64[2 * e] = w.pathPa[k]!;
        this.tlbPath32[4 * e + 2] = w.pathLo[k]!;
        this.tlbPath32[4 * e + 3] = w.pathHi[k]!;
      }
    }
    return true;
  }

  private faultError(hi: number, lo: number): TranslationError {
    return new TranslationError(vaFromParts(hi, lo), this.lastFaultLevel, this.lastFaultReason);
  }

  /** A u16/u32/u64 that crosses into the next page: byte by byte, each byte translated. */
  private readAcross(hi: number, lo: number, n: 2 | 4 | 8): number {
    const b = this.scratch;
    for (let i = 0; i < n; i++) {
      const l = (lo + i) >>> 0;
      const h = l < lo >>> 0 ? (hi + 1) >>> 0 : hi;
      const pa = this.translate(h, l);
      if (pa < 0) throw this.faultError(h, l);
      b[i] = this.reader.u8(pa);
    }
    const dv = this.scratchDv;
    if (n === 2) return dv.getUint16(0, true);
    if (n === 4) return dv.getUint32(0, true);
    this.out[0] = dv.getUint32(4, true);
    return dv.getUint32(0, true);
  }

  /**
   * Translate every page of [(hi, lo), +buf.length) and return the physical pieces, merging
   * physically contiguous pages when `merge` (the reader serves any length: it has windows, or
   * keeps no page cache). Throws TranslationError at the first page that faults, before
   * anything is transferred.
   */
  private pieces(hi: number, lo: number, buf: Uint8Array, merge = this.reader.hasWindows): PhysReadRequest[] {
    const out: PhysReadRequest[] = [];
    // The current run of physically contiguous pages: where it starts (physical, and in buf) and
    // where it would continue. A request is made when a run ends, not per page.
    let runPa = -1;
    let runStart = 0;
    let runEnd = -1;
    for (let done = 0; done < buf.length; ) {
      const len = Math.min(buf.length - done, PAGE - (lo & 0xfff));
      const pa = this.translate(hi, lo);
      if (pa < 0) throw this.faultError(hi, lo);
      if (!merge || pa !== runEnd) {
        if (runPa >= 0) out.push({ gpa: runPa, dst: buf.subarray(runStart, done) });
        runPa = pa;
        runStart = done;
      }
      runEnd = pa + len;
      done += len;
      const next = lo + len;
      if (next >= TWO_32) hi = (hi + 1) >>> 0;
      lo = next >>> 0;
    }
    if (runPa >= 0) out.push({ gpa: runPa, dst: buf.subarray(runStart) });
    return out;
  }

  /** How many bytes from (hi, lo), at most `len`, map physically contiguously from `pa`. */
  private contiguousFrom(hi: number, lo: number, pa: number, len: number): number {
    let done = PAGE - (lo & 0xfff);
    let expect = pa + done;
    while (done < len) {
      const l = lo + done;
      const h = l >= TWO_32 ? (hi + 1) >>> 0 : hi;
      const p = this.translate(h, l >>> 0);
      if (p !== expect) return done;
      done += PAGE;
      expect += PAGE;
    }
    return len;
  }
}

function checkLength(len: number): void {
  if (!Number.isSafeInteger(len) || len < 0 || len > MAX_TRANSFER) {
    throw new UsageError(`length ${len} is not between 0 and ${MAX_TRANSFER}`);
  }
}

// ---- enumeration ------------------------------------------------------------------------------

/**
 * Position of a virtual page in "linear" order: lower-half pages from 0, then upper-half pages,
 * so that positions grow with addresses and the canonical hole is skipped. In page units, so
 * 57-bit spaces fit in a number (2^45 pages).
 */
function linearPage(va: bigint, vaBits: number, roundUp: boolean): number {
  const half = 1n << BigInt(vaBits - 1);
  const top = (1n << 64n) - half;
  // Inside the hole, a start clamps to the first upper-half page and an end to the last
  // lower-half page: in linear order both are the same position, `half`.
  const pos = va < half ? va : va >= top ? va - top + half : half;
  const page = roundUp ? (pos + 4095n) >> 12n : pos >> 12n;
  return Number(page);
}

function vaOfLinearPage(page: number, vaBits: number): bigint {
  const halfPages = 2 ** (vaBits - 13);
  const va = BigInt(page) * 4096n;
  return page < halfPages ? va : va - (1n << BigInt(vaBits - 1)) + ((1n << 64n) - (1n << BigInt(vaBits - 1)));
}

function* enumerateMappings(
  reader: PhysReader,
  format: PagingFormat,
  root: number,
  reservedHi: number,
  options: WalkOptions,
): Generator<MappedRange, void, undefined> {
  const vaBits = format.vaBits;
  const n = format.levels;
  const levels = format.table;
  const halfPages = 2 ** (vaBits - 13);
  const startPage = options.start === undefined ? 0 : linearPage(checkVa(options.start), vaBits, false);
  const endPage = options.end === undefined ? 2 * halfPages : options.end >= 1n << 64n ? 2 * halfPages : linearPage(checkVa(options.end), vaBits, true);
  const maxRanges = options.maxRanges ?? 1_000_000;
  const maxTables = options.maxTables ?? 131_072;
  const warn = (msg: string): void => options.warnings?.warn('page-table walk', msg);
  if (startPage >= endPage || maxRanges <= 0) return;

  // Pages per entry at each depth, and per-depth state of the descent (no recursion).
  const pagesPer = levels.map((l) => 2 ** (l.shift - 12));
  const tables = levels.map(() => new Uint32Array(1024));
  const tableBytes = tables.map((t) => new Uint8Array(t.buffer));
  const base = new Float64Array(n); // linear page of entry 0 of the table at each depth
  const index = new Int32Array(n);
  const allowAt = new Int32Array(n + 1); // rights allowed by the levels above each depth
  const nxAt = new Int32Array(n + 1);
  let tablesRead = 0;
  let emitted = 0;

  // The range being built: merged while pages continue it.
  let curPage = -1;
  let curPages = 0;
  let curPa = 0;
  let curPageSize = 0;
  let curPerms = 0;

  const load = (depth: number, pa: number, firstPage: number): boolean => {
    if (tablesRead >= maxTables) return false;
    tablesRead++;
    if (!reader.isRam(pa, PAGE)) {
      warn(`level ${levels[depth]!.level} table at physical 0x${pa.toString(16)} is not in guest RAM; skipped`);
      return false;
    }
    reader.read(pa, tableBytes[depth]!);
    base[depth] = firstPage;
    index[depth] = Math.max(0, Math.floor((startPage - firstPage) / pagesPer[depth]!));
    return true;
  };

  allowAt[0] = PERM_WRITABLE | PERM_USER;
  nxAt[0] = 0;
  if (!load(0, root, 0)) {
    if (tablesRead >= maxTables) warn('table budget exhausted');
    return;
  }
  let depth = 0;
  while (depth >= 0) {
    const i = index[depth]!;
    const per = pagesPer[depth]!;
    const entryPage = base[depth]! + i * per;
    if (i >= 512 || entryPage >= endPage) {
      depth--; // the parent's index already points past the entry that led here
      continue;
    }
    const t = tables[depth]!;
    const elo = t[2 * i]!;
    const ehi = t[2 * i + 1]!;
    index[depth] = i + 1;
    if ((elo & PTE_PRESENT) === 0 || (ehi & reservedHi) !== 0) continue;
    const allow = allowAt[depth]! & ((elo >>> 1) & (PERM_WRITABLE | PERM_USER));
    const nx = nxAt[depth]! | (ehi >>> 31);
    const frameHi = (ehi & PTE_ADDR_HI) * TWO_32;
    const leafSize = levels[depth]!.leafSize;
    const isLeaf = depth === n - 1 || ((elo & PTE_PS) !== 0 && leafSize > 0);
    if (!isLeaf) {
      if ((elo & PTE_PS) !== 0) continue; // PS where it is reserved: the CPU would fault; nothing is mapped
      const child = frameHi + ((elo & PTE_ADDR_LO) >>> 0);
      if (!load(depth + 1, child, entryPage)) {
        if (tablesRead >= maxTables) {
          warn(`stopped after ${maxTables} page tables`);
          break;
        }
        continue;
      }
      // The descent revisits index[depth] only after the child is done; index already advanced.
      allowAt[depth + 1] = allow;
      nxAt[depth + 1] = nx;
      depth++;
      continue;
    }
    // A leaf of `per` pages; keep the part inside [startPage, endPage).
    const frame = frameHi + ((elo & (leafSize > PAGE ? ~(leafSize - 1) : PTE_ADDR_LO)) >>> 0);
    if (leafSize > PAGE && (elo & (leafSize - 1) & ~0x1fff) !== 0) continue; // reserved bits: faults on the CPU
    const from = Math.max(entryPage, startPage);
    const to = Math.min(entryPage + per, endPage);
    const pa = frame + (from - entryPage) * PAGE;
    const perms = allow | (nx ? PERM_NX : 0);
    if (
      curPage >= 0 &&
      from === curPage + curPages &&
      from !== halfPages && // never merge across the canonical hole
      pa === curPa + curPages * PAGE &&
      perms === curPerms &&
      leafSize === curPageSize
    ) {
      curPages += to - from;
      continue;
    }
    if (curPage >= 0) {
      yield rangeOf(curPage, curPages, curPa, curPageSize, curPerms, vaBits);
      if (++emitted >= maxRanges) return;
    }
    curPage = from;
    curPages = to - from;
    curPa = pa;
    curPageSize = leafSize;
    curPerms = perms;
  }
  if (curPage >= 0) yield rangeOf(curPage, curPages, curPa, curPageSize, curPerms, vaBits);
}

function rangeOf(page: number, pages: number, pa: number, pageSize: number, perms: number, vaBits: number): MappedRange {
  return {
    va: vaOfLinearPage(page, vaBits),
    pa,
    size: pages * PAGE,
    pageSize,
    writable: (perms & PERM_WRITABLE) !== 0,
    user: (perms & PERM_USER) !== 0,
    nx: (perms & PERM_NX) !== 0,
  };
}
