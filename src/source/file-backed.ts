import { closeSync, fstatSync, readSync, writeSync } from 'node:fs';
import { PhysicalAccessError, ReadOnlyError, TargetError } from '../util/errors.ts';
import { type Extent, findExtent, forEachPiece, isPageAligned, rangesOf, windowCuts } from './extents.ts';
import { FileMapping } from './mapping.ts';
import { loadLibc } from './native.ts';
import type { PhysicalMemory, PhysRange, RamWindow } from './types.ts';

/**
 * Guest memory stored in a file at known offsets: the shared RAM file of a live QEMU, an ELF
 * core, a raw image, a LiME image. The file is mapped once when possible (zero-copy windows
 * for the address-space layer, reads are memcpy) and read with pread otherwise.
 */

export interface FileBackedOptions {
  readonly kind: string;
  readonly description: string;
  /** An open file descriptor; the source owns it from now on. */
  readonly fd: number;
  /** Sorted, non-overlapping (see normalizeExtents); offsets are file offsets. */
  readonly extents: readonly Extent[];
  /** Map the file (default true); false reads with pread. */
  readonly map?: boolean;
  /** Writes go to the file (shared mapping or pwrite); the fd must be open read-write. */
  readonly writable?: boolean;
}

/**
 * Above this many extents the file is read with pread: one view per extent would cost more
 * than it saves (a dump that fragmented is not one the page walker reads quickly anyway).
 */
const MAX_MAPPED_EXTENTS = 16_384;

interface Segment extends Extent {
  readonly u8: Uint8Array;
  readonly u32: Uint32Array | undefined;
}

export class FileBackedMemory implements PhysicalMemory {
  readonly kind: string;
  readonly description: string;
  readonly ranges: readonly PhysRange[];
  readonly writable: boolean;
  readonly windows?: readonly RamWindow[];
  /** Whether the file is mapped (zero-copy) rather than read with pread. */
  readonly mapped: boolean;
  private readonly extents: readonly Extent[];
  private readonly segments: readonly Segment[] | undefined;
  private fd: number;
  private mapping: FileMapping | undefined;

  private constructor(o: FileBackedOptions, mapping: FileMapping | undefined) {
    this.kind = o.kind;
    this.description = o.description;
    this.fd = o.fd;
    this.extents = o.extents;
    this.ranges = rangesOf(o.extents);
    this.writable = o.writable ?? false;
    this.mapping = mapping;
    this.mapped = mapping !== undefined;
    if (mapping) {
      this.segments = windowCuts(o.extents).map((e) => {
        const ab = mapping.view(e.offset, e.size);
        // Uint32Array needs the view to start 4-byte aligned in the file.
        const u32 = e.offset % 4 === 0 && e.size % 4 === 0 ? new Uint32Array(ab) : undefined;
        return { ...e, u8: new Uint8Array(ab), u32 };
      });
      // Windows are page-aligned by contract; an odd-sized run (LiME images keep the firmware's
      // byte ranges) is still read through read(), which copies from the same mapping.
      const windows: RamWindow[] = [];
      for (const s of this.segments) {
        if (s.u32 && isPageAligned(s.gpa) && isPageAligned(s.size)) windows.push({ start: s.gpa, size: s.size, u8: s.u8, u32: s.u32 });
      }
      if (windows.length > 0) this.windows = windows;
    }
  }

  /**
   * Check the extents fit in the file (a truncated file is an error, never zeros) and set up
   * the source. Closes `fd` on failure.
   */
  static async create(o: FileBackedOptions): Promise<FileBackedMemory> {
    try {
      const size = fstatSync(o.fd).size;
      for (const e of o.extents) {
        if (e.offset < 0 || e.offset + e.size > size) {
          throw new TargetError(
            `${o.description}: truncated — physical 0x${e.gpa.toString(16)} (+${e.size}) should be at file offset ${e.offset}, but the file has ${size} bytes`,
          );
        }
      }
      let mapping: FileMapping | undefined;
      if ((o.map ?? true) && o.extents.length > 0 && o.extents.length <= MAX_MAPPED_EXTENTS) {
        const c = await loadLibc();
        // The whole file: a hugetlbfs file can only be mapped and unmapped in whole huge pages.
        if (c) mapping = FileMapping.create(c, o.fd, size, o.writable ?? false, o.description);
      }
      return new FileBackedMemory(o, mapping);
    } catch (e) {
      closeSync(o.fd);
      throw e;
    }
  }

  read(gpa: number, dst: Uint8Array): void {
    this.checkOpen(gpa, dst.length);
    if (this.segments) {
      const segs = this.segments;
      // The common case, one segment: no closure, and no view object for small reads.
      const i = findExtent(segs, gpa);
      const s = i >= 0 ? segs[i]! : undefined;
      if (s && gpa + dst.length <= s.gpa + s.size && Number.isSafeInteger(gpa)) {
        const from = gpa - s.gpa;
        const n = dst.length;
        if (n <= 32) for (let k = 0; k < n; k++) dst[k] = s.u8[from + k]!;
        else dst.set(s.u8.subarray(from, from + n));
        return;
      }
      forEachPiece(segs, gpa, dst.length, (e, at, pos, n) => {
        const s = e as Segment;
        const from = at - s.offset;
        dst.set(s.u8.subarray(from, from + n), pos);
      });
      return;
    }
    forEachPiece(this.extents, gpa, dst.length, (_e, at, pos, n) => this.pread(dst, pos, n, at));
  }

  write(gpa: number, src: Uint8Array): void {
    if (!this.writable) throw new ReadOnlyError(`${this.description} is read-only`);
    this.checkOpen(gpa, src.length);
    if (this.segments) {
      forEachPiece(this.segments, gpa, src.length, (e, at, pos, n) => {
        const s = e as Segment;
        s.u8.set(src.subarray(pos, pos + n), at - s.offset);
      });
      return;
    }
    forEachPiece(this.extents, gpa, src.length, (_e, at, pos, n) => {
      let done = 0;
      while (done < n) done += writeSync(this.fd, src, pos + done, n - done, at + done);
    });
  }

  readMany(requests: readonly { gpa: number; dst: Uint8Array }[]): void {
    for (const r of requests) this.read(r.gpa, r.dst);
  }

  close(): void {
    if (this.fd < 0) return;
    this.mapping?.release();
    this.mapping = undefined;
    closeSync(this.fd);
    this.fd = -1;
  }

  private pread(dst: Uint8Array, pos: number, n: number, at: number): void {
    let done = 0;
    while (done < n) {
      const got = readSync(this.fd, dst, pos + done, n - done, at + done);
      if (got === 0) throw new TargetError(`${this.description}: file shrank under us at offset ${at + done}`);
      done += got;
    }
  }

  private checkOpen(gpa: number, len: number): void {
    if (this.fd < 0) throw new PhysicalAccessError(gpa, len, `cannot be read: ${this.description} is closed`);
  }
}
