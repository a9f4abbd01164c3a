/**
 * Safe points: moments where a vCPU may be borrowed to run a kernel function, the way the
 * interrupted task itself could call it.
 *
 * vmlens stops the guest at the entry of `syscall_exit_to_user_mode` — every system call of every
 * process passes there, after the system call's work and before the return to user space: in
 * process context, with interrupts enabled, holding no lock. Kernels without that function
 * (before 5.11) are stopped at the entry of frequent system calls instead. At each stop the vCPU
 * is checked, not assumed:
 *  - kernel mode (CS.RPL 0) and interrupts enabled (RFLAGS.IF);
 *  - preemptible: the per-CPU preempt count is 0 apart from x86's inverted need-resched bit
 *    (bit 31), so not in an interrupt, softirq or atomic section;
 *  - `current` is a user process (not a kernel thread, not exiting, with an mm, not init — a
 *    call that oopses kills its task), and the stack pointer lies in its own kernel stack with
 *    room below it;
 *  - whatever the caller further asks of the task (root credentials, the initial pid namespace).
 */
import type { Kernel } from '../../kernel/kernel.ts';
import { PF_EXITING, PF_KTHREAD } from '../../kernel/task-flags.ts';
import type { X86Registers } from '../vcpu.ts';

/** Function entries tried as safe points, best first; at most four breakpoints are set. */
export const SAFE_POINT_FUNCTIONS: readonly string[] = ['syscall_exit_to_user_mode'];
export const FALLBACK_SAFE_POINT_FUNCTIONS: readonly string[] = ['__x64_sys_read', '__x64_sys_write', '__x64_sys_clock_nanosleep', '__x64_sys_nanosleep'];

const EFLAGS_IF = 0x200n;
/** x86 keeps PREEMPT_NEED_RESCHED inverted in bit 31 of the preempt count. */
const PREEMPT_MASK = 0x7fff_ffff;
/** No task stack is this large (16 KiB usually, 32 KiB with KASAN). */
const MAX_STACK_SPAN = 64n * 1024n;
/** Stack a safe point must leave below its rsp: room for arguments and the callee. */
export const MIN_STACK_ROOM = 10n * 1024n;
/** Kernel addresses have the top bit set (under 4- and 5-level paging alike). */
const KERNEL_HALF = 1n << 63n;

/** Facts about the task a safe point interrupted. */
export interface TaskFacts {
  readonly task: bigint;
  readonly pid: number;
  readonly tgid: number;
  readonly comm: string;
  readonly uid: number;
  readonly euid: number;
  /** cap_effective, low 64 bits. */
  readonly capEffective: bigint;
  /** Level of the task's pid namespace (0 = the initial one). */
  readonly pidNsLevel: number;
  /** Lowest address of the task's kernel stack. */
  readonly stack: bigint;
}

/** A stop accepted as a safe point. */
export interface SafePoint {
  /** gdbstub thread of the vCPU (vCPU index + 1). */
  readonly thread: number;
  /** Every register as it was: put back after the calls. */
  readonly registers: X86Registers;
  readonly task: TaskFacts;
  /** Where it stopped, e.g. `syscall_exit_to_user_mode`. */
  readonly at: string;
}

/** Reason a task cannot serve, or undefined when it can. */
export type TaskFilter = (task: TaskFacts) => string | undefined;

/** Per-CPU locations of `current` and the preempt count: plain per-CPU variables, or pcpu_hot (6.2+). */
export class PerCpuLayout {
  readonly currentTask: bigint;
  readonly preemptCount: bigint;

  constructor(k: Kernel) {
    const hot = k.symbols.lookup('pcpu_hot');
    const current = k.symbols.lookup('current_task');
    const preempt = k.symbols.lookup('__preempt_count');
    if (current !== undefined && preempt !== undefined) {
      this.currentTask = current;
      this.preemptCount = preempt;
    } else if (hot !== undefined) {
      this.currentTask = hot + BigInt(k.offsetOf('pcpu_hot', 'current_task'));
      this.preemptCount = hot + BigInt(k.offsetOf('pcpu_hot', 'preempt_count'));
    } else {
      this.currentTask = k.symbol('current_task');
      this.preemptCount = k.symbol('__preempt_count');
    }
  }
}

/** Addresses to stop at, with their names. */
export function safePointAddresses(k: Kernel): { name: string; address: bigint }[] {
  const pick = (names: readonly string[]) =>
    names.flatMap((name) => {
      const address = k.symbols.lookup(name);
      return address === undefined ? [] : [{ name, address }];
    });
  const best = pick(SAFE_POINT_FUNCTIONS);
  return best.length > 0 ? best : pick(FALLBACK_SAFE_POINT_FUNCTIONS);
}

