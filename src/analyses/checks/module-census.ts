/**
 * Every loaded module the kernel keeps a record of, from each record separately, so that they
 * can be compared (hidden-modules) and so that any code address can be attributed to the
 * module whose memory holds it (syscall-hooks).
 *
 * The records of a loaded module (kernel/module/*.c, 6.1 and later):
 * - `modules`: the list /proc/modules, lsmod and kallsyms walk;
 * - `module_kset`: its kobject, /sys/module/<name> (`struct module_kobject.mod`);
 * - `mod_tree`: the latched red-black tree `__module_address()` searches, one node per memory
 *   region of the module (`mtn.mod`);
 * - `btf_modules`: modules that carry BTF;
 * - the `source_list`/`target_list` of the modules it uses or that use it;
 * - its memory: the `struct module` lives inside the module's own data, in the module mapping
 *   area, and points to itself through `mkobj.mod` — found by scanning that area.
 */
import { readModuleSymbols } from '../../kernel/modules.ts';
import { vaAddHi, vaAddLo, vaFromParts } from '../../mmu/va.ts';
import { listForEachEntry } from '../../kernel/helpers/list.ts';
import { rbtreeInorderForEachEntry } from '../../kernel/helpers/rbtree.ts';
import type { Kernel } from '../../kernel/kernel.ts';
import { readCString, type KObject } from '../../kernel/object.ts';
import { guestDataError } from './types.ts';

/** Where a module was found. */
export type ModuleRecord = 'module list' | 'sysfs' | 'module tree' | 'module BTF list' | 'module users' | 'memory scan';

export type RegionKind = 'text' | 'rodata' | 'ro_after_init' | 'data' | 'init_text' | 'init_rodata' | 'init_data';

export interface ModuleRegion {
  readonly kind: RegionKind;
  readonly start: bigint;
  /** Exclusive. */
  readonly end: bigint;
}

export interface CensusModule {
  /** Address of the struct module. */
  readonly address: bigint;
  readonly name: string;
  /** MODULE_STATE_*: 0 live, 1 coming, 2 going, 3 unformed. */
  readonly state: number;
  readonly listed: boolean;
  readonly records: Set<ModuleRecord>;
  readonly regions: readonly ModuleRegion[];
}

export interface ModuleCensus {
  readonly modules: ReadonlyMap<bigint, CensusModule>;
  /** How many distinct modules each record holds. */
  readonly counts: Readonly<Record<ModuleRecord, number>>;
  /** The module and region an address falls in, if any. */
  locate(address: bigint): { module: CensusModule; region: ModuleRegion } | undefined;
}

export const MODULE_STATES = ['live', 'coming', 'going', 'unformed'] as const;

/** x86-64: modules are mapped from MODULES_VADDR (just above the 1 GiB kernel image area) to MODULES_END. */
export const MODULES_VADDR = 0xffff_ffff_c000_0000n;
export const MODULES_END = 0xffff_ffff_ff00_0000n;

const MAX_MODULES = 65536;
const MODULE_NAME_LEN = 56;
/** The scan reads this much at a time; a hostile page-table layout cannot make it read more than SCAN_LIMIT. */
const SCAN_CHUNK = 1 << 20;
const SCAN_LIMIT = 1 << 30;
/** Largest plausible module memory region (the whole module area is under 1 GiB). */
const MAX_REGION = 1 << 30;

