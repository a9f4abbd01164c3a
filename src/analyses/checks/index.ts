/**
 * Every detection check, and running a selection of them over one kernel. Checks never print:
 * each returns a CheckResult; a check that fails on unreadable guest data ends with a warning
 * and what it found so far, and never stops the others.
 */
import type { Kernel } from '../../kernel/kernel.ts';
import type { VcpuState } from '../../machine/types.ts';
import { isVmlensError, UsageError } from '../../util/errors.ts';
import { hiddenModules } from './hidden-modules.ts';
import { hiddenProcesses } from './hidden-processes.ts';
import { kernelText } from './kernel-text.ts';
import { loadKernelImage } from './vmlinux-image.ts';
import { syscallHooks } from './syscall-hooks.ts';
import { tainted } from './tainted.ts';
import type { Check, CheckContext, CheckOptions, CheckResult } from './types.ts';

export * from './types.ts';

/** In the order `vmlens check` runs and prints them. */
export const CHECKS: readonly Check[] = [hiddenProcesses, hiddenModules, syscallHooks, kernelText, tainted];

export function checkNames(): string[] {
  return CHECKS.map((c) => c.name);
}

/** The checks named (all when none are); an unknown name is a UsageError listing the known ones. */
export function selectChecks(names: readonly string[] = []): Check[] {
  if (names.length === 0) return [...CHECKS];
  return names.map((n) => {
    const c = CHECKS.find((x) => x.name === n);
    if (!c) throw new UsageError(`no check named '${n}' (checks: ${checkNames().join(', ')})`);
    return c;
  });
}

/**
 * Read the inputs that do not depend on the guest (the kernel image for kernel-text) before
 * a live guest is paused: decompressing a bzImage takes seconds the guest need not wait.
 */
export function prepareCheckOptions(checks: readonly Check[], options: CheckOptions): CheckOptions {
  if (options.vmlinux === undefined || options.image || !checks.includes(kernelText)) return options;
  return { ...options, image: loadKernelImage(options.vmlinux) };
}

/** Run `checks` over `kernel`, sharing intermediate results between them. */
export async function runChecks(kernel: Kernel, checks: readonly Check[], options: CheckOptions = {}): Promise<CheckResult[]> {
  const memo = new Map<string, unknown>();
  let vcpus: VcpuState[] = [];
  try {
    vcpus = await kernel.machine.vcpus();
  } catch (e) {
    if (!isVmlensError(e)) throw e;
    kernel.warnings.warn('check', `vCPU registers: ${e.message}`);
  }
  const ctx: CheckContext = {
    kernel,
    options,
    vcpus,
    shared<T>(key: string, compute: () => T): T {
      if (!memo.has(key)) memo.set(key, compute());
      return memo.get(key) as T;
    },
  };
  const results: CheckResult[] = [];
  for (const check of checks) {
    try {
      results.push(check.run(ctx));
    } catch (e) {
      // Guest data that defeats a whole check (or a kernel without a structure it reads)
      // becomes that check's result, so the other checks still report. Anything else is a bug.
      if (!isVmlensError(e)) throw e;
      kernel.warnings.warn(check.name, e.message);
      results.push({ check: check.name, findings: [], examined: {}, skipped: `failed: ${e.message}` });
    }
  }
  return results;
}
