/**
 * The `.BTF` section of an ELF file (a vmlinux, or a module's .ko), for `--btf FILE`.
 * Only the section headers and the section-name string table are read, each bounds-checked;
 * the result is a view into the input, not a copy.
 */
import { UsageError } from '../../util/errors.ts';

const SHT_NOBITS = 8;
const SHF_COMPRESSED = 0x800;
const SHN_XINDEX = 0xffff;
/** More sections than any kernel image has; bounds the header walk on a corrupt file. */
const MAX_SECTIONS = 1 << 20;

interface Section {
  readonly nameOff: number;
  readonly type: number;
  readonly flags: number;
  readonly offset: number;
  readonly size: number;
  readonly link: number;
}

function bad(what: string): UsageError {
  return new UsageError(`ELF: ${what}`);
}

export function isElf(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c && bytes[3] === 0x46;
}

function isBtfBlob(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && ((bytes[0] === 0x9f && bytes[1] === 0xeb) || (bytes[0] === 0xeb && bytes[1] === 0x9f));
}

/** The bytes of the `.BTF` section of an ELF file. Throws UsageError if absent or malformed. */
export function extractBtfFromElf(bytes: Uint8Array): Uint8Array {
  const sec = findSection(bytes, '.BTF');
  if (!sec) throw bad('no .BTF section (kernel built without CONFIG_DEBUG_INFO_BTF?)');
  if (sec.type === SHT_NOBITS) throw bad('.BTF section has no data in the file');
  if (sec.flags & SHF_COMPRESSED) throw bad('.BTF section is compressed, which is not supported');
  return bytes.subarray(sec.offset, sec.offset + sec.size);
}

/** A `--btf FILE`'s contents as a BTF blob: the file itself if it is raw BTF, else its `.BTF` section. */
export function btfBlobFromFile(bytes: Uint8Array): Uint8Array {
  if (isBtfBlob(bytes)) return bytes;
  if (isElf(bytes)) return extractBtfFromElf(bytes);
  throw new UsageError('neither a BTF blob (magic 0xeb9f) nor an ELF file');
}

function findSection(bytes: Uint8Array, want: string): Section | undefined {
  if (!isElf(bytes)) throw bad('not an ELF file');
  if (bytes.length < 52) throw bad('file too short for an ELF header');
  const cls = bytes[4];
  const data = bytes[5];
  if (cls !== 1 && cls !== 2) throw bad(`unknown class ${cls}`);
  if (data !== 1 && data !== 2) throw bad(`unknown byte order ${data}`);
  const is64 = cls === 2;
  const le = data === 1;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u16 = (p: number): number => view.getUint16(p, le);
  const u32 = (p: number): number => view.getUint32(p, le);
  // Values past 2^53 are garbage for any file we can hold; they fail the bounds checks below.
  const u64 = (p: number): number => view.getUint32(p + (le ? 4 : 0), le) * 2 ** 32 + view.getUint32(p + (le ? 0 : 4), le);
  if (is64 && bytes.length < 64) throw bad('file too short for an ELF64 header');

  const shoff = is64 ? u64(0x28) : u32(0x20);
  const shentsize = u16(is64 ? 0x3a : 0x2e);
  let shnum = u16(is64 ? 0x3c : 0x30);
  let shstrndx = u16(is64 ? 0x3e : 0x32);
  const minEnt = is64 ? 64 : 40;
  if (shoff === 0) throw bad('no section headers');
  if (shentsize < minEnt) throw bad(`section header size ${shentsize} is too small`);

  const section = (i: number): Section => {
    const p = shoff + i * shentsize;
    if (p + minEnt > bytes.length) throw bad(`section header ${i} lies past the end of the file`);
    return is64
      ? { nameOff: u32(p), type: u32(p + 4), flags: u64(p + 8), offset: u64(p + 24), size: u64(p + 32), link: u32(p + 40) }
      : { nameOff: u32(p), type: u32(p + 4), flags: u32(p + 8), offset: u32(p + 16), size: u32(p + 20), link: u32(p + 24) };
  };
  // Large section counts and indices live in section 0 (ELF extended numbering).
  if (shnum === 0) shnum = section(0).size;
  if (shstrndx === SHN_XINDEX) shstrndx = section(0).link;
  if (shnum > MAX_SECTIONS) throw bad(`${shnum} sections is not plausible`);
  if (shstrndx >= shnum) throw bad(`section-name table index ${shstrndx} out of range (${shnum} sections)`);

  const names = section(shstrndx);
  if (names.offset + names.size > bytes.length) throw bad('section-name table lies past the end of the file');
  const wanted = new TextEncoder().encode(want);
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (!nameMatches(bytes, names.offset, names.size, s.nameOff, wanted)) continue;
    if (s.type !== SHT_NOBITS && s.offset + s.size > bytes.length) throw bad(`${want} section [${s.offset}, +${s.size}) lies past the end of the file`);
    return s;
  }
  return undefined;
}

function nameMatches(bytes: Uint8Array, tableOff: number, tableSize: number, nameOff: number, want: Uint8Array): boolean {
  if (nameOff + want.length >= tableSize) return false;
  const p = tableOff + nameOff;
  for (let i = 0; i < want.length; i++) if (bytes[p + i] !== want[i]) return false;
  return bytes[p + want.length] === 0;
}
