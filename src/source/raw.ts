import { fstatSync } from 'node:fs';
import { open as openAsync } from 'node:fs/promises';
import { UsageError } from '../util/errors.ts';
import { type CopyProgress, RangeCopier, writeAll } from './copy.ts';
import { type Extent, normalizeExtents } from './extents.ts';
import { FileBackedMemory } from './file-backed.ts';
import { closeQuietly, openReadOnly } from './open-file.ts';
import type { PhysicalMemory } from './types.ts';

/**
 * A raw image: the file is guest RAM, file offset = guest-physical address (QEMU `pmemsave`
 * from 0, or a copy of the shared RAM file of a guest below 3.5 GiB). A copy of the RAM file of
 * a larger guest puts RAM above 4 GiB at other offsets: give its `layout`.
 */
export interface RawOptions {
  /** Guest-physical → file-offset layout; default: the whole file from physical 0. */
  readonly layout?: readonly Extent[];
  /** Map the file for zero-copy windows (default true). */
  readonly map?: boolean;
}

export async function openRaw(path: string, opts: RawOptions = {}): Promise<FileBackedMemory> {
  const fd = openReadOnly(path);
  let extents: Extent[];
  try {
    const size = fstatSync(fd).size;
    if (size === 0 && !opts.layout) throw new UsageError(`${path}: empty file`);
    extents = normalizeExtents(opts.layout ?? [{ gpa: 0, size, offset: 0 }]);
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
  return FileBackedMemory.create({ kind: 'raw', description: `raw image ${path}`, fd, extents, map: opts.map });
}

/**
 * Write `source` to `path` as a raw image: each RAM range at the file offset equal to its
 * guest-physical address, what lies between (the PCI hole below 4 GiB) left as a file hole, so
 * it takes no disk space and reads as zeros. The file is created (or truncated).
 */
export async function writeRaw(path: string, source: PhysicalMemory, progress?: CopyProgress): Promise<void> {
  if (source.ranges.length === 0) throw new UsageError('nothing to write: the source has no RAM ranges');
  const file = await openAsync(path, 'w');
  try {
    const copy = new RangeCopier(source, progress);
    for (const r of source.ranges) await copy.range(r, (piece, offset) => writeAll(file, piece, r.start + offset));
    await file.truncate(Math.max(...source.ranges.map((r) => r.start + r.size)));
  } finally {
    await file.close();
  }
}
