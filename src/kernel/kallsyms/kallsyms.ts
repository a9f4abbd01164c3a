import { UsageError } from '../../util/errors.ts';
import type { AddressTable } from './addresses.ts';
import { vaFromHalves, vaHi, vaLo, type VaRange } from './reader.ts';

/** Where each table was found, and which encodings the kernel used. */
export interface KallsymsLayout {
  readonly tokenTableVa: bigint;
  readonly tokenIndexVa: bigint;
  readonly namesVa: bigint;
  readonly namesSize: number;
  readonly numSymsVa: bigint;
  readonly markersVa: bigint;
  readonly markerWidth: 4 | 8;
  /** Two-byte name lengths (6.1 and later). */
  readonly bigLengths: boolean;
  readonly addresses: AddressTable;
}

export interface SymbolInfo {
  readonly name: string;
  readonly address: bigint;
  /** nm-style type letter: T/t text, D/d data, B/b bss, R/r read-only, A absolute, W/w weak… */
  readonly type: string;
  /** The module the symbol belongs to; undefined for the kernel itself. */
  readonly module?: string;
}

export interface Symbolized {
  readonly name: string;
  /** The symbol's own address. */
  readonly address: bigint;
  /** How far the asked address is past the symbol. */
  readonly offset: bigint;
  /** Distance to the next higher symbol; undefined for the last one. */
  readonly size?: bigint;
  readonly type: string;
  readonly module?: string;
}

/** A symbol from a module's own symbol table, added after the core kernel's. */
export interface ModuleSymbol {
  readonly name: string;
  readonly address: bigint;
  readonly type?: string;
  readonly size?: bigint;
}

interface ModuleTable {
  readonly module: string;
  /** Sorted by address. */
  readonly symbols: readonly Required<ModuleSymbol>[];
  readonly start: bigint;
  readonly end: bigint;
}

/** Lookups answered by a linear pass before the name index is worth building. */
const LINEAR_LOOKUPS = 16;

/**
 * The kernel's symbol table, decoded from its own memory. Core symbols are stored as parallel
 * arrays (names, type letters, address halves) in address order; bigint appears only at the
 * edges. Module symbols come from elsewhere (each module's own symtab) through
 * addModuleSymbols().
 */
export class Kallsyms {
  /** Index of the first symbol with a real kernel address (per-CPU offsets come before). */
  private readonly firstAddressed: number;
  private byName: Map<string, number> | undefined;
  /** Next symbol with the same name, or -1: duplicates (static functions) are common. */
  private sameName: Int32Array | undefined;
  private linearLookups = 0;
  private readonly modules: ModuleTable[] = [];

  constructor(
    private readonly names: readonly string[],
    private readonly types: Uint8Array,
    private readonly hi: Uint32Array,
    private readonly lo: Uint32Array,
    readonly layout: KallsymsLayout,
  ) {
    const n = names.length;
    if (types.length !== n || hi.length !== n || lo.length !== n) throw new Error('kallsyms arrays differ in length');
    let i = 0;
    while (i < n && hi[i]! < 0xffff_8000) i++;
    this.firstAddressed = i;
  }

  /** Number of core kernel symbols. */
  get count(): number {
    return this.names.length;
  }

  name(i: number): string {
    return this.names[i]!;
  }

  type(i: number): string {
    return String.fromCharCode(this.types[i]!);
  }

  address(i: number): bigint {
    return vaFromHalves(this.hi[i]!, this.lo[i]!);
  }

  addressHi(i: number): number {
    return this.hi[i]!;
  }

  addressLo(i: number): number {
    return this.lo[i]!;
  }

  /** Index of the first core symbol called `name` (the lowest address, as the kernel picks), or -1. */
  indexOf(name: string): number {
    if (this.byName) return this.byName.get(name) ?? -1;
    if (++this.linearLookups <= LINEAR_LOOKUPS) return this.names.indexOf(name);
    this.buildIndex();
    return this.byName!.get(name) ?? -1;
  }

  /** Address of `name`: the core kernel's first, else the first module's that has it. */
  lookup(name: string): bigint | undefined {
    const i = this.indexOf(name);
    if (i >= 0) return this.address(i);
    for (const m of this.modules) {
      const s = m.symbols.find((x) => x.name === name);
      if (s) return s.address;
    }
    return undefined;
  }

  /** Every address of `name`, core symbols first, in address order. */
  lookupAll(name: string): bigint[] {
    const out: bigint[] = [];
    if (!this.byName) this.buildIndex();
    for (let i = this.byName!.get(name) ?? -1; i >= 0; i = this.sameName![i]!) out.push(this.address(i));
    for (const m of this.modules) for (const s of m.symbols) if (s.name === name) out.push(s.address);
    return out;
  }

