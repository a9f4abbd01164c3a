/**
 * BTF bytes → a validated, indexed table of types, decoded on demand.
 *
 * Loading walks the type section once: it records where each type's record starts (a
 * Uint32Array) and its kind (a Uint8Array), and checks everything a later decode relies on —
 * record lengths against the section, string offsets against the string section, referenced
 * type ids against the id range. After that, decoding any id needs no further checks, and
 * nothing per type is allocated until somebody asks for it.
 *
 * Split BTF (kernel modules): a module's BTF continues its base (vmlinux): its first type id is
 * the base's type count and its string offsets start at the base's string-section length.
 */
import { GuestDataError, UsageError } from '../../util/errors.ts';
import {
  BtfKind,
  KIND_NAMES,
  LINKAGE_NAMES,
  type BtfMember,
  type BtfParam,
  type BtfType,
  type BtfEnumValue,
  type BtfEnum64Value,
  type BtfVarSecinfo,
} from './types.ts';

/** Local alias: inside hot loops a plain property load, where an imported binding may cost a getter call. */
const K = BtfKind;

export const BTF_MAGIC = 0xeb9f;
export const BTF_VERSION = 1;
/** The kernel's BTF_MAX_TYPE: no BTF (base plus split) has more type ids than this. */
export const BTF_MAX_TYPE = 0x000fffff;
/** Size of the header this parser understands; newer headers may be longer (tail ignored). */
const HEADER_SIZE = 24;

export interface BtfHeader {
  readonly littleEndian: boolean;
  readonly version: number;
  readonly flags: number;
  readonly hdrLen: number;
  /** Offsets are relative to the end of the header, as in the kernel's struct btf_header. */
  readonly typeOff: number;
  readonly typeLen: number;
  readonly strOff: number;
  readonly strLen: number;
}

function corrupt(what: string): GuestDataError {
  return new GuestDataError(`BTF: ${what}`);
}

