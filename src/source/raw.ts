import { fstatSync } from 'node:fs';
import { UsageError } from '../util/errors.ts';
import { type Extent, normalizeExtents } from './extents.ts';
import { FileBackedMemory } from './file-backed.ts';
import { closeQuietly, openReadOnly } from './open-file.ts';

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
