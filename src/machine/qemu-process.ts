import { readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Extent } from '../source/extents.ts';
import type { QmpClient } from './qmp.ts';

/**
 * Which host process is the QEMU behind a QMP socket. Two witnesses: the vCPU thread ids QMP
 * reports (`query-cpus-fast`) are tasks of the QEMU process, whose thread-group id is its pid;
 * and the QEMU process holds the monitor's listening socket, whose inode /proc/net/unix lists
 * under the socket's path. Thread ids are only meaningful in our pid namespace, so a candidate
 * from them is confirmed by the socket when the socket is visible.
 */

export interface QemuProcess {
  readonly pid: number;
  /** Real uid and gid of the process (for files QEMU must write for us). */
  readonly uid: number;
  readonly gid: number;
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function statusField(pid: number, field: string): string | undefined {
  const status = readText(`/proc/${pid}/status`);
  const m = status && new RegExp(`^${field}:\\s*(.*)$`, 'm').exec(status);
  return m ? m[1] : undefined;
}

function processOf(pid: number): QemuProcess | undefined {
  const uid = statusField(pid, 'Uid');
  const gid = statusField(pid, 'Gid');
  if (uid === undefined || gid === undefined) return undefined;
  return { pid, uid: Number(uid.split(/\s+/)[0]), gid: Number(gid.split(/\s+/)[0]) };
}

/** Inodes of unix sockets bound to `socketPath` (the listening one and those it accepted). */
export function socketInodes(socketPath: string): Set<number> {
  const names = new Set([socketPath, resolve(socketPath)]);
  try {
    names.add(realpathSync(socketPath));
  } catch {
    // a vanished socket still has its entries until QEMU closes them
  }
  const out = new Set<number>();
  const table = readText('/proc/net/unix');
  if (!table) return out;
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && names.has(f.slice(7).join(' '))) out.add(Number(f[6]));
  }
  return out;
}

/** Whether process `pid` has one of `inodes` among its open files. */
function holdsSocket(pid: number, inodes: ReadonlySet<number>): boolean {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  for (const fd of fds) {
    let link: string;
    try {
      link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m && inodes.has(Number(m[1]))) return true;
  }
  return false;
}

function threadGroupOf(tid: number): number | undefined {
  const tgid = statusField(tid, 'Tgid');
  return tgid === undefined ? undefined : Number(tgid);
}

/** Find the QEMU process, or undefined (another pid namespace, or /proc hidden from us). */
export async function findQemuProcess(qmp: QmpClient): Promise<QemuProcess | undefined> {
  const inodes = socketInodes(qmp.path);
  const cpus = await qmp.execute<unknown>('query-cpus-fast').catch(() => []);
  const candidates = new Set<number>();
  if (Array.isArray(cpus)) {
    for (const c of cpus.slice(0, 64)) {
      const tid = (c as { 'thread-id'?: unknown })['thread-id'];
      if (typeof tid === 'number' && tid > 0) {
        const pid = threadGroupOf(tid);
        if (pid !== undefined) candidates.add(pid);
      }
    }
  }
  if (inodes.size > 0) {
    for (const pid of candidates) if (holdsSocket(pid, inodes)) return processOf(pid);
    // Not in the candidates (say, thread ids of another namespace): look at every process.
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const pid = Number(name);
      if (pid !== process.pid && holdsSocket(pid, inodes)) return processOf(pid);
    }
    return undefined;
  }
  // The socket is invisible here; trust thread ids only if they lead to a QEMU binary.
  for (const pid of candidates) {
    const comm = readText(`/proc/${pid}/comm`)?.trim() ?? '';
    if (comm.startsWith('qemu')) return processOf(pid);
  }
  return undefined;
}

interface MapsLine {
  readonly start: number;
  readonly end: number;
  readonly shared: boolean;
  readonly offset: number;
  readonly inode: string;
  readonly text: string;
}

function readMaps(pid: number): MapsLine[] {
  const out: MapsLine[] = [];
  for (const line of (readText(`/proc/${pid}/maps`) ?? '').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)/.exec(line);
    if (!m) continue;
    out.push({ start: parseInt(m[1]!, 16), end: parseInt(m[2]!, 16), shared: m[3]![3] === 's', offset: parseInt(m[4]!, 16), inode: `${m[5]}:${m[6]}`, text: line });
  }
  return out;
}

/**
 * Whether QEMU maps guest RAM from one shared file (a memfd, a file in a hugetlbfs directory,
 * a /dev/shm file): then that file can be mapped by us too, through /proc/PID/map_files, even
 * when it has no name we could open. `hostLayout` is the gpa → host-virtual map of guest RAM;
 * the result maps gpa → offset in that file.
 */
export function sharedMappingOf(pid: number, hostLayout: readonly Extent[]): { path: string; layout: Extent[] } | undefined {
  const maps = readMaps(pid);
  let inode: string | undefined;
  let first: MapsLine | undefined;
  const layout: Extent[] = [];
  for (const e of hostLayout) {
    const line = maps.find((l) => e.offset >= l.start && e.offset + e.size <= l.end);
    if (!line || !line.shared || line.inode.endsWith(':0')) return undefined;
    if (inode !== undefined && line.inode !== inode) return undefined;
    inode = line.inode;
    first ??= line;
    layout.push({ gpa: e.gpa, size: e.size, offset: line.offset + (e.offset - line.start) });
  }
  if (!first) return undefined;
  return { path: `/proc/${pid}/map_files/${first.start.toString(16)}-${first.end.toString(16)}`, layout };
}