/** The facts about a task_struct that safe points and filters look at. */
export function taskFacts(k: Kernel, task: bigint): TaskFacts & { readonly flags: number; readonly mm: bigint } {
  const t = k.object('struct task_struct', task);
  const cred = t.member('cred');
  const capAt = cred.member('cap_effective').address;
  return {
    task,
    pid: t.member('pid').num(),
    tgid: t.member('tgid').num(),
    comm: t.member('comm').str(),
    uid: cred.member('uid.val').num(),
    euid: cred.member('euid.val').num(),
    capEffective: k.space.readU64Big(capAt),
    pidNsLevel: t.member('thread_pid').member('level').num(),
    stack: t.member('stack').ptr(),
    flags: t.member('flags').num(),
    mm: t.member('mm').ptr(),
  };
}

/**
 * Whether the vCPU stopped with `regs` is at a safe point: the task's facts, or why not.
 * Guest memory is read (per-CPU data, the task); a read that fails is a reason too.
 */
export function checkSafePoint(
  k: Kernel,
  percpu: PerCpuLayout,
  regs: X86Registers,
  filter: TaskFilter | undefined,
): { ok: true; task: TaskFacts } | { ok: false; reason: string } {
  if ((regs.cs & 3n) !== 0n) return { ok: false, reason: 'vCPU in user mode' };
  if ((regs.eflags & EFLAGS_IF) === 0n) return { ok: false, reason: 'interrupts disabled' };
  if (regs.gsBase < KERNEL_HALF) return { ok: false, reason: 'no kernel per-CPU base in GS' };
  try {
    const pc = Number(k.space.readU64Big(BigInt.asUintN(64, regs.gsBase + percpu.preemptCount)) & 0xffff_ffffn);
    if ((pc & PREEMPT_MASK) !== 0) return { ok: false, reason: `not preemptible (preempt count 0x${pc.toString(16)})` };
    const current = k.space.readU64Big(BigInt.asUintN(64, regs.gsBase + percpu.currentTask));
    const facts = taskFacts(k, current);
    if (facts.flags & PF_KTHREAD) return { ok: false, reason: `kernel thread ${facts.comm}` };
    if (facts.flags & PF_EXITING) return { ok: false, reason: `task ${facts.pid} is exiting` };
    if (facts.mm === 0n) return { ok: false, reason: `task ${facts.pid} has no user memory` };
    // Should a call oops, the kernel kills the task that made it: never init.
    if (facts.tgid === 1) return { ok: false, reason: 'init (pid 1): a call that failed there would take the system down' };
    if (regs.rsp <= facts.stack || regs.rsp - facts.stack > MAX_STACK_SPAN) {
      return { ok: false, reason: `rsp 0x${regs.rsp.toString(16)} is not on task ${facts.pid}'s stack` };
    }
    if (regs.rsp - facts.stack < MIN_STACK_ROOM) return { ok: false, reason: `task ${facts.pid}'s stack is too deep` };
    const refused = filter?.(facts);
    if (refused !== undefined) return { ok: false, reason: refused };
    return { ok: true, task: facts };
  } catch (e) {
    return { ok: false, reason: `cannot read the task: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/** CAP_SYS_MODULE, the capability delete_module(2) asks for. */
export const CAP_SYS_MODULE = 16;

/** A filter for tasks that hold a capability (effective set). */
export function withCapability(cap: number, what: string): TaskFilter {
  return (t) => ((t.capEffective >> BigInt(cap)) & 1n ? undefined : `task ${t.pid} (${t.comm}) lacks ${what}`);
}

/** A filter for tasks of the initial pid namespace, where pids mean what the host user typed. */
export const inInitialPidNamespace: TaskFilter = (t) => (t.pidNsLevel === 0 ? undefined : `task ${t.pid} (${t.comm}) is in a child pid namespace`);

/** A filter for one process (any of its threads), e.g. for a function that acts on `current`. */
export function inProcess(tgid: number): TaskFilter {
  return (t) => (t.tgid === tgid ? undefined : `task ${t.pid} (${t.comm}) is not in process ${tgid}`);
}

/** Several filters: the first refusal wins. */
export function allOf(...filters: (TaskFilter | undefined)[]): TaskFilter {
  return (t) => {
    for (const f of filters) {
      const r = f?.(t);
      if (r !== undefined) return r;
    }
    return undefined;
  };
}
