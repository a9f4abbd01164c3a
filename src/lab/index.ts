import { randomBytes } from 'node:crypto';
import { existsSync, rmSync, statfsSync } from 'node:fs';
import { TargetError, UsageError } from '../util/errors.ts';
import { ensureHostPackages } from './deps.ts';
import { ensureInitramfs, LAB_USERS } from './initramfs.ts';
import { DEFAULT_KERNEL_PACKAGE, ensureKernel, resolveKernelPackage } from './kernels.ts';
import { buildRootkit } from './rootkit.ts';
import { loadRootkit, rootkitInitramfsEntries } from './rootkit-guest.ts';
import { removeLockFile, withLock } from './lock.ts';
import { ensureDir, labRuntimeDir, ramDir } from './paths.ts';
import { terminalProgress } from './progress.ts';
import { startQemu, stopQemu, watchBoot } from './qemu.ts';
import { isQemuOf, labNames, labPaths, qemuPidsUsing, readLabRecord, toInfo, writeLabRecord, type LabRecord } from './state.ts';
import type { Accel, LabInfo, LabUpOptions, Paging } from './types.ts';

/**
 * The lab: real Linux guests to run vmlens against. `labUp` boots one (Debian kernel, busybox
 * userland, QEMU with RAM in a shared file), `labList`/`findLab` find running ones, `labDown`
 * stops one. Guests are found again by name from any process through their runtime state.
 */

export type { LabInfo, LabProcess, LabRootkit, LabUpOptions, Paging, Accel } from './types.ts';
export type { LabUser } from './initramfs.ts';
export { GuestConsole, type CommandResult } from './console.ts';
export { hmpCommand, qmpExecute } from './qmp.ts';
export { DEFAULT_KERNEL_PACKAGE, LAB_MODULES } from './kernels.ts';

export const DEFAULT_LAB_NAME = 'default';
export const LAB_DEFAULTS = { memoryMiB: 1024, cpus: 1, paging: 5 as Paging, processes: 16, accel: 'tcg' as Accel };
/** A 1 GiB guest is ready in 7-9 s under TCG on a quiet 2-core host, 25-40 s on a busy one. */
export const DEFAULT_BOOT_TIMEOUT_MS = 180_000;
export const LAB_HOSTNAME = 'vmlens-lab';
/** Waiting for another process's `lab up` of the same guest covers its downloads too. */
const NAME_LOCK_TIMEOUT_MS = 20 * 60_000;

interface Resolved {
  readonly name: string;
  readonly memoryMiB: number;
  readonly cpus: number;
  readonly paging: Paging;
  readonly processes: number;
  readonly accel: Accel;
  readonly bootTimeoutMs: number;
  readonly rootkit: boolean;
}

/**
 * Boot a lab guest and wait until it is ready; or, when a guest of that name is already
 * running, return it — unless an option given explicitly differs from how it runs.
 */
export async function labUp(opts: LabUpOptions = {}): Promise<LabInfo> {
  const want = resolveOptions(opts);
  const paths = labPaths(want.name);
  ensureDir(labRuntimeDir());
  return withLock(paths.lock, `lab guest '${want.name}' (another process is starting or stopping it)`, NAME_LOCK_TIMEOUT_MS, async () => {
    const existing = readLabRecord(want.name);
    if (existing?.status === 'ready' && isQemuOf(existing.pid, existing.ramFile)) {
      await checkSameGuest(existing, opts);
      return toInfo(existing);
    }
    // Clear away whatever is left: a guest that died, a `lab up` that died while booting.
    await removeGuest(want.name);
    try {
      return await boot(want, opts);
    } catch (e) {
      // No guest of this name is left: nor should its lock file be.
      removeLockFile(paths.lock);
      throw e;
    }
  });
}

