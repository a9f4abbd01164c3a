/**
 * The kernel's image on disk, as the boot loader gets it: a bzImage (arch/x86/boot/header.S)
 * carries a compressed payload, which is the vmlinux ELF followed by its relocation table
 * (arch/x86/tools/relocs.c writes it; arch/x86/boot/compressed/misc.c applies it at boot to
 * move the kernel to its KASLR address). A bare vmlinux ELF is accepted too; it has the table
 * only when it was cut from a payload (scripts/extract-vmlinux).
 *
 * The relocation table, read backwards from the end (misc.c, handle_relocations()):
 *   … ELF … | 0 | 64-bit relocations | 0 | inverse 32-bit relocations | 0 | 32-bit relocations
 * Each entry is the link-time address of a field, as 32 bits sign-extended to 64. At boot
 * 64-bit and 32-bit fields get the KASLR offset added, inverse 32-bit fields subtracted.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { UsageError } from '../../util/errors.ts';

export interface ImageSegment {
  /**
   * Link-time virtual address where the segment is loaded: __START_KERNEL_map + its physical
   * address. The decompressor places segments by physical address (parse_elf()), and the
   * per-CPU template links at 0 but is loaded among the others.
   */
  readonly vaddr: bigint;
  readonly offset: number;
  readonly fileSize: number;
}

export interface ImageSection {
  readonly name: string;
  readonly vaddr: bigint;
  readonly offset: number;
  readonly size: number;
  /** SHT_NOBITS: no bytes in the file. */
  readonly nobits: boolean;
}

export interface Relocations {
  /** Link-time addresses of the fields to fix, as sign-extended 32-bit values. */
  readonly abs64: Int32Array;
  readonly abs32: Int32Array;
  readonly inv32: Int32Array;
}

export interface KernelImage {
  /** The vmlinux ELF (a view; the relocation table, if any, is not part of it). */
  readonly elf: Uint8Array;
  readonly segments: readonly ImageSegment[];
  readonly sections: readonly ImageSection[];
  /** Undefined for an ELF without the table: its text cannot be relocated exactly. */
  readonly relocations?: Relocations;
  /** How the file was read, for the report: "bzImage (xz)", "vmlinux ELF"… */
  readonly format: string;
}

const MAX_IMAGE = 1 << 30;
/** __START_KERNEL_map: virtual address of physical 0 in the kernel's image mapping. */
const START_KERNEL_MAP = 0xffff_ffff_8000_0000n;
/** Largest decompressed payload accepted (Debian's is ~65 MiB). */
const MAX_DECOMPRESSED = 512 * 1024 * 1024;

