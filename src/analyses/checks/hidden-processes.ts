/**
 * hidden-processes: tasks the kernel knows of that are missing from its task list.
 *
 * `ps` and every tool in the guest list processes through /proc, which walks the pid table
 * (and shows a pid only if `pid->tasks[PIDTYPE_TGID]` has a task); for_each_process walks the
 * task list `init_task.tasks`. A rootkit hides a process by unlinking it from one or both —
 * but a live task is held by more records than it can unlink without breaking the kernel:
 *
 * - the pid table (`init_pid_ns.idr` → `struct pid` → `tasks[PIDTYPE_PID]`), which every
 *   kill(), wait() and /proc/<pid> lookup goes through;
 * - the run queues (`runqueues`: `rq->curr`, the CFS tree, RT lists, the deadline tree), for a
 *   task that runs;
 * - its parent's `children` list, and the parent / group-leader pointers of its children and
 *   threads.
 *
 * A task seen in any of these but not on the task list (or on the thread list of a task that
 * is) is reported, with every record that holds it and the state of the links it lost.
 */
import { vaHi, vaLo } from '../../mmu/va.ts';
import { GuestDataError } from '../../util/errors.ts';
import { listForEachEntry } from '../../kernel/helpers/list.ts';
import { forEachPid, pidTasks } from '../../kernel/helpers/pid.ts';
import { cpuRq, rqForEachTask } from '../../kernel/helpers/sched.ts';
import type { Kernel } from '../../kernel/kernel.ts';
import { readCString, type KObject } from '../../kernel/object.ts';
import { listTasks } from '../ps.ts';
import { CheckReport, guestDataError, type Check, type CheckContext, type CheckResult } from './types.ts';

const NAME = 'hidden-processes';
/** More children than one task can have (pid_max is at most 2^22). */
const MAX_CHILDREN = 1 << 22;

/** A task as the records name it. */
interface TaskIdentity {
  readonly pid: number;
  readonly tgid: number;
  readonly comm: string;
}

export const hiddenProcesses: Check = {
  name: NAME,
  description: 'tasks in the pid table, on a run queue or in a parent\'s children that are missing from the task list',
  run: (ctx: CheckContext): CheckResult => runHiddenProcesses(ctx.kernel),
};

export function runHiddenProcesses(k: Kernel): CheckResult {
  const report = new CheckReport(NAME);
  const initTask = k.symbol('init_task');

  // The task list, with every thread of every process on it.
  const listed = new Map<bigint, TaskIdentity>();
  listed.set(initTask, { pid: 0, tgid: 0, comm: readComm(k, initTask) });
  for (const row of listTasks(k, { threads: true })) listed.set(row.task, { pid: row.pid, tgid: row.tgid, comm: row.comm });
  report.count('task list (threads included)', listed.size);

  // Idle tasks are on no list by design (one per CPU; CPU 0's is init_task).
  const idle = new Set<bigint>([initTask]);
  const cpus = k.possibleCpus();
  for (const cpu of cpus) {
    try {
      idle.add(cpuRq(k, cpu).member('idle').ptr());
    } catch (e) {
      k.warnings.warn(NAME, `run queue of CPU ${cpu}: ${guestDataError(e).message}`);
    }
  }

  /** Unlisted task → the records it was seen in. */
  const sightings = new Map<bigint, string[]>();
  const seen = (task: bigint, where: string): void => {
    if (task === 0n || listed.has(task) || idle.has(task)) return;
    const list = sightings.get(task);
    if (list) {
      if (!list.includes(where) && list.length < 16) list.push(where);
    } else sightings.set(task, [where]);
  };

  // 1. The pid table.
  const pidNumberOf = new Map<bigint, number>();
  let pids = 0;
  try {
    const ns = k.variable('init_pid_ns', 'struct pid_namespace');
    if (!ns.hasMember('idr')) throw new GuestDataError('this kernel keeps pids in a hash (before 4.15), not an IDR: not supported');
    for (const { nr, pid } of forEachPid(ns)) {
      pids++;
      try {
        for (const task of pidTasks(pid, 'PIDTYPE_PID')) {
          pidNumberOf.set(task.address, nr);
          seen(task.address, `pid table (pid ${nr})`);
        }
      } catch (e) {
        k.warnings.warn(NAME, `pid ${nr} at 0x${pid.address.toString(16)}: ${guestDataError(e).message}`);
      }
    }
    report.count('pid table', pids);
  } catch (e) {
    k.warnings.warn(NAME, `pid table: ${guestDataError(e).message}`);
    report.count('pid table', 'unreadable');
  }

  // 2. The run queues.
  let queued = 0;
  for (const cpu of cpus) {
    try {
      for (const { task, queue } of rqForEachTask(k, cpuRq(k, cpu))) {
        queued++;
        seen(task.address, `run queue of CPU ${cpu} (${queue === 'curr' ? 'running' : queue})`);
      }
    } catch (e) {
      k.warnings.warn(NAME, `run queue of CPU ${cpu}: ${guestDataError(e).message}`);
    }
  }
  report.count('run queues', queued);

  // 3. Family links of every listed task: its children, its parents, its group leader.
  let links = 0;
  const childrenOff = k.offsetOf('task_struct', 'children');
  for (const [task, who] of listed) {
    try {
      const head = k.object('struct list_head', task + BigInt(childrenOff));
      for (const child of listForEachEntry(head, 'struct task_struct', 'sibling', { what: 'children list', limit: MAX_CHILDREN })) {
        links++;
        seen(child.address, `children of pid ${who.pid} (${who.comm})`);
      }
      const t = k.object('struct task_struct', task);
      for (const [member, role] of [
        ['real_parent', 'parent'],
        ['parent', 'tracer/parent'],
        ['group_leader', 'group leader'],
      ] as const) {
        links++;
        seen(t.member(member).ptr(), `${role} of pid ${who.pid} (${who.comm})`);
      }
    } catch (e) {
      k.warnings.warn(NAME, `family of pid ${who.pid} at 0x${task.toString(16)}: ${guestDataError(e).message}`);
    }
  }
  report.count('family links', links);

  // A running guest forks and reaps while the records are read one after the other: a task
  // that was born since the task list was walked is on it now. (A paused guest gives the same
  // answer twice.)
  if (sightings.size > 0 && k.machine.live) {
    for (const row of listTasks(k, { threads: true })) sightings.delete(row.task);
  }

  for (const [task, where] of sightings) {
    try {
      reportHidden(k, report, task, where, pidNumberOf.get(task), listed);
    } catch (e) {
      k.warnings.warn(NAME, `task 0x${task.toString(16)} (${where.join('; ')}): ${guestDataError(e).message}`);
    }
  }

  // The other way round: a listed task without a pid is not hidden, but is not normal either.
  if (pids > 0) {
    for (const [task, who] of listed) {
      if (idle.has(task) || pidNumberOf.has(task)) continue;
      report.add('medium', `pid ${who.pid} (${who.comm}) is on the task list but not in the pid table`, {
        task,
        pid: who.pid,
        tgid: who.tgid,
        comm: who.comm,
        'pid table': 'absent: kill() and /proc cannot reach it (or it exited while the guest ran)',
      });
    }
    for (const [task, nr] of pidNumberOf) {
      const who = listed.get(task);
      if (who && who.pid !== nr) {
        report.add('medium', `task 0x${task.toString(16)} (${who.comm}) is filed under pid ${nr} but says it is pid ${who.pid}`, {
          task,
          'pid table': nr,
          'task->pid': who.pid,
          comm: who.comm,
        });
      }
    }
  }
  return report.result();
}

