/**
 * Guest-physical reads for the hot path.
 *
 * A PhysReader wraps one PhysicalMemory and is shared by every AddressSpace of a machine.
 * - When the source has zero-copy windows, a read is a typed-array load; the window of the last
 *   hit is remembered (guests have one to three: below and above the PCI hole).
 * - Otherwise (a process's /proc/PID/mem, a gdb stub, a dump read with pread) whole 4 KiB pages are
 *   kept in a bounded cache while the guest is frozen. A running guest changes its memory under
 *   us, so while it runs nothing is cached: every read goes to the source.
 * - A hole is never read as zeros: it raises PhysicalAccessError (`tryU64` returns false instead,
 *   for the page walker, which must not allocate on its fault path).
 *
 * Freshness contract: `epoch` changes whenever cached knowledge may be stale — the guest was
 * frozen or resumed (`setFrozen`), the caller said memory changed (`invalidate`), or vmlens wrote
 * to guest memory (`write`). Translation caches built on this reader compare epochs and flush.
 */
import { PhysicalAccessError, UsageError } from '../util/errors.ts';
import { normalizeRanges } from '../source/ranges.ts';
import type { PhysicalMemory, PhysRange } from '../source/types.ts';
import { DOUBLE_ZERO } from './va.ts';

const PAGE = 4096;
/**
 * Offset in page = gpa & PAGE_MASK. Exact for any address below 2^53 (& works on the low 32 bits
 * of the integer), and unlike %, which V8 does with a call to fmod for numbers above 2^31, cheap.
 */
const PAGE_MASK = 4095;
/** Associativity of the page cache. */
const CACHE_WAYS = 4;

/**
 * A readable run of bytes: a source window, or one page slot of the page cache. `start` is the
 * guest-physical address of u8[0]; `size` 0 means "matches nothing" (the empty window).
 */
class Span {
  // Number fields start as doubles (see DOUBLE_ZERO), never undefined.
  start = DOUBLE_ZERO;
  size = DOUBLE_ZERO;
  readonly u8: Uint8Array;
  readonly u32: Uint32Array;
  readonly dv: DataView;

  constructor(start: number, size: number, u8: Uint8Array, u32: Uint32Array, dv: DataView) {
    this.start = start;
    this.size = size;
    this.u8 = u8;
    this.u32 = u32;
    this.dv = dv;
  }
}

const EMPTY_U8 = new Uint8Array(8);
function emptySpan(): Span {
  return new Span(-1, 0, EMPTY_U8, new Uint32Array(EMPTY_U8.buffer), new DataView(EMPTY_U8.buffer));
}

export interface PhysReaderOptions {
  /**
   * Whether the guest is known not to change (paused, or a dump). Default false: nothing is
   * cached across reads, which is always correct. The machine layer sets it with `setFrozen`.
   */
  frozen?: boolean;
  /** Page-cache capacity in 4 KiB pages for sources without windows (rounded up to a power of two). Default 4096 (16 MiB); 0 disables. */
  cachePages?: number;
}

export interface PhysReadRequest {
  readonly gpa: number;
  readonly dst: Uint8Array;
}

export class PhysReader {
  readonly memory: PhysicalMemory;
  readonly ranges: readonly PhysRange[];
  /** Changes whenever cached data (pages here, translations above) may be stale. */
  epoch = 0;
  /**
   * Out-parameters of the reads: `lo` and `hi` halves of the last 64-bit value (`lo` also holds
   * the value of the last u8/u16/u32 slow path). A Uint32Array, not fields: storing a uint32 in
   * it costs nothing, where a number field would hold values above 2^30 as boxed doubles.
   */
  private readonly out = new Uint32Array(2);
  get lo(): number {
    return this.out[0]!;
  }
  get hi(): number {
    return this.out[1]!;
  }

