/**
 * Processes and threads, from the kernel's task list (init_task.tasks) — the view of
 * Volatility's linux.pslist and of `ps`. Field names follow the kernel's (pid, tgid, comm…).
 *
 * The hot loop reads fields through precomputed BTF offsets with a FieldReader: each page of a
 * task is translated once, and no object is made per field (see bench: µs per task).
 * `TaskScanner` is the allocation-free walk underneath, for callers that scan continuously
 * (ps --watch) or want columns without rows; `listTasks` builds rows on it.
 */
import { DOUBLE_ZERO, vaAddHi, vaAddLo, vaFromParts } from '../mmu/va.ts';
import { FieldReader, scanOnce, type Ptr } from '../kernel/analysis-helpers.ts';
import { DEFAULT_WALK_LIMIT, ListCursor } from '../kernel/helpers/list.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { readCString } from '../kernel/object.ts';
import { PF_KTHREAD, PF_WQ_WORKER } from '../kernel/task-flags.ts';
import { isVmlensError } from '../util/errors.ts';

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

/** Size of /proc's name buffer (tcomm[64] in fs/proc/array.c). */
const PROC_NAME_MAX = 63;
const STATE_CHARS = 'RSDTtXZPI';
const TASK_REPORT = 0x7f;
const TASK_REPORT_IDLE = 0x80;
const TASK_IDLE = 0x402;
const TASK_RTLOCK_WAIT = 0x1000;
/** PID_MAX_LIMIT (include/linux/threads.h): a pid above it is not a pid. */
const PID_MAX_LIMIT = 4 * 1024 * 1024;

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
  /** Kernel-thread names (5.17+): task->worker_private is the struct kthread; -1 where absent. */
  readonly workerPrivate: number;
  readonly kthreadData: number;
  readonly kthreadFullName: number;
  readonly workerPool: number;
  readonly workerDesc: number;
  readonly workerDescLen: number;
  readonly workerCurrentWork: number;

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
    const names =
      k.hasMember(t, 'worker_private') &&
      k.hasMember('kthread', 'full_name') &&
      k.hasMember('kthread', 'data') &&
      k.hasMember('worker', 'desc') &&
      k.hasMember('worker', 'pool') &&
      k.hasMember('worker', 'current_work');
    this.workerPrivate = names ? k.offsetOf(t, 'worker_private') : -1;
    this.kthreadData = names ? k.offsetOf('kthread', 'data') : -1;
    this.kthreadFullName = names ? k.offsetOf('kthread', 'full_name') : -1;
    this.workerPool = names ? k.offsetOf('worker', 'pool') : -1;
    this.workerDesc = names ? k.offsetOf('worker', 'desc') : -1;
    this.workerDescLen = names ? k.btf.sizeof(k.btf.member('struct worker', 'desc')!.typeId) : 0;
    this.workerCurrentWork = names ? k.offsetOf('worker', 'current_work') : -1;
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

/** Field readers of a kernel: the task's, and one for the objects it points to. */
interface Readers {
  readonly task: FieldReader;
  readonly other: FieldReader;
}
const readersOf = new WeakMap<Kernel, Readers>();
function readers(k: Kernel): Readers {
  let r = readersOf.get(k);
  if (!r || r.task.space !== k.space) {
    r = { task: new FieldReader(k.space), other: new FieldReader(k.space) };
    readersOf.set(k, r);
  }
  return r;
}