export function loadKernelImage(path: string): KernelImage {
  let file: Uint8Array;
  try {
    file = readFileSync(path);
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (file.length > MAX_IMAGE) throw new UsageError(`${path}: ${file.length} bytes is too large for a kernel image`);
  // A plain Uint8Array: a Buffer's slice() would share memory where a copy is meant.
  file = new Uint8Array(file.buffer, file.byteOffset, file.byteLength);
  if (isElf(file)) return parseVmlinux(file, 'vmlinux ELF');
  const payload = bzImagePayload(file, path);
  return parseVmlinux(payload.bytes, `bzImage (${payload.compression})`);
}

function isElf(b: Uint8Array): boolean {
  return b.length >= 64 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
}

/** The decompressed payload of a bzImage (boot protocol 2.08+: payload_offset/payload_length). */
function bzImagePayload(file: Uint8Array, path: string): { bytes: Uint8Array; compression: string } {
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  if (file.length < 0x250 || dv.getUint32(0x202, true) !== 0x53726448 /* "HdrS" */) {
    throw new UsageError(`${path} is neither a vmlinux ELF nor a bzImage`);
  }
  const version = dv.getUint16(0x206, true);
  if (version < 0x208) throw new UsageError(`${path}: boot protocol ${version.toString(16)} has no payload fields (2.08 or later needed)`);
  const setupSects = file[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + dv.getUint32(0x248, true);
  const length = dv.getUint32(0x24c, true);
  if (start + length > file.length || length < 8) throw new UsageError(`${path}: the payload lies outside the file`);
  const payload = file.subarray(start, start + length);
  // mkpiggy appends the decompressed size (little-endian u32) to every compressed payload.
  const expected = dv.getUint32(start + length - 4, true);
  if (expected > MAX_DECOMPRESSED) throw new UsageError(`${path}: the payload claims ${expected} bytes decompressed`);
  const m = (bytes: number[]): boolean => bytes.every((b, i) => payload[i] === b);
  let out: Uint8Array;
  let compression: string;
  if (m([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])) {
    compression = 'xz';
    out = runDecompressor('xz', ['-dc', '--single-stream'], payload.subarray(0, length - 4), path);
  } else if (m([0x1f, 0x8b])) {
    compression = 'gzip';
    try {
      out = gunzipSync(payload.subarray(0, length - 4), { maxOutputLength: MAX_DECOMPRESSED });
    } catch (e) {
      throw new UsageError(`${path}: gzip payload: ${(e as Error).message}`);
    }
  } else if (m([0x28, 0xb5, 0x2f, 0xfd])) {
    compression = 'zstd';
    out = runDecompressor('zstd', ['-dc', '-q'], payload.subarray(0, length - 4), path);
  } else if (m([0x02, 0x21, 0x4c, 0x18])) {
    // The kernel writes lz4's legacy format (lz4 -l), which the lz4 tool still reads.
    compression = 'lz4';
    out = runDecompressor('lz4', ['-dc', '-q'], payload.subarray(0, length - 4), path);
  } else if (m([0x5d, 0x00, 0x00])) {
    compression = 'lzma';
    out = runDecompressor('xz', ['-dc', '--format=lzma', '--single-stream'], payload.subarray(0, length - 4), path);
  } else {
    throw new UsageError(`${path}: the payload's compression is not supported (xz, gzip, zstd, lz4 and lzma are); give the decompressed vmlinux instead`);
  }
  if (out.length !== expected) throw new UsageError(`${path}: the payload decompressed to ${out.length} bytes, not the ${expected} it declares`);
  if (!isElf(out)) throw new UsageError(`${path}: the decompressed payload is not an ELF file`);
  return { bytes: out, compression };
}

function runDecompressor(tool: string, args: string[], input: Uint8Array, path: string): Uint8Array {
  const r = spawnSync(tool, args, { input, maxBuffer: MAX_DECOMPRESSED + 1, stdio: ['pipe', 'pipe', 'pipe'] });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    throw new UsageError(code === 'ENOENT' ? `the '${tool}' tool is needed to read ${path}` : `${tool} on ${path}: ${r.error.message}`);
  }
  if (r.status !== 0) throw new UsageError(`${tool} could not decompress ${path}: ${r.stderr.toString().trim().split('\n').pop() ?? `exit ${r.status}`}`);
  return new Uint8Array(r.stdout.buffer, r.stdout.byteOffset, r.stdout.byteLength);
}

/** ELF64 little-endian x86-64 only: program headers, section headers, then the table after them. */
function parseVmlinux(bytes: Uint8Array, format: string): KernelImage {
  const bad = (why: string): never => {
    throw new UsageError(`kernel image (${format}): ${why}`);
  };
  if (bytes[4] !== 2 || bytes[5] !== 1) bad('not a 64-bit little-endian ELF');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dv.getUint16(0x12, true) !== 62) bad('not an x86-64 ELF');
  const num = (p: number): number => {
    const v = dv.getBigUint64(p, true);
    return v > BigInt(bytes.length) ? bad(`offset 0x${v.toString(16)} lies past the end`) : Number(v);
  };
  const phoff = num(0x20);
  const shoff = num(0x28);
  const phentsize = dv.getUint16(0x36, true);
  const phnum = dv.getUint16(0x38, true);
  const shentsize = dv.getUint16(0x3a, true);
  const shnum = dv.getUint16(0x3c, true);
  const shstrndx = dv.getUint16(0x3e, true);
  if (phentsize < 56 || phoff + phnum * phentsize > bytes.length) bad('program headers lie outside the file');
  if (shnum > 0 && (shentsize < 64 || shoff + shnum * shentsize > bytes.length)) bad('section headers lie outside the file');

  let elfEnd = Math.max(64, phoff + phnum * phentsize, shoff + shnum * shentsize);
  const segments: ImageSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    if (dv.getUint32(p, true) !== 1 /* PT_LOAD */) continue;
    const offset = num(p + 8);
    const fileSize = num(p + 32);
    if (offset + fileSize > bytes.length) bad(`segment ${i} lies past the end`);
    segments.push({ vaddr: START_KERNEL_MAP + dv.getBigUint64(p + 24, true), offset, fileSize });
    elfEnd = Math.max(elfEnd, offset + fileSize);
  }
  const sections: ImageSection[] = [];
  if (shnum > 0 && shstrndx < shnum) {
    const strOff = num(shoff + shstrndx * shentsize + 24);
    const strSize = num(shoff + shstrndx * shentsize + 32);
    if (strOff + strSize > bytes.length) bad('section names lie past the end');
    const decoder = new TextDecoder('latin1');
    for (let i = 1; i < shnum; i++) {
      const p = shoff + i * shentsize;
      const nameOff = dv.getUint32(p, true);
      const type = dv.getUint32(p + 4, true);
      const offset = num(p + 24);
      const size = num(p + 32);
      const nobits = type === 8;
      if (!nobits && offset + size > bytes.length) bad(`section ${i} lies past the end`);
      if (!nobits) elfEnd = Math.max(elfEnd, offset + size);
      const nameEnd = nameOff < strSize ? bytes.indexOf(0, strOff + nameOff) : -1;
      const name = nameEnd > 0 && nameEnd < strOff + strSize ? decoder.decode(bytes.subarray(strOff + nameOff, nameEnd)) : '';
      sections.push({ name, vaddr: dv.getBigUint64(p + 16, true), offset, size, nobits });
    }
  }
  const relocations = parseRelocations(bytes, elfEnd);
  return { elf: bytes.subarray(0, elfEnd), segments, sections, format, ...(relocations ? { relocations } : {}) };
}