  private frozenFlag = false;
  private readonly windows: Span[];
  /** Last span that served a data read, and a page-table read: a window, or a page-cache slot. */
  private span: Span;
  private tableSpan: Span;
  /** Address argument of the slow paths (see the hot path comment). */
  private readonly arg = new Float64Array(1);
  private lastRange = 0;

  // Page cache: CACHE_WAYS-way set-associative, least recently used page of a set evicted.
  // Per slot: the page's gpa (or -1), its span, and when it was last used.
  private readonly cacheCapacity: number = 0;
  private cacheTags: Float64Array | null = null;
  private cacheUsed = new Float64Array(0);
  private cacheSpans: Span[] = [];
  private cacheClock = 0;
  /** Shift of the 32-bit hash that leaves the set number. */
  private readonly cacheShift: number = 31;

  private readonly scratch = new Uint8Array(8);
  private readonly scratchDv = new DataView(this.scratch.buffer);

  /** Page fills from the source (for tests and `vmlens info` statistics). */
  cacheFills = 0;

  constructor(memory: PhysicalMemory, options: PhysReaderOptions = {}) {
    this.memory = memory;
    // Merged, so a read spanning two adjacent runs (two windows of one RAM file) is one RAM range.
    this.ranges = normalizeRanges(memory.ranges);
    this.frozenFlag = options.frozen ?? false;
    this.windows = (memory.windows ?? []).map(
      (w) => new Span(w.start, w.size, w.u8, w.u32, new DataView(w.u8.buffer, w.u8.byteOffset, w.u8.byteLength)),
    );
    this.windows.sort((a, b) => a.start - b.start);
    this.span = emptySpan();
    this.tableSpan = this.span;
    const pages = options.cachePages ?? 4096;
    if (!Number.isInteger(pages) || pages < 0 || pages > 1 << 20) throw new UsageError(`page cache size must be 0 … ${1 << 20} pages, not ${pages}`);
    // At least two sets, so the hash shifts by less than 32 (JavaScript masks shift counts).
    this.cacheCapacity = pages === 0 ? 0 : Math.max(2 * CACHE_WAYS, 1 << Math.ceil(Math.log2(pages)));
    this.cacheShift = 32 - Math.log2(Math.max(2, this.cacheCapacity / CACHE_WAYS));
  }

  get frozen(): boolean {
    return this.frozenFlag;
  }

  /** Whether reads are zero-copy typed-array loads. */
  get hasWindows(): boolean {
    return this.windows.length > 0;
  }

  /**
   * Declare the guest frozen (paused, a dump) or running. Every change drops cached pages and
   * advances `epoch`, so translation caches flush too.
   */
  setFrozen(frozen: boolean): void {
    if (frozen === this.frozenFlag) return;
    this.frozenFlag = frozen;
    this.invalidate();
  }

  /** Guest memory may have changed: drop cached pages and advance `epoch`. */
  invalidate(): void {
    this.epoch++;
    if (this.cacheTags) {
      this.cacheTags.fill(-1);
      this.cacheUsed.fill(0);
    }
    if (!this.isWindow(this.span)) this.span = emptySpan();
    if (!this.isWindow(this.tableSpan)) this.tableSpan = emptySpan();
  }

  // ---- hot path -------------------------------------------------------------------------------
  //
  // Each read is a span check and a typed-array load, small enough for V8 to inline into the
  // caller. Addresses above 2^30 are not small integers to V8: passing one to a call that is not
  // inlined would allocate a number. So the slow paths take their address through `arg` (a
  // Float64Array) and return through `lo`/`hi`, and a span switch allocates nothing.

  /** Little-endian u32 at `gpa` (any alignment; aligned is fastest). */
  u32(gpa: number): number {
    const s = this.span;
    const off = gpa - s.start;
    if (off >= 0 && off + 4 <= s.size && (off & 3) === 0) return s.u32[off >>> 2]!;
    this.arg[0] = gpa;
    this.slowSmall(4);
    return this.lo;
  }