/** Take the census of loaded modules: read every record, then merge them by struct module address. */
export function takeModuleCensus(k: Kernel): ModuleCensus {
  const modules = new Map<bigint, CensusModule>();
  const records: ModuleRecord[] = ['module list', 'sysfs', 'module tree', 'module BTF list', 'module users', 'memory scan'];
  const seenIn = new Map<ModuleRecord, Set<bigint>>(records.map((r) => [r, new Set<bigint>()]));
  const found = (address: bigint, record: ModuleRecord): void => {
    if (address === 0n) return;
    seenIn.get(record)!.add(address);
    const have = modules.get(address);
    if (have) {
      have.records.add(record);
      return;
    }
    const m = describeModule(k, address, record);
    if (m) modules.set(address, m);
  };
  const guard = (record: ModuleRecord, fn: () => void): void => {
    try {
      fn();
    } catch (e) {
      k.warnings.warn(`modules: ${record}`, guestDataError(e).message);
    }
  };
  /** One entry of a record; an unreadable one is warned about and the walk goes on. */
  const entry = (record: ModuleRecord, at: bigint, read: () => bigint): void => {
    try {
      found(read(), record);
    } catch (e) {
      k.warnings.warn(`modules: ${record}`, `entry at 0x${at.toString(16)}: ${guestDataError(e).message}`);
    }
  };

  guard('module list', () => {
    for (const mod of listForEachEntry(k.variable('modules', 'struct list_head'), 'struct module', 'list', { what: 'module list', limit: MAX_MODULES })) {
      found(mod.address, 'module list');
    }
  });

  guard('sysfs', () => {
    const kset = k.variable('module_kset', 'struct kset *');
    if (kset.isNull()) return;
    for (const kobj of listForEachEntry(kset.member('list'), 'struct kobject', 'entry', { what: 'module kset', limit: MAX_MODULES })) {
      // Built-in modules with parameters have a kobject but no struct module.
      entry('sysfs', kobj.address, () => kobj.containerOf('struct module_kobject', 'kobj').member('mod').ptr());
    }
  });

  guard('module tree', () => {
    if (!k.hasSymbol('mod_tree') || !k.btf.findType('struct mod_tree_root') || !k.hasMember('mod_tree_root', 'root')) return;
    const root = k.variable('mod_tree', 'struct mod_tree_root').member('root').member('tree').index(0);
    const nodeOff = BigInt(k.offsetOf('mod_tree_node', 'node'));
    for (const ln of rbtreeInorderForEachEntry(root, 'struct latch_tree_node', 'node', { what: 'module tree', limit: MAX_MODULES * 8 })) {
      entry('module tree', ln.address, () => k.object('struct mod_tree_node', ln.address - nodeOff).member('mod').ptr());
    }
  });

  guard('module BTF list', () => {
    if (!k.hasSymbol('btf_modules') || !k.btf.findType('struct btf_module')) return;
    for (const bm of listForEachEntry(k.variable('btf_modules', 'struct list_head'), 'struct btf_module', 'list', { what: 'module BTF list', limit: MAX_MODULES })) {
      entry('module BTF list', bm.address, () => bm.member('module').ptr());
    }
  });

  guard('module users', () => {
    const listed = [...modules.values()].filter((m) => m.listed);
    for (const m of listed) {
      const mod = k.object('struct module', m.address);
      for (const use of listForEachEntry(mod.member('source_list'), 'struct module_use', 'source_list', { what: 'module users', limit: MAX_MODULES })) {
        entry('module users', use.address, () => use.member('source').ptr());
      }
      for (const use of listForEachEntry(mod.member('target_list'), 'struct module_use', 'target_list', { what: 'module users', limit: MAX_MODULES })) {
        entry('module users', use.address, () => use.member('target').ptr());
      }
    }
  });

  guard('memory scan', () => {
    for (const address of scanModuleArea(k)) found(address, 'memory scan');
  });

  const all = [...modules.values()];
  const counts = Object.fromEntries(records.map((r) => [r, seenIn.get(r)!.size])) as Record<ModuleRecord, number>;
  return {
    modules,
    counts,
    locate(address: bigint) {
      for (const module of all) {
        for (const region of module.regions) if (address >= region.start && address < region.end) return { module, region };
      }
      return undefined;
    },
  };
}

