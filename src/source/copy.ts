/**
 * Copying guest RAM out to files (LiME and raw images): range by range through a 16 MiB buffer,
 * so a large guest never needs a large allocation, with progress counted over every range.
 */
import type { FileHandle } from 'node:fs/promises';
import type { PhysicalMemory, PhysRange } from './types.ts';

/** Bytes copied per read of the source. */
const CHUNK = 16 * 1024 * 1024;

/** Called after each chunk: bytes copied so far, and in all. */
export type CopyProgress = (done: number, total: number) => void;

export class RangeCopier {
  private readonly chunk: Buffer;
  private readonly total: number;
  private done = 0;

  constructor(
    private readonly source: PhysicalMemory,
    private readonly progress?: CopyProgress,
  ) {
    this.total = source.ranges.reduce((n, r) => n + r.size, 0);
    this.chunk = Buffer.alloc(Math.min(CHUNK, Math.max(0, ...source.ranges.map((r) => r.size))));
  }

  /** Read `r` in chunks, handing each to `sink` (with the range offset) before the next. */
  async range(r: PhysRange, sink: (piece: Buffer, offset: number) => Promise<void>): Promise<void> {
    for (let off = 0; off < r.size; ) {
      const n = Math.min(this.chunk.length, r.size - off);
      const piece = this.chunk.subarray(0, n);
      this.source.read(r.start + off, piece);
      await sink(piece, off);
      off += n;
      this.done += n;
      this.progress?.(this.done, this.total);
    }
  }
}

/** Write all of `bytes` at the file's position, or at `position` when given. */
export async function writeAll(file: FileHandle, bytes: Uint8Array, position?: number): Promise<void> {
  for (let done = 0; done < bytes.length; ) {
    const at = position === undefined ? null : position + done;
    const { bytesWritten } = await file.write(bytes, done, bytes.length - done, at);
    done += bytesWritten;
  }
}