  /** Little-endian u64 at `gpa`: returns the low half and leaves the halves in `this.lo`, `this.hi`. */
  u64(gpa: number): number {
    const s = this.span;
    const off = gpa - s.start;
    if (off >= 0 && off + 8 <= s.size && (off & 3) === 0) {
      const i = off >>> 2;
      const lo = s.u32[i]!;
      this.out[0] = lo;
      this.out[1] = s.u32[i + 1]!;
      return lo;
    }
    this.arg[0] = gpa;
    this.slowU64();
    return this.lo;
  }

  /**
   * Like `u64` but returns false, without allocating, where `gpa` is not guest RAM: the page
   * walker's read, whose failure is a translation fault, not an exception. It remembers its own
   * span, so walks and data reads in different windows do not evict each other's.
   */
  tryU64(gpa: number): boolean {
    this.arg[0] = gpa;
    return this.tryU64At(this.arg, 0);
  }

  /**
   * `tryU64` of the address `addrs[index]`. Its arguments are an object and a small integer,
   * which V8 passes without allocating even when the call is not inlined (an address above 2^30
   * would be boxed): the page walker and the translation cache keep entry addresses in
   * Float64Arrays and read them through this.
   */
  tryU64At(addrs: Float64Array, index: number): boolean {
    const gpa = addrs[index]!;
    const s = this.tableSpan;
    const off = gpa - s.start;
    if (off >= 0 && off + 8 <= s.size && (off & 3) === 0) {
      const i = off >>> 2;
      this.out[0] = s.u32[i]!;
      this.out[1] = s.u32[i + 1]!;
      return true;
    }
    this.arg[0] = gpa;
    return this.slowTryU64();
  }

  u16(gpa: number): number {
    const s = this.span;
    const off = gpa - s.start;
    if (off >= 0 && off + 2 <= s.size) return s.dv.getUint16(off, true);
    this.arg[0] = gpa;
    this.slowSmall(2);
    return this.lo;
  }

  u8(gpa: number): number {
    const s = this.span;
    const off = gpa - s.start;
    if (off >= 0 && off < s.size) return s.u8[off]!;
    this.arg[0] = gpa;
    this.slowSmall(1);
    return this.lo;
  }

  // ---- bulk -----------------------------------------------------------------------------------

  /** Fill `dst` from `gpa`. Throws PhysicalAccessError if any byte is not guest RAM. */
  read(gpa: number, dst: Uint8Array): void {
    const n = dst.length;
    if (n === 0) return;
    const w = this.windowFor(gpa);
    if (w && gpa + n <= w.start + w.size) {
      const off = gpa - w.start;
      dst.set(w.u8.subarray(off, off + n));
      return;
    }
    if (!w && !this.useCache() && this.isRam(gpa, n)) {
      // One call to the source: one pread or one round trip, however long.
      this.memory.read(gpa, dst);
      return;
    }
    if (w || !this.useCache()) {
      this.readPieces(gpa, dst);
      return;
    }
    // Page cache: split at page boundaries; misses are filled in one batch.
    const reqs: PhysReadRequest[] = [];
    for (let done = 0; done < n; ) {
      const a = gpa + done;
      const len = Math.min(n - done, PAGE - (a & PAGE_MASK));
      reqs.push({ gpa: a, dst: dst.subarray(done, done + len) });
      done += len;
    }
    this.readMany(reqs);
  }

