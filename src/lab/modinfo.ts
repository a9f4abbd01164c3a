import { TargetError } from '../util/errors.ts';

/**
 * The `.modinfo` section of a kernel module (an ELF64 relocatable file): NUL-separated
 * `key=value` strings written by MODULE_INFO() and modpost (name, depends, vermagic…).
 * Debian's kernel packages ship no modules.dep (depmod runs at install time), so the
 * dependencies of the modules the lab loads are read from here.
 */
export interface ModuleInfo {
  /** The module's name as /proc/modules shows it (underscores). */
  readonly name: string;
  /** Modules that must be loaded first (the `depends=` list). */
  readonly depends: readonly string[];
  readonly vermagic: string;
}

export function readModInfo(ko: Uint8Array, what = 'module'): ModuleInfo {
  const fields = modinfoFields(ko, what);
  const name = fields.get('name');
  if (!name) throw new TargetError(`${what}: .modinfo has no name=`);
  const depends = (fields.get('depends') ?? '').split(',').filter((d) => d.length > 0);
  return { name, depends, vermagic: fields.get('vermagic') ?? '' };
}

/** All key=value pairs of `.modinfo`; a repeated key keeps its first value. */
export function modinfoFields(ko: Uint8Array, what = 'module'): Map<string, string> {
  const section = findSection(ko, '.modinfo', what);
  const out = new Map<string, string>();
  const text = Buffer.from(section.buffer, section.byteOffset, section.byteLength).toString('latin1');
  for (const entry of text.split('\0')) {
    const eq = entry.indexOf('=');
    if (eq <= 0) continue;
    const key = entry.slice(0, eq);
    if (!out.has(key)) out.set(key, entry.slice(eq + 1));
  }
  return out;
}

/** Bytes of the named section of an ELF64 little-endian file; every offset is bounds-checked. */
export function findSection(elf: Uint8Array, wanted: string, what = 'ELF file'): Uint8Array {
  const bad = (why: string) => new TargetError(`${what}: not a usable ELF64 file (${why})`);
  if (elf.length < 64 || elf[0] !== 0x7f || elf[1] !== 0x45 || elf[2] !== 0x4c || elf[3] !== 0x46) throw bad('no ELF magic');
  if (elf[4] !== 2 || elf[5] !== 1) throw bad('not 64-bit little-endian');
  const dv = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const shoff = Number(dv.getBigUint64(0x28, true));
  const shentsize = dv.getUint16(0x3a, true);
  const shnum = dv.getUint16(0x3c, true);
  const shstrndx = dv.getUint16(0x3e, true);
  if (shentsize < 64 || shnum === 0 || shstrndx >= shnum || shoff + shnum * shentsize > elf.length) throw bad('section table out of bounds');
  const header = (i: number) => {
    const at = shoff + i * shentsize;
    const offset = Number(dv.getBigUint64(at + 0x18, true));
    const size = Number(dv.getBigUint64(at + 0x20, true));
    if (offset + size > elf.length) throw bad(`section ${i} out of bounds`);
    return { nameOff: dv.getUint32(at, true), offset, size };
  };
  const names = header(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const h = header(i);
    if (h.nameOff >= names.size) continue;
    const start = names.offset + h.nameOff;
    let end = start;
    while (end < names.offset + names.size && elf[end] !== 0) end++;
    if (Buffer.from(elf.buffer, elf.byteOffset + start, end - start).toString('latin1') === wanted) {
      return elf.subarray(h.offset, h.offset + h.size);
    }
  }
  throw bad(`no ${wanted} section`);
}
