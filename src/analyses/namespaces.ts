/**
 * Containers: each process's namespaces and cgroup — what `ls -l /proc/PID/ns` (the inode
 * numbers of mnt, uts, ipc, pid, pid_for_children, net, user, cgroup, time, time_for_children)
 * and /proc/PID/cgroup (the cgroup v2 line, "0::/path") show, and `ps -o pid,netns,mntns,cgroup`.
 * Processes sharing every namespace with pid 1 are in the host's; the others are contained.
 *
 * Only the unified (v2) hierarchy is read; cgroup v1 hierarchies are not listed.
 */
import { structReader, type StructReader } from '../kernel/helpers/struct-reader.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { selectProcesses } from './processes.ts';
import type { TaskRow } from './ps.ts';

/** Namespace inode numbers; null where the process has none (it has exited) or the kernel lacks the kind. */
export interface NamespaceIds {
  readonly mnt: number | null;
  readonly uts: number | null;
  readonly ipc: number | null;
  readonly pid: number | null;
  readonly pidForChildren: number | null;
  readonly net: number | null;
  readonly user: number | null;
  readonly cgroup: number | null;
  readonly time: number | null;
  readonly timeForChildren: number | null;
}

export interface NamespaceRow {
  readonly pid: number;
  readonly comm: string;
  readonly ns: NamespaceIds;
  /** Path of the process's cgroup on the v2 hierarchy, from its root (" (deleted)" when removed). */
  readonly cgroupPath: string | null;
  /** Whether the v2 hierarchy is mounted anywhere (the kernel prints the "0::" line only then). */
  readonly cgroupV2Visible: boolean;
  /** True when any namespace differs from pid 1's. */
  readonly contained: boolean;
}

export const NAMESPACE_KINDS = ['mnt', 'uts', 'ipc', 'pid', 'pidForChildren', 'net', 'user', 'cgroup', 'time', 'timeForChildren'] as const;
/** The link names under /proc/PID/ns for each kind. */
export const NS_LINK_NAMES: Record<(typeof NAMESPACE_KINDS)[number], string> = {
  mnt: 'mnt',
  uts: 'uts',
  ipc: 'ipc',
  pid: 'pid',
  pidForChildren: 'pid_for_children',
  net: 'net',
  user: 'user',
  cgroup: 'cgroup',
  time: 'time',
  timeForChildren: 'time_for_children',
};

const CSS_ONLINE = 1 << 1;
const MAX_CGROUP_DEPTH = 1024;

export function listNamespaces(k: Kernel, opts: { pids?: ReadonlySet<number> } = {}): NamespaceRow[] {
  const r = structReader(k);
  const all = selectProcesses(k);
  const tasks = opts.pids ? selectProcesses(k, opts.pids) : all;
  const init = all.find((t) => t.pid === 1);
  const initIds = init ? safeIds(k, r, init) : undefined;
  const visible = cgroupV2Visible(k);
  const rows: NamespaceRow[] = [];
  for (const t of tasks) {
    const ids = safeIds(k, r, t);
    if (!ids) continue;
    let cgroupPath: string | null = null;
    try {
      cgroupPath = taskCgroupPath(k, r, t.task);
    } catch (e) {
      k.warnings.warn('cgroup', `pid ${t.pid}: ${(e as Error).message}`);
    }
    const contained = initIds !== undefined && NAMESPACE_KINDS.some((n) => ids[n] !== null && initIds[n] !== null && ids[n] !== initIds[n]);
    rows.push({ pid: t.pid, comm: t.comm, ns: ids, cgroupPath, cgroupV2Visible: visible, contained });
  }
  return rows;
}

function safeIds(k: Kernel, r: StructReader, t: TaskRow): NamespaceIds | undefined {
  try {
    return namespaceIds(k, r, t.task);
  } catch (e) {
    k.warnings.warn('namespaces', `pid ${t.pid}: ${(e as Error).message}`);
    return undefined;
  }
}

