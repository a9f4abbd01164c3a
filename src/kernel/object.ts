/**
 * Typed kernel objects, in the spirit of drgn's `Object`: an address plus a BTF type. Members by
 * name, pointers dereference, arrays index, strings read — all lazily, straight from guest memory.
 *
 * An object is four numbers and two references (no bigint inside); the address travels as
 * (hi, lo) uint32 halves, so walking thousands of objects allocates only the small objects
 * themselves. `address` builds a bigint on demand for the friendly edge.
 */
import type { AddressSpace } from '../mmu/address-space.ts';
import { vaAddHi, vaAddLo, vaFromParts, vaHi, vaLo } from '../mmu/va.ts';
import { GuestDataError, UsageError } from '../util/errors.ts';
import type { Warnings } from '../util/warnings.ts';
import type { Btf } from './btf/index.ts';
import { BtfKind } from './btf/index.ts';

/** What objects need from the kernel handle: memory and types. */
export interface ObjectContext {
  readonly space: AddressSpace;
  readonly btf: Btf;
  /** Where walks over guest data report corrupt structures. */
  readonly warnings: Warnings;
}

/** Longest C string read through a `char *` unless the caller says otherwise. */
export const DEFAULT_MAX_STRING = 4096;

const latin1 = new TextDecoder('latin1');
const scratch = new Uint8Array(DEFAULT_MAX_STRING);

export class KObject {
  constructor(
    readonly ctx: ObjectContext,
    /** BTF type id as declared (typedefs and qualifiers kept, for printing). */
    readonly typeId: number,
    readonly hi: number,
    readonly lo: number,
    /** For bitfield members: bit position inside the storage unit at the address, and width. */
    readonly bitOffset = 0,
    readonly bitSize = 0,
  ) {}

  get address(): bigint {
    return vaFromParts(this.hi, this.lo);
  }

  /** C spelling of the type, e.g. `struct task_struct *`. */
  get typeName(): string {
    return this.ctx.btf.typeName(this.typeId);
  }

  get sizeof(): number {
    return this.ctx.btf.sizeof(this.typeId);
  }

  /** Kind of the type after typedefs and qualifiers. */
  get kind(): number {
    const btf = this.ctx.btf;
    return btf.table.kindOf(btf.resolve(this.typeId));
  }

  /**
   * A member by name. A dotted path descends through embedded structs; on a pointer to a
   * struct the pointer is followed first (like C's `->`), so `task.member('cred').member('uid')`
   * reads naturally.
   */
  member(path: string): KObject {
    let obj: KObject = this.kind === BtfKind.PTR ? this.deref() : this;
    for (const name of path.split('.')) obj = obj.oneMember(name);
    return obj;
  }

  private oneMember(name: string): KObject {
    const btf = this.ctx.btf;
    const base = this.kind === BtfKind.PTR ? this.deref() : this;
    const structId = btf.resolve(base.typeId);
    const m = btf.member(structId, name);
    if (!m) throw new UsageError(`${btf.typeName(structId)} has no member '${name}'`);
    const byte = Math.floor(m.bitOffset / 8);
    const hi = vaAddHi(base.hi, base.lo, byte);
    const lo = vaAddLo(base.lo, byte);
    if (m.bitfieldSize === 0) return new KObject(this.ctx, m.typeId, hi, lo);
    return new KObject(this.ctx, m.typeId, hi, lo, m.bitOffset % 8, m.bitfieldSize);
  }

  /** Whether the type has a member of this name (for kernel-version differences, as drgn does). */
  hasMember(name: string): boolean {
    const btf = this.ctx.btf;
    let t = btf.resolved(this.typeId);
    if (t.kind === 'ptr') t = btf.resolved(t.typeId);
    return (t.kind === 'struct' || t.kind === 'union') && btf.member(t.id, name) !== undefined;
  }

  /** The object a pointer points to. Throws GuestDataError for NULL. */
  deref(): KObject {
    const btf = this.ctx.btf;
    const t = btf.resolved(this.typeId);
    if (t.kind !== 'ptr') throw new UsageError(`cannot dereference ${this.typeName}: not a pointer`);
    const space = this.ctx.space;
    const lo = space.readU64(this.hi, this.lo);
    const hi = space.hi;
    if (hi === 0 && lo === 0) throw new GuestDataError(`NULL ${this.typeName} at ${hex(this.hi, this.lo)}`);
    return new KObject(this.ctx, t.typeId, hi, lo);
  }