/** The relocation table after the ELF's last byte, if the rest of the file is exactly one. */
function parseRelocations(bytes: Uint8Array, elfEnd: number): Relocations | undefined {
  const tail = bytes.length - elfEnd;
  if (tail < 12 || tail % 4 !== 0) return undefined;
  const dv = new DataView(bytes.buffer, bytes.byteOffset + elfEnd, tail);
  const words = tail / 4;
  // Walk back from the end: 32-bit entries, 0, inverse entries, 0, 64-bit entries, 0.
  const runs: number[][] = [[], [], []];
  let i = words - 1;
  for (let run = 0; run < 3; run++) {
    while (i >= 0 && dv.getUint32(i * 4, true) !== 0) runs[run]!.push(dv.getInt32(i * 4, true)), i--;
    if (i < 0) return undefined;
    i--; // the terminator
  }
  if (i !== -1) return undefined; // the table must start right after the ELF
  // Every entry must name a kernel address (sign-extended: the top bit is set).
  for (const r of runs) for (const v of r) if (v >= 0) return undefined;
  return { abs32: Int32Array.from(runs[0]!), inv32: Int32Array.from(runs[1]!), abs64: Int32Array.from(runs[2]!) };
}

/** File offset of the link-time address `vaddr` (len bytes must fit in one segment), or -1. */
export function fileOffsetOf(image: KernelImage, vaddr: bigint, len: number): number {
  for (const s of image.segments) {
    if (vaddr >= s.vaddr && vaddr + BigInt(len) <= s.vaddr + BigInt(s.fileSize)) return s.offset + Number(vaddr - s.vaddr);
  }
  return -1;
}

/** Bytes the file holds from the link-time address `vaddr` to the end of its segment (0 if none). */
export function imageExtent(image: KernelImage, vaddr: bigint): number {
  for (const s of image.segments) {
    if (vaddr >= s.vaddr && vaddr < s.vaddr + BigInt(s.fileSize)) return Number(s.vaddr + BigInt(s.fileSize) - vaddr);
  }
  return 0;
}

/**
 * Bytes [vaddr, vaddr+len) of the image as they are in memory after boot-time relocation by
 * `delta` (the KASLR offset: load address minus link address). Without a relocation table
 * the bytes are returned unrelocated and `relocated` is false.
 */
export function relocatedBytes(image: KernelImage, vaddr: bigint, len: number, delta: bigint): { bytes: Uint8Array; relocated: boolean } {
  const off = fileOffsetOf(image, vaddr, len);
  if (off < 0) throw new UsageError(`kernel image: 0x${vaddr.toString(16)}+${len} is not in its file`);
  const bytes = image.elf.slice(off, off + len);
  const r = image.relocations;
  if (!r || delta === 0n) return { bytes, relocated: r !== undefined };
  // Entries are sign-extended 32-bit addresses: as signed numbers they are exact, so the
  // offset of a field is a plain subtraction (no bigint per entry; there are ~10^5 of them).
  const base = Number(BigInt.asIntN(64, vaddr));
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dLo = Number(BigInt.asUintN(32, delta));
  const dHi = Number(BigInt.asUintN(32, delta >> 32n));
  for (const e of r.abs32) {
    const p = e - base;
    if (p >= 0 && p + 4 <= len) dv.setUint32(p, (dv.getUint32(p, true) + dLo) >>> 0, true);
  }
  for (const e of r.inv32) {
    const p = e - base;
    if (p >= 0 && p + 4 <= len) dv.setUint32(p, (dv.getUint32(p, true) - dLo) >>> 0, true);
  }
  for (const e of r.abs64) {
    const p = e - base;
    if (p < 0 || p + 8 > len) continue;
    const lo = dv.getUint32(p, true) + dLo;
    dv.setUint32(p, lo >>> 0, true);
    dv.setUint32(p + 4, (dv.getUint32(p + 4, true) + dHi + (lo > 0xffff_ffff ? 1 : 0)) >>> 0, true);
  }
  return { bytes, relocated: true };
}


export function imageBytes(image: KernelImage, vaddr: bigint, len: number): Uint8Array {
  const off = fileOffsetOf(image, vaddr, len);
  if (off < 0) throw new UsageError(`kernel image: 0x${vaddr.toString(16)}+${len} is not in its file`);
  return image.elf.subarray(off, off + len);
}
