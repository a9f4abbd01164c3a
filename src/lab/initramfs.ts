import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { BUSYBOX_PATH } from './deps.ts';
import { buildCpio, type CpioEntry } from './cpio.ts';
import type { CachedKernel } from './kernels.ts';
import { cacheDir, checkoutPath, ensureDir } from './paths.ts';
import { threadsElf } from './threads-elf.ts';

/**
 * The lab guest's whole userland: one static busybox, the /init script and its helpers from
 * lab/guest/, a few users, and the kernel's lab modules. Built in memory as cpio newc + gzip
 * and cached by content hash, so an unchanged lab reuses the same file.
 */

export interface LabUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  readonly home: string;
}

/** Users of the guest: processes run under all three. */
export const LAB_USERS: readonly LabUser[] = [
  { name: 'root', uid: 0, gid: 0, home: '/root' },
  { name: 'alice', uid: 1000, gid: 1000, home: '/home/alice' },
  { name: 'bob', uid: 1001, gid: 1001, home: '/home/bob' },
];

/** Where the guest-side scripts live in the source tree. */
export const GUEST_FILES_DIR = checkoutPath('lab/guest/');

export interface Initramfs {
  readonly path: string;
  /** Content hash of the uncompressed archive (the cache key). */
  readonly hash: string;
  /** Size of the compressed file in bytes. */
  readonly size: number;
}

/** The initramfs for `kernel` (plus `extra` files), from the cache or freshly written there. */
export function ensureInitramfs(kernel: CachedKernel, extra: readonly CpioEntry[] = []): Initramfs {
  const archive = buildCpio([...initramfsEntries(kernel), ...extra]);
  const hash = createHash('sha256').update(archive).digest('hex').slice(0, 24);
  const dir = ensureDir(join(cacheDir(), 'initramfs'));
  const path = join(dir, `${hash}.cpio.gz`);
  if (existsSync(path)) {
    // Mark it as recently used, so that pruning keeps it.
    const now = new Date();
    utimesSync(path, now, now);
  } else {
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, gzipSync(archive, { level: 9 }));
    renameSync(tmp, path);
    pruneCache(dir);
  }
  return { path, hash, size: statSync(path).size };
}

/** Images kept in the cache: each lab or kernel change makes a new one. */
const KEEP_IMAGES = 8;

/** Drop all but the most recently used images (running guests hold theirs in memory). */
function pruneCache(dir: string): void {
  const images = readdirSync(dir)
    .filter((f) => f.endsWith('.cpio.gz'))
    .map((f) => ({ path: join(dir, f), used: statSync(join(dir, f)).mtimeMs }))
    .sort((a, b) => b.used - a.used);
  for (const old of images.slice(KEEP_IMAGES)) rmSync(old.path, { force: true });
}

/** Every file of the guest's root file system, parents before children. */
export function initramfsEntries(kernel: CachedKernel): CpioEntry[] {
  const guest = (name: string) => readFileSync(join(GUEST_FILES_DIR, name));
  const modDir = `lib/modules/${kernel.release}`;
  const entries: CpioEntry[] = [];
  for (const d of ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'etc', 'etc/vmlens-lab', 'lib', 'lib/modules', modDir]) {
    entries.push({ type: 'dir', path: d });
  }
  for (const d of ['dev', 'proc', 'sys', 'run', 'mnt', 'srv', 'home']) entries.push({ type: 'dir', path: d });
  entries.push({ type: 'dir', path: 'tmp', mode: 0o1777 });
  for (const u of LAB_USERS) entries.push({ type: 'dir', path: u.home.slice(1), mode: 0o700, uid: u.uid, gid: u.gid });
  // The kernel opens /dev/console for init before anything is mounted.
  entries.push({ type: 'char', path: 'dev/console', major: 5, minor: 1, mode: 0o600 });

  entries.push({ type: 'file', path: 'bin/busybox', data: readFileSync(BUSYBOX_PATH), mode: 0o755 });
  entries.push({ type: 'symlink', path: 'bin/sh', target: 'busybox' });
  entries.push({ type: 'file', path: 'init', data: guest('init'), mode: 0o755 });
  entries.push({ type: 'file', path: 'bin/lab-worker', data: guest('lab-worker'), mode: 0o755 });
  entries.push({ type: 'file', path: 'bin/lab-ticker', data: guest('lab-ticker'), mode: 0o755 });
  entries.push({ type: 'file', path: 'bin/lab-shell', data: guest('lab-shell'), mode: 0o755 });
  entries.push({ type: 'file', path: 'bin/lab-threads', data: threadsElf(), mode: 0o755 });

  const passwd = LAB_USERS.map((u) => `${u.name}:x:${u.uid}:${u.gid}:${u.name}:${u.home}:/bin/sh\n`).join('');
  const group = LAB_USERS.map((u) => `${u.name}:x:${u.gid}:\n`).join('');
  entries.push({ type: 'file', path: 'etc/passwd', data: `${passwd}nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n` });
  entries.push({ type: 'file', path: 'etc/group', data: `${group}nogroup:x:65534:\n` });
  entries.push({ type: 'file', path: 'etc/hostname', data: 'vmlens-lab\n' });
  entries.push({ type: 'file', path: 'etc/vmlens-lab/modules', data: kernel.modules.map((m) => `${m.name}\n`).join('') });
  for (const m of kernel.modules) {
    entries.push({ type: 'file', path: `${modDir}/${m.name}.ko`, data: readFileSync(m.file) });
  }
  return entries;
}
