/**
 * Processes and threads, from the kernel's task list (init_task.tasks) — the view of
 * Volatility's linux.pslist and of `ps`. Field names follow the kernel's (pid, tgid, comm…).
 *
 * The loop reads fields through precomputed BTF offsets with typed loads: a task costs a few
 * translations, no per-field object (see bench: µs per task).
 */
import { vaAddHi, vaAddLo, vaFromParts } from '../mmu/va.ts';
import { charsAt, i32At, loadPtr, u32At, u64At, type Ptr } from '../kernel/analysis-helpers.ts';
import { ListCursor } from '../kernel/helpers/list.ts';
import type { Kernel } from '../kernel/kernel.ts';

export interface TaskRow {
  /** Address of the task_struct. */
  readonly task: bigint;
  readonly pid: number;
  readonly tgid: number;
  readonly ppid: number;
  readonly uid: number;
  readonly gid: number;
  readonly euid: number;
  /** One letter as in /proc/PID/stat: R S D T t X Z P I. */
  readonly state: string;
  readonly comm: string;
  /**
   * The name /proc shows (proc_task_name): comm for user tasks; a kernel thread's full name
   * (kthread->full_name) and a workqueue worker's "kworker/0:1-events" description.
   */
  readonly name: string;
  /** Start time, nanoseconds since boot (start_boottime, as /proc uses). */
  readonly startTimeNs: number;
  /** Threads in the thread group (signal->nr_threads). */
  readonly threads: number;
  readonly kthread: boolean;
}

export interface PsOptions {
  /** Every thread, not only thread-group leaders. */
  readonly threads?: boolean;
  readonly limit?: number;
}

const PF_KTHREAD = 0x0020_0000;
const PF_WQ_WORKER = 0x0000_0020;
/** Size of /proc's name buffer (tcomm[64] in fs/proc/array.c). */
const PROC_NAME_MAX = 63;
const STATE_CHARS = 'RSDTtXZPI';
const TASK_REPORT = 0x7f;
const TASK_REPORT_IDLE = 0x80;
const TASK_IDLE = 0x402;
const TASK_RTLOCK_WAIT = 0x1000;

/** task_state_index() of the kernel: the letter /proc shows for a task. */
export function taskStateChar(state: number, exitState: number): string {
  let s = (state | exitState) & TASK_REPORT;
  if (state === TASK_IDLE) s = TASK_REPORT_IDLE;
  else if (state === TASK_RTLOCK_WAIT) s = 2;
  const index = s === 0 ? 0 : 32 - Math.clz32(s);
  return STATE_CHARS[index] ?? '?';
}

/** Offsets of every task_struct field ps reads, resolved once per kernel from BTF. */
export class TaskLayout {
  readonly tasks: number;
  readonly pid: number;
  readonly tgid: number;
  readonly comm: number;
  readonly commLen: number;
  readonly realParent: number;
  readonly cred: number;
  readonly credUid: number;
  readonly credGid: number;
  readonly credEuid: number;
  readonly state: number;
  readonly exitState: number;
  readonly flags: number;
  readonly startBoottime: number;
  readonly signal: number;
  readonly nrThreads: number;
  /** Thread list: signal->thread_head / task->thread_node (5.x+), else task->thread_group. */
  readonly threadHead: number;
  readonly threadNode: number;
  readonly threadsViaSignal: boolean;

  constructor(k: Kernel) {
    const t = 'task_struct';
    this.tasks = k.offsetOf(t, 'tasks');
    this.pid = k.offsetOf(t, 'pid');
    this.tgid = k.offsetOf(t, 'tgid');
    this.comm = k.offsetOf(t, 'comm');
    this.commLen = k.btf.sizeof(k.btf.member('struct task_struct', 'comm')!.typeId);
    this.realParent = k.offsetOf(t, 'real_parent');
    this.cred = k.offsetOf(t, 'cred');
    this.credUid = k.offsetOf('cred', 'uid');
    this.credGid = k.offsetOf('cred', 'gid');
    this.credEuid = k.offsetOf('cred', 'euid');
    this.state = k.hasMember(t, '__state') ? k.offsetOf(t, '__state') : k.offsetOf(t, 'state');
    this.exitState = k.offsetOf(t, 'exit_state');
    this.flags = k.offsetOf(t, 'flags');
    this.startBoottime = k.hasMember(t, 'start_boottime') ? k.offsetOf(t, 'start_boottime') : k.offsetOf(t, 'real_start_time');
    this.signal = k.offsetOf(t, 'signal');
    this.nrThreads = k.offsetOf('signal_struct', 'nr_threads');
    this.threadsViaSignal = k.hasMember('signal_struct', 'thread_head') && k.hasMember(t, 'thread_node');
    this.threadHead = this.threadsViaSignal ? k.offsetOf('signal_struct', 'thread_head') : k.offsetOf(t, 'thread_group');
    this.threadNode = this.threadsViaSignal ? k.offsetOf(t, 'thread_node') : k.offsetOf(t, 'thread_group');
  }
}

const layouts = new WeakMap<Kernel, TaskLayout>();

export function taskLayout(k: Kernel): TaskLayout {
  let l = layouts.get(k);
  if (!l) {
    l = new TaskLayout(k);
    layouts.set(k, l);
  }
  return l;
}