/** Read what a record points to as a struct module; undefined (with a warning) if it is not one. */
function describeModule(k: Kernel, address: bigint, record: ModuleRecord): CensusModule | undefined {
  try {
    const mod = k.object('struct module', address);
    const name = mod.member('name').str(MODULE_NAME_LEN);
    const state = mod.member('state').num();
    // The module list is read first: a module is listed exactly when that walk described it.
    return { address, name, state, listed: record === 'module list', records: new Set([record]), regions: moduleRegions(mod) };
  } catch (e) {
    k.warnings.warn(`modules: ${record}`, `struct module at 0x${address.toString(16)}: ${guestDataError(e).message}`);
    return undefined;
  }
}

/**
 * The memory regions of a module: `mem[]` (6.4 and later, one per `enum mod_mem_type`) or the
 * core and init layouts, each split into text, read-only data, read-only-after-init data and
 * data by its size fields. Implausible sizes give no region.
 */
export function moduleRegions(mod: KObject): ModuleRegion[] {
  const out: ModuleRegion[] = [];
  const push = (kind: RegionKind, start: bigint, size: number): void => {
    if (start === 0n || size <= 0 || size > MAX_REGION) return;
    out.push({ kind, start, end: start + BigInt(size) });
  };
  if (mod.hasMember('mem')) {
    const btf = mod.ctx.btf;
    const kinds: [string, RegionKind][] = [
      ['MOD_TEXT', 'text'],
      ['MOD_DATA', 'data'],
      ['MOD_RODATA', 'rodata'],
      ['MOD_RO_AFTER_INIT', 'ro_after_init'],
      ['MOD_INIT_TEXT', 'init_text'],
      ['MOD_INIT_DATA', 'init_data'],
      ['MOD_INIT_RODATA', 'init_rodata'],
    ];
    const mem = mod.member('mem');
    for (const [enumName, kind] of kinds) {
      const i = btf.enumValue('mod_mem_type', enumName);
      if (i === undefined || Number(i) >= mem.length) continue;
      const m = mem.index(Number(i));
      push(kind, m.member('base').ptr(), m.member('size').num());
    }
    return out;
  }
  const layout = (name: 'core_layout' | 'init_layout', init: boolean): void => {
    const l = mod.member(name);
    const base = l.member('base').ptr();
    const size = l.member('size').num();
    const text = Math.min(l.member('text_size').num(), size);
    const ro = Math.min(Math.max(l.member('ro_size').num(), text), size);
    const roAfter = l.hasMember('ro_after_init_size') ? Math.min(Math.max(l.member('ro_after_init_size').num(), ro), size) : ro;
    push(init ? 'init_text' : 'text', base, text);
    push(init ? 'init_rodata' : 'rodata', base + BigInt(text), ro - text);
    if (!init) push('ro_after_init', base + BigInt(ro), roAfter - ro);
    push(init ? 'init_data' : 'data', base + BigInt(roAfter), size - roAfter);
  };
  layout('core_layout', false);
  layout('init_layout', true);
  return out;
}

/**
 * struct module candidates in the module area: every 8-byte-aligned address A whose
 * `mkobj.mod` field holds A itself, whose state is a module state, whose name is a printable
 * C string, and which lies inside one of the memory regions it describes. Only mapped pages
 * are read (from the page tables), at most SCAN_LIMIT bytes.
 */
