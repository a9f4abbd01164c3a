import { fstatSync } from 'node:fs';
import { TargetError } from '../util/errors.ts';
import type { Warnings } from '../util/warnings.ts';
import { type Extent, MAX_EXTENTS, normalizeExtents } from './extents.ts';
import { FileBackedMemory } from './file-backed.ts';
import { closeQuietly, openReadOnly, preadUpTo } from './open-file.ts';

/**
 * ELF core files as QEMU's `dump-guest-memory` writes them (and kdump's /proc/vmcore copies).
 * Physical memory comes from PT_LOAD p_paddr/p_offset/p_filesz — p_vaddr is 0 with
 * `paging=false` and virtual with `paging=true`, where one physical page appears once per
 * virtual mapping. A p_memsz beyond p_filesz is memory the dump does not hold: a hole.
 * QEMU's quirks are tolerated: an e_ehsize or e_phentsize that does not match the class, and
 * e_phnum = PN_XNUM with the real count in section header 0's sh_info.
 *
 * The notes are returned as found: per-vCPU NT_PRSTATUS (general registers), QEMU's own
 * "QEMU" note (QEMUCPUState from qemu/target/i386/arch_dump.c: registers, segment caches with
 * full bases, control registers, and IA32_KERNEL_GS_BASE when the note is large enough), and
 * VMCOREINFO as text.
 */

export const ELF_MAGIC = 0x464c457f; // "\x7fELF" little-endian
const ET_CORE = 4;
const PT_LOAD = 1;
const PT_NOTE = 4;
const PN_XNUM = 0xffff;
const NT_PRSTATUS = 1;
export const EM_386 = 3;
export const EM_X86_64 = 62;

/** Bounds against corrupt headers. */
const MAX_PHNUM = 4 * 1024 * 1024;
const MAX_NOTE_SEGMENT = 64 * 1024 * 1024;
const MAX_NOTES = 1 << 16;
/** Guest-physical addresses fit in 52 bits. */
const MAX_PHYS = 2 ** 52;

export interface SegmentCache {
  readonly selector: number;
  readonly limit: number;
  /** QEMU's descriptor flags word (type, S, DPL at bits 13–14, P, L, D/B, G). */
  readonly flags: number;
  readonly base: bigint;
}

/** QEMU's "QEMU" note: one per vCPU, in vCPU order. */
export interface QemuCpuNote {
  readonly version: number;
  readonly size: number;
  /** rax … r15, rip, rflags. */
  readonly regs: Readonly<Record<string, bigint>>;
  readonly cs: SegmentCache;
  readonly ds: SegmentCache;
  readonly es: SegmentCache;
  readonly fs: SegmentCache;
  readonly gs: SegmentCache;
  readonly ss: SegmentCache;
  readonly ldt: SegmentCache;
  readonly tr: SegmentCache;
  readonly gdt: SegmentCache;
  readonly idt: SegmentCache;
  /** CR0 … CR4. */
  readonly cr: readonly bigint[];
  /** IA32_KERNEL_GS_BASE, present in notes of 440 bytes or more. */
  readonly kernelGsBase?: bigint;
}

/** An NT_PRSTATUS note: the general registers of one vCPU (x86-64 or i386 layout). */
export interface PrStatusNote {
  readonly pid: number;
  /** Lower-case register names: rax … r15, rip, rflags, rsp, cs, ss, fs_base, gs_base… (eax … for i386). */
  readonly regs: Readonly<Record<string, bigint>>;
}

export interface ElfCoreNotes {
  readonly prstatus: readonly PrStatusNote[];
  readonly qemuCpus: readonly QemuCpuNote[];
  readonly vmcoreinfo?: string;
}

export interface ElfCoreInfo {
  readonly elfClass: 32 | 64;
  /** e_machine: EM_X86_64 (62) when QEMU saw long mode on the first vCPU, EM_386 (3) otherwise. */
  readonly machine: number;
  /** PT_LOAD segments in the file (before merging). */
  readonly loadSegments: number;
  /** Guest-physical runs held by the file, merged. */
  readonly extents: readonly Extent[];
  readonly notes: ElfCoreNotes;
}

