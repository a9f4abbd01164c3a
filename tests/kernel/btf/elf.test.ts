import { describe, expect, it } from 'vitest';
import { btfBlobFromFile, extractBtfFromElf } from '../../../src/kernel/btf/elf.ts';
import { Btf } from '../../../src/kernel/btf/index.ts';
import { UsageError } from '../../../src/util/errors.ts';
import { buildMini } from './mini.ts';

interface ElfSection {
  name: string;
  type?: number;
  flags?: number;
  data: Uint8Array;
}

/** A minimal ELF file: header, section contents, section-name table, section headers. */
function buildElf(sections: ElfSection[], o: { is64?: boolean; bigEndian?: boolean; extendedNumbering?: boolean } = {}): Uint8Array {
  const is64 = o.is64 ?? true;
  const le = !o.bigEndian;
  const ehsize = is64 ? 64 : 52;
  const shentsize = is64 ? 64 : 40;
  const names = ['', ...sections.map((s) => s.name), '.shstrtab'];
  const nameOffsets: number[] = [];
  const strtab: number[] = [];
  for (const n of names) {
    nameOffsets.push(strtab.length);
    for (const c of n) strtab.push(c.charCodeAt(0));
    strtab.push(0);
  }
  const all: ElfSection[] = [...sections, { name: '.shstrtab', type: 3, data: Uint8Array.from(strtab) }];
  let pos = ehsize;
  const offsets = all.map((s) => {
    const at = pos;
    pos += s.data.length;
    return at;
  });
  pos = (pos + 7) & ~7;
  const shoff = pos;
  const shnum = all.length + 1;
  const out = new Uint8Array(shoff + shnum * shentsize);
  const v = new DataView(out.buffer);
  const set64 = (at: number, value: number): void => v.setBigUint64(at, BigInt(value), le);
  out.set([0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, le ? 1 : 2, 1]);
  all.forEach((s, i) => out.set(s.data, offsets[i]!));
  const shstrndx = shnum - 1;
  if (is64) {
    set64(0x28, shoff);
    v.setUint16(0x3a, shentsize, le);
    v.setUint16(0x3c, o.extendedNumbering ? 0 : shnum, le);
    v.setUint16(0x3e, o.extendedNumbering ? 0xffff : shstrndx, le);
  } else {
    v.setUint32(0x20, shoff, le);
    v.setUint16(0x2e, shentsize, le);
    v.setUint16(0x30, shnum, le);
    v.setUint16(0x32, shstrndx, le);
  }
  if (o.extendedNumbering) {
    // Section 0 carries the real count (sh_size) and name-table index (sh_link).
    set64(shoff + 32, shnum);
    v.setUint32(shoff + 40, shstrndx, le);
  }
  all.forEach((s, i) => {
    const p = shoff + (i + 1) * shentsize;
    v.setUint32(p, nameOffsets[i + 1]!, le);
    v.setUint32(p + 4, s.type ?? 1, le);
    if (is64) {
      set64(p + 8, s.flags ?? 0);
      set64(p + 24, offsets[i]!);
      set64(p + 32, s.data.length);
    } else {
      v.setUint32(p + 8, s.flags ?? 0, le);
      v.setUint32(p + 16, offsets[i]!, le);
      v.setUint32(p + 20, s.data.length, le);
    }
  });
  return out;
}

const btfBlob = buildMini().blob;
const other = new Uint8Array([1, 2, 3, 4]);

describe('extractBtfFromElf', () => {
  it('finds .BTF among other sections (and not .BTF_ids)', () => {
    const elf = buildElf([
      { name: '.text', data: other },
      { name: '.BTF_ids', data: other },
      { name: '.BTF', data: btfBlob },
    ]);
    const got = extractBtfFromElf(elf);
    expect(got).toEqual(btfBlob);
    expect(got.buffer).toBe(elf.buffer); // a view, not a copy
    expect(Btf.parse(got).findType('task_struct')).toBeDefined();
  });

  it('ELF32, big-endian, and extended section numbering', () => {
    const sections = [{ name: '.BTF', data: btfBlob }];
    expect(extractBtfFromElf(buildElf(sections, { is64: false }))).toEqual(btfBlob);
    expect(extractBtfFromElf(buildElf(sections, { bigEndian: true }))).toEqual(btfBlob);
    expect(extractBtfFromElf(buildElf(sections, { extendedNumbering: true }))).toEqual(btfBlob);
  });

  const errors: [string, () => Uint8Array, RegExp][] = [
    ['not ELF', () => new Uint8Array(100), /not an ELF file/],
    ['too short', () => Uint8Array.from([0x7f, 0x45, 0x4c, 0x46, 2, 1]), /too short/],
    ['no .BTF', () => buildElf([{ name: '.text', data: other }]), /no \.BTF section/],
    ['compressed .BTF', () => buildElf([{ name: '.BTF', flags: 0x800, data: btfBlob }]), /compressed/],
    ['NOBITS .BTF', () => buildElf([{ name: '.BTF', type: 8, data: new Uint8Array(0) }]), /no data/],
    [
      'section data past the end',
      () => {
        const elf = buildElf([{ name: '.BTF', data: btfBlob }]);
        const v = new DataView(elf.buffer);
        const shoff = v.getUint32(0x28, true);
        v.setUint32(shoff + 64 + 32, 0x7fffffff, true); // .BTF sh_size
        return elf;
      },
      /lies past the end/,
    ],
    [
      'section headers past the end',
      () => {
        const elf = buildElf([{ name: '.BTF', data: btfBlob }]);
        new DataView(elf.buffer).setUint32(0x28, 0x7ffffff0, true);
        return elf;
      },
      /past the end of the file/,
    ],
    [
      'bad name-table index',
      () => {
        const elf = buildElf([{ name: '.BTF', data: btfBlob }]);
        new DataView(elf.buffer).setUint16(0x3e, 50, true);
        return elf;
      },
      /name table index 50 out of range/,
    ],
    [
      'implausible section count',
      () => {
        const elf = buildElf([{ name: '.BTF', data: btfBlob }], { extendedNumbering: true });
        const v = new DataView(elf.buffer);
        v.setUint32(v.getUint32(0x28, true) + 32, 0xffffffff, true);
        return elf;
      },
      /not plausible/,
    ],
  ];
  for (const [what, make, message] of errors) {
    it(`${what} → UsageError`, () => {
      const bytes = make();
      expect(() => extractBtfFromElf(bytes)).toThrow(UsageError);
      expect(() => extractBtfFromElf(bytes)).toThrow(message);
    });
  }
});

describe('btfBlobFromFile', () => {
  it('raw blobs pass through, ELF files give their .BTF', () => {
    expect(btfBlobFromFile(btfBlob)).toBe(btfBlob);
    expect(btfBlobFromFile(buildMini({ bigEndian: true }).blob)[0]).toBe(0xeb);
    expect(btfBlobFromFile(buildElf([{ name: '.BTF', data: btfBlob }]))).toEqual(btfBlob);
  });

  it('anything else is a UsageError', () => {
    expect(() => btfBlobFromFile(Uint8Array.from([1, 2, 3]))).toThrow(/neither a BTF blob/);
    expect(() => btfBlobFromFile(new Uint8Array(0))).toThrow(UsageError);
  });
});
