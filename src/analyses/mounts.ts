/**
 * Mount tables per mount namespace — /proc/PID/mountinfo (and /proc/mounts), Volatility's
 * linux.mountinfo: mount id, parent id, device, root inside the file system, mount point,
 * mount options, propagation tags, file system type, source and the generic super-block options.
 *
 * File-system-specific options (those a file system's show_options() adds, e.g. tmpfs's
 * size=…) live in each file system's private data and are not rebuilt.
 */
import { dentryPath, forEachMount, prependPath, taskRoot, type PathRef } from '../kernel/helpers/fs.ts';
import { structReader, type StructReader } from '../kernel/helpers/struct-reader.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { selectProcesses } from './processes.ts';
import type { TaskRow } from './ps.ts';

export interface MountRow {
  /** The process whose view this is (its root decides which mounts are visible); null for a whole namespace. */
  readonly pid: number | null;
  /** Inode number of the mount namespace. */
  readonly mntNs: number;
  /** `struct mount *`. */
  readonly mount: bigint;
  readonly mountId: number;
  readonly parentId: number;
  readonly major: number;
  readonly minor: number;
  /** Path of the mount's root inside its file system (bind mounts show a subdirectory). */
  readonly root: string;
  readonly mountPoint: string;
  /** Per-mount options: "rw" or "ro", then nosuid, nodev, noexec, noatime, nodiratime, relatime, nosymfollow. */
  readonly options: string;
  /** Propagation: shared:N, master:N, unbindable. */
  readonly propagation: readonly string[];
  readonly fsType: string;
  readonly source: string;
  /** Super-block options: "rw"/"ro", then sync, dirsync, mand, lazytime. */
  readonly superOptions: string;
}

export interface MountsOptions {
  /** The namespaces of these processes, seen from each one's root (like /proc/PID/mountinfo). */
  readonly pids?: ReadonlySet<number>;
}

const MNT_FLAGS: readonly [number, string][] = [
  [0x01, 'nosuid'],
  [0x02, 'nodev'],
  [0x04, 'noexec'],
  [0x08, 'noatime'],
  [0x10, 'nodiratime'],
  [0x20, 'relatime'],
  [0x80, 'nosymfollow'],
];
const MNT_READONLY = 0x40;
const MNT_SHARED = 0x1000;
const MNT_UNBINDABLE = 0x2000;
const SB_FLAGS: readonly [number, string][] = [
  [1 << 4, 'sync'],
  [1 << 7, 'dirsync'],
  [1 << 6, 'mand'],
  [1 << 25, 'lazytime'],
];
const SB_RDONLY = 1;

/**
 * Mounts of every mount namespace in use (each seen whole, from the namespace's root), or with
 * `pids`, of those processes' namespaces from each process's root — mounts outside a process's
 * root are not listed, as in its mountinfo.
 */
export function listMounts(k: Kernel, opts: MountsOptions = {}): MountRow[] {
  const r = structReader(k);
  const tasks = selectProcesses(k, opts.pids);
  const rows: MountRow[] = [];
  if (opts.pids) {
    for (const t of tasks) {
      try {
        const ns = taskMntNs(r, t);
        if (ns === 0n) continue;
        rows.push(...namespaceMounts(k, r, ns, taskRoot(k, t.task), t.pid));
      } catch (e) {
        k.warnings.warn('mounts', `pid ${t.pid}: ${(e as Error).message}`);
      }
    }
    return rows;
  }
  const seen = new Set<bigint>();
  for (const t of tasks) {
    let ns: bigint;
    try {
      ns = taskMntNs(r, t);
    } catch (e) {
      k.warnings.warn('mounts', `pid ${t.pid}: ${(e as Error).message}`);
      continue;
    }
    if (ns === 0n || seen.has(ns)) continue;
    seen.add(ns);
    try {
      const rootMount = r.ptr(ns, 'mnt_namespace', 'root');
      const vfs = rootMount + BigInt(r.off('mount', 'mnt'));
      rows.push(...namespaceMounts(k, r, ns, { mnt: vfs, dentry: r.ptr(vfs, 'vfsmount', 'mnt_root') }, null));
    } catch (e) {
      k.warnings.warn('mounts', `mount namespace 0x${ns.toString(16)}: ${(e as Error).message}`);
    }
  }
  return rows;
}

