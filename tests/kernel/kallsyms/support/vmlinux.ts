import { readFileSync } from 'node:fs';
import { TranslationError } from '../../../../src/util/errors.ts';
import type { KernelImageReader, VaRange } from '../../../../src/kernel/kallsyms/index.ts';

/** __START_KERNEL_map: the kernel image's virtual address for physical 0 (x86-64). */
export const START_KERNEL_MAP = 0xffff_ffff_8000_0000n;
const KERNEL_HALF = 0xffff_8000_0000_0000n;

export interface ElfSegment {
  /** Kernel virtual address the segment is mapped at (the per-CPU segment, linked at 0, too). */
  readonly va: bigint;
  readonly paddr: bigint;
  readonly offset: number;
  readonly filesz: number;
  readonly memsz: number;
}

export interface ElfSection {
  readonly name: string;
  readonly addr: bigint;
  readonly size: number;
  readonly offset: number;
}

/**
 * A vmlinux ELF (as unpacked from a bzImage: section and program headers kept, symbols
 * stripped) read as the kernel's virtual memory. Loadable segments are mapped where the
 * kernel maps them: at __START_KERNEL_map + physical address, which is p_vaddr for all but the
 * per-CPU segment (linked at 0). Bytes past a segment's file size read as zeros (bss).
 */
export class Vmlinux implements KernelImageReader {
  readonly segments: ElfSegment[] = [];
  readonly sections: ElfSection[] = [];
  /** End of the ELF proper; the x86 relocation table follows it in a decompressed bzImage. */
  readonly elfEnd: number;

  constructor(readonly data: Buffer) {
    if (data.readUInt32BE(0) !== 0x7f454c46 || data[4] !== 2 || data[5] !== 1) throw new Error('not a little-endian ELF64 file');
    const phoff = Number(data.readBigUInt64LE(0x20));
    const shoff = Number(data.readBigUInt64LE(0x28));
    const phentsize = data.readUInt16LE(0x36);
    const phnum = data.readUInt16LE(0x38);
    const shentsize = data.readUInt16LE(0x3a);
    const shnum = data.readUInt16LE(0x3c);
    const shstrndx = data.readUInt16LE(0x3e);
    let end = shoff + shnum * shentsize;
    for (let i = 0; i < phnum; i++) {
      const p = phoff + i * phentsize;
      if (data.readUInt32LE(p) !== 1) continue; // PT_LOAD
      const offset = Number(data.readBigUInt64LE(p + 8));
      const vaddr = data.readBigUInt64LE(p + 16);
      const paddr = data.readBigUInt64LE(p + 24);
      const filesz = Number(data.readBigUInt64LE(p + 32));
      const memsz = Number(data.readBigUInt64LE(p + 40));
      const va = vaddr >= KERNEL_HALF ? vaddr : START_KERNEL_MAP + paddr;
      this.segments.push({ va, paddr, offset, filesz, memsz });
      end = Math.max(end, offset + filesz);
    }
    this.elfEnd = end;
    const strOff = Number(data.readBigUInt64LE(shoff + shstrndx * shentsize + 0x18));
    for (let i = 0; i < shnum; i++) {
      const s = shoff + i * shentsize;
      const nameOff = data.readUInt32LE(s);
      let e = strOff + nameOff;
      while (data[e] !== 0) e++;
      this.sections.push({
        name: data.toString('latin1', strOff + nameOff, e),
        addr: data.readBigUInt64LE(s + 0x10),
        offset: Number(data.readBigUInt64LE(s + 0x18)),
        size: Number(data.readBigUInt64LE(s + 0x20)),
      });
    }
  }

  static open(path: string): Vmlinux {
    return new Vmlinux(readFileSync(path));
  }

  section(name: string): ElfSection {
    const s = this.sections.find((x) => x.name === name);
    if (!s) throw new Error(`no section ${name}`);
    return s;
  }

  /** The kernel image as the kernel maps it: from the first segment to the end of the last. */
  imageRange(): VaRange {
    let start = this.segments[0]!.va;
    let end = start;
    for (const s of this.segments) {
      if (s.va < start) start = s.va;
      const e = s.va + BigInt(s.memsz);
      if (e > end) end = e;
    }
    return { start, end };
  }

