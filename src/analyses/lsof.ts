/**
 * Open files per process — lsof, /proc/PID/fd (+ fdinfo), and Volatility's linux.lsof: each
 * descriptor's file with its type, access mode, flags, position, device, inode and path named as
 * the /proc/PID/fd link shows it (socket:[N], pipe:[N], anon_inode:[eventpoll], " (deleted)").
 * The working directory, root and executable come first, as lsof lists them (cwd, rtd, txt).
 */
import { devMajor, devMinor, dPath, fileKind, forEachFile, readPath, taskPwd, taskRoot, type FileKind, type PathRef } from '../kernel/helpers/fs.ts';
import { AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_UNIX, socketOfInode } from '../kernel/helpers/net.ts';
import { structReader, type StructReader } from '../kernel/helpers/struct-reader.ts';
import type { Kernel } from '../kernel/kernel.ts';
import type { TaskRow } from './ps.ts';
import { readerRoot, selectProcesses } from './processes.ts';

/** What a row is: a descriptor, or the process's working directory, root directory or executable. */
export type FileUse = 'fd' | 'cwd' | 'rtd' | 'txt';

/** lsof's TYPE: the inode type, with sockets by family (unix, IPv4, IPv6, netlink, pack, sock). */
export type FileType = FileKind | 'unix' | 'IPv4' | 'IPv6' | 'netlink' | 'pack' | 'sock';

export interface FileRow {
  readonly pid: number;
  readonly comm: string;
  /** Descriptor number; null for cwd, rtd and txt. */
  readonly fd: number | null;
  readonly use: FileUse;
  /** `struct file *` (0 for cwd and rtd, which are paths, not open files). */
  readonly file: bigint;
  readonly type: FileType;
  /** For sockets: TCP, UDP, ICMP, RAW… (internet) or STREAM, DGRAM, SEQPACKET (unix); else ''. */
  readonly protocol: string;
  /** lsof's access mode: r, w or u (both); '' for cwd/rtd/txt. */
  readonly mode: '' | 'r' | 'w' | 'u';
  /** Open flags as /proc/PID/fdinfo shows them (f_flags, plus O_CLOEXEC when the fd has it). */
  readonly flags: number;
  readonly pos: number;
  /** Mount id of the file's mount (fdinfo's mnt_id). */
  readonly mntId: number;
  readonly major: number;
  readonly minor: number;
  readonly inode: number;
  /** i_size (regular files: bytes). */
  readonly size: number;
  readonly path: string;
}

export interface LsofOptions {
  readonly pids?: ReadonlySet<number>;
  /** Root paths are rendered against; default: pid 1's. */
  readonly root?: PathRef | null;
  /** Also list cwd, rtd and txt (default true). */
  readonly special?: boolean;
}

const O_CLOEXEC = 0o2000000;
const FMODE_READ = 1;
const FMODE_WRITE = 2;
const SOCK_TYPES: Record<number, string> = { 1: 'STREAM', 2: 'DGRAM', 3: 'RAW', 4: 'RDM', 5: 'SEQPACKET', 6: 'DCCP', 10: 'PACKET' };
const IP_PROTOCOLS: Record<number, string> = { 0: 'IP', 1: 'ICMP', 6: 'TCP', 17: 'UDP', 58: 'ICMPV6', 132: 'SCTP', 136: 'UDPLITE', 255: 'RAW' };

export function listOpenFiles(k: Kernel, opts: LsofOptions = {}): FileRow[] {
  const tasks = selectProcesses(k, opts.pids);
  const root = opts.root !== undefined ? opts.root : readerRoot(k, tasks);
  const rows: FileRow[] = [];
  for (const t of tasks) {
    try {
      rows.push(...processFiles(k, t, root, opts.special ?? true));
    } catch (e) {
      k.warnings.warn('lsof', `pid ${t.pid}: ${(e as Error).message}`);
    }
  }
  return rows;
}

/** Files of one process: cwd, rtd, txt (when asked), then descriptors in ascending order. */
export function processFiles(k: Kernel, task: Pick<TaskRow, 'task' | 'pid' | 'comm'>, root: PathRef | null, special = true): FileRow[] {
  const r = structReader(k);
  const rows: FileRow[] = [];
  const base = { pid: task.pid, comm: task.comm };
  if (special) {
    const cwd = taskPwd(k, task.task);
    if (cwd) rows.push(pathRow(k, r, base, 'cwd', cwd, root));
    const rtd = taskRoot(k, task.task);
    if (rtd) rows.push(pathRow(k, r, base, 'rtd', rtd, root));
    const mm = r.ptr(task.task, 'task_struct', 'mm');
    const exe = mm === 0n ? 0n : r.ptr(mm, 'mm_struct', 'exe_file');
    if (exe !== 0n) rows.push({ ...fileRow(k, r, base, exe, root), fd: null, use: 'txt', mode: '', flags: 0, pos: 0 });
  }
  const files = r.ptr(task.task, 'task_struct', 'files');
  if (files === 0n) return rows;
  for (const f of forEachFile(k, files)) {
    try {
      const row = fileRow(k, r, base, f.file, root);
      rows.push({ ...row, fd: f.fd, flags: row.flags | (f.cloexec ? O_CLOEXEC : 0) });
    } catch (e) {
      k.warnings.warn('lsof', `pid ${task.pid} fd ${f.fd}: file 0x${f.file.toString(16)}: ${(e as Error).message}`);
    }
  }
  return rows;
}

