/**
 * Loaded modules' own symbols and types, read the way the kernel itself reads them.
 *
 * Symbols (kernel/module/kallsyms.c): each `struct module` points (`kallsyms`) at a
 * `struct mod_kallsyms` { Elf64_Sym *symtab; unsigned int num_symtab; char *strtab;
 * char *typetab; }. Once the module is initialised it is the cut-down core copy, whose strtab is
 * followed directly by its typetab. typetab holds the nm-style letter each symbol got at load
 * (lower case); /proc/kallsyms upper-cases it when the module exports the symbol
 * (`is_exported()`: the name is in `mod->syms` with the same value).
 *
 * Types (CONFIG_DEBUG_INFO_BTF_MODULES): `mod->btf_data` is cleared once the module is
 * initialised (the .BTF section is not kept); the kernel keeps its own parsed copy in the
 * `btf_modules` list of `struct btf_module` { list, module, btf }, whose `struct btf` holds the
 * raw split BTF in `data` / `data_size`.
 *
 * Everything here is guest data: counts are capped, string offsets checked against the string
 * table, walks bounded; a module that cannot be read is skipped with a warning.
 */
import type { AddressSpace } from '../mmu/address-space.ts';
import { vaHi, vaLo } from '../mmu/va.ts';
import { VmlensError } from '../util/errors.ts';
import { Btf } from './btf/index.ts';
import { listForEachEntry } from './helpers/list.ts';
import type { ModuleSymbol, Symbolized, SymbolInfo } from './kallsyms/kallsyms.ts';
import type { Kernel, SymbolTable } from './kernel.ts';
import { readCString, type KObject, type ObjectContext } from './object.ts';

/** A module symbol as /proc/kallsyms shows it. */
export interface ModuleSymbolRow {
  readonly name: string;
  readonly address: bigint;
  /** Type letter as /proc/kallsyms prints it: upper case when the module exports the symbol. */
  readonly type: string;
  /** st_size from the module's symtab (0 when the ELF gave none). */
  readonly size: bigint;
  readonly module: string;
}

/** A module's memory: from its lowest to its highest allocation (text, rodata, data…). */
export interface ModuleExtent {
  readonly start: bigint;
  readonly end: bigint;
}

const SYM_SIZE = 24; // sizeof(Elf64_Sym)
/** More symbols than any real module has (the largest in-tree modules have some 30,000). */
export const MAX_MODULE_SYMBOLS = 1 << 17;
/** KSYM_NAME_LEN on 6.1 and later. */
const KSYM_NAME_LEN = 512;
/** A strtab larger than this is not read in one piece. */
const MAX_STRTAB = 8 * 2 ** 20;
const MAX_EXPORTS = 1 << 16;
const MAX_MODULES = 65536;
/** Module BTF is a few KiB to a few hundred KiB; anything past this is not plausible. */
const MAX_MODULE_BTF = 16 * 2 ** 20;
const MODULE_STATE_UNFORMED = 3;
/** MODULES_VADDR on x86-64 (__START_KERNEL_map + KERNEL_IMAGE_SIZE): module memory is above. */
export const MODULES_VADDR = 0xffff_ffff_c000_0000n;

const latin1 = new TextDecoder('latin1');

/** Every module on the kernel's `modules` list (struct module), formed ones only. */
export function* kernelModules(k: Kernel): Generator<KObject> {
  for (const mod of listForEachEntry(k.variable('modules', 'struct list_head'), 'struct module', 'list', { what: 'module list', limit: MAX_MODULES })) {
    try {
      if (mod.member('state').num() === MODULE_STATE_UNFORMED) continue;
    } catch (e) {
      k.warnings.warn('modules', `module at 0x${mod.address.toString(16)}: ${(e as Error).message}`);
      continue;
    }
    yield mod;
  }
}

/**
 * The span of a module's live memory: `mem[]` (6.4+) or core_layout/init_layout (earlier).
 * Undefined when every region is empty.
 */
export function moduleExtent(mod: KObject): ModuleExtent | undefined {
  const regions: KObject[] = [];
  if (mod.hasMember('mem')) {
    const mem = mod.member('mem');
    for (let i = 0; i < mem.length; i++) regions.push(mem.index(i));
  } else {
    for (const m of ['core_layout', 'init_layout', 'data_layout']) if (mod.hasMember(m)) regions.push(mod.member(m));
  }
  let start = -1n;
  let end = -1n;
  for (const r of regions) {
    const size = BigInt(r.member('size').num());
    const base = r.member('base').ptr();
    if (size === 0n || base === 0n) continue;
    if (start < 0n || base < start) start = base;
    if (end < 0n || base + size > end) end = base + size;
  }
  return start < 0n ? undefined : { start, end };
}

