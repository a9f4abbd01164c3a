/**
 * Loaded modules from the kernel's `modules` list — what /proc/modules and lsmod show (and
 * Volatility's linux.lsmod): name, size, reference count, state, base address.
 */
import { listForEachEntry } from '../kernel/helpers/list.ts';
import type { Kernel } from '../kernel/kernel.ts';
import type { KObject } from '../kernel/object.ts';

export interface ModuleRow {
  /** Address of the struct module. */
  readonly module: bigint;
  readonly name: string;
  /** Bytes, as /proc/modules counts them (all of the module's memory). */
  readonly size: number;
  /** module_refcount(): refcnt - MODULE_REF_BASE. */
  readonly refcount: number;
  readonly state: 'live' | 'coming' | 'going' | 'unformed' | string;
  /** Start of the module's core text. */
  readonly base: bigint;
  /** Names of modules that use this one (source_list), as lsmod's "Used by". */
  readonly usedBy: string[];
}

const STATES = ['live', 'coming', 'going', 'unformed'];

/** Base and total size of a module: `mem[]` (6.4+) or core/init layouts (older). */
export function moduleMemory(mod: KObject): { base: bigint; size: number } {
  if (mod.hasMember('mem')) {
    const mem = mod.member('mem');
    let size = 0;
    for (let i = 0; i < mem.length; i++) size += mem.index(i).member('size').num();
    return { base: mem.index(0).member('base').ptr(), size };
  }
  const core = mod.member('core_layout');
  let size = core.member('size').num() + mod.member('init_layout').member('size').num();
  if (mod.hasMember('data_layout')) size += mod.member('data_layout').member('size').num();
  return { base: core.member('base').ptr(), size };
}

export function moduleName(mod: KObject): string {
  return mod.member('name').str();
}

export function* forEachModule(k: Kernel): Generator<KObject> {
  yield* listForEachEntry(k.variable('modules', 'struct list_head'), 'struct module', 'list', { what: 'module list', limit: 65536 });
}

export function listModules(k: Kernel): ModuleRow[] {
  const rows: ModuleRow[] = [];
  for (const mod of forEachModule(k)) {
    try {
      const { base, size } = moduleMemory(mod);
      const state = mod.member('state').num();
      const usedBy: string[] = [];
      if (mod.hasMember('source_list')) {
        for (const use of listForEachEntry(mod.member('source_list'), 'struct module_use', 'source_list', { what: 'module users', limit: 4096 })) {
          usedBy.push(moduleName(use.member('source')));
        }
      }
      rows.push({
        module: mod.address,
        name: moduleName(mod),
        size,
        refcount: mod.member('refcnt').member('counter').num() - 1,
        state: STATES[state] ?? `state ${state}`,
        base,
        usedBy,
      });
    } catch (e) {
      k.warnings.warn('module list', `module at 0x${mod.address.toString(16)}: ${(e as Error).message}`);
    }
  }
  return rows;
}
