/**
 * No false alarms: on every lab kernel the suite boots without a rootkit, every check runs and
 * reports nothing above information — and the records the checks compare agree in size with
 * what the guest itself shows (its /proc/modules and /sys/module).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runChecks, selectChecks, type CheckResult } from '../../src/analyses/checks/index.ts';
import { loadKernelImage } from '../../src/analyses/checks/vmlinux-image.ts';
import { openKernel } from '../../src/kernel/open.ts';
import { attachQemu, type QemuMachine } from '../../src/machine/qemu.ts';
import { guestModules } from '../support/ground-truth.ts';
import { labGuest, type LabConfig, type LabGuest } from '../support/lab.ts';

const configs: LabConfig[] = ['default', '4level', 'k612', 'cloud'];

describe.each(configs)('vmlens check on the clean %s lab guest', (config) => {
  let guest: LabGuest;
  let machine: QemuMachine;
  let results: CheckResult[];
  let warnings: string[];

  beforeAll(async () => {
    guest = await labGuest(config);
    const image = loadKernelImage(guest.info.vmlinuz);
    machine = await attachQemu(guest.info.qmpSocket);
    await machine.pause();
    try {
      const kernel = await openKernel(machine, { frozen: true });
      results = await runChecks(kernel, selectChecks(), { vmlinux: guest.info.vmlinuz, image });
      warnings = kernel.warnings.items.map((w) => `${w.where}: ${w.message}`);
    } finally {
      await machine.resume();
      // QEMU serves one QMP client at a time: let other test files and the CLI reach it.
      await machine.releaseMonitor();
    }
  });
  afterAll(async () => {
    await machine?.close();
  });

  it('runs every check, with no finding above info and no warning', () => {
    expect(results.map((r) => r.check)).toEqual(['hidden-processes', 'hidden-modules', 'syscall-hooks', 'kernel-text', 'tainted']);
    expect(results.filter((r) => r.skipped !== undefined).map((r) => `${r.check}: ${r.skipped}`)).toEqual([]);
    const alarms = results.flatMap((r) => r.findings.filter((f) => f.severity !== 'info').map((f) => `${f.check}: ${f.summary}`));
    expect(alarms).toEqual([]);
    expect(warnings).toEqual([]);
  });

  it('compares records the size of the guest\'s own: every module in each, every table entry', async () => {
    const loaded = (await guestModules(guest.console)).length;
    const inSysfs = Number((await guest.console.run('ls -d /sys/module/*/initstate | wc -l')).trim());
    const modules = results.find((r) => r.check === 'hidden-modules')!.examined;
    expect(modules['module list']).toBe(loaded);
    expect(modules.sysfs).toBe(inSysfs);
    expect(modules['module tree']).toBe(loaded);
    expect(modules['memory scan']).toBe(loaded);
    const hooks = results.find((r) => r.check === 'syscall-hooks')!.examined;
    expect(hooks.sys_call_table).toBeGreaterThan(400);
    expect(hooks['IDT gates']).toBe(256);
    expect(hooks['operation tables']).toBeGreaterThanOrEqual(15);
  });

  it('kernel-text: compares the whole text, and finds the kernel\'s own boot-time patching only', () => {
    const r = results.find((x) => x.check === 'kernel-text')!;
    expect(r.examined['text bytes']).toBeGreaterThan(8 << 20);
    expect(r.examined['rodata bytes']).toBeGreaterThan(4 << 20);
    const info = r.findings.filter((f) => f.severity === 'info');
    expect(info).toHaveLength(1);
    expect(info[0]!.evidence.alternatives).toMatch(/^\d+ of \d+$/);
  });
});

describe('vmlens check through the CLI on a clean guest', () => {
  it('finds nothing and exits 0', async () => {
    const { spawnSync } = await import('node:child_process');
    const guest = await labGuest('default');
    const r = spawnSync('bin/vmlens', ['--lab', guest.info.name, 'check', 'hidden-processes', 'hidden-modules', 'syscall-hooks'], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(r.stdout).toMatch(/^hidden-processes\s+ok/m);
    expect(r.stdout).toMatch(/^syscall-hooks\s+ok/m);
    expect(r.status).toBe(0);
  });
});
