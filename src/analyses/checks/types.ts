/**
 * Detection checks: each compares two or more of the kernel's own records of the same thing
 * (the task list and the pid table, the module list and sysfs, a handler table and the kernel's
 * text) and reports where they disagree. A rootkit can rewrite one record; it rarely rewrites
 * every record, and it cannot hide the memory it lives in from a reader outside the guest.
 */
import type { Kernel } from '../../kernel/kernel.ts';
import { isVmlensError, type VmlensError } from '../../util/errors.ts';
import type { VcpuState } from '../../machine/types.ts';
import type { KernelImage } from './vmlinux-image.ts';

/**
 * How much a finding matters:
 * - high: the kernel's records contradict each other in a way only tampering explains;
 * - medium: suspicious, but with a benign explanation possible (say what it is);
 * - low: unusual, worth a look;
 * - info: normal, recorded for completeness (e.g. code patched at boot as the kernel intends).
 */
export type Severity = 'high' | 'medium' | 'low' | 'info';

export const SEVERITIES: readonly Severity[] = ['high', 'medium', 'low', 'info'];

/** Rank for sorting and thresholds: high = 3 … info = 0. */
export function severityRank(s: Severity): number {
  return 3 - SEVERITIES.indexOf(s);
}

/** One value of evidence: addresses as bigint, counts as numbers, names as strings. */
export type EvidenceValue = string | number | bigint | boolean | readonly (string | number | bigint)[];

export interface Finding {
  readonly check: string;
  readonly severity: Severity;
  /** One line: what is wrong, e.g. "pid 812 (sleep) is hidden from the task list". */
  readonly summary: string;
  /** What disagrees with what, as named values, in the order they are best read. */
  readonly evidence: Readonly<Record<string, EvidenceValue>>;
}

export interface CheckResult {
  readonly check: string;
  readonly findings: readonly Finding[];
  /** What was compared and how much of it: record name → count (or a short note). */
  readonly examined: Readonly<Record<string, number | string>>;
  /** Why the check did not run (a missing input, a kernel without the structure), if it did not. */
  readonly skipped?: string;
}

export interface CheckOptions {
  /** The kernel's image on disk (a vmlinux ELF or a bzImage), for kernel-text. */
  readonly vmlinux?: string;
  /** That image already read (see prepareCheckOptions: decompressing it takes seconds). */
  readonly image?: KernelImage;
}

export interface Check {
  /** Name on the command line: `vmlens check <name>`. */
  readonly name: string;
  /** One line for help. */
  readonly description: string;
  run(ctx: CheckContext): CheckResult;
}

/**
 * What a check run shares: the kernel, the options, and results other checks may reuse
 * (the census of modules, computed once, tells syscall-hooks whose code a pointer lands in).
 */
export interface CheckContext {
  readonly kernel: Kernel;
  readonly options: CheckOptions;
  /** The vCPUs' registers (IDTR…), read once per run; empty when the target has none. */
  readonly vcpus: readonly VcpuState[];
  /** Memoized shared computations, keyed by name. */
  shared<T>(key: string, compute: () => T): T;
}

/** A small builder that keeps a check's findings and counts together. */
export class CheckReport {
  private readonly findings: Finding[] = [];
  private readonly examined: Record<string, number | string> = {};

  constructor(readonly check: string) {}

  add(severity: Severity, summary: string, evidence: Record<string, EvidenceValue>): void {
    this.findings.push({ check: this.check, severity, summary, evidence });
  }

  count(what: string, n: number | string): void {
    this.examined[what] = n;
  }

  result(): CheckResult {
    const findings = [...this.findings].sort((a, b) => severityRank(b.severity) - severityRank(a.severity));
    return { check: this.check, findings, examined: { ...this.examined } };
  }

  skipped(why: string): CheckResult {
    return { check: this.check, findings: [...this.findings], examined: { ...this.examined }, skipped: why };
  }
}

/**
 * In a catch block around a read of guest data: what the guest can cause is a VmlensError (a
 * fault, a corrupt structure) and is returned for the warning; anything else is a bug in
 * vmlens and is thrown on.
 */
export function guestDataError(e: unknown): VmlensError {
  if (isVmlensError(e)) return e;
  throw e;
}