  /** Element `i` of an array, or of the memory a pointer points to. */
  index(i: number): KObject {
    const btf = this.ctx.btf;
    const t = btf.resolved(this.typeId);
    if (t.kind === 'array') {
      if (!Number.isInteger(i) || i < 0 || i >= t.nelems) throw new UsageError(`index ${i} outside ${this.typeName}`);
      const off = i * btf.sizeof(t.typeId);
      return new KObject(this.ctx, t.typeId, vaAddHi(this.hi, this.lo, off), vaAddLo(this.lo, off));
    }
    if (t.kind === 'ptr') {
      const p = this.deref();
      const off = i * btf.sizeof(t.typeId);
      return new KObject(this.ctx, t.typeId, vaAddHi(p.hi, p.lo, off), vaAddLo(p.lo, off));
    }
    throw new UsageError(`cannot index ${this.typeName}`);
  }

  /** Number of elements of an array type. */
  get length(): number {
    const t = this.ctx.btf.resolved(this.typeId);
    if (t.kind !== 'array') throw new UsageError(`${this.typeName} is not an array`);
    return t.nelems;
  }

  /**
   * Integer value as a number: exact for every int, enum and bitfield up to 53 bits; for a
   * 64-bit value beyond 2^53 use big(). Pointers give their address (use ptr() for bigint).
   */
  num(): number {
    const { size, signed } = this.scalar();
    const space = this.ctx.space;
    if (this.bitSize > 0) return this.bitfield(size, signed);
    switch (size) {
      case 1: {
        const v = space.readU8(this.hi, this.lo);
        return signed ? (v << 24) >> 24 : v;
      }
      case 2: {
        const v = space.readU16(this.hi, this.lo);
        return signed ? (v << 16) >> 16 : v;
      }
      case 4: {
        const v = space.readU32(this.hi, this.lo);
        return signed ? v | 0 : v;
      }
      case 8: {
        const lo = space.readU64(this.hi, this.lo);
        const hi = space.hi;
        return signed ? (hi | 0) * 4294967296 + lo : hi * 4294967296 + lo;
      }
      default:
        throw new UsageError(`cannot read ${this.typeName} as a number`);
    }
  }

  /** Integer or pointer value as bigint (exact for 64-bit values). */
  big(): bigint {
    const { size, signed } = this.scalar();
    if (size !== 8 || this.bitSize > 0) return BigInt(this.num());
    const v = this.ctx.space.readU64Big(this.address);
    return signed ? BigInt.asIntN(64, v) : v;
  }

  /** Pointer value. */
  ptr(): bigint {
    if (this.kind !== BtfKind.PTR) throw new UsageError(`${this.typeName} is not a pointer`);
    return this.ctx.space.readU64Big(this.address);
  }

  bool(): boolean {
    return this.num() !== 0;
  }

  isNull(): boolean {
    const space = this.ctx.space;
    const lo = space.readU64(this.hi, this.lo);
    return lo === 0 && space.hi === 0;
  }

  /**
   * A C string: a char array is read up to its length or the first NUL; a `char *` is followed
   * and read up to `max` bytes or the first NUL. Bytes are decoded as Latin-1 (kernel names are
   * ASCII; nothing a guest writes can make this throw).
   */
  str(max = DEFAULT_MAX_STRING): string {
    const btf = this.ctx.btf;
    const t = btf.resolved(this.typeId);
    if (t.kind === 'array') return readCString(this.ctx.space, this.hi, this.lo, Math.min(t.nelems * btf.sizeof(t.typeId), max));
    if (t.kind === 'ptr') {
      const space = this.ctx.space;
      const lo = space.readU64(this.hi, this.lo);
      const hi = space.hi;
      if (hi === 0 && lo === 0) return '';
      return readCString(space, hi, lo, max);
    }
    throw new UsageError(`${this.typeName} is not a string`);
  }

  /**
   * The struct containing this object: `this` is the member `member` of a `type`. For
   * list_head objects, or pointers to list_head (then the pointer value is used).
   */
  containerOf(type: string, member: string): KObject {
    const btf = this.ctx.btf;
    const id = typeIdOf(btf, type);
    const off = btf.memberOffset(id, member);
    let hi = this.hi;
    let lo = this.lo;
    if (this.kind === BtfKind.PTR) {
      lo = this.ctx.space.readU64(this.hi, this.lo);
      hi = this.ctx.space.hi;
    }
    return new KObject(this.ctx, id, vaAddHi(hi, lo, -off), vaAddLo(lo, -off));
  }

  /** Reinterpret the same address as another type. */
  cast(type: string): KObject {
    return new KObject(this.ctx, typeIdOf(this.ctx.btf, type), this.hi, this.lo);
  }

