/**
 * Field reads at bigint addresses through BTF member offsets resolved once per kernel — the
 * plumbing of the subsystem helpers (fs, net, namespaces), which follow many pointers per
 * object and would otherwise look every member up by name on each step.
 *
 * `r.ptr(file, 'file', 'f_path.dentry')` reads `file->f_path.dentry`. Offsets come from the
 * guest's own BTF, so a member missing in this kernel version is a clear UsageError at first
 * use; ask `r.has(struct, member)` first where versions differ.
 */
import { vaHi, vaLo } from '../../mmu/va.ts';
import type { Btf } from '../btf/index.ts';
import { readCString, type ObjectContext } from '../object.ts';

const utf8 = new TextDecoder('utf-8');

export class StructReader {
  private readonly offsets = new Map<string, number>();
  private readonly present = new Map<string, boolean>();

  constructor(readonly ctx: ObjectContext) {}

  get btf(): Btf {
    return this.ctx.btf;
  }

  /** Byte offset of `member` (a dotted path through embedded structs) in `struct`. */
  off(struct: string, member: string): number {
    const key = `${struct}.${member}`;
    let o = this.offsets.get(key);
    if (o === undefined) {
      o = this.btf.memberOffset(struct.includes(' ') ? struct : `struct ${struct}`, member);
      this.offsets.set(key, o);
    }
    return o;
  }

  /** Whether this kernel's `struct` has `member` — how helpers adapt to kernel versions. */
  has(struct: string, member: string): boolean {
    const key = `${struct}.${member}`;
    let p = this.present.get(key);
    if (p === undefined) {
      try {
        p = this.btf.member(struct.includes(' ') ? struct : `struct ${struct}`, member) !== undefined;
      } catch {
        p = false;
      }
      this.present.set(key, p);
    }
    return p;
  }

  sizeof(type: string): number {
    return this.btf.sizeof(type.includes(' ') ? type : `struct ${type}`);
  }

  /** Address of a member: `&addr->member`. */
  at(addr: bigint, struct: string, member: string): bigint {
    return addr + BigInt(this.off(struct, member));
  }

  ptr(addr: bigint, struct: string, member: string): bigint {
    return this.ctx.space.readU64Big(addr + BigInt(this.off(struct, member)));
  }

  u64(addr: bigint, struct: string, member: string): bigint {
    return this.ctx.space.readU64Big(addr + BigInt(this.off(struct, member)));
  }

  /** An unsigned 64-bit field as a number (counters, inode numbers: exact below 2^53). */
  num64(addr: bigint, struct: string, member: string): number {
    const a = addr + BigInt(this.off(struct, member));
    const space = this.ctx.space;
    const lo = space.readU64(vaHi(a), vaLo(a));
    return space.hi * 4294967296 + lo;
  }

  u32(addr: bigint, struct: string, member: string): number {
    const a = addr + BigInt(this.off(struct, member));
    return this.ctx.space.readU32(vaHi(a), vaLo(a));
  }

  i32(addr: bigint, struct: string, member: string): number {
    return this.u32(addr, struct, member) | 0;
  }

  u16(addr: bigint, struct: string, member: string): number {
    const a = addr + BigInt(this.off(struct, member));
    return this.ctx.space.readU16(vaHi(a), vaLo(a));
  }

  u8(addr: bigint, struct: string, member: string): number {
    const a = addr + BigInt(this.off(struct, member));
    return this.ctx.space.readU8(vaHi(a), vaLo(a));
  }

  /** A `char *` member, followed and read up to `max` bytes or a NUL; '' for NULL. */
  cstr(addr: bigint, struct: string, member: string, max = 4096): string {
    const p = this.ptr(addr, struct, member);
    return p === 0n ? '' : readCString(this.ctx.space, vaHi(p), vaLo(p), max);
  }

  /** A C string at `addr` (Latin-1, at most `max` bytes). */
  cstrAt(addr: bigint, max = 4096): string {
    return readCString(this.ctx.space, vaHi(addr), vaLo(addr), max);
  }

  /** Exactly `len` bytes at `addr` decoded as UTF-8 (file names are bytes; UTF-8 is the convention). */
  bytesAsUtf8(addr: bigint, len: number): string {
    return utf8.decode(this.ctx.space.readBytes(addr, len));
  }
}

const readers = new WeakMap<ObjectContext, StructReader>();

/** The one StructReader of a kernel (offsets are cached per kernel). */
export function structReader(ctx: ObjectContext): StructReader {
  let r = readers.get(ctx);
  if (!r) {
    r = new StructReader(ctx);
    readers.set(ctx, r);
  }
  return r;
}
