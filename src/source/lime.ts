import { fstatSync } from 'node:fs';
import { open as openAsync } from 'node:fs/promises';
import { type CopyProgress, RangeCopier, writeAll } from './copy.ts';
import { TargetError, UsageError } from '../util/errors.ts';
import { type Extent, MAX_EXTENTS, normalizeExtents } from './extents.ts';
import { FileBackedMemory } from './file-backed.ts';
import { closeQuietly, openReadOnly, preadUpTo } from './open-file.ts';
import type { PhysicalMemory } from './types.ts';

/**
 * LiME images: a sequence of (32-byte header, data) pairs, one per physical range. The header
 * is LiME's `lime_mem_range_header` (packed, little-endian): magic 0x4C694D45 ("EMiL" on disk),
 * version 1, s_addr, e_addr (inclusive), 8 reserved bytes.
 */

export const LIME_MAGIC = 0x4c694d45;
export const LIME_HEADER_SIZE = 32;
const LIME_VERSION = 1;
/** Guest-physical addresses fit in 52 bits; anything beyond is a corrupt header. */
const MAX_PHYS = 2 ** 52;

export interface LimeOptions {
  /** Map the file for zero-copy windows (default true). */
  readonly map?: boolean;
}

/** Whether the first bytes of a file are a LiME range header. */
export function looksLikeLime(head: Uint8Array): boolean {
  if (head.length < 8) return false;
  const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  return dv.getUint32(0, true) === LIME_MAGIC && dv.getUint32(4, true) === LIME_VERSION;
}

/** Parse the range headers of a LiME image into extents (file offsets of each range's data). */
export function readLimeExtents(fd: number, what: string): Extent[] {
  const fileSize = fstatSync(fd).size;
  const extents: Extent[] = [];
  let at = 0;
  while (at < fileSize) {
    if (extents.length >= MAX_EXTENTS) throw new TargetError(`${what}: more than ${MAX_EXTENTS} LiME ranges`);
    const h = preadUpTo(fd, LIME_HEADER_SIZE, at);
    if (h.length < LIME_HEADER_SIZE) throw new TargetError(`${what}: truncated LiME header at offset ${at}`);
    const magic = h.readUInt32LE(0);
    const version = h.readUInt32LE(4);
    if (magic !== LIME_MAGIC) {
      throw new TargetError(at === 0 ? `${what}: not a LiME image` : `${what}: corrupt LiME image (no range header at offset ${at})`);
    }
    if (version !== LIME_VERSION) throw new TargetError(`${what}: LiME version ${version} is not supported (only 1)`);
    const start = h.readBigUInt64LE(8);
    const endInclusive = h.readBigUInt64LE(16);
    if (endInclusive < start || endInclusive >= BigInt(MAX_PHYS)) {
      throw new TargetError(`${what}: corrupt LiME range 0x${start.toString(16)}-0x${endInclusive.toString(16)} at offset ${at}`);
    }
    const gpa = Number(start);
    const size = Number(endInclusive - start) + 1;
    const data = at + LIME_HEADER_SIZE;
    if (data + size > fileSize) {
      throw new TargetError(`${what}: truncated — LiME range 0x${gpa.toString(16)} (+${size}) runs past the end of the file`);
    }
    extents.push({ gpa, size, offset: data });
    at = data + size;
  }
  if (extents.length === 0) throw new TargetError(`${what}: empty LiME image`);
  try {
    return normalizeExtents(extents);
  } catch {
    throw new TargetError(`${what}: corrupt LiME image (overlapping ranges)`);
  }
}

export async function openLime(path: string, opts: LimeOptions = {}): Promise<FileBackedMemory> {
  const fd = openReadOnly(path);
  let extents: Extent[];
  try {
    extents = readLimeExtents(fd, path);
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
  return FileBackedMemory.create({ kind: 'lime', description: `LiME image ${path}`, fd, extents, map: opts.map });
}

/**
 * Write every RAM range of `source` to `path` as a LiME image. The file is created (or
 * truncated). Reads the source in 16 MiB chunks, so a large guest does not need a large buffer.
 */
export async function writeLime(path: string, source: PhysicalMemory, progress?: CopyProgress): Promise<void> {
  if (source.ranges.length === 0) throw new UsageError('nothing to write: the source has no RAM ranges');
  const file = await openAsync(path, 'w');
  try {
    const header = Buffer.alloc(LIME_HEADER_SIZE);
    const copy = new RangeCopier(source, progress);
    for (const r of source.ranges) {
      header.fill(0);
      header.writeUInt32LE(LIME_MAGIC, 0);
      header.writeUInt32LE(LIME_VERSION, 4);
      header.writeBigUInt64LE(BigInt(r.start), 8);
      header.writeBigUInt64LE(BigInt(r.start + r.size - 1), 16);
      await writeAll(file, header);
      await copy.range(r, (piece) => writeAll(file, piece));
    }
  } finally {
    await file.close();
  }
}
