/**
 * tainted: the kernel's taint flags (`tainted_mask`, what /proc/sys/kernel/tainted shows)
 * compared with the modules that explain them.
 *
 * Loading an out-of-tree (O), unsigned (E), proprietary (P), staging (C) or livepatch (K)
 * module, or forcing one in (F), taints the kernel for good, and the module records the same
 * flag in its own `taints`. A module flag no listed module carries was set by a module that is
 * hidden or was unloaded (the kernel remembers the last unloaded one). Other flags (a warning
 * was printed, an oops happened…) are reported for information.
 */
import type { Kernel } from '../../kernel/kernel.ts';
import { readCString } from '../../kernel/object.ts';
import { moduleCensus } from './hidden-modules.ts';
import { CheckReport, guestDataError, type Check, type CheckContext, type CheckResult } from './types.ts';

const NAME = 'tainted';

/** include/linux/panic.h: TAINT_* bit numbers, letters as print_tainted() shows them. */
const TAINTS: readonly { bit: number; letter: string; what: string; module: boolean }[] = [
  { bit: 0, letter: 'P', what: 'proprietary module loaded', module: true },
  { bit: 1, letter: 'F', what: 'module force-loaded', module: true },
  { bit: 2, letter: 'S', what: 'kernel running on an out-of-spec system', module: false },
  { bit: 3, letter: 'R', what: 'module force-unloaded', module: false },
  { bit: 4, letter: 'M', what: 'machine check', module: false },
  { bit: 5, letter: 'B', what: 'bad page referenced', module: false },
  { bit: 6, letter: 'U', what: 'taint requested by user space', module: false },
  { bit: 7, letter: 'D', what: 'kernel died recently (oops or BUG)', module: false },
  { bit: 8, letter: 'A', what: 'ACPI table overridden', module: false },
  { bit: 9, letter: 'W', what: 'kernel issued a warning', module: false },
  { bit: 10, letter: 'C', what: 'staging driver loaded', module: true },
  { bit: 11, letter: 'I', what: 'platform firmware bug worked around', module: false },
  { bit: 12, letter: 'O', what: 'out-of-tree module loaded', module: true },
  { bit: 13, letter: 'E', what: 'unsigned module loaded', module: true },
  { bit: 14, letter: 'L', what: 'soft lockup occurred', module: false },
  { bit: 15, letter: 'K', what: 'kernel live-patched', module: true },
  { bit: 16, letter: 'X', what: 'auxiliary taint (distribution-defined)', module: false },
  { bit: 17, letter: 'T', what: 'kernel built with the struct randomization plugin', module: false },
  { bit: 18, letter: 'N', what: 'in-kernel test run', module: false },
];

export const tainted: Check = {
  name: NAME,
  description: 'module taint flags of the kernel that no listed module accounts for',
  run: (ctx: CheckContext): CheckResult => {
    const k = ctx.kernel;
    const report = new CheckReport(NAME);
    if (!k.hasSymbol('tainted_mask')) return report.skipped('this kernel has no tainted_mask');
    const mask = k.space.readU64Big(k.symbol('tainted_mask'));
    report.count('tainted_mask', `0x${mask.toString(16)}${mask === 0n ? '' : ` (${letters(mask)})`}`);
    if (mask === 0n) return report.result();

    const census = moduleCensus(ctx);
    const carriers = (bit: number, listed: boolean): string[] => {
      const out: string[] = [];
      for (const m of census.modules.values()) {
        if (m.listed !== listed) continue;
        try {
          if ((k.object('struct module', m.address).member('taints').big() >> BigInt(bit)) & 1n) out.push(m.name);
        } catch (e) {
          guestDataError(e);
          /* unreadable module: it explains nothing */
        }
      }
      return out;
    };
    const lastUnloaded = lastUnloadedModule(k);
    for (const t of TAINTS) {
      if (((mask >> BigInt(t.bit)) & 1n) === 0n) continue;
      const flag = `${t.letter} (${t.what})`;
      if (!t.module) {
        report.add('info', `the kernel is tainted ${flag}`, { tainted_mask: mask, flag: t.letter });
        continue;
      }
      const listed = carriers(t.bit, true);
      if (listed.length > 0) {
        report.add('info', `the kernel is tainted ${flag} by ${listed.join(', ')}`, { tainted_mask: mask, flag: t.letter, modules: listed });
        continue;
      }
      const hidden = carriers(t.bit, false);
      const unloadedExplains = lastUnloaded !== undefined && lastUnloaded.taints.includes(t.letter);
      const evidence: Record<string, string | bigint | string[]> = { tainted_mask: mask, flag: t.letter, 'listed modules with it': 'none' };
      if (hidden.length > 0) evidence['hidden modules with it'] = hidden;
      if (lastUnloaded !== undefined) evidence['last unloaded module'] = `${lastUnloaded.name} [${lastUnloaded.taints}]`;
      if (hidden.length > 0) {
        report.add('high', `the kernel is tainted ${flag} by ${hidden.join(', ')}, a module hidden from the module list`, evidence);
      } else if (unloadedExplains) {
        report.add('info', `the kernel is tainted ${flag} by ${lastUnloaded!.name}, since unloaded`, evidence);
      } else {
        report.add('medium', `the kernel is tainted ${flag} but no listed module carries that taint: a hidden module, or one unloaded`, evidence);
      }
    }
    return report.result();
  },
};

function letters(mask: bigint): string {
  return TAINTS.filter((t) => ((mask >> BigInt(t.bit)) & 1n) === 1n)
    .map((t) => t.letter)
    .join('');
}

/**
 * kernel/module/main.c keeps `last_unloaded_module` { name[MODULE_NAME_LEN + 1]; taints[] }
 * (an anonymous struct; the name is first, the taint letters follow it).
 */
function lastUnloadedModule(k: Kernel): { name: string; taints: string } | undefined {
  const a = k.symbols.lookup('last_unloaded_module');
  if (a === undefined) return undefined;
  try {
    const nameLen = 57; // MODULE_NAME_LEN + 1
    const name = readCString(k.space, Number(a >> 32n) >>> 0, Number(a & 0xffff_ffffn), nameLen);
    if (name.length === 0) return undefined;
    const t = a + BigInt(nameLen);
    const taints = readCString(k.space, Number(t >> 32n) >>> 0, Number(t & 0xffff_ffffn), 32);
    // module_flags() wrote them as "(OE)".
    return { name, taints: taints.replace(/[^A-Z]/g, '') };
  } catch (e) {
    guestDataError(e);
    return undefined;
  }
}
