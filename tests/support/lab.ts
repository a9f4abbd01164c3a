import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inject } from 'vitest';
import { ensureInitramfs } from '../../src/lab/initramfs.ts';
import { ensureKernel } from '../../src/lab/kernels.ts';
import { buildRootkit } from '../../src/lab/rootkit.ts';
import { rootkitInitramfsEntries } from '../../src/lab/rootkit-guest.ts';
import { GuestConsole, labDown, labUp, type LabInfo, type LabUpOptions } from '../../src/lab/index.ts';

/**
 * Lab guests for tests. Booting costs tens of seconds of CPU under TCG, so a test run boots
 * each configuration at most once and every test file, in every worker process, shares it:
 * labUp() is idempotent and serialised per guest name by a lock, so the first file to ask
 * boots the guest and the others wait for it and reuse it. The names carry a per-run prefix
 * handed out by tests/support/global-setup.ts, which also stops the guests at the end.
 *
 * VMLENS_TEST_KEEP=1 keeps the guests (named test-<config>) running between runs, for quick
 * iterations; they are rebooted when the lab's kernel or initramfs changes.
 */

declare module 'vitest' {
  export interface ProvidedContext {
    /** Prefix of this run's guest names. */
    vmlensLabPrefix: string;
    /** The vitest main process: guests are disposable once it is gone. */
    vmlensLabOwner: number;
  }
}

export type LabConfig = 'default' | '4level' | 'rootkit' | 'k612' | 'cloud';

/** What each configuration boots. Explicit throughout, so a reused guest matches exactly. */
export const LAB_CONFIGS: Readonly<Record<LabConfig, LabUpOptions>> = {
  default: { paging: 5, memoryMiB: 1024, cpus: 1, processes: 16, accel: 'tcg' },
  '4level': { paging: 4, memoryMiB: 1024, cpus: 1, processes: 16, accel: 'tcg' },
  /** vmlens_rootkit loaded after boot: a hidden process, a hidden module, a hooked syscall (LabInfo.rootkit). */
  rootkit: { paging: 5, memoryMiB: 1024, cpus: 1, processes: 16, accel: 'tcg', rootkit: true },
  /** Another kernel line (6.12 LTS: module memory in mem[], kallsyms laid out differently). */
  k612: { kernel: 'linux-image-6.12-amd64', paging: 5, memoryMiB: 1024, cpus: 1, processes: 16, accel: 'tcg' },
  /** Another flavour with a different config (cloud), on 4-level paging and two vCPUs. */
  cloud: { kernel: 'linux-image-cloud-amd64', paging: 4, memoryMiB: 1024, cpus: 2, processes: 16, accel: 'tcg' },
};

export interface LabGuest {
  readonly info: LabInfo;
  /** The guest's command shell (see GuestConsole). */
  readonly console: GuestConsole;
}

export function keepGuests(): boolean {
  return process.env.VMLENS_TEST_KEEP === '1';
}

/** Name prefix for this run's guests (from global setup; a fallback when run without it). */
export function labPrefix(): string {
  try {
    return inject('vmlensLabPrefix');
  } catch {
    return keepGuests() ? 'test' : `t${process.pid.toString(36)}`;
  }
}

function owner(): number | undefined {
  try {
    return inject('vmlensLabOwner');
  } catch {
    return undefined;
  }
}

const guests = new Map<LabConfig, Promise<LabGuest>>();

/** The shared guest of a configuration, booting it on first use in the whole run. */
export function labGuest(config: LabConfig = 'default'): Promise<LabGuest> {
  let g = guests.get(config);
  if (!g) {
    g = startGuest(config);
    guests.set(config, g);
    // A failed boot may be retried by the next file rather than poisoning the process.
    g.catch(() => guests.delete(config));
  }
  return g;
}

/** The initramfs a configuration boots with today (a rootkit guest's carries the module). */
async function expectedInitramfs(config: LabConfig): Promise<string> {
  const kernel = await ensureKernel(LAB_CONFIGS[config].kernel);
  const extra = LAB_CONFIGS[config].rootkit ? rootkitInitramfsEntries(await buildRootkit(kernel.release)) : [];
  return ensureInitramfs(kernel, extra).path;
}

async function startGuest(config: LabConfig): Promise<LabGuest> {
  const name = `${labPrefix()}-${config}`;
  const ownerPid = keepGuests() ? undefined : owner();
  const opts: LabUpOptions = { ...LAB_CONFIGS[config], name, ...(ownerPid !== undefined ? { ownerPid } : {}) };
  let info = await labUp(opts);
  if (keepGuests() && info.initramfs !== (await expectedInitramfs(config))) {
    // A kept guest from before the lab changed: start it afresh.
    await labDown(name);
    info = await labUp(opts);
  }
  return { info, console: await GuestConsole.forLab(info) };
}

const privateGuests = new Map<string, Promise<LabGuest>>();

/**
 * A guest of one test area's own (`<run prefix>-<area>`), for tests that change their guest in
 * ways other files would see (killing processes, unloading modules, renaming the host), or that
 * need another shape (`extra`: e.g. two vCPUs). Booted once per area per run, like labGuest.
 */
export function privateGuest(area: string, extra: Partial<LabUpOptions> = {}): Promise<LabGuest> {
  let g = privateGuests.get(area);
  if (!g) {
    const ownerPid = keepGuests() ? undefined : owner();
    g = (async () => {
      const info = await labUp({ ...LAB_CONFIGS.default, ...extra, name: `${labPrefix()}-${area}`, ...(ownerPid !== undefined ? { ownerPid } : {}) });
      return { info, console: await GuestConsole.forLab(info) };
    })();
    privateGuests.set(area, g);
    g.catch(() => privateGuests.delete(area));
  }
  return g;
}

/** A private audit log file for one test file, removed by the returned cleanup. */
export function tempAuditLog(tag: string): { path: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `vmlens-${tag}-audit-`));
  return { path: join(dir, 'audit.jsonl'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