/**
 * Names and values of a module's export table: `syms` (EXPORT_SYMBOL, what is_exported() looks
 * in) or `gpl_syms` (EXPORT_SYMBOL_GPL). struct kernel_symbol is either PC-relative offsets
 * (CONFIG_HAVE_ARCH_PREL32_RELOCATIONS, x86) or absolute pointers; BTF says which.
 */
export function moduleExportTable(k: Kernel, mod: KObject, table: 'syms' | 'gpl_syms', where = 'module exports'): Map<string, bigint> {
  const out = new Map<string, bigint>();
  const count = table === 'syms' ? 'num_syms' : 'num_gpl_syms';
  if (!mod.hasMember(table) || !mod.hasMember(count)) return out;
  const base = mod.member(table).ptr();
  let n = mod.member(count).num();
  if (base === 0n || n === 0) return out;
  if (n > MAX_EXPORTS) {
    k.warnings.warn(where, `claims ${n} exported symbols; reading ${MAX_EXPORTS}`);
    n = MAX_EXPORTS;
  }
  const prel = k.hasMember('kernel_symbol', 'value_offset');
  const size = k.btf.sizeof(k.btf.findTypeId('struct kernel_symbol')!);
  const valueOff = k.offsetOf('kernel_symbol', prel ? 'value_offset' : 'value');
  const nameOff = k.offsetOf('kernel_symbol', prel ? 'name_offset' : 'name');
  const raw = k.space.readBytes(base, n * size);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const mask = (1n << 64n) - 1n;
  for (let i = 0; i < n; i++) {
    const at = i * size;
    const entry = base + BigInt(at);
    const value = prel ? (entry + BigInt(valueOff) + BigInt(dv.getInt32(at + valueOff, true))) & mask : dv.getBigUint64(at + valueOff, true);
    const nameVa = prel ? (entry + BigInt(nameOff) + BigInt(dv.getInt32(at + nameOff, true))) & mask : dv.getBigUint64(at + nameOff, true);
    try {
      out.set(readCString(k.space, vaHi(nameVa), vaLo(nameVa), KSYM_NAME_LEN), value);
    } catch {
      // An export whose name does not translate cannot match a symbol: skip it.
    }
  }
  return out;
}

/** The module's string table, in one read when its bound is known (core kallsyms: up to typetab). */
function readStrtab(space: AddressSpace, strtab: bigint, typetab: bigint, maxNameOff: number): Uint8Array | undefined {
  let size = typetab > strtab && typetab - strtab <= BigInt(MAX_STRTAB) ? Number(typetab - strtab) : maxNameOff + KSYM_NAME_LEN;
  size = Math.min(size, MAX_STRTAB);
  try {
    return space.readBytes(strtab, size);
  } catch {
    return undefined; // a hole somewhere in it: names are then read one by one
  }
}

/**
 * One module's symbols in symtab order, as /proc/kallsyms lists them (unnamed entries, such as
 * the ELF null symbol, left out). Throws on unreadable guest data; callers warn and go on.
 */
