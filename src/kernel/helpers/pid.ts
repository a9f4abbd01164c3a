/**
 * Process ids (include/linux/pid.h, kernel/pid.c): each pid namespace keeps its `struct pid`s in
 * an IDR keyed by number; a `struct pid` lists the tasks that use it, per `enum pid_type`.
 *
 *   idr_for_each_entry(&ns->idr, pid, nr)  →  forEachPid(ns)            struct pid_namespace → (nr, struct pid *)
 *   pid_task(pid, type)                    →  pidTask(pid, type)         struct pid → struct task_struct * | undefined
 *   pid_task(pid, type), each of them      →  pidTasks(pid, type)        every task on pid->tasks[type]
 *   find_task_by_pid_ns(nr, ns)            →  findTaskByPid(k, nr, ns)   number → struct task_struct * | undefined
 *
 * This is the table /proc is built from (its directory lists the pids whose
 * tasks[PIDTYPE_TGID] is non-empty), and independent of the task list that for_each_process
 * walks: where the two disagree, something unlinked a task from one of them.
 */
import { GuestDataError } from '../../util/errors.ts';
import type { Kernel } from '../kernel.ts';
import { objectAt, type KObject } from '../object.ts';
import { hlistForEachEntry } from './list.ts';
import { idrFind, idrForEach } from './idr.ts';
import type { XaWalkLimits } from './xarray.ts';

export type PidType = 'PIDTYPE_PID' | 'PIDTYPE_TGID' | 'PIDTYPE_PGID' | 'PIDTYPE_SID';

/** A task may share a pid with others only for process groups and sessions; bound the list. */
const MAX_TASKS_PER_PID = 1 << 20;

function pidTypeIndex(ctx: KObject['ctx'], type: PidType): number {
  const v = ctx.btf.enumValue('pid_type', type);
  if (v === undefined) throw new GuestDataError(`the kernel's BTF has no ${type}`);
  return Number(v);
}

/** Every `struct pid` of the namespace `ns` (a `struct pid_namespace` or pointer), by number. */
export function* forEachPid(ns: KObject, limits: XaWalkLimits = {}): Generator<{ readonly nr: number; readonly pid: KObject }> {
  const n = ns.kind === 2 /* PTR */ ? ns.deref() : ns;
  for (const e of idrForEach(n.member('idr'), { what: 'pid table', ...limits })) {
    yield { nr: e.id, pid: objectAt(n.ctx, 'struct pid', e.entry) };
  }
}

/** Every task on `pid->tasks[type]` (a `struct pid` or pointer). */
export function* pidTasks(pid: KObject, type: PidType): Generator<KObject> {
  const p = pid.kind === 2 /* PTR */ ? pid.deref() : pid;
  const ctx = p.ctx;
  const i = pidTypeIndex(ctx, type);
  // The link is task->pid_links[type]: an array element, so its offset is computed here.
  const linkOffset = ctx.btf.memberOffset('struct task_struct', 'pid_links') + i * ctx.btf.sizeof('struct hlist_node');
  for (const node of hlistForEachEntry(p.member('tasks').index(i), 'struct hlist_node', 'next', { what: 'pid task list', limit: MAX_TASKS_PER_PID })) {
    yield objectAt(ctx, 'struct task_struct', node.address - BigInt(linkOffset));
  }
}

/** pid_task(): the first task on `pid->tasks[type]`, or undefined. */
export function pidTask(pid: KObject, type: PidType): KObject | undefined {
  for (const t of pidTasks(pid, type)) return t;
  return undefined;
}

/** find_task_by_pid_ns(): the task with pid `nr` in `ns` (default: the initial namespace). */
export function findTaskByPid(k: Kernel, nr: number, ns: KObject = k.variable('init_pid_ns', 'struct pid_namespace')): KObject | undefined {
  const p = idrFind(ns.member('idr'), nr, 'pid table');
  return p === 0n ? undefined : pidTask(k.object('struct pid', p), 'PIDTYPE_PID');
}
