/**
 * Containers: each process's namespaces and cgroup — what `ls -l /proc/PID/ns` (the inode
 * numbers of mnt, uts, ipc, pid, pid_for_children, net, user, cgroup, time, time_for_children)
 * and /proc/PID/cgroup (every v1 hierarchy's line and the v2 line, see cgroups.ts) show, and
 * `ps -o pid,netns,mntns,cgroup`. Processes sharing every namespace with pid 1 are in the
 * host's; the others are contained.
 */
import { structReader, type StructReader } from '../kernel/helpers/struct-reader.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { cgroupHierarchies, cgroupV2Visible, taskCgroups, taskV2CgroupPath, type CgroupHierarchy, type CgroupLine } from './cgroups.ts';
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
  /** The lines of /proc/PID/cgroup: each mounted v1 hierarchy, then v2 once mounted. */
  readonly cgroups: readonly CgroupLine[];
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

export function listNamespaces(k: Kernel, opts: { pids?: ReadonlySet<number> } = {}): NamespaceRow[] {
  const r = structReader(k);
  const all = selectProcesses(k);
  const tasks = opts.pids ? selectProcesses(k, opts.pids) : all;
  const init = all.find((t) => t.pid === 1);
  const initIds = init ? safeIds(k, r, init) : undefined;
  const visible = cgroupV2Visible(k);
  let hierarchies: CgroupHierarchy[] = [];
  try {
    hierarchies = cgroupHierarchies(k, r);
  } catch (e) {
    k.warnings.warn('cgroup', `hierarchies: ${(e as Error).message}`);
  }
  const rows: NamespaceRow[] = [];
  for (const t of tasks) {
    const ids = safeIds(k, r, t);
    if (!ids) continue;
    let cgroupPath: string | null = null;
    let cgroups: CgroupLine[] = [];
    try {
      cgroups = taskCgroups(k, r, t.task, hierarchies);
      // The v2 line (hierarchy 0) already holds the path; without cgroup2 mounted there is none.
      cgroupPath = cgroups.find((l) => l.hierarchy === 0)?.path ?? taskV2CgroupPath(k, r, t.task);
    } catch (e) {
      k.warnings.warn('cgroup', `pid ${t.pid}: ${(e as Error).message}`);
    }
    const contained = initIds !== undefined && NAMESPACE_KINDS.some((n) => ids[n] !== null && initIds[n] !== null && ids[n] !== initIds[n]);
    rows.push({ pid: t.pid, comm: t.comm, ns: ids, cgroupPath, cgroupV2Visible: visible, cgroups, contained });
  }
  return rows;
}

/**
 * The cgroup a table row shows: the v2 path once cgroup2 is mounted; on a v1-only system the
 * first hierarchy's line ("cpu,cpuacct:/docker/…"), which names a container as well.
 */
export function cgroupSummary(row: NamespaceRow): string | null {
  if (row.cgroupV2Visible) return row.cgroupPath;
  const first = row.cgroups[0];
  return first ? `${first.controllers}:${first.path}` : row.cgroupPath;
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
