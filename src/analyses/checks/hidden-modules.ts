/**
 * hidden-modules: loaded modules missing from the module list.
 *
 * /proc/modules, lsmod, rmmod and /proc/kallsyms all walk the `modules` list, so unlinking a
 * module from it hides the module from the guest. The module's other records stay unless the
 * rootkit finds and undoes each one (see module-census.ts): its sysfs kobject, its nodes in
 * the module address tree, its BTF entry, the dependency lists of other modules — and its
 * memory, which still holds a self-consistent `struct module`.
 */
import type { Kernel } from '../../kernel/kernel.ts';
import { MODULE_STATES, moduleSymbols, takeModuleCensus, type CensusModule, type ModuleCensus } from './module-census.ts';
import { CheckReport, guestDataError, type Check, type CheckContext, type CheckResult, type Severity } from './types.ts';

const NAME = 'hidden-modules';

/** The census is shared with the other checks of one run. */
export function moduleCensus(ctx: CheckContext): ModuleCensus {
  return ctx.shared('module census', () => takeModuleCensus(ctx.kernel));
}

export const hiddenModules: Check = {
  name: NAME,
  description: 'modules in sysfs, the module address tree, module BTF, dependency lists or module memory that are missing from the module list',
  run: (ctx: CheckContext): CheckResult => reportHiddenModules(ctx.kernel, moduleCensus(ctx)),
};

export function reportHiddenModules(k: Kernel, census: ModuleCensus): CheckResult {
  const report = new CheckReport(NAME);
  for (const [record, n] of Object.entries(census.counts)) report.count(record, n);
  for (const m of census.modules.values()) {
    if (m.listed) continue;
    const { severity, why } = judge(m);
    report.add(severity, `module ${m.name} ${why}`, evidenceOf(k, m));
  }
  return report.result();
}

/**
 * A live or loading module off the list has been hidden: the kernel itself never takes a module
 * off the list before it is gone. A going module is being unloaded; an unformed one is what
 * an unload leaves in memory until the memory is reused.
 */
function judge(m: CensusModule): { severity: Severity; why: string } {
  switch (m.state) {
    case 0:
    case 1:
      return { severity: 'high', why: `is loaded (${MODULE_STATES[m.state]}) but hidden from the module list` };
    case 2:
      return { severity: 'medium', why: 'is being unloaded and already off the module list' };
    default:
      return { severity: 'info', why: 'left a struct module in memory that is on no list (an unloaded module)' };
  }
}

function evidenceOf(k: Kernel, m: CensusModule): Record<string, string | number | bigint | string[]> {
  const mod = k.object('struct module', m.address);
  const evidence: Record<string, string | number | bigint | string[]> = {
    'struct module': m.address,
    name: m.name,
    state: MODULE_STATES[m.state] ?? String(m.state),
    'found in': [...m.records],
    'module list': listLinkState(k, m.address),
  };
  if (m.records.has('sysfs')) evidence.sysfs = `/sys/module/${m.name} exists`;
  for (const r of m.regions) evidence[r.kind] = `0x${r.start.toString(16)}-0x${r.end.toString(16)} (${r.end - r.start} bytes)`;
  try {
    evidence.taints = `0x${mod.member('taints').big().toString(16)}`;
  } catch (e) {
    guestDataError(e);
    /* no taints member: nothing to add */
  }
  const symbols = moduleSymbols(k, m.address);
  if (symbols.length > 0) {
    evidence.symbols = symbols.length;
    const text = m.regions.find((r) => r.kind === 'text');
    if (text) {
      // __pfx_* symbols name the padding in front of each function (6.2+): not functions.
      const inText = symbols.filter((s) => s.address >= text.start && s.address < text.end && !s.name.startsWith('__pfx_')).map((s) => s.name);
      evidence.functions = inText.slice(0, 12).concat(inText.length > 12 ? [`… ${inText.length - 12} more`] : []);
    }
  }
  return evidence;
}

function listLinkState(k: Kernel, address: bigint): string {
  const link = k.object('struct module', address).member('list');
  const next = link.member('next').ptr();
  const prev = link.member('prev').ptr();
  if (next === link.address && prev === link.address) return 'absent: mod->list points to itself (unlinked)';
  if ((next & ~0xffn) === 0xdead000000000100n || (prev & ~0xffn) === 0xdead000000000100n) return 'absent: mod->list holds list poison (deleted)';
  return `absent: mod->list links 0x${prev.toString(16)} ↔ 0x${next.toString(16)}, which do not lead back to it`;
}
