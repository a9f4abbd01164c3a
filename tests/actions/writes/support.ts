/**
 * The guest the write tests change. It is a guest of its own, booted once per test run and
 * shared by the files of this directory: these tests change the hostname and sysctls, which
 * other test files compare with the shared lab guest's own view (uname -n…) while running in
 * parallel. Same configuration as the default lab guest otherwise.
 */
import type { Kernel } from '../../../src/kernel/kernel.ts';
import { openKernel } from '../../../src/kernel/open.ts';
import { GuestConsole, type LabInfo } from '../../../src/lab/index.ts';
import { attachQemu, type QemuMachine } from '../../../src/machine/qemu.ts';
import { privateGuest, tempAuditLog as sharedTempAuditLog, type LabGuest } from '../../support/lab.ts';

export type WritesGuest = LabGuest;

export function writesGuest(): Promise<WritesGuest> {
  return privateGuest('writes', {});
}

/** The guest's machine and kernel, opened as the CLI opens them. */
export async function openWritesKernel(info: LabInfo): Promise<{ machine: QemuMachine; kernel: Kernel }> {
  const machine = await attachQemu(info.qmpSocket, { name: info.name });
  return { machine, kernel: await openKernel(machine) };
}

/** A private audit log file, removed by the returned cleanup. */
export function tempAuditLog(): { path: string; cleanup: () => void } {
  return sharedTempAuditLog('writes');
}

/** What the guest's own /proc/sys shows for a sysctl (dotted name), without the final newline. */
export async function guestSysctl(con: GuestConsole, name: string): Promise<string> {
  const out = await con.run(`cat /proc/sys/${name.replace(/\./g, '/')}`);
  return out.replace(/\n$/, '');
}
