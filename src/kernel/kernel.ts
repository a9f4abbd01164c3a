/**
 * The kernel handle — vmlens's `Program`: one guest kernel found in memory, with its address
 * space, symbols (kallsyms) and types (BTF). Everything above this layer (analyses, actions,
 * interfaces) starts from a Kernel.
 */
import type { Machine } from '../machine/types.ts';
import type { AddressSpace } from '../mmu/address-space.ts';
import { vaFromParts } from '../mmu/va.ts';
import { UsageError } from '../util/errors.ts';
import { Warnings } from '../util/warnings.ts';
import type { Btf } from './btf/index.ts';
import { ModuleTypes, SymbolsWithModules } from './modules.ts';
import { KObject, objectAt, type ObjectContext } from './object.ts';

/** Symbol lookups the kernel layer needs (kallsyms, optionally System.map, module symbols). */
export interface SymbolTable {
  readonly count: number;
  lookup(name: string): bigint | undefined;
  symbolize(address: bigint): { name: string; offset: bigint } | undefined;
}

/** Where the kernel sits in this guest (KASLR undone). */
export interface KernelLayout {
  /** Paging levels of the kernel's page tables. */
  readonly levels: 4 | 5;
  /** Physical address of the kernel's top-level page table. */
  readonly root: number;
  /** Virtual address of _text (KASLR applied). */
  readonly textBase: bigint;
  /** Physical load address of _text. */
  readonly physBase: number;
  /** Offset of the text base from its link-time address 0xffffffff81000000. */
  readonly kaslrOffset: bigint;
  /** Direct map, vmalloc and vmemmap bases (randomized with CONFIG_RANDOMIZE_MEMORY). */
  readonly pageOffsetBase?: bigint;
  readonly vmallocBase?: bigint;
  readonly vmemmapBase?: bigint;
}

export interface KernelParts {
  readonly machine: Machine;
  readonly space: AddressSpace;
  readonly btf: Btf;
  readonly symbols: SymbolTable;
  readonly layout: KernelLayout;
  readonly warnings?: Warnings;
}

export class Kernel implements ObjectContext {
  readonly machine: Machine;
  readonly space: AddressSpace;
  readonly btf: Btf;
  readonly symbols: SymbolTable;
  readonly layout: KernelLayout;
  readonly warnings: Warnings;
  private readonly offsets = new Map<string, number>();
  /** Core symbols, with the modules' own symbols added on first need. */
  private readonly withModules: SymbolsWithModules;
  private readonly moduleTypes: ModuleTypes;

  constructor(parts: KernelParts) {
    this.machine = parts.machine;
    this.space = parts.space;
    this.btf = parts.btf;
    this.withModules = new SymbolsWithModules(parts.symbols);
    this.withModules.attach(this);
    this.symbols = this.withModules;
    this.moduleTypes = new ModuleTypes(this);
    this.layout = parts.layout;
    this.warnings = parts.warnings ?? new Warnings();
  }

  /** Address of a kernel symbol; throws a clear error when the kernel has no such symbol. */
  symbol(name: string): bigint {
    const a = this.symbols.lookup(name);
    if (a === undefined) throw new UsageError(`the kernel has no symbol '${name}'`);
    return a;
  }

  hasSymbol(name: string): boolean {
    return this.symbols.lookup(name) !== undefined;
  }

  /**
   * A global variable as a typed object. vmlinux BTF describes types, not (non-per-CPU)
   * variables, so the C type is given: `kernel.variable('init_task', 'struct task_struct')`.
   */
  variable(name: string, type: string): KObject {
    return objectAt(this, type, this.symbol(name));
  }

  /** An object of `type` at `address`; a type vmlinux lacks is looked for in the modules' BTF. */
  object(type: string | number, address: bigint): KObject {
    try {
      return objectAt(this, type, address);
    } catch (e) {
      if (typeof type !== 'string' || !(e instanceof UsageError)) throw e;
      const found = this.moduleTypes.contextFor(type, this);
      if (!found) throw e;
      return objectAt(found.ctx, type, address);
    }
  }

  /** A module's BTF (split over vmlinux's), or undefined when it has none (or it is unreadable). */
  moduleBtf(name: string): Btf | undefined {
    return this.moduleTypes.btf(name);
  }

  /** Which module's BTF defines a type vmlinux lacks, and that BTF. */
  findModuleType(type: string): { module: string; btf: Btf } | undefined {
    const found = this.moduleTypes.contextFor(type, this);
    return found && { module: found.module, btf: found.ctx.btf };
  }

  /** Forget module symbols and types read so far: a live guest loads and unloads modules. */
  refreshModules(): void {
    this.moduleTypes.reset();
    this.withModules.reload();
  }

  /** Byte offset of a struct member, cached: the hot loops' way to read fields. */
  offsetOf(struct: string, member: string): number {
    const key = `${struct}\0${member}`;
    let off = this.offsets.get(key);
    if (off === undefined) {
      off = this.btf.memberOffset(struct.startsWith('struct ') || struct.startsWith('union ') ? struct : `struct ${struct}`, member);
      this.offsets.set(key, off);
    }
    return off;
  }

  /** Whether a struct has a member: how analyses adapt to kernel versions (as drgn does). */
  hasMember(struct: string, member: string): boolean {
    try {
      return this.btf.member(struct.startsWith('struct ') ? struct : `struct ${struct}`, member) !== undefined;
    } catch {
      return false;
    }
  }

  /** A pointer-sized value at a symbol. */
  readPointerAt(address: bigint): bigint {
    return this.space.readU64Big(address);
  }

  /** CPUs the kernel set up per-CPU areas for (`__per_cpu_offset[cpu]` non-zero or cpu 0). */
  possibleCpus(): number[] {
    const n = this.nrCpuIds();
    const base = this.symbol('__per_cpu_offset');
    const cpus: number[] = [];
    for (let cpu = 0; cpu < n; cpu++) {
      const off = this.space.readU64Big(base + BigInt(cpu * 8));
      if (cpu === 0 || off !== 0n) cpus.push(cpu);
    }
    return cpus;
  }

  /** Number of CPU ids the kernel uses (bounded: a hostile value cannot make us loop long). */
  nrCpuIds(): number {
    const a = this.symbols.lookup('nr_cpu_ids');
    const n = a === undefined ? 1 : this.space.readU32(Number(a >> 32n) >>> 0, Number(a & 0xffffffffn));
    return Math.max(1, Math.min(n, 8192));
  }

  /** A per-CPU variable of `cpu`: its symbol is an offset into each CPU's area. */
  perCpu(name: string, type: string, cpu: number): KObject {
    const off = this.space.readU64Big(this.symbol('__per_cpu_offset') + BigInt(cpu * 8));
    return objectAt(this, type, (this.symbol(name) + off) & 0xffff_ffff_ffff_ffffn);
  }

  /** Symbol name + offset for an address, for display ("do_sys_open+0x12"). */
  symbolize(address: bigint): string | undefined {
    const s = this.symbols.symbolize(address);
    if (!s) return undefined;
    return s.offset === 0n ? s.name : `${s.name}+0x${s.offset.toString(16)}`;
  }

  /** (hi, lo) → bigint, for analyses that build rows. */
  static va(hi: number, lo: number): bigint {
    return vaFromParts(hi, lo);
  }
}