async function boot(want: Resolved, opts: LabUpOptions): Promise<LabInfo> {
  const progress = opts.progress ?? terminalProgress();
  const paths = labPaths(want.name);
  checkRamRoom(want.memoryMiB);
  await ensureHostPackages();
  progress.phase(`kernel ${opts.kernel ?? DEFAULT_KERNEL_PACKAGE}`);
  const kernel = await ensureKernel(opts.kernel, { progress });
  progress.done(kernel.package);
  progress.phase(`initramfs for ${kernel.release}`);
  const rootkitKo = want.rootkit ? await buildRootkit(kernel.release, { progress }) : undefined;
  const initramfs = ensureInitramfs(kernel, rootkitKo ? rootkitInitramfsEntries(rootkitKo) : []);
  progress.done(`${(initramfs.size / 1024 / 1024).toFixed(1)} MiB`);

  ensureDir(paths.dir);
  const nonce = randomBytes(6).toString('hex');
  // Kernel defaults stay as they are (KASLR, PTI…): vmlens must cope with what users run.
  const cmdline = `console=ttyS0 quiet panic=-1 vmlens.nonce=${nonce} vmlens.workers=${want.processes}`;
  progress.phase(`booting the kernel of '${want.name}' (${kernel.release}, ${want.paging}-level paging, ${want.accel})`);
  const startedAt = Date.now();
  const { pid, gdbPort } = await startQemu({
    paths,
    vmlinuz: kernel.vmlinuz,
    initramfs: initramfs.path,
    cmdline,
    memoryMiB: want.memoryMiB,
    cpus: want.cpus,
    paging: want.paging,
    accel: want.accel,
    guestName: want.name,
  });
  const base: LabRecord = {
    status: 'booting',
    name: want.name,
    kernelPackage: kernel.package,
    kernelVersion: kernel.version,
    kernelRelease: kernel.release,
    memoryMiB: want.memoryMiB,
    cpus: want.cpus,
    paging: want.paging,
    accel: want.accel,
    ramFile: paths.ramFile,
    qmpSocket: paths.qmpSocket,
    consoleSocket: paths.consoleSocket,
    shellSocket: paths.shellSocket,
    dataSocket: paths.dataSocket,
    gdbPort,
    pid,
    modules: [],
    processes: [],
    users: LAB_USERS,
    hostname: LAB_HOSTNAME,
    startedAt: new Date(startedAt).toISOString(),
    bootMs: 0,
    runtimeDir: paths.dir,
    kernelCmdline: cmdline,
    vmlinuz: kernel.vmlinuz,
    initramfs: initramfs.path,
    labQmpSocket: paths.labQmpSocket,
    ...(opts.ownerPid !== undefined ? { ownerPid: opts.ownerPid } : {}),
  };
  writeLabRecord(base);
  const fail = async (why: string): Promise<never> => {
    progress.done('failed');
    await removeGuest(want.name).catch(() => undefined);
    throw new TargetError(`lab guest '${want.name}' did not boot: ${why}`);
  };
  const report = await watchBoot(paths.consoleSocket, pid, nonce, want.bootTimeoutMs, startedAt, () =>
    progress.phase(`starting the lab inside '${want.name}' (modules, processes)`),
  ).catch((e: unknown) => fail(messageOf(e)));
  const missing = kernel.modules.map((m) => m.name).filter((m) => !report.modules.includes(m));
  if (report.errors.length > 0 || missing.length > 0) {
    const what = [...report.errors, ...missing.map((m) => `module ${m} not loaded`)];
    await fail(`its /init failed: ${what.join('; ')}${report.consoleTail}`);
  }
  if (want.rootkit) progress.phase('loading vmlens_rootkit');
  const rootkit = want.rootkit ? await loadRootkit(paths).catch((e: unknown) => fail(messageOf(e))) : undefined;
  const ready: LabRecord = {
    ...base,
    status: 'ready',
    modules: report.modules,
    processes: report.processes,
    bootMs: report.bootMs,
    ...(rootkit ? { rootkit } : {}),
  };
  writeLabRecord(ready);
  progress.done();
  return toInfo(ready);
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export type LabState = 'running' | 'booting' | 'stopped';

/** Every guest with state on this host: running, still booting, or stopped (its QEMU gone). */
export async function labList(): Promise<(LabInfo & { running: boolean; state: LabState })[]> {
  const out: (LabInfo & { running: boolean; state: LabState })[] = [];
  for (const name of labNames()) {
    const r = readLabRecord(name);
    if (!r) continue;
    const alive = isQemuOf(r.pid, r.ramFile);
    const state: LabState = !alive ? 'stopped' : r.status === 'ready' ? 'running' : 'booting';
    out.push({ ...toInfo(r), running: state === 'running', state });
  }
  return out;
}

/** A running, ready guest by name; a TargetError names what is wrong otherwise. */
export async function findLab(name: string = DEFAULT_LAB_NAME): Promise<LabInfo> {
  const r = readLabRecord(name);
  if (!r) throw new TargetError(`no lab guest named '${name}' (start one with \`vmlens lab up --name ${name}\`)`);
  if (!isQemuOf(r.pid, r.ramFile)) throw new TargetError(`lab guest '${name}' is not running (its QEMU, pid ${r.pid}, is gone)`);
  if (r.status !== 'ready') throw new TargetError(`lab guest '${name}' is still booting`);
  return toInfo(r);
}

/** Stop a guest and remove its state and RAM file. */
export async function labDown(name: string): Promise<void> {
  const paths = labPaths(name);
  if (!readLabRecord(name) && !existsSync(paths.dir) && qemuPidsUsing(paths.ramFile).length === 0) {
    throw new TargetError(`no lab guest named '${name}'`);
  }
  await withLock(paths.lock, `lab guest '${name}' (another process is starting or stopping it)`, NAME_LOCK_TIMEOUT_MS, async () => {
    await removeGuest(name);
    removeLockFile(paths.lock);
  });
}

/** Stop the guest's QEMU (found by its record or by its RAM file) and remove its files. */
async function removeGuest(name: string): Promise<void> {
  const paths = labPaths(name);
  const r = readLabRecord(name);
  const pids = new Set(qemuPidsUsing(paths.ramFile));
  if (r && isQemuOf(r.pid, r.ramFile)) pids.add(r.pid);
  for (const pid of pids) await stopQemu(pid, paths.labQmpSocket);
  rmSync(paths.ramFile, { force: true });
  rmSync(paths.dir, { recursive: true, force: true });
}

function resolveOptions(o: LabUpOptions): Resolved {
  const int = (v: number | undefined, dflt: number, min: number, max: number, what: string) => {
    const n = v ?? dflt;
    if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`${what} must be an integer from ${min} to ${max} (got ${v})`);
    return n;
  };
  const paging = o.paging ?? LAB_DEFAULTS.paging;
  if (paging !== 4 && paging !== 5) throw new UsageError(`paging must be 4 or 5 (got ${String(paging)})`);
  const accel = o.accel ?? LAB_DEFAULTS.accel;
  if (accel !== 'tcg' && accel !== 'kvm') throw new UsageError(`accel must be tcg or kvm (got ${String(accel)})`);
  return {
    name: o.name ?? DEFAULT_LAB_NAME,
    memoryMiB: int(o.memoryMiB, LAB_DEFAULTS.memoryMiB, 128, 256 * 1024, 'memory (MiB)'),
    cpus: int(o.cpus, LAB_DEFAULTS.cpus, 1, 64, 'cpus'),
    paging,
    processes: int(o.processes, LAB_DEFAULTS.processes, 0, 1000, 'processes'),
    accel,
    bootTimeoutMs: int(o.bootTimeoutMs, DEFAULT_BOOT_TIMEOUT_MS, 1000, 3_600_000, 'boot timeout (ms)'),
    rootkit: o.rootkit ?? false,
  };
}

