/**
 * Synthetic ELF64 core files for unit tests, written the way QEMU's dump.c lays them out:
 * ELF header, (section header 0 when PN_XNUM is needed), program headers, notes, then data.
 */
export interface LoadSpec {
  readonly paddr: number;
  readonly vaddr?: bigint;
  /** Data in the file (filesz = length). */
  readonly data?: Uint8Array;
  /** Point this segment at the data of an earlier segment (same file offset), like paging=true does for aliases. */
  readonly sameDataAs?: number;
  /** File offset override (for corrupt or conflicting headers). */
  readonly offset?: number;
  readonly filesz?: number;
  readonly memsz?: number;
}

export interface NoteSpec {
  readonly name: string;
  readonly type: number;
  readonly desc: Uint8Array;
}

export interface CoreSpec {
  readonly loads: readonly LoadSpec[];
  readonly notes?: readonly NoteSpec[];
  readonly machine?: number;
  /** Force e_phnum = PN_XNUM with the count in section 0's sh_info (automatic above 0xfffe). */
  readonly xnum?: boolean;
  /** e_ehsize as QEMU 7.2 writes it (8). */
  readonly ehsize?: number;
  readonly phentsize?: number;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

export function noteBytes(notes: readonly NoteSpec[]): Buffer {
  const parts: Buffer[] = [];
  for (const n of notes) {
    const name = Buffer.from(n.name + '\0', 'latin1');
    const h = Buffer.alloc(12);
    h.writeUInt32LE(name.length, 0);
    h.writeUInt32LE(n.desc.length, 4);
    h.writeUInt32LE(n.type, 8);
    const nameP = Buffer.alloc(align4(name.length));
    name.copy(nameP);
    const descP = Buffer.alloc(align4(n.desc.length));
    Buffer.from(n.desc).copy(descP);
    parts.push(h, nameP, descP);
  }
  return Buffer.concat(parts);
}

export function buildCore(spec: CoreSpec): Buffer {
  const notes = noteBytes(spec.notes ?? []);
  const phnum = spec.loads.length + (notes.length > 0 ? 1 : 0);
  const xnum = spec.xnum || phnum >= 0xffff;
  const ehdrSize = 64;
  const shoff = xnum ? ehdrSize : 0;
  const phoff = ehdrSize + (xnum ? 64 : 0);
  const phentsize = 56;
  const notesOff = phoff + phnum * phentsize;
  let dataOff = notesOff + notes.length;
  const offsets: number[] = [];
  const datas: Buffer[] = [];
  for (const l of spec.loads) {
    if (l.sameDataAs !== undefined) offsets.push(offsets[l.sameDataAs]!);
    else if (l.data) {
      offsets.push(dataOff);
      datas.push(Buffer.from(l.data));
      dataOff += l.data.length;
    } else offsets.push(l.offset ?? dataOff);
  }
  const out = Buffer.alloc(dataOff);
  // ELF header
  out.writeUInt32LE(0x464c457f, 0);
  out[4] = 2; // ELFCLASS64
  out[5] = 1; // little-endian
  out[6] = 1; // EV_CURRENT
  out.writeUInt16LE(4, 16); // ET_CORE
  out.writeUInt16LE(spec.machine ?? 62, 18);
  out.writeUInt32LE(1, 20);
  out.writeBigUInt64LE(BigInt(phoff), 32);
  out.writeBigUInt64LE(BigInt(shoff), 40);
  out.writeUInt16LE(spec.ehsize ?? 64, 52);
  out.writeUInt16LE(spec.phentsize ?? phentsize, 54);
  out.writeUInt16LE(xnum ? 0xffff : phnum, 56);
  out.writeUInt16LE(64, 58);
  out.writeUInt16LE(xnum ? 1 : 0, 60);
  if (xnum) out.writeUInt32LE(phnum, shoff + 44); // section 0 sh_info
  let p = phoff;
  const ph = (type: number, offset: number, vaddr: bigint, paddr: number, filesz: number, memsz: number): void => {
    out.writeUInt32LE(type, p);
    out.writeBigUInt64LE(BigInt.asUintN(64, BigInt(offset)), p + 8);
    out.writeBigUInt64LE(vaddr, p + 16);
    out.writeBigUInt64LE(BigInt(paddr), p + 24);
    out.writeBigUInt64LE(BigInt(filesz), p + 32);
    out.writeBigUInt64LE(BigInt(memsz), p + 40);
    p += phentsize;
  };
  if (notes.length > 0) ph(4, notesOff, 0n, 0, notes.length, notes.length);
  spec.loads.forEach((l, i) => {
    const filesz = l.filesz ?? l.data?.length ?? (l.sameDataAs !== undefined ? spec.loads[l.sameDataAs]!.data!.length : 0);
    ph(1, offsets[i]!, l.vaddr ?? 0n, l.paddr, filesz, l.memsz ?? filesz);
  });
  notes.copy(out, notesOff);
  let d = notesOff + notes.length;
  for (const b of datas) {
    b.copy(out, d);
    d += b.length;
  }
  return out;
}

/** A QEMUCPUState note (version 1) with the given values; 440 bytes with kernel_gs_base. */
export function qemuCpuNote(v: {
  rip: bigint;
  rsp?: bigint;
  rflags?: bigint;
  cs?: number;
  gsBase?: bigint;
  idtBase?: bigint;
  gdtBase?: bigint;
  cr: readonly bigint[];
  kernelGsBase?: bigint;
}): NoteSpec {
  const withKgs = v.kernelGsBase !== undefined;
  const size = withKgs ? 440 : 432;
  const d = Buffer.alloc(size);
  d.writeUInt32LE(1, 0);
  d.writeUInt32LE(size, 4);
  // rax … r15 = 0x1000 + i, then rip, rflags
  for (let i = 0; i < 16; i++) d.writeBigUInt64LE(BigInt(0x1000 + i), 8 + i * 8);
  d.writeBigUInt64LE(v.rsp ?? 0x1006n, 8 + 6 * 8);
  d.writeBigUInt64LE(v.rip, 8 + 16 * 8);
  d.writeBigUInt64LE(v.rflags ?? 0x246n, 8 + 17 * 8);
  const seg = (i: number, selector: number, base: bigint): void => {
    const at = 8 + 18 * 8 + i * 24;
    d.writeUInt32LE(selector, at);
    d.writeBigUInt64LE(base, at + 16);
  };
  seg(0, v.cs ?? 0x10, 0n); // cs
  seg(4, 0, v.gsBase ?? 0n); // gs
  seg(8, 0, v.gdtBase ?? 0n); // gdt
  seg(9, 0, v.idtBase ?? 0n); // idt
  v.cr.forEach((c, i) => d.writeBigUInt64LE(c, 8 + 18 * 8 + 240 + i * 8));
  if (withKgs) d.writeBigUInt64LE(v.kernelGsBase!, 432);
  return { name: 'QEMU', type: 0, desc: d };
}
