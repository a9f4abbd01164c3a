/**
 * The virtual file system (fs/d_path.c, fs/namespace.c, fs/file.c, include/linux/fs.h): paths
 * rebuilt from dentries and mounts, open-file tables, mount lists.
 *
 *   d_path(path)                    →  dPath(k, path, root)      struct path → "/a/b" (+ " (deleted)")
 *   __d_path(path, root)            →  prependPath(k, path, root) with where the climb stopped
 *   dentry_path_raw(dentry)         →  dentryPath(k, dentry)     path inside its file system
 *   iterate_fd(files, …)            →  forEachFile(k, files)     struct files_struct → (fd, struct file *)
 *   list_for_each_entry(m, &ns->list, mnt_list)  →  forEachMount(k, ns)   struct mnt_namespace → struct mount *
 *
 * Every climb is bounded (PATH_MAX bytes, a step budget) so a dentry or mount chain that loops
 * ends with a warning and the part of the path built so far.
 */
import type { Kernel } from '../kernel.ts';
import { listForEachEntry } from './list.ts';
import { rbtreeInorderForEachEntry } from './rbtree.ts';
import { structReader, type StructReader } from './struct-reader.ts';

/** A `struct path`: the mount (`struct vfsmount *`) and the dentry inside it. */
export interface PathRef {
  readonly mnt: bigint;
  readonly dentry: bigint;
}

/** The kernel's PATH_MAX: /proc renders paths into a buffer of this size. */
export const PATH_MAX = 4096;
/** Components plus mount crossings one climb may take (a path of PATH_MAX bytes has fewer). */
const MAX_PATH_STEPS = PATH_MAX;
/** Longest name one dentry may carry; longer is hostile (NAME_MAX is 255; pseudo names stay short). */
const MAX_NAME = 1024;

/** Where a climb towards the root stopped — prepend_path()'s return value, by name. */
export type PathEnd =
  /** Reached the given root (0). */
  | 'root'
  /** Reached the root of a mount namespace the root is not in (1: an absolute path from that namespace). */
  | 'global-root'
  /** Reached a mount that is detached or not yet attached (2). */
  | 'detached'
  /** A dentry whose parent is itself but is not its mount's root (3). */
  | 'escaped'
  /** The chain was longer than PATH_MAX or looped (vmlens's own stop). */
  | 'too-long';

export interface PrependResult {
  readonly path: string;
  readonly end: PathEnd;
}

const fsReaders = new WeakMap<Kernel, FsState>();

/** Per-kernel state: field offsets and the d_dname functions recognised by symbol. */
class FsState {
  readonly r: StructReader;
  readonly dnameKinds = new Map<bigint, string>();
  constructor(readonly k: Kernel) {
    this.r = structReader(k);
  }
}

function state(k: Kernel): FsState {
  let s = fsReaders.get(k);
  if (!s) {
    s = new FsState(k);
    fsReaders.set(k, s);
  }
  return s;
}

/** Read a `struct path` at `addr`. */
export function readPath(k: Kernel, addr: bigint): PathRef {
  const r = state(k).r;
  return { mnt: r.ptr(addr, 'path', 'mnt'), dentry: r.ptr(addr, 'path', 'dentry') };
}

/** `struct mount *` of a `struct vfsmount *` (real_mount(): the vfsmount is embedded as `mnt`). */
export function realMount(k: Kernel, vfsmount: bigint): bigint {
  return vfsmount - BigInt(state(k).r.off('mount', 'mnt'));
}

/** `struct vfsmount *` inside a `struct mount *`. */
export function vfsMount(k: Kernel, mount: bigint): bigint {
  return mount + BigInt(state(k).r.off('mount', 'mnt'));
}

/** IS_ROOT(): a dentry that is its own parent. */
export function isRoot(k: Kernel, dentry: bigint): boolean {
  return state(k).r.ptr(dentry, 'dentry', 'd_parent') === dentry;
}

/** d_unlinked(): no longer hashed and not a root — the file was deleted while in use. */
export function dUnlinked(k: Kernel, dentry: bigint): boolean {
  const r = state(k).r;
  const pprev = r.ptr(dentry, 'dentry', 'd_hash.pprev');
  return pprev === 0n && !isRoot(k, dentry);
}