  /**
   * Several reads, each within one page (or anywhere inside one window). With a page cache, the
   * missing pages are fetched in one `readMany` of the source where it has one.
   */
  readMany(requests: readonly PhysReadRequest[]): void {
    if (!this.useCache() || this.windows.length > 0) {
      const direct: PhysReadRequest[] = [];
      for (const r of requests) {
        const w = this.windowFor(r.gpa);
        if (w && r.gpa + r.dst.length <= w.start + w.size) r.dst.set(w.u8.subarray(r.gpa - w.start, r.gpa - w.start + r.dst.length));
        else direct.push(r);
      }
      if (direct.length > 0) this.sourceReadMany(direct);
      return;
    }
    const misses = new Map<number, Uint8Array>();
    const pending: PhysReadRequest[] = [];
    for (const r of requests) {
      if (r.dst.length === 0) continue;
      const page = r.gpa - (r.gpa & PAGE_MASK);
      if (r.gpa + r.dst.length > page + PAGE || !this.isRam(page, PAGE)) {
        this.readPieces(r.gpa, r.dst);
        continue;
      }
      const span = this.cachedPage(page);
      if (span) r.dst.set(span.u8.subarray(r.gpa - page, r.gpa - page + r.dst.length));
      else {
        if (!misses.has(page)) misses.set(page, new Uint8Array(PAGE));
        pending.push(r);
      }
    }
    if (misses.size === 0) return;
    this.sourceReadMany([...misses].map(([gpa, dst]) => ({ gpa, dst })));
    for (const [page, bytes] of misses) this.installPage(page, bytes);
    for (const r of pending) {
      const page = r.gpa - (r.gpa & PAGE_MASK);
      r.dst.set(misses.get(page)!.subarray(r.gpa - page, r.gpa - page + r.dst.length));
    }
  }

  /**
   * A zero-copy view of [gpa, gpa+len) when it lies inside one source window, else null. The view
   * aliases guest memory: for a running guest its bytes change under the caller.
   */
  view(gpa: number, len: number): Uint8Array | null {
    const w = this.windowFor(gpa);
    if (!w || gpa + len > w.start + w.size) return null;
    const off = gpa - w.start;
    return w.u8.subarray(off, off + len);
  }

  /**
   * Write through to the source (ReadOnlyError where it cannot be written). Cached copies of the
   * written pages are dropped and `epoch` advances: a write may have changed a page table.
   */
  write(gpa: number, src: Uint8Array): void {
    this.memory.write(gpa, src);
    this.invalidate();
  }

