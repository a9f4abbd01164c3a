import { TargetError } from '../util/errors.ts';
import type { Libc } from './native.ts';

/**
 * Memory-mapped files through libc `mmap` (koffi FFI), viewed as zero-copy ArrayBuffers.
 *
 * One ArrayBuffer may not exceed 4 GiB on Node 20 (asking for more kills the process), so a
 * mapping is made once and handed out as several views. Views are raw pointers to the mapped
 * pages: an access after munmap would be a segmentation fault, not an exception. So `release()`
 * first puts anonymous memory at the same addresses (stale views then read zeros instead of
 * crashing the process) and the address range is unmapped for good once every view handed out
 * has been garbage-collected.
 */

const PROT_READ = 0x1;
const PROT_WRITE = 0x2;
const MAP_SHARED = 0x01;
const MAP_PRIVATE = 0x02;
const MAP_FIXED = 0x10;
const MAP_ANONYMOUS = 0x20;
const MAP_NORESERVE = 0x4000;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

/** Views alive per mapping; the pages are unmapped when a released mapping has none left. */
const liveViews = new FinalizationRegistry<FileMapping>((m) => m.viewCollected());

export class FileMapping {
  private released = false;
  private views = 0;

  private constructor(
    private readonly c: Libc,
    private readonly base: bigint,
    readonly length: number,
    readonly writable: boolean,
  ) {}

  /**
   * Map `length` bytes of the open file `fd` from offset 0. Shared when `writable` (writes
   * reach the file, and so the guest); otherwise private copy-on-write, so that a stray store
   * through a view changes only our copy instead of faulting on a read-only page. (On Linux a
   * private mapping still shows later changes of the file in every page we have not written.)
   */
  static create(c: Libc, fd: number, length: number, writable: boolean, what: string): FileMapping {
    if (length <= 0) throw new TargetError(`${what}: nothing to map`);
    const flags = writable ? MAP_SHARED : MAP_PRIVATE;
    const base = c.mmap(null, length, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (base === MAP_FAILED) throw new TargetError(`${what}: mmap failed (errno ${c.errno()})`);
    return new FileMapping(c, base, length, writable);
  }

  /** A zero-copy view of [offset, offset+length) of the mapping. */
  view(offset: number, length: number): ArrayBuffer {
    if (this.released) throw new TargetError('mapping was closed');
    if (offset < 0 || length <= 0 || offset + length > this.length) {
      throw new RangeError(`view ${offset}+${length} outside a mapping of ${this.length} bytes`);
    }
    const ab = this.c.view(this.base + BigInt(offset), length);
    this.views++;
    liveViews.register(ab, this);
    return ab;
  }

  /** Drop the file's pages; see the module comment for why the addresses stay reserved a while. */
  release(): void {
    if (this.released) return;
    this.released = true;
    const anon = this.c.mmap(
      this.base,
      this.length,
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
      -1,
      0,
    );
    // If the placeholder could not be made, unmapping now is still correct for a caller that
    // dropped its views; stale views are a caller bug either way.
    if (anon === MAP_FAILED || this.views === 0) this.unmap();
  }

  /** Called by the finalization registry. */
  viewCollected(): void {
    this.views--;
    if (this.released && this.views === 0) this.unmap();
  }

  private unmapped = false;
  private unmap(): void {
    if (this.unmapped) return;
    this.unmapped = true;
    this.c.munmap(this.base, this.length);
  }
}