/** Read and check the header; every section must lie inside the blob. */
export function parseBtfHeader(bytes: Uint8Array): BtfHeader {
  if (bytes.length < HEADER_SIZE) throw corrupt(`blob of ${bytes.length} bytes is shorter than the ${HEADER_SIZE}-byte header`);
  let littleEndian: boolean;
  if (bytes[0] === 0x9f && bytes[1] === 0xeb) littleEndian = true;
  else if (bytes[0] === 0xeb && bytes[1] === 0x9f) littleEndian = false;
  else throw corrupt(`bad magic 0x${hex2(bytes[0]!)}${hex2(bytes[1]!)} (expected 0xeb9f in either byte order)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = bytes[2]!;
  if (version !== BTF_VERSION) throw corrupt(`unsupported version ${version}`);
  const hdrLen = view.getUint32(4, littleEndian);
  if (hdrLen < HEADER_SIZE || hdrLen > bytes.length) throw corrupt(`header length ${hdrLen} out of range (blob is ${bytes.length} bytes)`);
  const h: BtfHeader = {
    littleEndian,
    version,
    flags: bytes[3]!,
    hdrLen,
    typeOff: view.getUint32(8, littleEndian),
    typeLen: view.getUint32(12, littleEndian),
    strOff: view.getUint32(16, littleEndian),
    strLen: view.getUint32(20, littleEndian),
  };
  const room = bytes.length - hdrLen;
  if (h.typeOff % 4 !== 0) throw corrupt(`type section offset ${h.typeOff} is not 4-byte aligned`);
  if (h.typeLen % 4 !== 0) throw corrupt(`type section length ${h.typeLen} is not a multiple of 4`);
  if (h.typeOff + h.typeLen > room) throw corrupt(`type section [${h.typeOff}, +${h.typeLen}) runs past the end of the blob (${room} bytes after the header)`);
  if (h.strOff + h.strLen > room) throw corrupt(`string section [${h.strOff}, +${h.strLen}) runs past the end of the blob (${room} bytes after the header)`);
  if (h.typeLen > 0 && h.strLen > 0 && h.typeOff < h.strOff + h.strLen && h.strOff < h.typeOff + h.typeLen) {
    throw corrupt('type and string sections overlap');
  }
  return h;
}

function hex2(b: number): string {
  return b.toString(16).padStart(2, '0');
}

/** 32-bit words that follow the 3-word btf_type for each kind: fixed part, and per-vlen item. */
const EXTRA_FIXED = new Uint8Array(20);
const EXTRA_PER_VLEN = new Uint8Array(20);
EXTRA_FIXED[K.INT] = 1;
EXTRA_FIXED[K.ARRAY] = 3;
EXTRA_FIXED[K.VAR] = 1;
EXTRA_FIXED[K.DECL_TAG] = 1;
EXTRA_PER_VLEN[K.STRUCT] = 3;
EXTRA_PER_VLEN[K.UNION] = 3;
EXTRA_PER_VLEN[K.ENUM] = 2;
EXTRA_PER_VLEN[K.FUNC_PROTO] = 2;
EXTRA_PER_VLEN[K.DATASEC] = 3;
EXTRA_PER_VLEN[K.ENUM64] = 3;
const MAX_KIND = K.ENUM64;

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/** FNV-1a of a byte string, as `BtfTable.strHash` computes it for names in the blob. */
export function hashBytes(bytes: Uint8Array): number {
  let h = FNV_OFFSET;
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i]!, FNV_PRIME);
  return h >>> 0;
}

const VOID: BtfType = Object.freeze({ id: 0, kind: 'void', name: '' });

/**
 * The type section as host-order 32-bit words. Every field of every record is a u32, so one
 * typed-array load reads any of them. The words alias `copy` when its layout allows (the usual
 * little-endian, aligned case); a big-endian or oddly placed section is converted once.
 */
function typeWords(copy: Uint8Array, h: BtfHeader): Uint32Array {
  const start = h.hdrLen + h.typeOff;
  const n = h.typeLen / 4;
  if (h.littleEndian && start % 4 === 0) return new Uint32Array(copy.buffer, copy.byteOffset + start, n);
  const view = new DataView(copy.buffer, copy.byteOffset + start, h.typeLen);
  const words = new Uint32Array(n);
  for (let i = 0; i < n; i++) words[i] = view.getUint32(i * 4, h.littleEndian);
  return words;
}

/**
 * One BTF blob, validated and indexed. Ids below `firstId` belong to the base and are answered
 * by it, so a split table answers for the whole id range 0 .. typeCount-1.
 */
export class BtfTable {
  readonly header: BtfHeader;
  readonly base: BtfTable | undefined;
  /** First type id described by this blob (1 for a base BTF). */
  readonly firstId: number;
  /** One past the last valid type id (base ids included). */
  readonly typeCount: number;
  /** First string offset that belongs to this blob (0 for a base BTF). */
  readonly strBase: number;
  /** One past the last valid string offset (base strings included). */
  readonly strEnd: number;

  /**
   * A private copy of the blob: validation holds only if nobody changes the bytes afterwards,
   * and the caller's buffer may be reused.
   */
  private readonly bytes: Uint8Array;
  /** The same bytes as a Buffer: its native UTF-8 slicing is the fastest way to make names. */
  private readonly buffer: Buffer;
  /** The type section as 32-bit words (see typeWords). */
  private readonly words: Uint32Array;
  /** Byte position (in `bytes`) of the string section. */
  private readonly strStart: number;
  /** Word index (in `words`) of each own type's record, by `id - firstId`. */
  private readonly offsets: Uint32Array;
  /** Kind number of each own type, by `id - firstId`. */
  private readonly kinds: Uint8Array;
  private readonly decoded: (BtfType | undefined)[];

  constructor(blob: Uint8Array, base?: BtfTable) {
    const h = parseBtfHeader(blob);
    if (base && h.littleEndian !== base.header.littleEndian) throw corrupt('split BTF and its base differ in byte order');
    this.header = h;
    this.base = base;
    this.bytes = blob.slice();
    this.buffer = Buffer.from(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
    this.words = typeWords(this.bytes, h);
    this.firstId = base ? base.typeCount : 1;
    this.strBase = base ? base.strEnd : 0;
    this.strEnd = this.strBase + h.strLen;
    this.strStart = h.hdrLen + h.strOff;
    if (h.strLen > 0 && this.bytes[this.strStart + h.strLen - 1] !== 0) throw corrupt('string section does not end with a NUL byte');
    // A base BTF's offset 0 is the empty name every anonymous type uses.
    if (!base && (h.strLen === 0 || this.bytes[this.strStart] !== 0)) throw corrupt('string section does not start with the empty string');

    const { offsets, kinds } = this.indexTypes();
    this.offsets = offsets;
    this.kinds = kinds;
    this.typeCount = this.firstId + offsets.length;
    this.decoded = new Array<BtfType | undefined>(offsets.length);
  }

  /** Walk the type section once: record positions and kinds, check lengths, names and references. */
  private indexTypes(): { offsets: Uint32Array; kinds: Uint8Array } {
    const w = this.words;
    const end = w.length;
    const capacity = Math.floor(end / 3);
    const offsets = new Uint32Array(capacity);
    const kinds = new Uint8Array(capacity);
    const strEnd = this.strEnd;
    const firstId = this.firstId;
    // Type references may point forward; remember the largest and check it once the count is known.
    let maxRef = 0;
    let maxRefFrom = 0;
    let n = 0;
    let pos = 0;
    while (pos < end) {
      const id = firstId + n;
      if (id > BTF_MAX_TYPE) throw corrupt(`more than ${BTF_MAX_TYPE} types`);
      if (pos + 3 > end) throw corrupt(`type ${id} is truncated at the end of the type section`);
      const nameOff = w[pos]!;
      const info = w[pos + 1]!;
      const sizeOrType = w[pos + 2]!;
      const kind = (info >>> 24) & 0x1f;
      const vlen = info & 0xffff;
      if (kind === K.UNKN || kind > MAX_KIND) throw corrupt(`type ${id} has unknown kind ${kind}`);
      if (nameOff >= strEnd) throw corrupt(`type ${id} name offset ${nameOff} is past the string section (${strEnd})`);
      const body = pos + 3;
      const next = body + EXTRA_FIXED[kind]! + vlen * EXTRA_PER_VLEN[kind]!;
      if (next > end) throw corrupt(`type ${id} (${KIND_NAMES[kind]}, vlen ${vlen}) runs past the end of the type section`);
      offsets[n] = pos;
      kinds[n] = kind;

      switch (kind) {
        case K.INT: {
          const enc = w[body]!;
          const bits = enc & 0xff;
          const bitOff = (enc >>> 16) & 0xff;
          if (bits + bitOff > 128 || bits + bitOff > sizeOrType * 8) throw corrupt(`type ${id} (int) has ${bits} bits at offset ${bitOff} in ${sizeOrType} bytes`);
          break;
        }
        case K.PTR:
        case K.TYPEDEF:
        case K.VOLATILE:
        case K.CONST:
        case K.RESTRICT:
        case K.TYPE_TAG:
        case K.DECL_TAG:
          if (sizeOrType > maxRef) { maxRef = sizeOrType; maxRefFrom = id; }
          break;
        case K.FUNC:
          if (vlen > 2) throw corrupt(`type ${id} (func) has unknown linkage ${vlen}`);
          if (sizeOrType > maxRef) { maxRef = sizeOrType; maxRefFrom = id; }
          break;
        case K.VAR: {
          const linkage = w[body]!;
          if (linkage > 2) throw corrupt(`type ${id} (var) has unknown linkage ${linkage}`);
          if (sizeOrType > maxRef) { maxRef = sizeOrType; maxRefFrom = id; }
          break;
        }
        case K.ARRAY: {
          const m = Math.max(w[body]!, w[body + 1]!);
          if (m > maxRef) { maxRef = m; maxRefFrom = id; }
          break;
        }
        case K.STRUCT:
        case K.UNION:
          // btf_member {name_off, type, offset}
          for (let p = body; p < next; p += 3) {
            if (w[p + 1]! > maxRef) { maxRef = w[p + 1]!; maxRefFrom = id; }
            if (w[p]! >= strEnd) throw corrupt(`type ${id} member name offset is past the string section`);
          }
          break;
        case K.DATASEC:
          // btf_var_secinfo {type, offset, size}
          for (let p = body; p < next; p += 3) if (w[p]! > maxRef) { maxRef = w[p]!; maxRefFrom = id; }
          break;
        case K.FUNC_PROTO:
          // btf_param {name_off, type}
          if (sizeOrType > maxRef) { maxRef = sizeOrType; maxRefFrom = id; }
          for (let p = body; p < next; p += 2) {
            if (w[p + 1]! > maxRef) { maxRef = w[p + 1]!; maxRefFrom = id; }
            if (w[p]! >= strEnd) throw corrupt(`type ${id} parameter name offset is past the string section`);
          }
          break;
        case K.ENUM:
        case K.ENUM64: {
          const step = kind === K.ENUM ? 2 : 3;
          for (let p = body; p < next; p += step) {
            if (w[p]! >= strEnd) throw corrupt(`type ${id} enumerator name offset is past the string section`);
          }
          break;
        }
        default:
          // FWD, FLOAT: nothing beyond the common record.
          break;
      }
      pos = next;
      n++;
    }
    const count = firstId + n;
    if (maxRef >= count) throw corrupt(`type ${maxRefFrom} refers to type ${maxRef}, past the last type id ${count - 1}`);
    return { offsets: offsets.slice(0, n), kinds: kinds.slice(0, n) };
  }

  /** Number of types this blob itself describes. */
  get ownCount(): number {
    return this.offsets.length;
  }

  /** Throws UsageError for ids outside 0 .. typeCount-1. */
  checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.typeCount) {
      throw new UsageError(`BTF type id ${id} is out of range (0..${this.typeCount - 1})`);
    }
  }

  /** Kind number of a type (0 for void). */
  kindOf(id: number): number {
    if (id >= this.firstId) return this.kinds[id - this.firstId]!;
    if (id === 0) return K.UNKN;
    return this.base!.kindOf(id);
  }

  /** The raw `info` word of a type (0 for void). */
  infoOf(id: number): number {
    if (id >= this.firstId) return this.words[this.offsets[id - this.firstId]! + 1]!;
    if (id === 0) return 0;
    return this.base!.infoOf(id);
  }

  /** The size-or-type word: a byte size for INT/ENUM/STRUCT/UNION/DATASEC/FLOAT, a type id otherwise. */
  sizeOrTypeOf(id: number): number {
    if (id >= this.firstId) return this.words[this.offsets[id - this.firstId]! + 2]!;
    if (id === 0) return 0;
    return this.base!.sizeOrTypeOf(id);
  }

  nameOffOf(id: number): number {
    if (id >= this.firstId) return this.words[this.offsets[id - this.firstId]!]!;
    if (id === 0) return 0;
    return this.base!.nameOffOf(id);
  }

  nameOf(id: number): string {
    return this.str(this.nameOffOf(id));
  }

  /** A string by BTF string offset (offsets were range-checked on load; the section ends in NUL). */
  str(off: number): string {
    if (off < this.strBase) return this.base!.str(off);
    const from = this.strStart + (off - this.strBase);
    const to = this.bytes.indexOf(0, from);
    if (to === from) return '';
    return this.buffer.toString('utf8', from, to);
  }

  /** Whether the string at `off` is exactly the bytes `want` (no string is made). */
  strEquals(off: number, want: Uint8Array): boolean {
    if (off < this.strBase) return this.base!.strEquals(off, want);
    const bytes = this.bytes;
    const from = this.strStart + (off - this.strBase);
    const n = want.length;
    // The section ends in NUL, so a mismatch or the terminator stops the loop inside it.
    for (let i = 0; i < n; i++) if (bytes[from + i] !== want[i]) return false;
    return bytes[from + n] === 0;
  }

  /** FNV-1a hash of the string at `off`; `hashBytes` of the same bytes gives the same value. */
  strHash(off: number): number {
    if (off < this.strBase) return this.base!.strHash(off);
    const bytes = this.bytes;
    let h = FNV_OFFSET;
    for (let i = this.strStart + (off - this.strBase); bytes[i] !== 0; i++) h = Math.imul(h ^ bytes[i]!, FNV_PRIME);
    return h >>> 0;
  }

  /** The decoded type; decoded once and kept. Throws UsageError for ids out of range. */
  typeById(id: number): BtfType {
    const i = id - this.firstId;
    if (i >= 0 && i < this.offsets.length && (id >>> 0) === id) {
      return this.decoded[i] ?? (this.decoded[i] = Object.freeze(this.decode(id)));
    }
    if (id === 0) return VOID;
    this.checkId(id);
    return this.base!.typeById(id);
  }

  private decode(id: number): BtfType {
    const w = this.words;
    const pos = this.offsets[id - this.firstId]!;
    const name = this.str(w[pos]!);
    const info = w[pos + 1]!;
    const st = w[pos + 2]!;
    const kind = (info >>> 24) & 0x1f;
    const vlen = info & 0xffff;
    const kflag = info >>> 31 === 1;
    const body = pos + 3;
    switch (kind) {
      case K.INT: {
        const enc = w[body]!;
        const e = (enc >>> 24) & 0x0f;
        return { id, kind: 'int', name, size: st, signed: (e & 1) !== 0, char: (e & 2) !== 0, bool: (e & 4) !== 0, bitOffset: (enc >>> 16) & 0xff, bits: enc & 0xff };
      }
      case K.PTR:
        return { id, kind: 'ptr', name, typeId: st };
      case K.TYPEDEF:
        return { id, kind: 'typedef', name, typeId: st };
      case K.VOLATILE:
        return { id, kind: 'volatile', name, typeId: st };
      case K.CONST:
        return { id, kind: 'const', name, typeId: st };
      case K.RESTRICT:
        return { id, kind: 'restrict', name, typeId: st };
      case K.TYPE_TAG:
        return { id, kind: 'type_tag', name, typeId: st };
      case K.ARRAY:
        return { id, kind: 'array', name, typeId: w[body]!, indexTypeId: w[body + 1]!, nelems: w[body + 2]! };
      case K.STRUCT:
      case K.UNION: {
        const members: BtfMember[] = new Array(vlen);
        for (let i = 0, p = body; i < vlen; i++, p += 3) {
          const off = w[p + 2]!;
          members[i] = Object.freeze({
            name: this.str(w[p]!),
            typeId: w[p + 1]!,
            bitOffset: kflag ? off & 0xffffff : off,
            bitfieldSize: kflag ? off >>> 24 : 0,
          });
        }
        return { id, kind: kind === K.STRUCT ? 'struct' : 'union', name, size: st, members };
      }
      case K.ENUM: {
        const values: BtfEnumValue[] = new Array(vlen);
        for (let i = 0, p = body; i < vlen; i++, p += 2) {
          values[i] = Object.freeze({ name: this.str(w[p]!), value: kflag ? w[p + 1]! | 0 : w[p + 1]! });
        }
        return { id, kind: 'enum', name, size: st, signed: kflag, values };
      }
      case K.ENUM64: {
        const values: BtfEnum64Value[] = new Array(vlen);
        for (let i = 0, p = body; i < vlen; i++, p += 3) {
          const raw = (BigInt(w[p + 2]!) << 32n) | BigInt(w[p + 1]!);
          values[i] = Object.freeze({ name: this.str(w[p]!), value: kflag ? BigInt.asIntN(64, raw) : raw });
        }
        return { id, kind: 'enum64', name, size: st, signed: kflag, values };
      }
      case K.FWD:
        return { id, kind: 'fwd', name, fwdKind: kflag ? 'union' : 'struct' };
      case K.FUNC:
        return { id, kind: 'func', name, typeId: st, linkage: LINKAGE_NAMES[vlen]! };
      case K.FUNC_PROTO: {
        const params: BtfParam[] = [];
        let variadic = false;
        for (let i = 0, p = body; i < vlen; i++, p += 2) {
          const nameOff = w[p]!;
          const typeId = w[p + 1]!;
          // The C `...`: a last parameter with neither name nor type.
          if (i === vlen - 1 && nameOff === 0 && typeId === 0) variadic = true;
          else params.push(Object.freeze({ name: this.str(nameOff), typeId }));
        }
        return { id, kind: 'func_proto', name, returnTypeId: st, params, variadic };
      }
      case K.VAR:
        return { id, kind: 'var', name, typeId: st, linkage: LINKAGE_NAMES[w[body]!]! };
      case K.DATASEC: {
        const vars: BtfVarSecinfo[] = new Array(vlen);
        for (let i = 0, p = body; i < vlen; i++, p += 3) {
          vars[i] = Object.freeze({ typeId: w[p]!, offset: w[p + 1]!, size: w[p + 2]! });
        }
        return { id, kind: 'datasec', name, size: st, vars };
      }
      case K.FLOAT:
        return { id, kind: 'float', name, size: st };
      case K.DECL_TAG:
        return { id, kind: 'decl_tag', name, typeId: st, componentIdx: w[body]! | 0 };
      default:
        // Unreachable: kinds were checked on load.
        throw corrupt(`type ${id} has unknown kind ${kind}`);
    }
  }
}

/**
 * Parse a BTF blob. With `base`, the blob is split BTF (a module's) continuing the base's type
 * ids and string offsets. Throws GuestDataError naming the first thing that is wrong.
 */
export function parseBtf(bytes: Uint8Array, base?: BtfTable): BtfTable {
  return new BtfTable(bytes, base);
}