export interface ElfCoreOptions {
  /** Map the file for zero-copy windows (default true). */
  readonly map?: boolean;
  /** Where inconsistencies that do not stop the reading are recorded. */
  readonly warnings?: Warnings;
}

/** Read a 64-bit little-endian value that must fit in a double exactly, else NaN. */
function u64n(b: Buffer, at: number): number {
  const hi = b.readUInt32LE(at + 4);
  if (hi >= 0x200000) return NaN;
  return hi * 4294967296 + b.readUInt32LE(at);
}

interface Header {
  readonly elfClass: 32 | 64;
  readonly machine: number;
  readonly phoff: number;
  readonly phentsize: number;
  readonly phnum: number;
}

function readHeader(fd: number, what: string, fileSize: number): Header {
  const h = preadUpTo(fd, 64, 0);
  if (h.length < 16 || h.readUInt32LE(0) !== ELF_MAGIC) throw new TargetError(`${what}: not an ELF file`);
  const cls = h[4];
  if (cls !== 1 && cls !== 2) throw new TargetError(`${what}: unknown ELF class ${cls}`);
  if (h[5] !== 1) throw new TargetError(`${what}: big-endian ELF is not supported`);
  const is64 = cls === 2;
  if (h.length < (is64 ? 64 : 52)) throw new TargetError(`${what}: truncated ELF header`);
  const type = h.readUInt16LE(16);
  if (type !== ET_CORE) throw new TargetError(`${what}: an ELF file but not a core dump (e_type ${type})`);
  const machine = h.readUInt16LE(18);
  const phoff = is64 ? u64n(h, 32) : h.readUInt32LE(28);
  const shoff = is64 ? u64n(h, 40) : h.readUInt32LE(32);
  const phentsizeField = h.readUInt16LE(is64 ? 54 : 42);
  let phnum = h.readUInt16LE(is64 ? 56 : 44);
  // QEMU writes 8 in e_ehsize and has written odd e_phentsize values: trust the class instead.
  const minPhent = is64 ? 56 : 32;
  const phentsize = phentsizeField >= minPhent ? phentsizeField : minPhent;
  if (phnum === PN_XNUM) {
    // The real count is in section header 0's sh_info.
    const shSize = is64 ? 64 : 40;
    if (!Number.isFinite(shoff) || shoff === 0 || shoff + shSize > fileSize) {
      throw new TargetError(`${what}: ELF header says PN_XNUM but has no section header 0`);
    }
    const sh = preadUpTo(fd, shSize, shoff);
    phnum = sh.readUInt32LE(is64 ? 44 : 28);
  }
  if (!Number.isFinite(phoff) || phnum > MAX_PHNUM || phoff + phnum * phentsize > fileSize) {
    throw new TargetError(`${what}: truncated or corrupt ELF program headers (${phnum} at offset ${phoff})`);
  }
  return { elfClass: is64 ? 64 : 32, machine, phoff, phentsize, phnum };
}