function reportHidden(k: Kernel, report: CheckReport, task: bigint, where: string[], tableNr: number | undefined, listed: Map<bigint, TaskIdentity>): void {
  const t = k.object('struct task_struct', task);
  const pid = t.member('pid').num();
  const tgid = t.member('tgid').num();
  const comm = readComm(k, task);
  const evidence: Record<string, string | number | bigint | string[]> = { task, pid, tgid, comm, 'seen in': where };
  evidence['task list'] = taskListLinkState(k, t);
  const leader = t.member('group_leader').ptr();
  if (leader !== task && listed.has(leader)) evidence['thread list'] = `absent from the thread list of pid ${listed.get(leader)!.pid}`;
  if (tableNr !== undefined && tableNr !== pid) evidence['pid table number'] = tableNr;
  // /proc's directory lists a process only through pid->tasks[PIDTYPE_TGID].
  try {
    const tp = t.member('thread_pid');
    if (!tp.isNull() && leader === task) {
      let inTgid = false;
      for (const x of pidTasks(tp, 'PIDTYPE_TGID')) if (x.address === task) inTgid = true;
      evidence['/proc listing'] = inTgid ? `listed (pid->tasks[PIDTYPE_TGID] holds it)` : `not listed: pid->tasks[PIDTYPE_TGID] does not hold it, so ps cannot see it`;
    }
  } catch (e) {
    evidence['/proc listing'] = `unknown (${guestDataError(e).message})`;
  }
  const parent = t.member('real_parent').ptr();
  const p = listed.get(parent);
  evidence.parent = p ? `pid ${p.pid} (${p.comm})` : `0x${parent.toString(16)}`;
  report.add('high', `pid ${pid} (${comm}) is hidden: the kernel holds the task but it is not on the task list`, evidence);
}

/** How a task's `tasks` link stands: self-linked (unlinked and reset), or dangling. */
function taskListLinkState(k: Kernel, t: KObject): string {
  const link = t.member('tasks');
  const next = link.member('next').ptr();
  const prev = link.member('prev').ptr();
  const self = link.address;
  if (next === self && prev === self) return 'absent: task->tasks points to itself (unlinked)';
  const poison = 0xdead000000000100n;
  if ((next & ~0xffn) === poison || (prev & ~0xffn) === poison) return 'absent: task->tasks holds list poison (deleted)';
  return `absent: task->tasks links 0x${prev.toString(16)} ↔ 0x${next.toString(16)}, which do not lead back to it`;
}

function readComm(k: Kernel, task: bigint): string {
  const a = task + BigInt(k.offsetOf('task_struct', 'comm'));
  return readCString(k.space, vaHi(a), vaLo(a), 16);
}