/** task->nsproxy->mnt_ns (0 for a task that has exited and dropped its namespaces). */
function taskMntNs(r: StructReader, t: TaskRow): bigint {
  const nsproxy = r.ptr(t.task, 'task_struct', 'nsproxy');
  return nsproxy === 0n ? 0n : r.ptr(nsproxy, 'nsproxy', 'mnt_ns');
}

function namespaceMounts(k: Kernel, r: StructReader, ns: bigint, root: PathRef | null, pid: number | null): MountRow[] {
  const mntNs = r.u32(ns, 'mnt_namespace', 'ns.inum');
  const rows: MountRow[] = [];
  for (const mount of forEachMount(k, ns)) {
    try {
      const row = readMount(k, r, mount, root, pid, mntNs);
      if (row) rows.push(row);
    } catch (e) {
      k.warnings.warn('mounts', `mount 0x${mount.toString(16)}: ${(e as Error).message}`);
    }
  }
  return rows;
}

/** show_mountinfo() for one mount; undefined when the mount point is outside `root` (SEQ_SKIP). */
function readMount(k: Kernel, r: StructReader, mount: bigint, root: PathRef | null, pid: number | null, mntNs: number): MountRow | undefined {
  const M = 'mount';
  const vfs = mount + BigInt(r.off(M, 'mnt'));
  const mntRoot = r.ptr(vfs, 'vfsmount', 'mnt_root');
  const sb = r.ptr(vfs, 'vfsmount', 'mnt_sb');
  const point = prependPath(k, { mnt: vfs, dentry: mntRoot }, root);
  if (root && point.end !== 'root') return undefined;
  const flags = r.i32(vfs, 'vfsmount', 'mnt_flags');
  const dev = r.u32(sb, 'super_block', 's_dev');
  const sFlags = Number(r.u64(sb, 'super_block', 's_flags') & 0xffff_ffffn);
  const parent = r.ptr(mount, M, 'mnt_parent');
  const propagation: string[] = [];
  if (flags & MNT_SHARED) propagation.push(`shared:${r.i32(mount, M, 'mnt_group_id')}`);
  const master = r.ptr(mount, M, 'mnt_master');
  if (master !== 0n) propagation.push(`master:${r.i32(master, M, 'mnt_group_id')}`);
  if (flags & MNT_UNBINDABLE) propagation.push('unbindable');
  const type = r.ptr(sb, 'super_block', 's_type');
  let fsType = type === 0n ? '?' : r.cstr(type, 'file_system_type', 'name', 64);
  const subtype = r.has('super_block', 's_subtype') ? r.cstr(sb, 'super_block', 's_subtype', 64) : '';
  if (subtype !== '') fsType += `.${subtype}`;
  const devname = r.ptr(mount, M, 'mnt_devname');
  return {
    pid,
    mntNs,
    mount,
    mountId: r.i32(mount, M, 'mnt_id'),
    parentId: r.i32(parent, M, 'mnt_id'),
    major: dev >>> 20,
    minor: dev & 0xfffff,
    root: dentryPath(k, mntRoot),
    mountPoint: point.path,
    options: [flags & MNT_READONLY ? 'ro' : 'rw', ...MNT_FLAGS.filter(([bit]) => flags & bit).map(([, n]) => n)].join(','),
    propagation,
    fsType,
    source: devname === 0n ? 'none' : r.cstrAt(devname, 4096),
    superOptions: [sFlags & SB_RDONLY ? 'ro' : 'rw', ...SB_FLAGS.filter(([bit]) => sFlags & bit).map(([, n]) => n)].join(','),
  };
}

/** seq_file's mangle(): space, tab, newline and backslash as octal escapes. */
export function mangle(s: string): string {
  return s.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
}

/** One line of /proc/PID/mountinfo (without file-system-specific super options). */
export function formatMountinfoLine(m: MountRow): string {
  const tags = m.propagation.length > 0 ? ` ${m.propagation.join(' ')}` : '';
  return `${m.mountId} ${m.parentId} ${m.major}:${m.minor} ${mangle(m.root)} ${mangle(m.mountPoint)} ${m.options}${tags} - ${mangle(m.fsType)} ${mangle(m.source)} ${m.superOptions}`;
}