/** Read one task's row. (hi, lo) is the task_struct address. */
export function readTask(k: Kernel, L: TaskLayout, hi: number, lo: number, scratch: Ptr): TaskRow {
  const { task: f, other: o } = readers(k);
  f.at(hi, lo);
  const pid = f.i32(L.pid);
  const tgid = f.i32(L.tgid);
  const comm = f.chars(L.comm, L.commLen);
  const state = taskStateChar(f.u32(L.state), f.u32(L.exitState));
  const flags = f.u32(L.flags);
  const startTimeNs = f.num64(L.startBoottime);
  const parent = f.ptr(L.realParent, scratch);
  const ppid = parent ? o.at(scratch.hi, scratch.lo).i32(L.tgid) : 0;
  let uid = -1;
  let gid = -1;
  let euid = -1;
  if (f.ptr(L.cred, scratch)) {
    o.at(scratch.hi, scratch.lo);
    uid = o.u32(L.credUid);
    gid = o.u32(L.credGid);
    euid = o.u32(L.credEuid);
  }
  let threads = 0;
  if (f.ptr(L.signal, scratch)) threads = o.at(scratch.hi, scratch.lo).i32(L.nrThreads);
  const kthread = (flags & PF_KTHREAD) !== 0;
  const task = vaFromParts(hi, lo);
  return {
    task,
    pid,
    tgid,
    ppid,
    uid,
    gid,
    euid,
    state,
    comm,
    name: kthread ? kthreadName(k, L, hi, lo, comm, flags) : comm,
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
function kthreadName(k: Kernel, L: TaskLayout, hi: number, lo: number, comm: string, flags: number): string {
  if (L.workerPrivate < 0) return comm;
  const o = readers(k).other;
  const p: Ptr = { hi: 0, lo: 0 };
  try {
    // struct kthread *kt = task->worker_private
    if (!o.at(hi, lo).ptr(L.workerPrivate, p)) return comm;
    const ktHi = p.hi;
    const ktLo = p.lo;
    if (flags & PF_WQ_WORKER) {
      // struct worker *worker = kt->data
      if (!o.at(ktHi, ktLo).ptr(L.kthreadData, p)) return comm;
      const wHi = p.hi;
      const wLo = p.lo;
      if (!o.at(wHi, wLo).ptr(L.workerPool, p)) return comm;
      const busy = o.ptr(L.workerCurrentWork, p);
      const desc = readCString(k.space, vaAddHi(wHi, wLo, L.workerDesc), vaAddLo(wLo, L.workerDesc), L.workerDescLen);
      if (desc === '') return comm;
      return `${comm}${busy ? '+' : '-'}${desc}`.slice(0, PROC_NAME_MAX);
    }
    if (!o.at(ktHi, ktLo).ptr(L.kthreadFullName, p)) return comm;
    return readCString(k.space, p.hi, p.lo, PROC_NAME_MAX);
  } catch {
    return comm;
  }
}

/**
 * Every process (thread-group leader) on the task list, or every thread with `threads`.
 * A task whose fields cannot be read is skipped with a warning; a broken list ends the walk
 * with a warning and the tasks read so far. For sources without zero-copy windows each guest
 * page is fetched once for the whole walk (see scanOnce).
 */
export function listTasks(k: Kernel, opts: PsOptions = {}): TaskRow[] {
  return scanOnce(k.space, () => listTasksNow(k, opts));
}

function listTasksNow(k: Kernel, opts: PsOptions): TaskRow[] {
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
        if (!readers(k).other.at(hi, lo).ptr(L.signal, thread)) continue;
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

// ---- the allocation-free scan -------------------------------------------------------------------

export interface TaskScanOptions {
  /** Most tasks visited before the walk is declared runaway (default 1,000,000). */
  readonly limit?: number;
}

/**
 * A walk of the process list (init_task.tasks, thread-group leaders) that allocates nothing per
 * task, for callers that scan continuously. `scan(visit)` calls `visit` once per task with the
 * scanner positioned on it: `hi`/`lo` (the task_struct), `pid`, `tgid` and `startTimeNs` are
 * read for every task; `comm()`, `copyComm()`, `ppid()`, `uid()`, `state()`, `flags()` read
 * more of the current task on demand.
 *
 * A running guest changes the list under the walk. Every step checks the link it followed
 * against the back link (`next->prev == this node`, which list_add_tail_rcu and list_del_rcu
 * keep true for linked nodes), and the walk is bounded and cycle-checked (Brent). After a scan,
 * `complete` says it came back to the head with every link consistent; otherwise `why` says
 * where it tore. Tasks visited before a tear were linked when read; tasks after it were not
 * seen — so a torn scan says nothing about which tasks exited.
 */
export class TaskScanner {
  /**
   * The current task_struct (as int32 halves; every (hi, lo) helper takes them), its pid, tgid
   * and start time (ns since boot, start_boottime).
   */
  hi = 0;
  lo = 0;
  pid = 0;
  tgid = 0;
  startTimeNs = DOUBLE_ZERO;
  /** Tasks visited by the last scan. */
  count = 0;
  /** Whether the last scan walked the whole list back to its head, every link consistent. */
  complete = false;
  /** Why the last scan stopped early ('' when complete). */
  why = '';

  private readonly L: TaskLayout;
  private readonly f: FieldReader;
  private readonly o: FieldReader;
  private readonly headHi: number;
  private readonly headLo: number;
  private readonly limit: number;

  constructor(
    readonly kernel: Kernel,
    opts: TaskScanOptions = {},
  ) {
    this.L = taskLayout(kernel);
    this.f = new FieldReader(kernel.space);
    this.o = new FieldReader(kernel.space);
    const init = kernel.symbol('init_task');
    this.headHi = vaAddHi(Number(init >> 32n) >>> 0, Number(init & 0xffff_ffffn), this.L.tasks);
    this.headLo = vaAddLo(Number(init & 0xffff_ffffn), this.L.tasks);
    this.limit = opts.limit ?? DEFAULT_WALK_LIMIT;
  }

  /**
   * Walk the list once, calling `visit` for each task. Returns `complete`. A fault or an
   * inconsistency ends the walk (never an exception for guest data); an exception thrown by
   * `visit` propagates.
   */
  scan(visit: (scanner: TaskScanner) => void): boolean {
    return scanOnce(this.kernel.space, () => this.walk(visit));
  }

  private walk(visit: (scanner: TaskScanner) => void): boolean {
    const L = this.L;
    const f = this.f;
    const headHi = this.headHi;
    const headLo = this.headLo;
    this.count = 0;
    this.complete = false;
    this.why = '';
    // Links travel in locals and through the reader's lo/hi, never in an object: a 64-bit
    // pointer's halves exceed V8's small integers, and storing them in a field of a generic
    // object would allocate on every step.
    // The node we came from, and the tortoise of Brent's cycle check.
    let prevHi = headHi;
    let prevLo = headLo;
    let tHi = headHi;
    let tLo = headLo;
    let power = 1;
    let lambda = 0;
    try {
      // init_task.tasks.next
      f.at(headHi, headLo).load64(0);
      let nHi = f.hi;
      let nLo = f.lo;
      for (;;) {
        if (nHi === headHi && nLo === headLo) {
          // Back at the head: consistent only if the head's prev is the last node we visited.
          f.at(headHi, headLo).load64(8);
          if (f.hi !== prevHi || f.lo !== prevLo) return this.stop('the list changed at its end');
          this.complete = true;
          return true;
        }
        if (nHi === 0 && nLo === 0) return this.stop(`NULL link after ${this.count} tasks`);
        if (this.count >= this.limit) return this.stop(`more than ${this.limit} tasks`);
        if (nHi === tHi && nLo === tLo) return this.stop(`cycle not through the head after ${this.count} tasks`);
        if (++lambda === power) {
          tHi = nHi;
          tLo = nLo;
          power *= 2;
          lambda = 0;
        }
        // int32 halves: small integers to V8, never boxed when passed or stored.
        const hi = vaAddHi(nHi, nLo, -L.tasks) | 0;
        const lo = vaAddLo(nLo, -L.tasks) | 0;
        f.at(hi, lo);
        // The back link: a node taken off the list since we read the link to it fails here.
        f.load64(L.tasks + 8);
        if (f.hi !== prevHi || f.lo !== prevLo) return this.stop(`the list changed after ${this.count} tasks`);
        const pid = f.i32(L.pid);
        if (pid < 0 || pid > PID_MAX_LIMIT) return this.stop(`implausible pid ${pid} after ${this.count} tasks`);
        this.hi = hi;
        this.lo = lo;
        this.pid = pid;
        this.tgid = f.i32(L.tgid);
        f.load64(L.startBoottime);
        this.startTimeNs = f.hi * 4294967296 + f.lo;
        this.count++;
        visit(this);
        // The visitor may have read other objects with `o`; `f` still holds the task.
        f.load64(L.tasks);
        prevHi = nHi;
        prevLo = nLo;
        nHi = f.hi;
        nLo = f.lo;
      }
    } catch (e) {
      if (!isVmlensError(e)) throw e;
      return this.stop(e.message);
    }
  }

  /** comm of the current task. */
  comm(): string {
    return this.f.chars(this.L.comm, this.L.commLen);
  }

  /** Copy the current task's comm bytes (TASK_COMM_LEN, NUL-padded as the kernel keeps it). */
  copyComm(dst: Uint8Array, at: number): void {
    this.f.copy(this.L.comm, dst, at, Math.min(this.L.commLen, dst.length - at));
  }

  /** Bytes of comm (16 on every kernel since 2.6). */
  get commLength(): number {
    return this.L.commLen;
  }

  /** tgid of the current task's real parent (0 for a NULL parent). */
  ppid(): number {
    const f = this.f;
    f.load64(this.L.realParent);
    if (f.hi === 0 && f.lo === 0) return 0;
    return this.o.at(f.hi | 0, f.lo | 0).i32(this.L.tgid);
  }

  /** Real uid of the current task (cred->uid), or -1 without credentials. */
  uid(): number {
    const f = this.f;
    f.load64(this.L.cred);
    if (f.hi === 0 && f.lo === 0) return -1;
    return this.o.at(f.hi | 0, f.lo | 0).u32(this.L.credUid);
  }

  /** State letter as /proc shows it. */
  state(): string {
    return taskStateChar(this.f.u32(this.L.state), this.f.u32(this.L.exitState));
  }

  /** task->flags (PF_KTHREAD = 0x00200000 marks kernel threads). */
  flags(): number {
    return this.f.u32(this.L.flags);
  }

  /** The current task_struct's address. */
  task(): bigint {
    return vaFromParts(this.hi, this.lo);
  }

  private stop(why: string): false {
    this.why = why;
    this.complete = false;
    return false;
  }
}

export { PF_KTHREAD };
