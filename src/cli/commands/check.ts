import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { checkNames, CHECKS, prepareCheckOptions, runChecks, selectChecks, type CheckResult, type EvidenceValue, type Finding } from '../../analyses/checks/index.ts';
import { UsageError } from '../../util/errors.ts';
import { emit, setExitCode, withKernel } from '../context.ts';

/**
 * `vmlens check [name…]`: the detection checks (src/analyses/checks), all of them or those
 * named; exit status 1 when anything above info is found. A live guest is paused while they run: they compare several of the kernel's records
 * with each other, which is only sound if all of them are read at one instant.
 */
export function register(program: Command): void {
  program
    .command('check')
    .description(`look for what a rootkit hides: ${checkNames().join(', ')} (all when none is named)`)
    .argument('[checks...]', `checks to run: ${checkNames().join(', ')}`)
    .option('--vmlinux <file>', 'the kernel\'s image on disk (vmlinux or bzImage), for kernel-text')
    .option('--no-pause', 'do not pause a live guest while checking (results may then mix instants)')
    .addHelpText('after', `\nChecks:\n${CHECKS.map((c) => `  ${c.name.padEnd(18)}${c.description}`).join('\n')}\n`)
    .action(async (names: string[], o: { vmlinux?: string; pause: boolean }, cmd: Command) => {
      const checks = selectChecks(names);
      if (o.vmlinux !== undefined && !existsSync(o.vmlinux)) throw new UsageError(`no such file: ${o.vmlinux}`);
      const options = prepareCheckOptions(checks, o.vmlinux !== undefined ? { vmlinux: o.vmlinux } : {});
      await withKernel(
        cmd,
        async (kernel, opts) => {
          const results = await runChecks(kernel, checks, options);
          emit(
            opts,
            () => ({ results, warnings: kernel.warnings.items }),
            () => renderResults(results),
          );
          // Like a linter: findings above info make the exit status 1, for scripts.
          if (results.some((r) => r.findings.some((f) => f.severity !== 'info'))) setExitCode(1);
        },
        { pause: o.pause },
      );
    });
}

/** Text report: one line per check, then each finding with its evidence indented under it. */
export function renderResults(results: readonly CheckResult[]): string {
  const nameWidth = Math.max(...results.map((r) => r.check.length));
  const out: string[] = [];
  for (const r of results) {
    const examined = Object.entries(r.examined)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
    let status: string;
    if (r.skipped !== undefined) status = `skipped: ${r.skipped}`;
    else {
      const serious = r.findings.filter((f) => f.severity !== 'info');
      const info = r.findings.length - serious.length;
      status = serious.length === 0 ? 'ok' : `${serious.length} finding${serious.length === 1 ? '' : 's'}`;
      if (info > 0) status += ` (+${info} info)`;
    }
    out.push(`${r.check.padEnd(nameWidth)}  ${status}${examined ? `  [${examined}]` : ''}`);
    for (const f of r.findings) out.push(...renderFinding(f));
  }
  return out.join('\n');
}

function renderFinding(f: Finding): string[] {
  const label = f.severity.toUpperCase();
  const lines = [`  ${label.padEnd(6)}  ${f.summary}`];
  const keys = Object.keys(f.evidence);
  const w = Math.max(0, ...keys.map((k) => k.length));
  for (const k of keys) lines.push(`          ${k.padEnd(w)}  ${formatEvidence(f.evidence[k]!)}`);
  return lines;
}

function formatEvidence(v: EvidenceValue): string {
  if (typeof v === 'bigint') return `0x${v.toString(16)}`;
  if (Array.isArray(v)) return v.map((x) => (typeof x === 'bigint' ? `0x${x.toString(16)}` : String(x))).join('; ');
  return String(v);
}