export function readModuleSymbols(k: Kernel, mod: KObject): ModuleSymbolRow[] {
  const module = mod.member('name').str();
  const where = `module ${module} symbols`;
  const ks = mod.member('kallsyms');
  if (ks.ptr() === 0n) return [];
  const symtab = ks.member('symtab').ptr();
  const strtab = ks.member('strtab').ptr();
  const hasTypes = ks.hasMember('typetab');
  const typetab = hasTypes ? ks.member('typetab').ptr() : 0n;
  let n = ks.member('num_symtab').num();
  if (n === 0 || symtab === 0n || strtab === 0n) return [];
  if (n > MAX_MODULE_SYMBOLS) {
    k.warnings.warn(where, `num_symtab ${n} is implausible; reading the first ${MAX_MODULE_SYMBOLS}`);
    n = MAX_MODULE_SYMBOLS;
  }
  // The module loader lays the strtab right after the symtab (layout_symtab(): stroffs =
  // symoffs + ndst * sizeof(Elf_Sym)): a count that runs into the strtab is forged.
  if (strtab > symtab && (strtab - symtab) / BigInt(SYM_SIZE) < BigInt(n)) {
    const fits = Number((strtab - symtab) / BigInt(SYM_SIZE));
    k.warnings.warn(where, `num_symtab ${n} runs past the string table; reading ${fits}`);
    n = fits;
  }
  const raw = k.space.readBytes(symtab, n * SYM_SIZE);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  let maxNameOff = 0;
  for (let i = 0; i < n; i++) maxNameOff = Math.max(maxNameOff, dv.getUint32(i * SYM_SIZE, true));
  const strings = readStrtab(k.space, strtab, typetab, maxNameOff);
  let types: Uint8Array | undefined;
  if (hasTypes && typetab !== 0n) {
    try {
      types = k.space.readBytes(typetab, n);
    } catch (e) {
      k.warnings.warn(where, `typetab unreadable: ${(e as Error).message}`);
    }
  }
  let exports: Map<string, bigint>;
  try {
    exports = moduleExportTable(k, mod, 'syms', where);
  } catch (e) {
    k.warnings.warn(where, `exported symbols unreadable: ${(e as Error).message}`);
    exports = new Map();
  }

  const rows: ModuleSymbolRow[] = [];
  let badNames = 0;
  for (let i = 0; i < n; i++) {
    const at = i * SYM_SIZE;
    const nameOff = dv.getUint32(at, true);
    const name = symbolName(k.space, strings, strtab, nameOff);
    if (name === undefined) {
      badNames++;
      continue;
    }
    if (name.length === 0) continue;
    const address = dv.getBigUint64(at + 8, true);
    const size = dv.getBigUint64(at + 16, true);
    let type = types ? String.fromCharCode(types[i]!) : '?';
    if (exports.get(name) === address) type = type.toUpperCase();
    rows.push({ name, address, type, size, module });
  }
  if (badNames > 0) k.warnings.warn(where, `${badNames} symbol names outside the string table or unterminated`);
  return rows;
}

/** A name at `off` in the strtab: from the bytes read when we have them, else from memory. */
function symbolName(space: AddressSpace, strings: Uint8Array | undefined, strtab: bigint, off: number): string | undefined {
  if (strings) {
    if (off >= strings.length) return undefined;
    const end = strings.indexOf(0, off);
    if (end < 0 || end - off >= KSYM_NAME_LEN) return undefined;
    return latin1.decode(strings.subarray(off, end));
  }
  const va = strtab + BigInt(off);
  try {
    const s = readCString(space, vaHi(va), vaLo(va), KSYM_NAME_LEN);
    return s.length >= KSYM_NAME_LEN ? undefined : s;
  } catch {
    return undefined;
  }
}

/** Every loaded module's symbols, in list order: what /proc/kallsyms shows after the kernel's. */
export function allModuleSymbols(k: Kernel): { module: string; extent?: ModuleExtent; symbols: ModuleSymbolRow[] }[] {
  const out: { module: string; extent?: ModuleExtent; symbols: ModuleSymbolRow[] }[] = [];
  for (const mod of kernelModules(k)) {
    try {
      const symbols = readModuleSymbols(k, mod);
      const extent = moduleExtent(mod);
      out.push({ module: mod.member('name').str(), symbols, ...(extent ? { extent } : {}) });
    } catch (e) {
      k.warnings.warn('module symbols', `module at 0x${mod.address.toString(16)}: ${(e as Error).message}`);
    }
  }
  return out;
}

/** What a symbol table needs to take module symbols (Kallsyms has it). */
interface ModuleAware {
  addModuleSymbols(module: string, symbols: Iterable<ModuleSymbol>, extent?: ModuleExtent): void;
  removeModuleSymbols(module: string): void;
}

function isModuleAware(t: SymbolTable): t is SymbolTable & ModuleAware {
  const m = t as Partial<ModuleAware>;
  return typeof m.addModuleSymbols === 'function' && typeof m.removeModuleSymbols === 'function';
}

/**
 * The kernel's symbol table with the modules' symbols added on first need: a name the core
 * table lacks, or an address in module space. Opening a kernel stays as fast as reading
 * kallsyms; the module walk costs only those who ask. The core table (kallsyms) stores them when
 * it can; a table that cannot (a System.map) gets them in a small table of our own.
 */
export class SymbolsWithModules implements SymbolTable {
  private state: 'unloaded' | 'loading' | 'loaded' = 'unloaded';
  private kernel: Kernel | undefined;
  /** Module symbols when the core table cannot keep them. */
  private own: ModuleSymbolRow[] = [];
  private ownByName = new Map<string, ModuleSymbolRow>();
  private loadedModules: string[] = [];

