import { existsSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError } from '../util/errors.ts';
import { labRuntimeDir, ramDir } from './paths.ts';
import type { LabInfo } from './types.ts';

/**
 * On-disk state of lab guests: one directory per guest under the lab runtime directory,
 * holding QEMU's sockets and pid file and lab.json. lab.json is written twice: 'booting' as
 * soon as QEMU runs (so a crashed `lab up` leaves a guest that can still be found and
 * stopped), then 'ready' with everything the guest reported.
 */

export type LabStatus = 'booting' | 'ready';

export interface LabRecord extends LabInfo {
  readonly status: LabStatus;
}

const NAME = /^[a-z0-9][a-z0-9_-]{0,39}$/;
const STATE_FILE = 'lab.json';
/** sun_path holds 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

export function checkLabName(name: string): string {
  if (!NAME.test(name)) throw new UsageError(`bad lab guest name '${name}': use 1-40 of a-z 0-9 _ - (starting with a letter or digit)`);
  return name;
}

export interface LabPaths {
  readonly dir: string;
  readonly state: string;
  readonly lock: string;
  readonly qmpSocket: string;
  readonly labQmpSocket: string;
  readonly consoleSocket: string;
  readonly shellSocket: string;
  readonly dataSocket: string;
  readonly pidFile: string;
  readonly ramFile: string;
}

export function labPaths(name: string): LabPaths {
  const root = labRuntimeDir();
  const dir = join(root, checkLabName(name));
  const paths: LabPaths = {
    dir,
    state: join(dir, STATE_FILE),
    lock: join(root, `${name}.lock`),
    qmpSocket: join(dir, 'qmp.sock'),
    labQmpSocket: join(dir, 'lab-qmp.sock'),
    consoleSocket: join(dir, 'console.sock'),
    shellSocket: join(dir, 'shell.sock'),
    dataSocket: join(dir, 'data.sock'),
    pidFile: join(dir, 'qemu.pid'),
    ramFile: join(ramDir(), `vmlens-${name}.ram`),
  };
  if (Object.values(paths).some((p) => p.includes(','))) {
    throw new UsageError(`lab paths must not contain commas (QEMU option syntax): ${root}, ${ramDir()}`);
  }
  if (Buffer.byteLength(paths.labQmpSocket) > MAX_SOCKET_PATH) {
    throw new UsageError(`lab runtime directory ${root} is too long for unix socket paths; set VMLENS_RUNTIME_DIR to a shorter one`);
  }
  return paths;
}

export function readLabRecord(name: string): LabRecord | undefined {
  const file = labPaths(name).state;
  try {
    const r = JSON.parse(readFileSync(file, 'utf8')) as LabRecord;
    return r && r.name === name && typeof r.pid === 'number' ? r : undefined;
  } catch {
    return undefined;
  }
}

export function writeLabRecord(record: LabRecord): void {
  const file = labPaths(record.name).state;
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(record, null, 2)}\n`);
  renameSync(tmp, file);
}

/** Names of every guest with a state directory. */
export function labNames(): string[] {
  const root = labRuntimeDir();
  if (!existsSync(root)) return [];
  return readdirSync(root, { withFileTypes: true })
    .filter((e) => e.isDirectory() && NAME.test(e.name) && existsSync(join(root, e.name, STATE_FILE)))
    .map((e) => e.name)
    .sort();
}

/**
 * Whether `pid` is this guest's QEMU: alive, and its command line names the guest's RAM file
 * (a recycled pid belongs to some other program).
 */
export function isQemuOf(pid: number, ramFile: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes(`mem-path=${ramFile},`);
  } catch {
    return false;
  }
}

/**
 * Every QEMU whose command line names this RAM file, whatever lab.json says: a guest whose
 * state was lost (or a `lab up` killed between starting QEMU and recording it) is still found.
 */
export function qemuPidsUsing(ramFile: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (Number.isInteger(pid) && pid > 0 && isQemuOf(pid, ramFile) && isAlive(pid)) pids.push(pid);
  }
  return pids;
}

/** Whether a process exists and has not exited (a zombie waiting to be reaped has). */
export function isAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The state letter follows the parenthesised comm, which may itself hold parentheses.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** The record without the status field: what the API hands out. */
export function toInfo(record: LabRecord): LabInfo {
  const { status: _status, ...info } = record;
  return info;
}
