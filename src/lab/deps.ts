import { accessSync, closeSync, constants, openSync, readdirSync, readSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { TargetError } from '../util/errors.ts';
import { lastLine, runTool } from './run.ts';

/**
 * Host tools the lab needs, and the Debian packages that provide them. The lab installs what
 * is missing itself (idempotently, quietly when all is there) so that `lab up` works on a
 * fresh Debian host.
 */
export interface HostRequirement {
  /** What must exist: a command on PATH, or an absolute path. */
  readonly need: string;
  readonly debianPackage: string;
  /** Extra condition beyond existence. */
  readonly check?: (path: string) => boolean;
  readonly why: string;
}

/** The initramfs runs busybox with no libc beside it: only the static build will do. */
export const BUSYBOX_PATH = '/bin/busybox';

export const HOST_REQUIREMENTS: readonly HostRequirement[] = [
  { need: 'qemu-system-x86_64', debianPackage: 'qemu-system-x86', why: 'runs the guests' },
  { need: BUSYBOX_PATH, debianPackage: 'busybox-static', check: isStaticElf, why: 'is the guest userland' },
  { need: 'cpio', debianPackage: 'cpio', why: 'lists initramfs archives' },
  { need: 'xz', debianPackage: 'xz-utils', why: 'decompresses .ko.xz modules' },
  { need: 'dpkg-deb', debianPackage: 'dpkg', why: 'unpacks kernel packages' },
];

/** Packages whose requirement is not met on this host. */
export function missingHostPackages(reqs: readonly HostRequirement[] = HOST_REQUIREMENTS): string[] {
  const missing = new Set<string>();
  for (const r of reqs) {
    const path = r.need.startsWith('/') ? (isExecutable(r.need) ? r.need : undefined) : findOnPath(r.need);
    if (!path || (r.check && !r.check(path))) missing.add(r.debianPackage);
  }
  return [...missing];
}

let ensured = false;

/**
 * Install the Debian packages for every missing host tool with apt-get (as root), running
 * `apt-get update` first only when the package lists are empty or apt cannot find a package.
 * Prints nothing when all is present; apt's own progress goes to stderr on a terminal.
 */
export async function ensureHostPackages(): Promise<void> {
  if (ensured) return;
  const missing = missingHostPackages();
  if (missing.length > 0) await aptInstall(missing);
  const still = missingHostPackages();
  if (still.length > 0) throw new TargetError(`host packages still missing after apt-get install: ${still.join(', ')}`);
  ensured = true;
}

async function aptInstall(packages: readonly string[]): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new TargetError(`missing host packages (install them as root): apt-get install ${packages.join(' ')}`);
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const passThrough = process.stderr.isTTY === true;
  const install = () =>
    runTool('apt-get', ['install', '-y', '--no-install-recommends', ...(passThrough ? [] : ['-q']), ...packages], {
      env,
      passThrough,
      allowFailure: true,
    });
  if (aptListsEmpty()) await runTool('apt-get', ['update', ...(passThrough ? [] : ['-q'])], { env, passThrough });
  let result = await install();
  if (result.code !== 0) {
    // Stale or missing package lists are the usual reason ("Unable to locate package").
    await runTool('apt-get', ['update', ...(passThrough ? [] : ['-q'])], { env, passThrough });
    result = await install();
    if (result.code !== 0) {
      throw new TargetError(`apt-get install ${packages.join(' ')} failed (exit ${result.code}): ${lastLine(result.stderr)}`);
    }
  }
}

export const APT_LISTS = '/var/lib/apt/lists';

/** True on a host that has never fetched package lists (apt-get update). */
export function aptListsEmpty(): boolean {
  try {
    return !readdirSync(APT_LISTS).some((f) => f.endsWith('_Packages') || f.endsWith('_Packages.lz4'));
  } catch {
    return true;
  }
}

export function findOnPath(command: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, command);
    if (isExecutable(p)) return p;
  }
  return undefined;
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** An x86-64 ELF executable with no program interpreter (PT_INTERP), i.e. statically linked. */
export function isStaticElf(path: string): boolean {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const head = Buffer.alloc(64);
    if (readSync(fd, head, 0, 64, 0) < 64) return false;
    if (head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1) return false;
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    if (phentsize < 56 || phnum === 0 || phnum > 64) return false;
    const table = Buffer.alloc(phentsize * phnum);
    if (readSync(fd, table, 0, table.length, phoff) < table.length) return false;
    const PT_INTERP = 3;
    for (let i = 0; i < phnum; i++) if (table.readUInt32LE(i * phentsize) === PT_INTERP) return false;
    return true;
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