  private segmentFor(va: bigint, len: number): ElfSegment | undefined {
    for (const s of this.segments) if (va >= s.va && va + BigInt(len) <= s.va + BigInt(s.memsz)) return s;
    return undefined;
  }

  /** File offset of `va`, which must lie in a segment's file part. */
  fileOffset(va: bigint): number {
    const s = this.segmentFor(va, 1);
    if (!s || va - s.va >= BigInt(s.filesz)) throw new Error(`0x${va.toString(16)} is not backed by the file`);
    return s.offset + Number(va - s.va);
  }

  read(va: bigint, dst: Uint8Array): void {
    const s = this.segmentFor(va, dst.length);
    if (!s) throw new TranslationError(va, 1, 'not in the image');
    const rel = Number(va - s.va);
    const fromFile = Math.max(0, Math.min(dst.length, s.filesz - rel));
    if (fromFile > 0) dst.set(this.data.subarray(s.offset + rel, s.offset + rel + fromFile));
    if (fromFile < dst.length) dst.fill(0, fromFile);
  }

  /** Zero-copy where the range lies in one segment's file part, as a mapped source gives. */
  readRange(va: bigint, len: number): Uint8Array {
    const s = this.segmentFor(va, len);
    if (s && va + BigInt(len) <= s.va + BigInt(s.filesz)) {
      const off = s.offset + Number(va - s.va);
      return this.data.subarray(off, off + len);
    }
    const out = new Uint8Array(len);
    this.read(va, out);
    return out;
  }

  /** Like read(), but bytes outside every segment read as zeros: physical memory around the image. */
  readLoose(va: bigint, dst: Uint8Array): void {
    dst.fill(0);
    const end = va + BigInt(dst.length);
    for (const s of this.segments) {
      const from = va > s.va ? va : s.va;
      const fileEnd = s.va + BigInt(s.filesz);
      const to = end < fileEnd ? end : fileEnd;
      if (from >= to) continue;
      const src = s.offset + Number(from - s.va);
      dst.set(this.data.subarray(src, src + Number(to - from)), Number(from - va));
    }
  }

  readString(va: bigint, max = 256): string {
    const buf = new Uint8Array(max);
    this.read(va, buf);
    const nul = buf.indexOf(0);
    return Buffer.from(buf.subarray(0, nul < 0 ? max : nul)).toString('latin1');
  }

  /**
   * The relocation lists the x86 decompressor applies under KASLR
   * (arch/x86/boot/compressed/misc.c, handle_relocations): appended after the ELF, read
   * backwards from the end as 32-bit entries — 32-bit relocations, 0, inverse 32-bit
   * relocations, 0, 64-bit relocations, 0. Each entry is the sign-extended link-time address
   * of a place to adjust.
   */
  relocations(): { r32: bigint[]; inv32: bigint[]; r64: bigint[] } {
    const d = this.data;
    let p = d.length - 4;
    const take = (): bigint[] => {
      const out: bigint[] = [];
      for (; p >= this.elfEnd; p -= 4) {
        const v = d.readInt32LE(p);
        if (v === 0) {
          p -= 4;
          return out;
        }
        out.push(BigInt(v) & 0xffff_ffff_ffff_ffffn);
      }
      throw new Error('relocation table runs into the ELF');
    };
    const r32 = take();
    const inv32 = take();
    const r64 = take();
    return { r32, inv32, r64 };
  }

  /** A copy of the image with the kernel's own relocations applied for a virtual slide `delta`. */
  relocated(delta: bigint): Vmlinux {
    const copy = new Vmlinux(Buffer.from(this.data));
    const { r32, inv32, r64 } = this.relocations();
    const d = copy.data;
    const slid: ElfSegment[] = copy.segments.map((s) => ({ ...s, va: s.va + delta }));
    for (const va of r32) {
      const o = copy.fileOffset(va);
      d.writeUInt32LE((d.readUInt32LE(o) + Number(delta)) >>> 0, o);
    }
    for (const va of inv32) {
      const o = copy.fileOffset(va);
      d.writeUInt32LE((d.readUInt32LE(o) - Number(delta)) >>> 0, o);
    }
    for (const va of r64) {
      const o = copy.fileOffset(va);
      d.writeBigUInt64LE((d.readBigUInt64LE(o) + delta) & 0xffff_ffff_ffff_ffffn, o);
    }
    copy.segments.splice(0, copy.segments.length, ...slid);
    return copy;
  }
}