/** Parse the program headers and notes of an ELF core; the data itself is not read. */
export function readElfCore(fd: number, what: string, warnings?: Warnings): ElfCoreInfo {
  const fileSize = fstatSync(fd).size;
  const hdr = readHeader(fd, what, fileSize);
  const is64 = hdr.elfClass === 64;
  const table = preadUpTo(fd, hdr.phnum * hdr.phentsize, hdr.phoff);
  const loads: Extent[] = [];
  let loadSegments = 0;
  const noteSegments: { offset: number; size: number }[] = [];
  for (let i = 0; i < hdr.phnum; i++) {
    const p = i * hdr.phentsize;
    const type = table.readUInt32LE(p);
    const offset = is64 ? u64n(table, p + 8) : table.readUInt32LE(p + 4);
    const paddr = is64 ? u64n(table, p + 24) : table.readUInt32LE(p + 12);
    const filesz = is64 ? u64n(table, p + 32) : table.readUInt32LE(p + 16);
    if (type === PT_LOAD) {
      loadSegments++;
      if (filesz === 0) continue; // a mapping of something the dump does not hold (MMIO)
      if (!Number.isFinite(offset) || !Number.isFinite(paddr) || !Number.isFinite(filesz) || paddr + filesz > MAX_PHYS) {
        throw new TargetError(`${what}: corrupt PT_LOAD header ${i}`);
      }
      if (offset + filesz > fileSize) {
        throw new TargetError(`${what}: truncated — segment ${i} (physical 0x${paddr.toString(16)}) ends past the end of the file`);
      }
      loads.push({ gpa: paddr, size: filesz, offset });
    } else if (type === PT_NOTE && filesz > 0) {
      if (!Number.isFinite(offset) || offset + filesz > fileSize) throw new TargetError(`${what}: truncated — note segment past the end of the file`);
      if (filesz > MAX_NOTE_SEGMENT) throw new TargetError(`${what}: note segment of ${filesz} bytes is implausibly large`);
      noteSegments.push({ offset, size: filesz });
    }
  }
  let extents: Extent[];
  try {
    extents = normalizeExtents(loads, warnings, `ELF core ${what}`);
  } catch {
    throw new TargetError(`${what}: corrupt — PT_LOAD segments give different contents for the same physical memory`);
  }
  if (extents.length > MAX_EXTENTS) throw new TargetError(`${what}: too fragmented (${extents.length} runs of physical memory)`);
  const notes = readNotes(fd, noteSegments, what, warnings);
  return { elfClass: hdr.elfClass, machine: hdr.machine, loadSegments, extents, notes };
}

function readNotes(fd: number, segments: readonly { offset: number; size: number }[], what: string, warnings?: Warnings): ElfCoreNotes {
  const prstatus: PrStatusNote[] = [];
  const qemuCpus: QemuCpuNote[] = [];
  let vmcoreinfo: string | undefined;
  let count = 0;
  for (const seg of segments) {
    const b = preadUpTo(fd, seg.size, seg.offset);
    let at = 0;
    while (at + 12 <= b.length) {
      if (++count > MAX_NOTES) {
        warnings?.warn(`ELF core ${what}`, `more than ${MAX_NOTES} notes; the rest are ignored`);
        return { prstatus, qemuCpus, vmcoreinfo };
      }
      const namesz = b.readUInt32LE(at);
      const descsz = b.readUInt32LE(at + 4);
      const type = b.readUInt32LE(at + 8);
      const nameAt = at + 12;
      const descAt = nameAt + align4(namesz);
      const next = descAt + align4(descsz);
      if (next > b.length || next <= at) {
        warnings?.warn(`ELF core ${what}`, `note at file offset ${seg.offset + at} runs past its segment; notes after it are ignored`);
        break;
      }
      const name = b.toString('latin1', nameAt, nameAt + namesz).replace(/\0+$/, '');
      const desc = b.subarray(descAt, descAt + descsz);
      if (name === 'CORE' && type === NT_PRSTATUS) {
        const p = parsePrStatus(desc);
        if (p) prstatus.push(p);
        else warnings?.warn(`ELF core ${what}`, `NT_PRSTATUS of ${descsz} bytes has an unknown layout`);
      } else if (name === 'QEMU') {
        const q = parseQemuCpu(desc);
        if (q) qemuCpus.push(q);
        else warnings?.warn(`ELF core ${what}`, `QEMU note of ${descsz} bytes is too short`);
      } else if (name === 'VMCOREINFO') {
        vmcoreinfo = desc.toString('utf8').replace(/\0+$/, '');
      }
      at = next;
    }
  }
  return { prstatus, qemuCpus, vmcoreinfo };
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

/** Register order of x86-64 `struct user_regs_struct`, as in the kernel's elf_prstatus. */
const X86_64_USER_REGS = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx', 'rsi', 'rdi', 'orig_rax',
  'rip', 'cs', 'rflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs',
] as const;
/** i386 `struct user_regs_struct`; segment registers are 16-bit values in 32-bit slots. */
const I386_USER_REGS = ['ebx', 'ecx', 'edx', 'esi', 'edi', 'ebp', 'eax', 'ds', 'es', 'fs', 'gs', 'orig_eax', 'eip', 'cs', 'eflags', 'esp', 'ss'] as const;