/** The dentry's own name (d_name), bounded. */
export function dentryName(k: Kernel, dentry: bigint): string {
  const r = state(k).r;
  const len = r.u32(dentry, 'dentry', 'd_name.len');
  const name = r.ptr(dentry, 'dentry', 'd_name.name');
  if (name === 0n) return '';
  if (len > MAX_NAME) {
    k.warnings.warn('d_path', `dentry at 0x${dentry.toString(16)} claims a ${len}-byte name; cut to ${MAX_NAME}`);
  }
  return r.bytesAsUtf8(name, Math.min(len, MAX_NAME));
}

/** Inode number of a dentry's inode (0 for a negative dentry). */
export function dentryIno(k: Kernel, dentry: bigint): number {
  const r = state(k).r;
  const inode = r.ptr(dentry, 'dentry', 'd_inode');
  return inode === 0n ? 0 : r.num64(inode, 'inode', 'i_ino');
}

/**
 * prepend_path(): climb from `path` to `root`, crossing mount points, and build the path in
 * between. `root` null means "no root": climb to the top of the namespace (d_absolute_path).
 */
export function prependPath(k: Kernel, path: PathRef, root: PathRef | null): PrependResult {
  const { r } = state(k);
  const mntOff = BigInt(r.off('mount', 'mnt'));
  const parts: string[] = [];
  let bytes = 0;
  let dentry = path.dentry;
  let mount = path.mnt - mntOff;
  let end: PathEnd = 'root';
  let steps = 0;
  for (;;) {
    if (root && dentry === root.dentry && mount + mntOff === root.mnt) break;
    if (++steps > MAX_PATH_STEPS) {
      k.warnings.warn('d_path', `path of dentry 0x${path.dentry.toString(16)} is longer than ${MAX_PATH_STEPS} steps (a loop?); cut`);
      end = 'too-long';
      break;
    }
    const parent = r.ptr(dentry, 'dentry', 'd_parent');
    if (dentry === r.ptr(mount + mntOff, 'vfsmount', 'mnt_root')) {
      const up = r.ptr(mount, 'mount', 'mnt_parent');
      if (up !== mount) {
        dentry = r.ptr(mount, 'mount', 'mnt_mountpoint');
        mount = up;
        continue;
      }
      // The top of a mount tree: a namespace's root, or a mount not attached to any namespace.
      const ns = r.ptr(mount, 'mount', 'mnt_ns');
      end = isErrOrNull(ns) || r.u64(ns, 'mnt_namespace', 'seq') === 0n ? 'detached' : 'global-root';
      if (!root) end = end === 'global-root' ? 'root' : end;
      break;
    }
    if (dentry === parent) {
      end = 'escaped';
      break;
    }
    const name = dentryName(k, dentry);
    bytes += name.length + 1;
    if (bytes > PATH_MAX) {
      k.warnings.warn('d_path', `path of dentry 0x${path.dentry.toString(16)} exceeds PATH_MAX; cut`);
      end = 'too-long';
      break;
    }
    parts.push(name);
    dentry = parent;
  }
  // The kernel discards what it built when the climb escaped, and writes "/" for nothing.
  if (end === 'escaped') parts.length = 0;
  return { path: parts.length === 0 ? '/' : `/${parts.reverse().join('/')}`, end };
}

/** IS_ERR_OR_NULL() for a pointer. */
function isErrOrNull(p: bigint): boolean {
  return p === 0n || p >= 0xffff_ffff_ffff_f001n;
}

/**
 * d_path(): the path of `path` as a process whose root is `root` sees it — what /proc/PID/fd
 * links and /proc/PID/maps show. Pseudo files (sockets, pipes, anonymous inodes, namespaces)
 * are named by their file system's d_dname(); unlinked files end in " (deleted)".
 */
export function dPath(k: Kernel, path: PathRef, root: PathRef | null): string {
  const pseudo = dynamicName(k, path);
  if (pseudo !== undefined) return pseudo;
  const deleted = dUnlinked(k, path.dentry);
  const { path: p } = prependPath(k, path, root);
  return deleted ? `${p} (deleted)` : p;
}