  constructor(readonly core: SymbolTable) {}

  /** The kernel whose modules are read; set once the Kernel exists. */
  attach(kernel: Kernel): void {
    this.kernel = kernel;
  }

  get count(): number {
    return this.core.count;
  }

  /** Names of the modules whose symbols are in the table (loads them). */
  get modules(): readonly string[] {
    this.ensureLoaded();
    return this.loadedModules;
  }

  lookup(name: string): bigint | undefined {
    const a = this.core.lookup(name);
    if (a !== undefined || this.state === 'loading') return a;
    this.ensureLoaded();
    return this.core.lookup(name) ?? this.ownByName.get(name)?.address;
  }

  /**
   * Every address of `name`: the core kernel's (as /proc/kallsyms lists them without a module
   * column), and with `modules` also every loaded module's.
   */
  lookupAll(name: string, modules = false): bigint[] {
    if (modules) this.ensureLoaded();
    const core = this.core as Partial<{ lookupAll(n: string): bigint[] }>;
    let out: bigint[];
    if (typeof core.lookupAll === 'function') out = core.lookupAll(name);
    else {
      const a = this.core.lookup(name);
      out = a === undefined ? [] : [a];
    }
    // The core image lies below module space: what is above came from the modules.
    if (!modules) return out.filter((a) => a < MODULES_VADDR);
    for (const s of this.own) if (s.name === name) out.push(s.address);
    return out;
  }

  symbolize(address: bigint): Symbolized | undefined {
    if (address < MODULES_VADDR || this.state === 'loading') return this.core.symbolize(address) as Symbolized | undefined;
    // Module space holds no core symbol; a table that knows nothing of modules (a System.map)
    // would name the address after the kernel's last symbol.
    this.ensureLoaded();
    if (isModuleAware(this.core)) return this.core.symbolize(address) as Symbolized | undefined;
    return this.symbolizeOwn(address);
  }

  /** Every symbol, the core kernel's then the modules' (when the core table can iterate). */
  *symbols(): IterableIterator<SymbolInfo> {
    this.ensureLoaded();
    const core = this.core as Partial<{ symbols(): IterableIterator<SymbolInfo> }>;
    if (typeof core.symbols === 'function') yield* core.symbols();
    for (const s of this.own) yield { name: s.name, address: s.address, type: s.type, module: s.module };
  }

  /** Read the modules' symbols again on next need (a live guest loads and unloads modules). */
  reload(): void {
    if (this.state === 'loaded') this.state = 'unloaded';
  }

  private ensureLoaded(): void {
    if (this.state !== 'unloaded' || !this.kernel) return;
    this.state = 'loading';
    try {
      this.load(this.kernel);
    } catch (e) {
      // Without a module list (a hostile or exotic guest) the core symbols still serve.
      if (!(e instanceof VmlensError) && !(e instanceof RangeError)) throw e;
      this.kernel.warnings.warn('module symbols', (e as Error).message);
    } finally {
      this.state = 'loaded';
    }
  }

  private load(k: Kernel): void {
    const core = this.core;
    // A kernel without a module list (CONFIG_MODULES=n, or a synthetic one) has nothing to add.
    if (core.lookup('modules') === undefined) return;
    if (isModuleAware(core)) for (const m of this.loadedModules) core.removeModuleSymbols(m);
    this.own = [];
    this.ownByName.clear();
    this.loadedModules = [];
    for (const { module, extent, symbols } of allModuleSymbols(k)) {
      this.loadedModules.push(module);
      if (isModuleAware(core)) {
        // Undefined symbols name other modules' or the kernel's addresses: not this module's.
        const own = symbols.filter((s) => s.type !== 'U' && s.address !== 0n);
        if (own.length > 0) core.addModuleSymbols(module, own, extent);
      } else {
        for (const s of symbols) {
          if (s.type === 'U' || s.address === 0n) continue;
          this.own.push(s);
          if (!this.ownByName.has(s.name)) this.ownByName.set(s.name, s);
        }
      }
    }
    this.own.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  }