/** An already running guest may be reused only when every option given explicitly matches it. */
async function checkSameGuest(r: LabRecord, o: LabUpOptions): Promise<void> {
  const diffs: string[] = [];
  const cmp = (what: string, asked: unknown, has: unknown) => {
    if (asked !== undefined && asked !== has) diffs.push(`${what} ${String(has)} (asked ${String(asked)})`);
  };
  cmp('memory MiB', o.memoryMiB, r.memoryMiB);
  cmp('cpus', o.cpus, r.cpus);
  cmp('paging', o.paging, r.paging);
  cmp('processes', o.processes, r.processes.filter((p) => p.comm.startsWith('lab-worker-')).length);
  cmp('accel', o.accel, r.accel);
  cmp('rootkit', o.rootkit, r.rootkit !== undefined);
  if (o.kernel !== undefined) cmp('kernel', await resolveKernelPackage(o.kernel), r.kernelPackage);
  if (diffs.length > 0) {
    throw new UsageError(`lab guest '${r.name}' is already running with ${diffs.join(', ')}; stop it first with \`vmlens lab down ${r.name}\``);
  }
}

/** Guest RAM lives in tmpfs; a guest that outgrows it dies of SIGBUS, so refuse up front. */
function checkRamRoom(memoryMiB: number): void {
  try {
    const fs = statfsSync(ramDir());
    const freeMiB = Math.floor((fs.bavail * fs.bsize) / (1024 * 1024));
    if (memoryMiB > freeMiB) throw new UsageError(`${memoryMiB} MiB of guest RAM does not fit in ${ramDir()} (${freeMiB} MiB free)`);
  } catch (e) {
    if (e instanceof UsageError) throw e;
  }
}