/** x86-64 elf_prstatus: 336 bytes, pr_pid at 32, pr_reg at 112. i386: 144 bytes, pr_pid at 24, pr_reg at 72. */
function parsePrStatus(d: Buffer): PrStatusNote | undefined {
  const regs: Record<string, bigint> = {};
  if (d.length >= 112 + X86_64_USER_REGS.length * 8) {
    X86_64_USER_REGS.forEach((name, i) => (regs[name] = d.readBigUInt64LE(112 + i * 8)));
    return { pid: d.readUInt32LE(32), regs };
  }
  if (d.length >= 72 + I386_USER_REGS.length * 4) {
    I386_USER_REGS.forEach((name, i) => {
      const v = d.readUInt32LE(72 + i * 4);
      regs[name] = BigInt(name.length === 2 ? v & 0xffff : v);
    });
    return { pid: d.readUInt32LE(24), regs };
  }
  return undefined;
}

const QEMU_GPRS = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;
const QEMU_SEGMENTS = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'ldt', 'tr', 'gdt', 'idt'] as const;
/** version, size, 18 registers, 10 segments of 24 bytes, cr[5]. */
const QEMU_NOTE_MIN = 8 + 18 * 8 + 10 * 24 + 5 * 8;
const QEMU_NOTE_KGS = QEMU_NOTE_MIN + 8;

function parseQemuCpu(d: Buffer): QemuCpuNote | undefined {
  if (d.length < QEMU_NOTE_MIN) return undefined;
  const version = d.readUInt32LE(0);
  const size = Math.min(d.readUInt32LE(4), d.length);
  const regs: Record<string, bigint> = {};
  let at = 8;
  for (const name of QEMU_GPRS) {
    regs[name] = d.readBigUInt64LE(at);
    at += 8;
  }
  const seg: Record<string, SegmentCache> = {};
  for (const name of QEMU_SEGMENTS) {
    seg[name] = { selector: d.readUInt32LE(at), limit: d.readUInt32LE(at + 4), flags: d.readUInt32LE(at + 8), base: d.readBigUInt64LE(at + 16) };
    at += 24;
  }
  const cr: bigint[] = [];
  for (let i = 0; i < 5; i++, at += 8) cr.push(d.readBigUInt64LE(at));
  const kernelGsBase = size >= QEMU_NOTE_KGS ? d.readBigUInt64LE(at) : undefined;
  return {
    version,
    size,
    regs,
    cs: seg.cs!, ds: seg.ds!, es: seg.es!, fs: seg.fs!, gs: seg.gs!, ss: seg.ss!,
    ldt: seg.ldt!, tr: seg.tr!, gdt: seg.gdt!, idt: seg.idt!,
    cr,
    ...(kernelGsBase !== undefined ? { kernelGsBase } : {}),
  };
}

export interface ElfCore {
  readonly memory: FileBackedMemory;
  readonly info: ElfCoreInfo;
}

/** Open an ELF core dump as a read-only physical memory source, with its notes. */
export async function openElfCore(path: string, opts: ElfCoreOptions = {}): Promise<ElfCore> {
  const fd = openReadOnly(path);
  let info: ElfCoreInfo;
  try {
    info = readElfCore(fd, path, opts.warnings);
    if (info.extents.length === 0) throw new TargetError(`${path}: the core holds no memory`);
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
  const memory = await FileBackedMemory.create({
    kind: 'elf-core',
    description: `ELF core ${path}`,
    fd,
    extents: info.extents,
    map: opts.map,
  });
  return { memory, info };
}

/** Read only the headers and notes of an ELF core (for the vCPU state of a notes-only dump). */
export function readElfCoreFile(path: string, warnings?: Warnings): ElfCoreInfo {
  const fd = openReadOnly(path);
  try {
    return readElfCore(fd, path, warnings);
  } finally {
    closeQuietly(fd);
  }
}