/**
 * dentry_path_raw(): the path of a dentry from the root of its own file system (mountinfo's
 * "root" field). Bounded like prependPath.
 */
export function dentryPath(k: Kernel, dentry: bigint): string {
  const { r } = state(k);
  const parts: string[] = [];
  let bytes = 0;
  for (let steps = 0; ; steps++) {
    const parent = r.ptr(dentry, 'dentry', 'd_parent');
    if (parent === dentry) break;
    if (steps >= MAX_PATH_STEPS || bytes > PATH_MAX) {
      k.warnings.warn('dentry_path', `dentry chain at 0x${dentry.toString(16)} is too long (a loop?); cut`);
      break;
    }
    const name = dentryName(k, dentry);
    bytes += name.length + 1;
    parts.push(name);
    dentry = parent;
  }
  return parts.length === 0 ? '/' : `/${parts.reverse().join('/')}`;
}

/**
 * The name a pseudo file system gives its files through dentry_operations.d_dname, or
 * undefined when the dentry has none (or is the root of a mount of that file system, where
 * d_path walks as usual). The d_dname function is recognised by its kallsyms name.
 */
export function dynamicName(k: Kernel, path: PathRef): string | undefined {
  const s = state(k);
  const { r } = s;
  const dentry = path.dentry;
  const ops = r.ptr(dentry, 'dentry', 'd_op');
  if (ops === 0n) return undefined;
  const fn = r.ptr(ops, 'dentry_operations', 'd_dname');
  if (fn === 0n) return undefined;
  if (isRoot(k, dentry) && dentry === r.ptr(path.mnt, 'vfsmount', 'mnt_root')) return undefined;
  let kind = s.dnameKinds.get(fn);
  if (kind === undefined) {
    const sym = k.symbols.symbolize(fn);
    kind = sym && sym.offset === 0n ? sym.name : '?';
    s.dnameKinds.set(fn, kind);
  }
  switch (kind) {
    case 'sockfs_dname':
      return `socket:[${dentryIno(k, dentry)}]`;
    case 'pipefs_dname':
      return `pipe:[${dentryIno(k, dentry)}]`;
    case 'anon_inodefs_dname':
      return `anon_inode:${dentryName(k, dentry)}`;
    case 'simple_dname':
      return `/${dentryName(k, dentry)} (deleted)`;
    case 'ns_dname': {
      const ops = r.ptr(dentry, 'dentry', 'd_fsdata');
      const name = ops === 0n ? '?' : r.cstr(ops, 'proc_ns_operations', 'name', 64);
      return `${name}:[${dentryIno(k, dentry)}]`;
    }
    case 'dmabuf_dname': {
      const buf = r.ptr(dentry, 'dentry', 'd_fsdata');
      const name = buf !== 0n && r.has('dma_buf', 'name') ? r.cstr(buf, 'dma_buf', 'name', 32) : '';
      return `/${dentryName(k, dentry)}:${name}`;
    }
    default:
      k.warnings.warn('d_path', `dentry 0x${dentry.toString(16)} is named by an unknown d_dname (${kind === '?' ? `0x${fn.toString(16)}` : kind}); its plain path is shown`);
      return undefined;
  }
}

/** A task's root directory (task->fs->root), or null for a task without an fs_struct. */
export function taskRoot(k: Kernel, task: bigint): PathRef | null {
  const r = state(k).r;
  const fs = r.ptr(task, 'task_struct', 'fs');
  return fs === 0n ? null : readPath(k, r.at(fs, 'fs_struct', 'root'));
}

/** A task's working directory (task->fs->pwd). */
export function taskPwd(k: Kernel, task: bigint): PathRef | null {
  const r = state(k).r;
  const fs = r.ptr(task, 'task_struct', 'fs');
  return fs === 0n ? null : readPath(k, r.at(fs, 'fs_struct', 'pwd'));
}

/** One open file of a file table. */
export interface OpenFile {
  readonly fd: number;
  /** `struct file *`. */
  readonly file: bigint;
  /** The fd's close-on-exec bit (fdt->close_on_exec). */
  readonly cloexec: boolean;
}