/** Read one task's row. (hi, lo) is the task_struct address. */
export function readTask(k: Kernel, L: TaskLayout, hi: number, lo: number, scratch: Ptr): TaskRow {
  const s = k.space;
  const pid = i32At(s, hi, lo, L.pid);
  const tgid = i32At(s, hi, lo, L.tgid);
  const comm = charsAt(s, hi, lo, L.comm, L.commLen);
  const state = taskStateChar(u32At(s, hi, lo, L.state), u32At(s, hi, lo, L.exitState));
  const flags = u32At(s, hi, lo, L.flags);
  const startTimeNs = u64At(s, hi, lo, L.startBoottime);
  let ppid = 0;
  if (loadPtr(s, hi, lo, L.realParent, scratch)) ppid = i32At(s, scratch.hi, scratch.lo, L.tgid);
  let uid = -1;
  let gid = -1;
  let euid = -1;
  if (loadPtr(s, hi, lo, L.cred, scratch)) {
    uid = u32At(s, scratch.hi, scratch.lo, L.credUid);
    gid = u32At(s, scratch.hi, scratch.lo, L.credGid);
    euid = u32At(s, scratch.hi, scratch.lo, L.credEuid);
  }
  let threads = 0;
  if (loadPtr(s, hi, lo, L.signal, scratch)) threads = i32At(s, scratch.hi, scratch.lo, L.nrThreads);
  const kthread = (flags & PF_KTHREAD) !== 0;
  return {
    task: vaFromParts(hi, lo),
    pid,
    tgid,
    ppid,
    uid,
    gid,
    euid,
    state,
    comm,
    name: kthread ? kthreadName(k, vaFromParts(hi, lo), comm, flags) : comm,
    startTimeNs,
    threads,
    kthread,
  };
}

/**
 * proc_task_name() for kernel threads: workqueue workers get "-desc" (or "+desc" while running
 * work) after their comm; other kthreads their full name when it did not fit in comm. Kernels
 * without these structures (older than 5.17) show comm, as their /proc does.
 */
function kthreadName(k: Kernel, task: bigint, comm: string, flags: number): string {
  if (!k.hasMember('task_struct', 'worker_private') || !k.hasMember('kthread', 'full_name')) return comm;
  try {
    const kt = k.object('struct task_struct', task).member('worker_private').cast('struct kthread *');
    if (kt.isNull()) return comm;
    if (flags & PF_WQ_WORKER) {
      const worker = kt.deref().member('data').cast('struct worker *');
      if (worker.isNull() || worker.member('pool').isNull()) return comm;
      const desc = worker.member('desc').str();
      if (desc === '') return comm;
      return `${comm}${worker.member('current_work').isNull() ? '-' : '+'}${desc}`.slice(0, PROC_NAME_MAX);
    }
    const full = kt.deref().member('full_name');
    return full.isNull() ? comm : full.str(PROC_NAME_MAX);
  } catch {
    return comm;
  }
}

/**
 * Every process (thread-group leader) on the task list, or every thread with `threads`.
 * A task whose fields cannot be read is skipped with a warning; a broken list ends the walk
 * with a warning and the tasks read so far.
 */
export function listTasks(k: Kernel, opts: PsOptions = {}): TaskRow[] {
  const L = taskLayout(k);
  const s = k.space;
  const init = k.symbol('init_task');
  const headHi = Number(init >> 32n) >>> 0;
  const headLo = Number(init & 0xffff_ffffn);
  const rows: TaskRow[] = [];
  const scratch: Ptr = { hi: 0, lo: 0 };
  const thread: Ptr = { hi: 0, lo: 0 };
  const cur = new ListCursor(s, k.warnings, vaAddHi(headHi, headLo, L.tasks), vaAddLo(headLo, L.tasks), {
    limit: opts.limit,
    what: 'task list',
  });
  while (cur.next()) {
    const hi = vaAddHi(cur.hi, cur.lo, -L.tasks);
    const lo = vaAddLo(cur.lo, -L.tasks);
    try {
      if (!opts.threads) {
        rows.push(readTask(k, L, hi, lo, scratch));
        continue;
      }
      if (L.threadsViaSignal) {
        if (!loadPtr(s, hi, lo, L.signal, thread)) continue;
        const tc = new ListCursor(s, k.warnings, vaAddHi(thread.hi, thread.lo, L.threadHead), vaAddLo(thread.lo, L.threadHead), {
          limit: opts.limit,
          what: 'thread list',
        });
        while (tc.next()) rows.push(readTask(k, L, vaAddHi(tc.hi, tc.lo, -L.threadNode), vaAddLo(tc.lo, -L.threadNode), scratch));
      } else {
        rows.push(readTask(k, L, hi, lo, scratch));
        const th = vaAddHi(hi, lo, L.threadNode);
        const tl = vaAddLo(lo, L.threadNode);
        const tc = new ListCursor(s, k.warnings, th, tl, { limit: opts.limit, what: 'thread list' });
        while (tc.next()) rows.push(readTask(k, L, vaAddHi(tc.hi, tc.lo, -L.threadNode), vaAddLo(tc.lo, -L.threadNode), scratch));
      }
    } catch (e) {
      k.warnings.warn('task list', `task at 0x${vaFromParts(hi, lo).toString(16)}: ${(e as Error).message}`);
    }
  }
  return rows;
}