  private buildIndex(): void {
    const n = this.names.length;
    const byName = new Map<string, number>();
    const same = new Int32Array(n).fill(-1);
    const last = new Map<string, number>();
    for (let i = 0; i < n; i++) {
      const name = this.names[i]!;
      const prev = last.get(name);
      if (prev === undefined) byName.set(name, i);
      else same[prev] = i;
      last.set(name, i);
    }
    this.byName = byName;
    this.sameName = same;
  }

  /**
   * Index of the core symbol at or below the address given as halves, or -1 when the address is
   * below the first symbol or past the last one. Among symbols at one address, the first (as
   * the kernel's own lookup picks). No allocation: for hot paths.
   */
  indexAtOrBelow(hi: number, lo: number): number {
    const H = this.hi;
    const L = this.lo;
    let a = this.firstAddressed;
    let b = H.length - 1;
    if (a > b) return -1;
    hi >>>= 0;
    lo >>>= 0;
    if (hi < H[a]! || (hi === H[a]! && lo < L[a]!)) return -1;
    if (hi > H[b]! || (hi === H[b]! && lo > L[b]!)) return -1;
    while (a < b) {
      const mid = (a + b + 1) >>> 1;
      const mh = H[mid]!;
      if (mh < hi || (mh === hi && L[mid]! <= lo)) a = mid;
      else b = mid - 1;
    }
    const h = H[a]!;
    const l = L[a]!;
    while (a > this.firstAddressed && H[a - 1] === h && L[a - 1] === l) a--;
    return a;
  }

  /** The symbol an address falls in: nearest at or below, with the offset into it. */
  symbolize(addr: bigint): Symbolized | undefined {
    const i = this.indexAtOrBelow(vaHi(addr), vaLo(addr));
    if (i >= 0) {
      const address = this.address(i);
      let j = i + 1;
      const n = this.names.length;
      while (j < n && this.hi[j] === this.hi[i] && this.lo[j] === this.lo[i]) j++;
      const size = j < n ? this.address(j) - address : undefined;
      return { name: this.names[i]!, address, offset: addr - address, type: this.type(i), ...(size === undefined ? {} : { size }) };
    }
    return this.symbolizeModule(addr);
  }

  private symbolizeModule(addr: bigint): Symbolized | undefined {
    for (const m of this.modules) {
      if (addr < m.start || addr >= m.end) continue;
      const syms = m.symbols;
      let a = 0;
      let b = syms.length - 1;
      while (a < b) {
        const mid = (a + b + 1) >>> 1;
        if (syms[mid]!.address <= addr) a = mid;
        else b = mid - 1;
      }
      const s = syms[a]!;
      if (s.address > addr) continue;
      const offset = addr - s.address;
      const size = s.size > 0n ? s.size : a + 1 < syms.length ? syms[a + 1]!.address - s.address : undefined;
      if (s.size > 0n && offset >= s.size) continue;
      return { name: s.name, address: s.address, offset, type: s.type, module: m.module, ...(size === undefined ? {} : { size }) };
    }
    return undefined;
  }

  /** Every symbol: the core kernel's in address order, then each module's. */
  *symbols(): IterableIterator<SymbolInfo> {
    const n = this.names.length;
    for (let i = 0; i < n; i++) yield { name: this.names[i]!, address: this.address(i), type: this.type(i) };
    for (const m of this.modules) for (const s of m.symbols) yield { name: s.name, address: s.address, type: s.type, module: m.module };
  }

  /**
   * Add (or replace) one module's symbols. `extent`, the module's memory, bounds what
   * symbolize() attributes to it; without it, the module ends with its last symbol (its size,
   * or one byte). Symbols with a size cover only their own extent; without, up to the next one.
   */
  addModuleSymbols(module: string, symbols: Iterable<ModuleSymbol>, extent?: VaRange): void {
    if (!module) throw new UsageError('a module needs a name');
    if (extent && extent.end <= extent.start) throw new UsageError(`module ${module}: empty extent`);
    this.removeModuleSymbols(module);
    const list: Required<ModuleSymbol>[] = [];
    for (const s of symbols) list.push({ name: s.name, address: s.address, type: s.type ?? '?', size: s.size ?? 0n });
    if (list.length === 0) return;
    list.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
    const last = list[list.length - 1]!;
    const start = extent?.start ?? list[0]!.address;
    const end = extent?.end ?? last.address + (last.size > 0n ? last.size : 1n);
    this.modules.push({ module, symbols: list, start, end });
  }

  removeModuleSymbols(module: string): void {
    const i = this.modules.findIndex((m) => m.module === module);
    if (i >= 0) this.modules.splice(i, 1);
  }

  /** Names of the modules whose symbols were added. */
  get moduleNames(): string[] {
    return this.modules.map((m) => m.module);
  }
}