/** Most descriptors one table may have: the kernel's sysctl_nr_open ceiling. */
const NR_OPEN_MAX = 1 << 20;
const FD_CHUNK = 512;

/**
 * Every open file of a `struct files_struct *`, by ascending fd — the slots of the current
 * fdtable that hold a file, as /proc/PID/fd lists them.
 */
export function* forEachFile(k: Kernel, files: bigint): Generator<OpenFile> {
  const r = state(k).r;
  const space = k.space;
  const fdt = r.ptr(files, 'files_struct', 'fdt');
  if (fdt === 0n) return;
  let max = r.u32(fdt, 'fdtable', 'max_fds');
  if (max > NR_OPEN_MAX) {
    k.warnings.warn('file table', `files 0x${files.toString(16)} claims ${max} descriptors; reading ${NR_OPEN_MAX}`);
    max = NR_OPEN_MAX;
  }
  const fdArray = r.ptr(fdt, 'fdtable', 'fd');
  const cloexecMap = r.ptr(fdt, 'fdtable', 'close_on_exec');
  const chunk = new Uint8Array(FD_CHUNK * 8);
  const dv = new DataView(chunk.buffer);
  for (let base = 0; base < max; base += FD_CHUNK) {
    const n = Math.min(FD_CHUNK, max - base);
    try {
      space.read(fdArray + BigInt(base * 8), chunk.subarray(0, n * 8));
    } catch (e) {
      k.warnings.warn('file table', `fd array of files 0x${files.toString(16)} at fd ${base}: ${(e as Error).message}`);
      return;
    }
    for (let i = 0; i < n; i++) {
      const file = dv.getBigUint64(i * 8, true);
      if (file === 0n) continue;
      const fd = base + i;
      let cloexec = false;
      if (cloexecMap !== 0n) {
        try {
          const word = space.readU64Big(cloexecMap + BigInt(Math.floor(fd / 64) * 8));
          cloexec = ((word >> BigInt(fd % 64)) & 1n) === 1n;
        } catch {
          /* the bitmap is unreadable: report the fd without the flag */
        }
      }
      yield { fd, file, cloexec };
    }
  }
}

/**
 * Every mount of a `struct mnt_namespace *`, in the namespace's order: its `list` of
 * mount.mnt_list (before 6.8), or its `mounts` red-black tree of mount.mnt_node (6.8+).
 */
export function* forEachMount(k: Kernel, ns: bigint, limit = 100_000): Generator<bigint> {
  const r = state(k).r;
  if (r.has('mnt_namespace', 'mounts') && r.has('mount', 'mnt_node')) {
    const root = k.object('struct rb_root', r.at(ns, 'mnt_namespace', 'mounts'));
    for (const m of rbtreeInorderForEachEntry(root, 'struct mount', 'mnt_node', { what: 'mount tree', limit })) yield m.address;
    return;
  }
  const head = k.object('struct list_head', r.at(ns, 'mnt_namespace', 'list'));
  for (const m of listForEachEntry(head, 'struct mount', 'mnt_list', { what: 'mount list', limit })) yield m.address;
}

/** File type letters of i_mode (S_IFMT), as lsof names them. */
export type FileKind = 'REG' | 'DIR' | 'CHR' | 'BLK' | 'FIFO' | 'LINK' | 'SOCK' | 'a_inode' | 'unknown';

const S_IFMT = 0o170000;

/** The type of an inode from its mode; a mode without type bits is an anonymous inode. */
export function fileKind(mode: number): FileKind {
  switch (mode & S_IFMT) {
    case 0o100000:
      return 'REG';
    case 0o040000:
      return 'DIR';
    case 0o020000:
      return 'CHR';
    case 0o060000:
      return 'BLK';
    case 0o010000:
      return 'FIFO';
    case 0o120000:
      return 'LINK';
    case 0o140000:
      return 'SOCK';
    case 0:
      return 'a_inode';
    default:
      return 'unknown';
  }
}

/** MAJOR()/MINOR() of a kernel dev_t (12 major bits over 20 minor bits). */
export function devMajor(dev: number): number {
  return dev >>> 20;
}

export function devMinor(dev: number): number {
  return dev & 0xfffff;
}