export function scanModuleArea(k: Kernel): bigint[] {
  const space = k.space;
  const selfOff = k.offsetOf('module', 'mkobj') + k.offsetOf('module_kobject', 'mod');
  const stateOff = k.offsetOf('module', 'state');
  const nameOff = k.offsetOf('module', 'name');
  const found: bigint[] = [];
  let scanned = 0;
  const buf = new Uint8Array(SCAN_CHUNK);
  const words = new Uint32Array(buf.buffer);
  for (const range of space.walk({ start: MODULES_VADDR, end: MODULES_END, warnings: k.warnings })) {
    for (let off = 0; off < range.size; off += SCAN_CHUNK) {
      if (scanned >= SCAN_LIMIT) {
        k.warnings.warn('modules: memory scan', `stopped after ${SCAN_LIMIT} bytes of the module area`);
        return found;
      }
      const len = Math.min(SCAN_CHUNK, range.size - off);
      const va = range.va + BigInt(off);
      try {
        space.read(va, buf.subarray(0, len));
      } catch (e) {
        guestDataError(e);
        continue; // unmapped since the walk: the guest is running
      }
      scanned += len;
      const baseHi = Number(va >> 32n) >>> 0;
      const baseLo = Number(va & 0xffff_ffffn);
      for (let i = selfOff; i + 8 <= len; i += 8) {
        // Candidate struct module at va + i - selfOff: does the field hold that address?
        const cLo = vaAddLo(baseLo, i - selfOff);
        if (words[i >>> 2] !== cLo) continue;
        const cHi = vaAddHi(baseHi, baseLo, i - selfOff);
        if (words[(i >>> 2) + 1] !== cHi) continue;
        const candidate = vaFromParts(cHi, cLo);
        if (plausibleModule(k, candidate, stateOff, nameOff)) found.push(candidate);
      }
    }
  }
  return found;
}

function plausibleModule(k: Kernel, address: bigint, stateOff: number, nameOff: number): boolean {
  try {
    const space = k.space;
    const sa = address + BigInt(stateOff);
    const state = space.readU32(Number(sa >> 32n) >>> 0, Number(sa & 0xffff_ffffn));
    if (state > 3) return false;
    const na = address + BigInt(nameOff);
    const name = readCString(space, Number(na >> 32n) >>> 0, Number(na & 0xffff_ffffn), MODULE_NAME_LEN);
    if (name.length === 0 || name.length >= MODULE_NAME_LEN || !/^[\x21-\x7e]+$/.test(name)) return false;
    const regions = moduleRegions(k.object('struct module', address));
    return regions.some((r) => address >= r.start && address < r.end);
  } catch (e) {
    guestDataError(e);
    return false;
  }
}

/** A module's own symbols (its `kallsyms` symtab), for naming addresses inside it. */
export interface ModuleSymbol {
  readonly name: string;
  readonly address: bigint;
  readonly size: bigint;
}

/**
 * The symbols of the module at `address` (listed or not), sorted by address, with the kernel's
 * own reader of a module's symtab; [] (with a warning) if unreadable.
 */
export function moduleSymbols(k: Kernel, address: bigint): ModuleSymbol[] {
  try {
    return readModuleSymbols(k, k.object('struct module', address))
      .filter((s) => s.address !== 0n)
      .map(({ name, address: a, size }) => ({ name, address: a, size }))
      .sort((x, y) => (x.address < y.address ? -1 : x.address > y.address ? 1 : 0));
  } catch (e) {
    k.warnings.warn('modules: symbols', `module at 0x${address.toString(16)}: ${guestDataError(e).message}`);
    return [];
  }
}

/** "name+0xoff" of the symbol of `symbols` an address falls in, if any. */
export function symbolizeIn(symbols: readonly ModuleSymbol[], address: bigint): string | undefined {
  let best: ModuleSymbol | undefined;
  for (const s of symbols) {
    if (s.address > address) break;
    best = s;
  }
  if (!best) return undefined;
  const off = address - best.address;
  if (best.size > 0n && off >= best.size) return undefined;
  return off === 0n ? best.name : `${best.name}+0x${off.toString(16)}`;
}

/** A one-line description of where `address` lies among the census's modules, if it does. */
export function describeModuleAddress(k: Kernel, census: ModuleCensus, address: bigint): string | undefined {
  const hit = census.locate(address);
  if (!hit) return undefined;
  const sym = symbolizeIn(moduleSymbols(k, hit.module.address), address);
  const listed = hit.module.listed ? 'module' : 'HIDDEN module';
  return `${sym ? `${sym} ` : ''}in the ${hit.region.kind} of ${listed} ${hit.module.name} (struct module 0x${hit.module.address.toString(16)})`;
}