function pathRow(k: Kernel, r: StructReader, base: { pid: number; comm: string }, use: FileUse, path: PathRef, root: PathRef | null): FileRow {
  const ino = inodeFacts(r, r.ptr(path.dentry, 'dentry', 'd_inode'));
  return { ...base, fd: null, use, file: 0n, type: ino.kind, protocol: '', mode: '', flags: 0, pos: 0, ...pathColumns(k, r, path, root, ino) };
}

/** The columns every row takes from a path and its inode: mount, device, inode, size, path. */
function pathColumns(k: Kernel, r: StructReader, path: PathRef, root: PathRef | null, ino: InodeFacts): Pick<FileRow, 'mntId' | 'major' | 'minor' | 'inode' | 'size' | 'path'> {
  return {
    mntId: r.i32(path.mnt - BigInt(r.off('mount', 'mnt')), 'mount', 'mnt_id'),
    major: ino.major,
    minor: ino.minor,
    inode: ino.ino,
    size: ino.size,
    path: dPath(k, path, root),
  };
}

interface InodeFacts {
  readonly kind: FileKind;
  readonly ino: number;
  readonly size: number;
  readonly major: number;
  readonly minor: number;
}

function inodeFacts(r: StructReader, inode: bigint): InodeFacts {
  if (inode === 0n) return { kind: 'unknown', ino: 0, size: 0, major: 0, minor: 0 };
  const mode = r.u16(inode, 'inode', 'i_mode');
  const sb = r.ptr(inode, 'inode', 'i_sb');
  const dev = sb === 0n ? 0 : r.u32(sb, 'super_block', 's_dev');
  return { kind: fileKind(mode), ino: r.num64(inode, 'inode', 'i_ino'), size: r.num64(inode, 'inode', 'i_size'), major: devMajor(dev), minor: devMinor(dev) };
}

function fileRow(k: Kernel, r: StructReader, base: { pid: number; comm: string }, file: bigint, root: PathRef | null): FileRow {
  const F = 'file';
  const path = readPath(k, r.at(file, F, 'f_path'));
  const inode = r.ptr(file, F, 'f_inode');
  const ino = inodeFacts(r, inode);
  const fmode = r.u32(file, F, 'f_mode');
  const mode = fmode & FMODE_READ ? (fmode & FMODE_WRITE ? 'u' : 'r') : fmode & FMODE_WRITE ? 'w' : '';
  let type: FileType = ino.kind;
  let protocol = '';
  if (ino.kind === 'SOCK') {
    const sk = r.ptr(socketOfInode(k, inode), 'socket', 'sk');
    if (sk !== 0n) {
      const family = r.u16(sk, 'sock_common', 'skc_family');
      const sockType = r.u16(sk, 'sock', 'sk_type');
      type = family === AF_UNIX ? 'unix' : family === AF_INET ? 'IPv4' : family === AF_INET6 ? 'IPv6' : family === AF_NETLINK ? 'netlink' : family === AF_PACKET ? 'pack' : 'sock';
      if (family === AF_INET || family === AF_INET6) {
        const proto = r.u16(sk, 'sock', 'sk_protocol');
        protocol = IP_PROTOCOLS[proto] ?? `proto ${proto}`;
      } else {
        protocol = SOCK_TYPES[sockType] ?? `type ${sockType}`;
      }
    } else {
      type = 'sock';
    }
  }
  return {
    ...base,
    fd: null,
    use: 'fd',
    file,
    type,
    protocol,
    mode,
    flags: r.u32(file, F, 'f_flags'),
    pos: Number(BigInt.asIntN(64, r.u64(file, F, 'f_pos'))),
    ...pathColumns(k, r, path, root, ino),
  };
}

/** The FD column as lsof writes it: the number with its mode letter, or cwd/rtd/txt. */
export function fdLabel(row: FileRow): string {
  return row.fd === null ? row.use : `${row.fd}${row.mode}`;
}