  /** Whether [gpa, gpa+len) lies inside one RAM range. */
  isRam(gpa: number, len: number): boolean {
    const rs = this.ranges;
    let r = rs[this.lastRange];
    if (r && gpa >= r.start && gpa + len <= r.start + r.size) return true;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      r = rs[mid]!;
      if (gpa < r.start) hi = mid - 1;
      else if (gpa >= r.start + r.size) lo = mid + 1;
      else {
        this.lastRange = mid;
        return gpa + len <= r.start + r.size;
      }
    }
    return false;
  }

  // ---- slow paths -----------------------------------------------------------------------------

  /** u8/u16/u32 at `arg[0]` that the current span does not serve; the value goes to `lo`. */
  private slowSmall(n: 1 | 2 | 4): void {
    const s = this.spanAt(n);
    if (s !== null) {
      this.span = s;
      const off = this.arg[0]! - s.start;
      this.out[0] = n === 1 ? s.u8[off]! : n === 2 ? s.dv.getUint16(off, true) : s.dv.getUint32(off, true);
      return;
    }
    this.out[0] = this.smallRare(this.arg[0]!, n);
  }

  /** u64 at `arg[0]` that the current span does not serve; the value goes to `lo`, `hi`. */
  private slowU64(): void {
    const s = this.spanAt(8);
    if (s !== null) {
      this.span = s;
      const off = this.arg[0]! - s.start;
      this.out[0] = s.dv.getUint32(off, true);
      this.out[1] = s.dv.getUint32(off + 4, true);
      return;
    }
    this.u64Rare(this.arg[0]!);
  }

  private slowTryU64(): boolean {
    const s = this.spanAt(8);
    if (s !== null) {
      this.tableSpan = s;
      const off = this.arg[0]! - s.start;
      this.out[0] = s.dv.getUint32(off, true);
      this.out[1] = s.dv.getUint32(off + 4, true);
      return true;
    }
    const gpa = this.arg[0]!;
    if (!this.isRam(gpa, 8)) return false;
    this.u64Rare(gpa);
    return true;
  }

  /**
   * The span holding [arg[0], arg[0]+n) whole, if any: a window, or a cached page (filled on
   * demand while frozen). Null when the bytes must come another way.
   */
  private spanAt(n: number): Span | null {
    const gpa = this.arg[0]!;
    const ws = this.windows;
    const count = ws.length;
    if (count > 0) {
      if (count <= 8) {
        for (let i = 0; i < count; i++) {
          const w = ws[i]!;
          const off = gpa - w.start;
          if (off >= 0 && off < w.size) return off + n <= w.size ? w : null;
        }
        return null;
      }
      const w = this.windowFor(gpa);
      return w !== null && gpa + n <= w.start + w.size ? w : null;
    }
    if (!this.frozenFlag || this.cacheCapacity === 0) return null;
    const pageOff = gpa & PAGE_MASK;
    if (pageOff + n > PAGE) return null;
    const page = gpa - pageOff;
    const cached = this.cachedPage(page);
    if (cached !== null) return cached;
    if (!this.isRam(page, PAGE)) return null;
    return this.fillPage(page);
  }

  /** A u64 no span serves whole: assembled from halves, or one direct read of the source. */
  private u64Rare(gpa: number): void {
    if (this.splitsAcrossSpans(gpa, 8)) {
      const lo = this.smallRead(gpa, 4);
      this.out[1] = this.smallRead(gpa + 4, 4);
      this.out[0] = lo;
      return;
    }
    this.memory.read(gpa, this.scratch);
    this.out[0] = this.scratchDv.getUint32(0, true);
    this.out[1] = this.scratchDv.getUint32(4, true);
  }

  private smallRead(gpa: number, n: 1 | 2 | 4): number {
    this.arg[0] = gpa;
    this.slowSmall(n);
    return this.lo;
  }

  /** A u8/u16/u32 no span serves whole. */
  private smallRare(gpa: number, n: 1 | 2 | 4): number {
    if (n > 1 && this.splitsAcrossSpans(gpa, n)) {
      // Byte by byte: each byte finds its own window or page, and a hole raises at its address.
      let v = 0;
      for (let i = n - 1; i >= 0; i--) v = v * 256 + this.smallRead(gpa + i, 1);
      return v;
    }
    // Outside every window and cache: one read of the source, which raises on a hole.
    const b = this.scratch.subarray(0, n);
    this.memory.read(gpa, b);
    return n === 1 ? b[0]! : n === 2 ? this.scratchDv.getUint16(0, true) : this.scratchDv.getUint32(0, true);
  }

  /** Whether n bytes at gpa start in a window or cacheable page and run past its end. */
  private splitsAcrossSpans(gpa: number, n: number): boolean {
    if (this.windowFor(gpa)) return true;
    return this.useCache() && (gpa & PAGE_MASK) > PAGE - n;
  }

  /** Read across windows and holes piece by piece, so a hole is reported at its own address. */
  private readPieces(gpa: number, dst: Uint8Array): void {
    for (let done = 0; done < dst.length; ) {
      const a = gpa + done;
      const w = this.windowFor(a);
      let len: number;
      if (w) {
        len = Math.min(dst.length - done, w.start + w.size - a);
        dst.set(w.u8.subarray(a - w.start, a - w.start + len), done);
      } else {
        len = Math.min(dst.length - done, PAGE - (a & PAGE_MASK));
        this.memory.read(a, dst.subarray(done, done + len));
      }
      done += len;
    }
  }

  private sourceReadMany(reqs: PhysReadRequest[]): void {
    // Check RAM first so a hole is reported at its own address, not as a failed batch.
    for (const r of reqs) if (!this.isRam(r.gpa, r.dst.length)) throw this.holeError(r.gpa, r.dst.length);
    if (this.memory.readMany && reqs.length > 1) this.memory.readMany(reqs);
    else for (const r of reqs) this.memory.read(r.gpa, r.dst);
  }

  private holeError(gpa: number, len: number): PhysicalAccessError {
    return this.isRam(gpa, 1)
      ? new PhysicalAccessError(gpa, len, 'crosses the end of guest RAM')
      : new PhysicalAccessError(gpa, len);
  }

  private windowFor(gpa: number): Span | null {
    const ws = this.windows;
    const n = ws.length;
    if (n === 0) return null;
    if (n <= 8) {
      for (let i = 0; i < n; i++) {
        const w = ws[i]!;
        if (gpa >= w.start && gpa < w.start + w.size) return w;
      }
      return null;
    }
    let lo = 0;
    let hi = n - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const w = ws[mid]!;
      if (gpa < w.start) hi = mid - 1;
      else if (gpa >= w.start + w.size) lo = mid + 1;
      else return w;
    }
    return null;
  }

  private isWindow(s: Span): boolean {
    return this.windows.includes(s);
  }

  private useCache(): boolean {
    return this.frozenFlag && this.cacheCapacity > 0;
  }

  /** First slot of the set `page` belongs to. */
  private setOf(page: number): number {
    const pfn = page / PAGE;
    // Multiplicative hash of the frame number (both 32-bit halves) picks the set.
    return (Math.imul((pfn >>> 0) ^ Math.floor(pfn / 4294967296), 0x9e3779b1) >>> this.cacheShift) * CACHE_WAYS;
  }

  private cachedPage(page: number): Span | null {
    const tags = this.cacheTags;
    if (!tags) return null;
    const first = this.setOf(page);
    for (let i = first; i < first + CACHE_WAYS; i++) {
      if (tags[i] === page) {
        this.cacheUsed[i] = ++this.cacheClock;
        return this.cacheSpans[i]!;
      }
    }
    return null;
  }

  private fillPage(page: number): Span {
    const buf = new Uint8Array(PAGE);
    this.sourceReadMany([{ gpa: page, dst: buf }]);
    return this.installPage(page, buf);
  }

  /** When a slot was last used; the spans serving the fast paths count as in use now (their hits are not timed). */
  private lastUse(slot: number): number {
    const span = this.cacheSpans[slot];
    return span !== undefined && (span === this.span || span === this.tableSpan) ? Infinity : this.cacheUsed[slot]!;
  }

  private installPage(page: number, bytes: Uint8Array): Span {
    if (!this.cacheTags) {
      this.cacheTags = new Float64Array(this.cacheCapacity).fill(-1);
      this.cacheUsed = new Float64Array(this.cacheCapacity);
      this.cacheSpans = new Array<Span>(this.cacheCapacity);
    }
    // The slot of this page if cached already (a batch may fetch it twice), else the set's least
    // recently used slot (empty slots have time 0).
    const first = this.setOf(page);
    let slot = first;
    for (let i = first; i < first + CACHE_WAYS; i++) {
      if (this.cacheTags[i] === page) {
        slot = i;
        break;
      }
      if (this.lastUse(i) < this.lastUse(slot)) slot = i;
    }
    let span = this.cacheSpans[slot];
    if (!span) {
      const b = new ArrayBuffer(PAGE);
      span = new Span(page, PAGE, new Uint8Array(b), new Uint32Array(b), new DataView(b));
      this.cacheSpans[slot] = span;
    }
    // The evicted page's span object is reused: if it was the current span, it now holds `page`.
    span.start = page;
    span.size = PAGE;
    span.u8.set(bytes);
    this.cacheTags[slot] = page;
    this.cacheUsed[slot] = ++this.cacheClock;
    this.cacheFills++;
    return span;
  }
}
