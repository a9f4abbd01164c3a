/**
 * A small BTF writer for tests: builds blobs type by type, in either byte order, as base or
 * split BTF. Ids are handed out in order, so a test can refer to a type before writing it by
 * computing `w.nextId + k`. `raw()` writes arbitrary records for corrupt-input tests.
 */
import { BtfKind } from '../../../src/kernel/btf/types.ts';

export interface MemberSpec {
  name: string;
  type: number;
  bitOffset: number;
  bitfieldSize?: number;
}

export interface SplitBase {
  /** The base's type count (its last id + 1). */
  typeCount: number;
  /** The base's string-section length. */
  strLen: number;
}

export interface BuildOptions {
  bigEndian?: boolean;
  /** Extra zero bytes after the 24-byte header (a longer header from a newer kernel). */
  headerPadding?: number;
  /** Put the string section before the type section. */
  stringsFirst?: boolean;
}

const encoder = new TextEncoder();

export class BtfWriter {
  private readonly words: number[] = [];
  private readonly strBytes: number[] = [];
  private readonly strOffsets = new Map<string, number>();
  private readonly strBase: number;
  private id: number;

  constructor(split?: SplitBase) {
    this.id = split ? split.typeCount : 1;
    this.strBase = split ? split.strLen : 0;
    if (!split) this.strBytes.push(0);
    this.strOffsets.set('', 0);
  }

  get nextId(): number {
    return this.id;
  }

  get strLen(): number {
    return this.strBytes.length;
  }

  /** String offset of `s` (added on first use); '' is offset 0 (the base's empty string when split). */
  str(s: string): number {
    const have = this.strOffsets.get(s);
    if (have !== undefined) return have;
    const off = this.strBase + this.strBytes.length;
    for (const b of encoder.encode(s)) this.strBytes.push(b);
    this.strBytes.push(0);
    this.strOffsets.set(s, off);
    return off;
  }

  /** Append raw u32 words as one type record; returns its id. */
  raw(words: number[]): number {
    for (const w of words) this.words.push(w >>> 0);
    return this.id++;
  }

  private rec(name: string, kind: number, vlen: number, kflag: boolean, sizeOrType: number, extra: number[] = []): number {
    const info = ((kflag ? 1 : 0) << 31) | (kind << 24) | (vlen & 0xffff);
    return this.raw([this.str(name), info, sizeOrType, ...extra]);
  }

