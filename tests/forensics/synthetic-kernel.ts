/**
 * A kernel made by hand for hostile-data tests: the real 6.1 lab kernel's BTF (so structures have
 * their true layouts), synthetic physical memory with a direct map at 0xffff888000000000, a bump
 * allocator of kernel objects, and a symbol table the test fills. Tests write structures field
 * by field (by BTF member name) and corrupt them at will.
 */
import { existsSync, readFileSync } from 'node:fs';
import { Btf, extractBtfFromElf } from '../../src/kernel/btf/index.ts';
import { Kernel, type SymbolTable } from '../../src/kernel/kernel.ts';
import type { Machine } from '../../src/machine/types.ts';
import { AddressSpace } from '../../src/mmu/address-space.ts';
import { PhysReader } from '../../src/mmu/phys-reader.ts';
import { labVmlinux } from '../kernel/btf/fixtures.ts';
import { PageTableBuilder, SIZE_2M, SyntheticMemory } from '../support/synthetic-memory.ts';

export const DIRECT_MAP = 0xffff_8880_0000_0000n;
const RAM = 32 * 2 ** 20;
const KERNEL_TABLES = { start: 0x10_0000, size: 0x10_0000 };
export const USER_TABLES = { start: 0x20_0000, size: 0x10_0000 };
const HEAP_START = 0x40_0000;

let btfCache: Btf | undefined;

/** The lab kernel's BTF, or undefined where its image (or xz) is not on this host. */
export function labBtf(): Btf | undefined {
  if (btfCache) return btfCache;
  const path = labVmlinux();
  if (!path || !existsSync(path)) return undefined;
  btfCache = Btf.parse(extractBtfFromElf(readFileSync(path)));
  return btfCache;
}

class Symbols implements SymbolTable {
  readonly byName = new Map<string, bigint>();
  get count(): number {
    return this.byName.size;
  }
  lookup(name: string): bigint | undefined {
    return this.byName.get(name);
  }
  symbolize(address: bigint): { name: string; offset: bigint } | undefined {
    for (const [name, a] of this.byName) if (a === address) return { name, offset: 0n };
    return undefined;
  }
}

export class SyntheticKernel {
  readonly memory = new SyntheticMemory({ ranges: [{ start: 0, size: RAM }] });
  readonly tables: PageTableBuilder;
  readonly kernel: Kernel;
  readonly symbols = new Symbols();
  private next = HEAP_START;

  constructor(readonly btf: Btf) {
    this.tables = new PageTableBuilder(this.memory, { levels: 4, tableArea: KERNEL_TABLES });
    for (let pa = 0; pa < RAM; pa += SIZE_2M) this.tables.map(DIRECT_MAP + BigInt(pa), pa, SIZE_2M);
    const space = new AddressSpace(new PhysReader(this.memory, { frozen: true }), this.tables.root, 4);
    const machine = { memory: this.memory, live: false, name: 'synthetic' } as unknown as Machine;
    this.kernel = new Kernel({
      machine,
      space,
      btf,
      symbols: this.symbols,
      layout: { levels: 4, root: this.tables.root, textBase: 0xffff_ffff_8100_0000n, physBase: 0x100_0000, kaslrOffset: 0n, pageOffsetBase: DIRECT_MAP },
    });
  }

  /** A zeroed kernel object of `size` bytes (aligned), returned as its direct-map address. */
  alloc(size: number, align = 64): bigint {
    this.next = Math.ceil(this.next / align) * align;
    const pa = this.next;
    this.next += size;
    if (this.next > RAM) throw new Error('synthetic kernel heap exhausted');
    this.memory.setBytes(pa, new Uint8Array(size));
    return DIRECT_MAP + BigInt(pa);
  }

  /** A zeroed `struct T` (size from BTF). */
  allocStruct(struct: string, align = 64): bigint {
    return this.alloc(this.btf.sizeof(`struct ${struct}`), align);
  }

  pa(va: bigint): number {
    return Number(va - DIRECT_MAP);
  }

  off(struct: string, member: string): number {
    return this.btf.memberOffset(`struct ${struct}`, member);
  }

  /** Write `value` into `(struct T *)addr->member`, sized by the member's type. */
  set(addr: bigint, struct: string, member: string, value: bigint | number): void {
    const m = this.btf.member(`struct ${struct}`, member);
    if (!m) throw new Error(`no ${struct}.${member}`);
    this.write(addr + BigInt(m.bitOffset / 8), this.btf.sizeof(m.typeId), value);
  }

  write(va: bigint, size: number, value: bigint | number): void {
    const v = BigInt.asUintN(64, BigInt(value));
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i++) bytes[i] = Number((v >> BigInt(8 * i)) & 0xffn);
    this.memory.setBytes(this.pa(va), bytes);
  }

  writeBytes(va: bigint, bytes: Uint8Array): void {
    this.memory.setBytes(this.pa(va), bytes);
  }

  /** A NUL-terminated string in kernel memory. */
  string(s: string): bigint {
    const bytes = new TextEncoder().encode(`${s}\0`);
    const va = this.alloc(bytes.length, 8);
    this.writeBytes(va, bytes);
    return va;
  }

  /** Name a kernel address (functions recognised by name, e.g. sockfs_dname). */
  symbol(name: string, address?: bigint): bigint {
    const a = address ?? this.alloc(16, 16);
    this.symbols.byName.set(name, a);
    return a;
  }
}