/** The namespace inode numbers of a `struct task_struct *`, as its /proc/PID/ns links name them. */
export function namespaceIds(k: Kernel, r: StructReader, task: bigint): NamespaceIds {
  const inum = (ns: bigint, struct: string): number | null => (ns === 0n ? null : r.u32(ns, struct, 'ns.inum'));
  const nsproxy = r.ptr(task, 'task_struct', 'nsproxy');
  const fromProxy = (member: string, struct: string): number | null =>
    nsproxy === 0n || !r.has('nsproxy', member) ? null : inum(r.ptr(nsproxy, 'nsproxy', member), struct);
  // user: __task_cred(task)->user_ns (the real credentials).
  const cred = r.ptr(task, 'task_struct', 'real_cred');
  const user = cred === 0n ? null : inum(r.ptr(cred, 'cred', 'user_ns'), 'user_namespace');
  return {
    mnt: fromProxy('mnt_ns', 'mnt_namespace'),
    uts: fromProxy('uts_ns', 'uts_namespace'),
    ipc: fromProxy('ipc_ns', 'ipc_namespace'),
    // pid: task_active_pid_ns() — the namespace the task's pid was allocated in; its /proc link
    // exists only while the task has namespaces at all.
    pid: nsproxy === 0n ? null : activePidNs(k, r, task),
    pidForChildren: fromProxy('pid_ns_for_children', 'pid_namespace'),
    net: fromProxy('net_ns', 'net'),
    user,
    cgroup: fromProxy('cgroup_ns', 'cgroup_namespace'),
    time: fromProxy('time_ns', 'time_namespace'),
    timeForChildren: fromProxy('time_ns_for_children', 'time_namespace'),
  };
}

/** ns_of_pid(task_pid(task)): pid->numbers[pid->level].ns. */
function activePidNs(k: Kernel, r: StructReader, task: bigint): number | null {
  const pid = r.ptr(task, 'task_struct', 'thread_pid');
  if (pid === 0n) return null;
  const level = r.u32(pid, 'pid', 'level');
  if (level > 32) {
    // MAX_PID_NS_LEVEL is 32: anything deeper is corrupt.
    k.warnings.warn('namespaces', `pid 0x${pid.toString(16)} claims level ${level}`);
    return null;
  }
  const upid = r.at(pid, 'pid', 'numbers') + BigInt(level * r.sizeof('upid'));
  const ns = r.ptr(upid, 'upid', 'ns');
  return ns === 0n ? null : r.u32(ns, 'pid_namespace', 'ns.inum');
}

/** task->cgroups->dfl_cgrp as a path on the v2 hierarchy (kernfs names from its root). */
export function taskCgroupPath(k: Kernel, r: StructReader, task: bigint): string | null {
  const cset = r.ptr(task, 'task_struct', 'cgroups');
  if (cset === 0n) return null;
  const cgrp = r.ptr(cset, 'css_set', 'dfl_cgrp');
  if (cgrp === 0n) return null;
  const kn = r.ptr(cgrp, 'cgroup', 'kn');
  const path = kernfsPath(k, r, kn);
  const online = (r.u32(cgrp, 'cgroup', 'self.flags') & CSS_ONLINE) !== 0;
  return online ? path : `${path} (deleted)`;
}

/** kernfs_path(): names from the node up to its root (the node whose parent is NULL). */
export function kernfsPath(k: Kernel, r: StructReader, kn: bigint): string {
  const parentField = r.has('kernfs_node', 'parent') ? 'parent' : '__parent';
  const parts: string[] = [];
  let node = kn;
  for (let depth = 0; ; depth++) {
    if (node === 0n) break;
    const parent = r.ptr(node, 'kernfs_node', parentField);
    if (parent === 0n) break; // the root's own name is not part of paths
    if (depth >= MAX_CGROUP_DEPTH) {
      k.warnings.warn('cgroup', `kernfs chain at 0x${kn.toString(16)} deeper than ${MAX_CGROUP_DEPTH} (a loop?); cut`);
      break;
    }
    parts.push(r.cstr(node, 'kernfs_node', 'name', 256));
    node = parent;
  }
  return `/${parts.reverse().join('/')}`;
}

/** cgrp_dfl_visible: set once cgroup2 is mounted; before that /proc/PID/cgroup has no v2 line. */
function cgroupV2Visible(k: Kernel): boolean {
  const a = k.symbols.lookup('cgrp_dfl_visible');
  if (a === undefined) return true;
  try {
    return k.space.readU8(Number(a >> 32n) >>> 0, Number(a & 0xffff_ffffn)) !== 0;
  } catch {
    return true;
  }
}