  int(name: string, size: number, o: { signed?: boolean; char?: boolean; bool?: boolean; bits?: number; offset?: number } = {}): number {
    const enc = (o.signed ? 1 : 0) | (o.char ? 2 : 0) | (o.bool ? 4 : 0);
    return this.rec(name, BtfKind.INT, 0, false, size, [(enc << 24) | ((o.offset ?? 0) << 16) | (o.bits ?? size * 8)]);
  }
  ptr(type: number): number {
    return this.rec('', BtfKind.PTR, 0, false, type);
  }
  typedef(name: string, type: number): number {
    return this.rec(name, BtfKind.TYPEDEF, 0, false, type);
  }
  const(type: number): number {
    return this.rec('', BtfKind.CONST, 0, false, type);
  }
  volatile(type: number): number {
    return this.rec('', BtfKind.VOLATILE, 0, false, type);
  }
  restrict(type: number): number {
    return this.rec('', BtfKind.RESTRICT, 0, false, type);
  }
  typeTag(name: string, type: number): number {
    return this.rec(name, BtfKind.TYPE_TAG, 0, false, type);
  }
  array(elem: number, index: number, nelems: number): number {
    return this.rec('', BtfKind.ARRAY, 0, false, 0, [elem, index, nelems]);
  }
  struct(name: string, size: number, members: MemberSpec[]): number {
    return this.composite(BtfKind.STRUCT, name, size, members);
  }
  union(name: string, size: number, members: MemberSpec[]): number {
    return this.composite(BtfKind.UNION, name, size, members);
  }
  private composite(kind: number, name: string, size: number, members: MemberSpec[]): number {
    // kind_flag is needed exactly when some member is a bitfield, as pahole writes it.
    const kflag = members.some((m) => (m.bitfieldSize ?? 0) > 0);
    const extra: number[] = [];
    for (const m of members) {
      extra.push(this.str(m.name), m.type, kflag ? ((m.bitfieldSize ?? 0) << 24) | m.bitOffset : m.bitOffset);
    }
    return this.rec(name, kind, members.length, kflag, size, extra);
  }
  enum(name: string, size: number, values: [string, number][], signed = false): number {
    const extra: number[] = [];
    for (const [n, v] of values) extra.push(this.str(n), v | 0);
    return this.rec(name, BtfKind.ENUM, values.length, signed, size, extra);
  }
  enum64(name: string, size: number, values: [string, bigint][], signed = false): number {
    const extra: number[] = [];
    for (const [n, v] of values) {
      const u = BigInt.asUintN(64, v);
      extra.push(this.str(n), Number(u & 0xffffffffn), Number(u >> 32n));
    }
    return this.rec(name, BtfKind.ENUM64, values.length, signed, size, extra);
  }
  fwd(name: string, union = false): number {
    return this.rec(name, BtfKind.FWD, 0, union, 0);
  }
  func(name: string, proto: number, linkage = 1): number {
    return this.rec(name, BtfKind.FUNC, linkage, false, proto);
  }
  funcProto(ret: number, params: [string, number][], variadic = false): number {
    const extra: number[] = [];
    for (const [n, t] of params) extra.push(this.str(n), t);
    if (variadic) extra.push(0, 0);
    return this.rec('', BtfKind.FUNC_PROTO, params.length + (variadic ? 1 : 0), false, ret, extra);
  }
  var(name: string, type: number, linkage = 1): number {
    return this.rec(name, BtfKind.VAR, 0, false, type, [linkage]);
  }
  datasec(name: string, size: number, vars: { type: number; offset: number; size: number }[]): number {
    const extra: number[] = [];
    for (const v of vars) extra.push(v.type, v.offset, v.size);
    return this.rec(name, BtfKind.DATASEC, vars.length, false, size, extra);
  }
  float(name: string, size: number): number {
    return this.rec(name, BtfKind.FLOAT, 0, false, size);
  }
  declTag(name: string, type: number, componentIdx = -1): number {
    return this.rec(name, BtfKind.DECL_TAG, 0, false, type, [componentIdx]);
  }

  build(o: BuildOptions = {}): Uint8Array {
    const le = !o.bigEndian;
    const hdrLen = 24 + (o.headerPadding ?? 0);
    const typeLen = this.words.length * 4;
    const strLen = this.strBytes.length;
    // Keep the type section 4-aligned when strings come first.
    const strPad = o.stringsFirst ? (4 - (strLen % 4)) % 4 : 0;
    const typeOff = o.stringsFirst ? strLen + strPad : 0;
    const strOff = o.stringsFirst ? 0 : typeLen;
    const out = new Uint8Array(hdrLen + typeLen + strLen + strPad);
    const view = new DataView(out.buffer);
    view.setUint16(0, 0xeb9f, le);
    out[2] = 1;
    out[3] = 0;
    view.setUint32(4, hdrLen, le);
    view.setUint32(8, typeOff, le);
    view.setUint32(12, typeLen, le);
    view.setUint32(16, strOff, le);
    view.setUint32(20, strLen, le);
    this.words.forEach((w, i) => view.setUint32(hdrLen + typeOff + i * 4, w, le));
    out.set(this.strBytes, hdrLen + strOff);
    return out;
  }
}

/** Header field positions, for tests that corrupt a built blob. */
export const HDR = { hdrLen: 4, typeOff: 8, typeLen: 12, strOff: 16, strLen: 20, size: 24 } as const;

export function patchU32(blob: Uint8Array, pos: number, value: number, le = true): Uint8Array {
  const copy = blob.slice();
  new DataView(copy.buffer).setUint32(pos, value >>> 0, le);
  return copy;
}
