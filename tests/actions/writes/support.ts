/**
 * The guest the write tests change. It is a guest of its own, booted once per test run and
 * shared by the files of this directory: these tests change the hostname and sysctls, which
 * other test files compare with the shared lab guest's own view (uname -n…) while running in
 * parallel. Same configuration as the default lab guest otherwise.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inject } from 'vitest';
import type { Kernel } from '../../../src/kernel/kernel.ts';
import { openKernel } from '../../../src/kernel/open.ts';
import { GuestConsole, labUp, type LabInfo } from '../../../src/lab/index.ts';
import { attachQemu, type QemuMachine } from '../../../src/machine/qemu.ts';
import { keepGuests, LAB_CONFIGS, labPrefix } from '../../support/lab.ts';

export interface WritesGuest {
  readonly info: LabInfo;
  readonly console: GuestConsole;
}

let guest: Promise<WritesGuest> | undefined;

function ownerPid(): number | undefined {
  if (keepGuests()) return undefined;
  try {
    return inject('vmlensLabOwner');
  } catch {
    return undefined;
  }
}

export function writesGuest(): Promise<WritesGuest> {
  guest ??= (async () => {
    const owner = ownerPid();
    const info = await labUp({ ...LAB_CONFIGS.default, name: `${labPrefix()}-writes`, ...(owner !== undefined ? { ownerPid: owner } : {}) });
    return { info, console: await GuestConsole.forLab(info) };
  })();
  guest.catch(() => (guest = undefined));
  return guest;
}

/** The guest's machine and kernel, opened as the CLI opens them. */
export async function openWritesKernel(info: LabInfo): Promise<{ machine: QemuMachine; kernel: Kernel }> {
  const machine = await attachQemu(info.qmpSocket, { name: info.name });
  return { machine, kernel: await openKernel(machine) };
}

/** A private audit log file, removed by the returned cleanup. */
export function tempAuditLog(): { path: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'vmlens-audit-'));
  return { path: join(dir, 'audit.jsonl'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** What the guest's own /proc/sys shows for a sysctl (dotted name), without the final newline. */
export async function guestSysctl(con: GuestConsole, name: string): Promise<string> {
  const out = await con.run(`cat /proc/sys/${name.replace(/\./g, '/')}`);
  return out.replace(/\n$/, '');
}
