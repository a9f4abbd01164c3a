import { fstatSync } from 'node:fs';
import { TargetError } from '../util/errors.ts';
import { type Extent, normalizeExtents } from './extents.ts';
import { FileBackedMemory } from './file-backed.ts';
import { closeQuietly, openReadOnly, openReadWrite } from './open-file.ts';

/**
 * The RAM file of a live QEMU (`memory-backend-file,share=on`, usually in /dev/shm), mapped
 * shared: reads see the guest's stores as they happen, and our stores reach the guest. The
 * file is QEMU's RAM block, contiguous, while the guest sees it through the machine's physical
 * map (below the PCI hole, and above 4 GiB for larger guests): `layout` maps one to the other
 * (see machine/mtree.ts).
 *
 * Reading every page of a sparse tmpfs file allocates the pages never touched by the guest,
 * up to the guest's RAM size.
 */
export interface SharedFileOptions {
  /** Guest-physical → file-offset map of the RAM block. */
  readonly layout: readonly Extent[];
  /** 'auto' (default): read-write when the file can be opened so, else read-only. */
  readonly writable?: boolean | 'auto';
  /** Map the file (default true); false uses pread/pwrite. */
  readonly map?: boolean;
}

export async function openSharedFile(path: string, opts: SharedFileOptions): Promise<FileBackedMemory> {
  const want = opts.writable ?? 'auto';
  const { fd, writable } = want === false ? { fd: openReadOnly(path), writable: false } : openReadWrite(path, want === 'auto');
  let extents: Extent[];
  try {
    extents = normalizeExtents(opts.layout);
    if (extents.length === 0) throw new TargetError(`${path}: no guest RAM is mapped from this file`);
    const need = Math.max(...extents.map((e) => e.offset + e.size));
    const size = fstatSync(fd).size;
    if (size < need) throw new TargetError(`${path}: ${size} bytes, but the guest's RAM needs ${need}: not this guest's RAM file?`);
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
  return FileBackedMemory.create({
    kind: 'shared-file',
    description: `shared RAM file ${path}${writable ? '' : ' (read-only)'}`,
    fd,
    extents,
    map: opts.map,
    writable,
  });
}
