/**
 * Detection against a real rootkit: a lab guest with vmlens_rootkit loaded (`lab up --rootkit`)
 * hides a process from the task list and /proc, hides itself from the module list, and
 * replaces sys_call_table[getdents64]. The guest's own tools must no longer see the process
 * and the module; `vmlens check` must report all three, with the addresses the module itself
 * logged (LabInfo.rootkit) as evidence — in process, and as a user runs it (text and JSON, one
 * check or all, one-line errors for bad input).
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runChecks, selectChecks, type CheckResult, type Finding } from '../../src/analyses/checks/index.ts';
import { kernelText } from '../../src/analyses/checks/kernel-text.ts';
import { loadKernelImage, type KernelImage } from '../../src/analyses/checks/vmlinux-image.ts';
import type { Kernel } from '../../src/kernel/kernel.ts';
import { openKernel } from '../../src/kernel/open.ts';
import type { LabRootkit } from '../../src/lab/index.ts';
import { attachQemu, type QemuMachine } from '../../src/machine/qemu.ts';
import { guestModules, guestProcesses } from '../support/ground-truth.ts';
import { labGuest, type LabGuest } from '../support/lab.ts';

function only(results: CheckResult[], check: string): CheckResult {
  const r = results.find((x) => x.check === check);
  if (!r) throw new Error(`no result for ${check}`);
  return r;
}

function serious(r: CheckResult): Finding[] {
  return r.findings.filter((f) => f.severity !== 'info');
}

describe('vmlens check on a guest with vmlens_rootkit loaded', () => {
  let guest: LabGuest;
  let rootkit: LabRootkit;
  let machine: QemuMachine;
  let kernel: Kernel;
  let image: KernelImage;
  let results: CheckResult[];

  beforeAll(async () => {
    guest = await labGuest('rootkit');
    if (!guest.info.rootkit) throw new Error('the rootkit guest has no rootkit record');
    rootkit = guest.info.rootkit;
    image = loadKernelImage(guest.info.vmlinuz);
    machine = await attachQemu(guest.info.qmpSocket);
    // Every record compared at one instant, as `vmlens check` does.
    await machine.pause();
    try {
      kernel = await openKernel(machine, { frozen: true });
      results = await runChecks(kernel, selectChecks(), { vmlinux: guest.info.vmlinuz, image });
    } finally {
      await machine.resume();
      // QEMU serves one QMP client at a time: let other test files and the CLI reach it.
      await machine.releaseMonitor();
    }
  });
  afterAll(async () => {
    await machine?.close();
  });

  it('hides the process and the module from the guest\'s own ps and /proc/modules, while both live', async () => {
    const pid = rootkit.hiddenProcess.pid;
    const ps = await guest.console.run('ps');
    const psPids = ps.split('\n').map((l) => Number(l.trim().split(/\s+/)[0]));
    expect(psPids).not.toContain(pid);
    expect(psPids).toContain(1); // the listing itself works
    expect((await guestProcesses(guest.console)).has(pid)).toBe(false);
    const modules = (await guestModules(guest.console)).map((m) => m.name);
    expect(modules).not.toContain('vmlens_rootkit');
    expect(modules).toEqual(expect.arrayContaining([...guest.info.modules]));
    // Still there: the pid answers signals, sysfs keeps the module's directory.
    expect((await guest.console.exec(`kill -0 ${pid}`)).exitCode).toBe(0);
    expect((await guest.console.exec('test -d /sys/module/vmlens_rootkit')).exitCode).toBe(0);
  });

  it('hidden-processes: reports the hidden pid, its task, and the links it lost', () => {
    const r = only(results, 'hidden-processes');
    const found = serious(r);
    expect(found).toHaveLength(1);
    const f = found[0]!;
    expect(f.severity).toBe('high');
    expect(f.evidence.pid).toBe(rootkit.hiddenProcess.pid);
    expect(f.evidence.comm).toBe(rootkit.hiddenProcess.comm);
    expect(f.evidence.task).toBe(BigInt(rootkit.hiddenProcess.task));
    expect(f.evidence['seen in']).toEqual(expect.arrayContaining([`pid table (pid ${rootkit.hiddenProcess.pid})`]));
    expect(String(f.evidence['task list'])).toMatch(/points to itself/);
    expect(String(f.evidence['/proc listing'])).toMatch(/^not listed/);
  });

  it('hidden-modules: reports vmlens_rootkit with its struct module and every record that still holds it', () => {
    const found = serious(only(results, 'hidden-modules'));
    expect(found).toHaveLength(1);
    const f = found[0]!;
    expect(f.severity).toBe('high');
    expect(f.evidence.name).toBe('vmlens_rootkit');
    expect(f.evidence['struct module']).toBe(BigInt(rootkit.structModule));
    expect(f.evidence['found in']).toEqual(expect.arrayContaining(['sysfs', 'module tree', 'memory scan']));
    expect(f.evidence.sysfs).toBe('/sys/module/vmlens_rootkit exists');
    expect(f.evidence.functions).toEqual(expect.arrayContaining(['hooked_handler']));
  });

  it('syscall-hooks: reports the replaced entry, its number, and the module address it points to', () => {
    const found = serious(only(results, 'syscall-hooks'));
    expect(found).toHaveLength(1);
    const f = found[0]!;
    expect(f.severity).toBe('high');
    expect(f.evidence.table).toBe('sys_call_table');
    expect(f.evidence.nr).toBe(rootkit.hook.syscall);
    expect(f.evidence.syscall).toBe('getdents64');
    expect(f.evidence['table address']).toBe(BigInt(rootkit.hook.sysCallTable));
    expect(f.evidence['points to']).toBe(BigInt(rootkit.hook.handler));
    expect(f.evidence['expected address']).toBe(BigInt(rootkit.hook.original));
    expect(String(f.evidence['lands in'])).toMatch(/^hooked_handler in the text of HIDDEN module vmlens_rootkit/);
  });

  it('kernel-text: the changed table entry is the only difference from the image outside patch sites', () => {
    const r = only(results, 'kernel-text');
    expect(r.skipped).toBeUndefined();
    const found = serious(r);
    expect(found).toHaveLength(1);
    const entry = BigInt(rootkit.hook.sysCallTable) + BigInt(rootkit.hook.syscall * 8);
    const at = found[0]!.evidence.address as bigint;
    expect(at).toBeGreaterThanOrEqual(entry);
    expect(at).toBeLessThan(entry + 8n);
    expect(String(found[0]!.evidence.function)).toMatch(/^sys_call_table\+0x/);
    // The kernel's own boot-time patching is recognised, not reported as tampering.
    expect(r.findings.some((x) => x.severity === 'info' && /patch sites differ/.test(x.summary))).toBe(true);
  });

  it('tainted: the out-of-tree, unsigned taint is traced to the hidden module', () => {
    const found = serious(only(results, 'tainted'));
    expect(found.map((f) => f.evidence.flag).sort()).toEqual(['E', 'O']);
    for (const f of found) expect(f.evidence['hidden modules with it']).toEqual(['vmlens_rootkit']);
  });

  it('kernel-text: a one-byte change of kernel code is found at its function (guest paused throughout)', async () => {
    const target = kernel.symbol('__x64_sys_getdents64') + 0x10n;
    await machine.pause();
    const original = kernel.space.readBytes(target, 1);
    try {
      kernel.space.write(target, Uint8Array.of(original[0]! ^ 0xff));
      const [r] = await runChecks(kernel, [kernelText], { vmlinux: guest.info.vmlinuz, image });
      const hits = serious(r!).filter((f) => f.evidence.address === target);
      expect(hits).toHaveLength(1);
      expect(hits[0]!.summary).toMatch(/^kernel text differs from the image at __x64_sys_getdents64\+0x10 \(1 byte\)/);
    } finally {
      kernel.space.write(target, original);
      await machine.resume();
      await machine.releaseMonitor();
    }
  });
});

// In this file, after the tests above: a check run here must not overlap the byte changed
// (and restored) above, and must find the QMP monitor free.
describe('vmlens check through the CLI on the rootkit guest', () => {
  let guest: LabGuest;
  let rootkit: LabRootkit;
  const run = (args: string[]) =>
    spawnSync(join(process.cwd(), 'bin/vmlens'), ['--qmp', guest.info.qmpSocket, 'check', ...args], { encoding: 'utf8', timeout: 120_000 });

  beforeAll(async () => {
    guest = await labGuest('rootkit');
    rootkit = guest.info.rootkit!;
  });

  it('--json: every check, with findings whose evidence carries addresses as hex strings', () => {
    const r = run(['--json', '--vmlinux', guest.info.vmlinuz]);
    expect(r.stderr).toMatch(/guest paused for/);
    // Findings above info: exit status 1, as a linter.
    expect(r.status).toBe(1);
    const out = JSON.parse(r.stdout) as {
      results: { check: string; skipped?: string; findings: { severity: string; summary: string; evidence: Record<string, unknown> }[] }[];
      warnings: unknown[];
    };
    expect(out.results.map((x) => x.check)).toEqual(['hidden-processes', 'hidden-modules', 'syscall-hooks', 'kernel-text', 'tainted']);
    expect(out.warnings).toEqual([]);
    const high = (check: string) => out.results.find((x) => x.check === check)!.findings.filter((f) => f.severity === 'high');
    expect(high('hidden-processes').map((f) => f.evidence.pid)).toEqual([rootkit.hiddenProcess.pid]);
    expect(high('hidden-modules').map((f) => f.evidence['struct module'])).toEqual([rootkit.structModule]);
    expect(high('syscall-hooks').map((f) => [f.evidence.nr, f.evidence['points to']])).toEqual([[rootkit.hook.syscall, rootkit.hook.handler]]);
    expect(high('kernel-text').map((f) => f.evidence.function)).toEqual([`sys_call_table+0x${(rootkit.hook.syscall * 8).toString(16)}`]);
  });

  it('one check by name, as text: its line, each finding and its evidence', () => {
    const r = run(['syscall-hooks']);
    expect(r.status).toBe(1);
    const lines = r.stdout.split('\n');
    expect(lines[0]).toMatch(/^syscall-hooks\s+1 finding\s+\[sys_call_table \d+, IDT gates 256/);
    expect(lines[1]).toMatch(/^ {2}HIGH {4}sys_call_table\[getdents64 \(217\)\] points to hooked_handler in the text of HIDDEN module vmlens_rootkit/);
    expect(r.stdout).toContain(`points to         ${rootkit.hook.handler}`);
    expect(lines.filter((l) => /^\S/.test(l))).toHaveLength(1);
  });

  it('kernel-text without an image says what it needs', () => {
    const r = run(['kernel-text', '--no-pause']);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe("kernel-text  skipped: give the kernel's image with --vmlinux FILE (its bzImage or vmlinux)");
    expect(r.stderr).not.toMatch(/paused/);
  });

  it('bad input is one line and exit status 2', () => {
    const unknown = run(['nosuch']);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr.trim()).toBe("vmlens: no check named 'nosuch' (checks: hidden-processes, hidden-modules, syscall-hooks, kernel-text, tainted)");
    const missing = run(['kernel-text', '--vmlinux', '/nonexistent/vmlinuz']);
    expect(missing.status).toBe(2);
    expect(missing.stderr.trim()).toBe('vmlens: no such file: /nonexistent/vmlinuz');
  });
});