  private symbolizeOwn(address: bigint): Symbolized | undefined {
    let a = 0;
    let b = this.own.length - 1;
    if (b < 0 || this.own[0]!.address > address) return undefined;
    while (a < b) {
      const mid = (a + b + 1) >>> 1;
      if (this.own[mid]!.address <= address) a = mid;
      else b = mid - 1;
    }
    const s = this.own[a]!;
    const offset = address - s.address;
    if (s.size > 0n && offset >= s.size) return undefined;
    return { name: s.name, address: s.address, offset, type: s.type, module: s.module, ...(s.size > 0n ? { size: s.size } : {}) };
  }
}

// ---- module BTF --------------------------------------------------------------------------------

/**
 * The raw split BTF of every module the kernel parsed, by module name: the `btf_modules` list
 * (kernel/bpf/btf.c), or `mod->btf_data` for a module still initialising.
 */
export function moduleBtfBlobs(k: Kernel): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  const where = 'module BTF';
  if (k.hasSymbol('btf_modules') && k.btf.findTypeId('struct btf_module') !== undefined) {
    for (const bm of listForEachEntry(k.variable('btf_modules', 'struct list_head'), 'struct btf_module', 'list', { what: 'btf_modules list', limit: MAX_MODULES })) {
      try {
        const name = bm.member('module').member('name').str();
        const btf = bm.member('btf');
        const blob = readBtfBlob(k, btf.member('data').ptr(), btf.member('data_size').num(), `${where}: ${name}`);
        if (blob) out.set(name, blob);
      } catch (e) {
        k.warnings.warn(where, `btf_module at 0x${bm.address.toString(16)}: ${(e as Error).message}`);
      }
    }
  }
  for (const mod of kernelModules(k)) {
    if (!mod.hasMember('btf_data')) break;
    try {
      const name = mod.member('name').str();
      const data = mod.member('btf_data').ptr();
      if (out.has(name) || data === 0n) continue;
      const blob = readBtfBlob(k, data, mod.member('btf_data_size').num(), `${where}: ${name}`);
      if (blob) out.set(name, blob);
    } catch (e) {
      k.warnings.warn(where, `module at 0x${mod.address.toString(16)}: ${(e as Error).message}`);
    }
  }
  return out;
}

function readBtfBlob(k: Kernel, data: bigint, size: number, where: string): Uint8Array | undefined {
  if (data === 0n || size === 0) return undefined;
  if (size > MAX_MODULE_BTF) {
    k.warnings.warn(where, `BTF of ${size} bytes is implausible; not read`);
    return undefined;
  }
  return k.space.readBytes(data, size);
}

/**
 * Module BTF, parsed on demand over the kernel's BTF and cached per module. Parse failures (a
 * corrupt blob) become warnings and `undefined`.
 */
export class ModuleTypes {
  private blobs: Map<string, Uint8Array> | undefined;
  private readonly parsed = new Map<string, Btf | null>();

  constructor(private readonly kernel: Kernel) {}

  /** Names of the modules with BTF. */
  names(): string[] {
    return [...this.blobMap().keys()];
  }

  btf(module: string): Btf | undefined {
    const cached = this.parsed.get(module);
    if (cached !== undefined) return cached ?? undefined;
    const blob = this.blobMap().get(module);
    let btf: Btf | null = null;
    if (blob) {
      try {
        btf = Btf.parse(blob, this.kernel.btf);
      } catch (e) {
        if (!(e instanceof VmlensError)) throw e;
        this.kernel.warnings.warn(`module BTF: ${module}`, e.message);
      }
    }
    this.parsed.set(module, btf);
    return btf ?? undefined;
  }

  /**
   * The first module whose BTF defines `type` (a C type name) where vmlinux's does not, as an
   * object context for KObjects of that type.
   */
  contextFor(type: string, base: ObjectContext): { module: string; ctx: ObjectContext } | undefined {
    const bare = type.trim().replace(/\s*\*+$/, '');
    for (const module of this.names()) {
      const btf = this.btf(module);
      if (!btf) continue;
      const id = btf.findTypeId(bare);
      if (id !== undefined && id >= btf.firstId) return { module, ctx: { space: base.space, warnings: base.warnings, btf } };
    }
    return undefined;
  }

  /** Forget what was read (a live guest loads and unloads modules). */
  reset(): void {
    this.blobs = undefined;
    this.parsed.clear();
  }

  private blobMap(): Map<string, Uint8Array> {
    if (!this.blobs) {
      try {
        this.blobs = moduleBtfBlobs(this.kernel);
      } catch (e) {
        if (!(e instanceof VmlensError)) throw e;
        this.kernel.warnings.warn('module BTF', e.message);
        this.blobs = new Map();
      }
    }
    return this.blobs;
  }
}
