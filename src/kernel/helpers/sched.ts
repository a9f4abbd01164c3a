/**
 * Run queues (kernel/sched/sched.h): each CPU's `struct rq` holds the task running on it and
 * the runnable tasks of each scheduling class.
 *
 *   cpu_rq(cpu)                      →  cpuRq(k, cpu)            number → struct rq
 *   (the tasks an rq holds)          →  rqForEachTask(k, rq)     struct rq → struct task_struct *, with the queue
 *
 * CFS keeps runnable entities in a red-black tree (`cfs_rq.tasks_timeline`); with group
 * scheduling an entity may be a group whose own cfs_rq (`se->my_q`) holds more. RT keeps one
 * list per priority (`rt_rq.active.queue[]`), deadline a tree (`dl_rq.root`). The running
 * task is `rq->curr` and is not on the queues. Walks are bounded like every other: group
 * nesting, nodes and list lengths.
 */
import type { Kernel } from '../kernel.ts';
import { objectAt, type KObject } from '../object.ts';
import { listForEachEntry } from './list.ts';
import { rbtreeInorderForEachEntry } from './rbtree.ts';

export type RunQueue = 'curr' | 'cfs' | 'rt' | 'dl';

export interface RqTask {
  readonly task: KObject;
  readonly queue: RunQueue;
}

/** Deeper task-group nesting than the kernel allows (cgroup depth is bounded far lower in practice). */
const MAX_GROUP_DEPTH = 32;
const MAX_QUEUED = 1 << 20;

/** cpu_rq(): the run queue of `cpu` (the per-CPU variable `runqueues`). */
export function cpuRq(k: Kernel, cpu: number): KObject {
  return k.perCpu('runqueues', 'struct rq', cpu);
}

/**
 * Every task `rq` holds: `rq->curr` first (unless it is the idle task), then CFS, RT and
 * deadline queues. A task may appear once per queue it is on.
 */
export function* rqForEachTask(k: Kernel, rq: KObject): Generator<RqTask> {
  const idle = rq.member('idle').ptr();
  const curr = rq.member('curr').ptr();
  if (curr !== 0n && curr !== idle) yield { task: k.object('struct task_struct', curr), queue: 'curr' };
  yield* cfsTasks(k, rq.member('cfs'), 0);
  yield* rtTasks(k, rq.member('rt'));
  yield* dlTasks(k, rq.member('dl'));
}

function* cfsTasks(k: Kernel, cfsRq: KObject, depth: number): Generator<RqTask> {
  if (depth > MAX_GROUP_DEPTH) {
    k.warnings.warn('run queue', `task groups nested deeper than ${MAX_GROUP_DEPTH} at ${cfsRq.toString()}; stopped`);
    return;
  }
  const groups = k.hasMember('sched_entity', 'my_q');
  const seOffset = BigInt(k.offsetOf('task_struct', 'se'));
  for (const se of rbtreeInorderForEachEntry(cfsRq.member('tasks_timeline'), 'struct sched_entity', 'run_node', { what: 'cfs run queue', limit: MAX_QUEUED })) {
    const myQ = groups ? se.member('my_q').ptr() : 0n;
    if (myQ !== 0n) yield* cfsTasks(k, k.object('struct cfs_rq', myQ), depth + 1);
    else yield { task: objectAt(k, 'struct task_struct', se.address - seOffset), queue: 'cfs' };
  }
}

function* rtTasks(k: Kernel, rtRq: KObject): Generator<RqTask> {
  const queues = rtRq.member('active').member('queue');
  const groups = k.hasMember('sched_rt_entity', 'my_q');
  const rtOffset = BigInt(k.offsetOf('task_struct', 'rt'));
  for (let prio = 0; prio < queues.length; prio++) {
    for (const rtSe of listForEachEntry(queues.index(prio), 'struct sched_rt_entity', 'run_list', { what: 'rt run queue', limit: MAX_QUEUED })) {
      // RT group scheduling (rarely built) queues groups too; their tasks are on the group's rt_rq.
      if (groups && rtSe.member('my_q').ptr() !== 0n) continue;
      yield { task: objectAt(k, 'struct task_struct', rtSe.address - rtOffset), queue: 'rt' };
    }
  }
}

function* dlTasks(k: Kernel, dlRq: KObject): Generator<RqTask> {
  // Since 6.12 a deadline "server" entity (rq->fair_server), not part of any task, may be queued.
  const servers = k.hasMember('sched_dl_entity', 'dl_server');
  const dlOffset = BigInt(k.offsetOf('task_struct', 'dl'));
  for (const dlSe of rbtreeInorderForEachEntry(dlRq.member('root'), 'struct sched_dl_entity', 'rb_node', { what: 'deadline run queue', limit: MAX_QUEUED })) {
    if (servers && dlSe.member('dl_server').num() !== 0) continue;
    yield { task: objectAt(k, 'struct task_struct', dlSe.address - dlOffset), queue: 'dl' };
  }
}