  /** A plain value for printing: numbers, bigint pointers, strings for char arrays, else the address. */
  value(): number | bigint | string {
    const t = this.ctx.btf.resolved(this.typeId);
    switch (t.kind) {
      case 'int':
        return t.size === 8 ? this.big() : t.bool ? Number(this.bool()) : this.num();
      case 'enum':
        return this.num();
      case 'enum64':
        return this.big();
      case 'ptr':
        return this.ptr();
      case 'array': {
        const elem = this.ctx.btf.resolved(t.typeId);
        if (elem.kind === 'int' && elem.char) return this.str();
        return this.address;
      }
      default:
        return this.address;
    }
  }

  toString(): string {
    return `(${this.typeName})${hex(this.hi, this.lo)}`;
  }

  private scalar(): { size: number; signed: boolean } {
    const t = this.ctx.btf.resolved(this.typeId);
    switch (t.kind) {
      case 'int':
        return { size: t.size, signed: t.signed };
      case 'enum':
      case 'enum64':
        return { size: t.size, signed: t.signed };
      case 'ptr':
        return { size: 8, signed: false };
      default:
        throw new UsageError(`${this.typeName} is not a scalar`);
    }
  }

  private bitfield(size: number, signed: boolean): number {
    // The storage unit at the address holds the field at bitOffset (little-endian).
    const space = this.ctx.space;
    const bytes = Math.ceil((this.bitOffset + this.bitSize) / 8);
    let v = 0;
    for (let i = bytes - 1; i >= 0; i--) v = v * 256 + space.readU8(vaAddHi(this.hi, this.lo, i), vaAddLo(this.lo, i));
    const field = Math.floor(v / 2 ** this.bitOffset) % 2 ** this.bitSize;
    if (signed && field >= 2 ** (this.bitSize - 1)) return field - 2 ** this.bitSize;
    void size;
    return field;
  }
}

const pointerIndex = new WeakMap<Btf, Map<number, number>>();

/** Id of a BTF pointer type to `target`, found once per BTF by a scan of its PTR types. */
export function pointerTypeId(btf: Btf, target: number): number | undefined {
  let index = pointerIndex.get(btf);
  if (!index) {
    index = new Map();
    const table = btf.table;
    const end = table.firstId + table.typeCount;
    for (let id = table.firstId; id < end; id++) {
      if (table.kindOf(id) === BtfKind.PTR && !index.has(table.sizeOrTypeOf(id))) index.set(table.sizeOrTypeOf(id), id);
    }
    pointerIndex.set(btf, index);
  }
  return index.get(target);
}

/** Type id for a C type name such as `struct task_struct`, `unsigned long`, `pid_t`, `struct pid *`. */
export function typeIdOf(btf: Btf, type: string): number {
  const t = type.trim();
  if (t.endsWith('*')) {
    const id = pointerTypeId(btf, typeIdOf(btf, t.slice(0, -1)));
    if (id === undefined) throw new UsageError(`no pointer type '${t}' in the kernel's BTF`);
    return id;
  }
  const id = btf.findTypeId(t);
  if (id === undefined) throw new UsageError(`no type '${type}' in the kernel's BTF`);
  return id;
}

/** Object of `type` at `address`. */
export function objectAt(ctx: ObjectContext, type: string | number, address: bigint): KObject {
  const id = typeof type === 'number' ? type : typeIdOf(ctx.btf, type);
  return new KObject(ctx, id, vaHi(address), vaLo(address));
}

/** Read a NUL-terminated string of at most `max` bytes at (hi, lo); stops early at a fault. */
export function readCString(space: AddressSpace, hi: number, lo: number, max: number): string {
  const buf = max <= scratch.length ? scratch : new Uint8Array(max);
  let n = 0;
  while (n < max) {
    // Read page by page so a string that ends just before an unmapped page is still read.
    const pageLeft = 4096 - ((lo + n) & 0xfff);
    const chunk = Math.min(pageLeft, max - n);
    const h = vaAddHi(hi, lo, n);
    const l = vaAddLo(lo, n);
    if (space.translate(h, l) < 0) {
      if (n === 0) space.readU8(h, l); // throws the translation error
      break;
    }
    space.read(vaFromParts(h, l), buf.subarray(n, n + chunk));
    const nul = buf.subarray(n, n + chunk).indexOf(0);
    if (nul >= 0) return latin1.decode(buf.subarray(0, n + nul));
    n += chunk;
  }
  return latin1.decode(buf.subarray(0, n));
}

export function hex(hi: number, lo: number): string {
  return `0x${(hi >>> 0).toString(16)}${(lo >>> 0).toString(16).padStart(8, '0')}`;
}
