/**
 * Kernel function calls from outside the guest. A session borrows one task at a safe point
 * (safe-point.ts), runs one or more functions on its kernel stack as if the task had called
 * them, and gives the task back exactly as it was:
 *
 *  1. breakpoints at the safe-point functions; the guest runs until a vCPU stops at one whose
 *     state passes every check (other stops are stepped over and the guest continued); the
 *     breakpoints are removed at once;
 *  2. for each call: the arguments and a return address — the trap, a dead int3 in kernel text
 *     (trap.ts) — go on the task's stack below its stack pointer (frame.ts), rip/rsp/argument
 *     registers are set, a breakpoint at the trap, and the guest runs until the trap is hit with
 *     the stack pointer just above our frame. That is our return and no one else's: a call that
 *     sleeps comes back on whatever vCPU the task was scheduled on. RAX is the result;
 *  3. every general register, rip and rflags of the task are put back (on the vCPU it is on
 *     now), breakpoints removed, the guest resumed — also after errors, timeouts and signals
 *     (vcpu.ts).
 *
 * A call that does not return in time cannot be taken back — the function runs on. vmlens then
 * abandons the task (the result says so): when the function does return, the task meets the
 * int3 and the kernel oopses it. Calls are logged in the audit log whatever their outcome.
 */
import type { Kernel } from '../../kernel/kernel.ts';
import { PF_EXITING } from '../../kernel/task-flags.ts';
import { TargetError, UsageError, VmlensError } from '../../util/errors.ts';
import { appendAudit, auditTargetOf, type AuditValue } from '../audit.ts';
import { VcpuControl, type VcpuControlOptions, type X86Registers } from '../vcpu.ts';
import type { CallArg } from './args.ts';
import { layoutFrame, type Frame } from './frame.ts';
import { checkSafePoint, PerCpuLayout, safePointAddresses, type SafePoint, type TaskFilter } from './safe-point.ts';
import { findReturnTrap } from './trap.ts';

export interface CallSessionOptions {
  /** The command as a user would type it, for the audit log. */
  readonly command: string;
  /** How long to wait for a task to reach a safe point. Default 20 s. */
  readonly safePointTimeoutMs?: number;
  /** How long one call may run before the task is abandoned. Default 60 s. */
  readonly returnTimeoutMs?: number;
  /** What the borrowed task must be (root, initial pid namespace…). */
  readonly taskFilter?: TaskFilter;
  /** Words for the safe-point timeout message, e.g. 'as root'. */
  readonly taskDescription?: string;
  /** Progress and warnings for the user (stderr in the CLI). */
  readonly notice?: (message: string) => void;
  readonly vcpu?: Omit<VcpuControlOptions, 'notice'>;
  /** Write the audit log entry (default true). */
  readonly audit?: boolean;
}

/** One call made in a session, as logged. */
export interface CallRecord {
  readonly function: string;
  readonly address: bigint;
  /** Arguments as the registers and stack carried them (placed bytes: their address). */
  readonly args: readonly bigint[];
  readonly result: bigint;
  /** vCPU thread the call returned on. */
  readonly thread: number;
  readonly ms: number;
}

/** The general registers, rip and rflags: the task's own state (segment bases and control registers belong to the vCPU). */
const TASK_REGISTERS = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'eflags'] as const;
/** Most bytes a frame may take below the safe point's stack pointer; the rest is the callee's. */
const MAX_FRAME_BYTES = 5n * 1024n;

const DEFAULT_SAFE_POINT_TIMEOUT_MS = 20_000;
const DEFAULT_RETURN_TIMEOUT_MS = 60_000;
/** How often the user hears that a call has not returned yet. */
const RETURN_NOTICE_MS = 10_000;
/** How often a running call's task is checked for having died. */
const TASK_CHECK_MS = 1_000;
const DIED = 'died';

function taskState(regs: X86Registers): Partial<X86Registers> {
  const out: Partial<Record<keyof X86Registers, bigint>> = {};
  for (const r of TASK_REGISTERS) out[r] = regs[r];
  return out;
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/** A session's handle for making calls; valid inside withKernelCalls() only. */
export class KernelCalls {
  private thread: number;
  private abandoned = false;
  private signalsSeen: number;
  private toldAboutSignal = false;
  readonly records: CallRecord[] = [];

  constructor(
    private readonly k: Kernel,
    private readonly control: VcpuControl,
    readonly point: SafePoint,
    private readonly trap: bigint,
    private readonly opts: CallSessionOptions,
  ) {
    this.thread = point.thread;
    this.signalsSeen = control.signalsReceived;
  }

  /** The vCPU thread the borrowed task is on now (it may move while a call sleeps). */
  get currentThread(): number {
    return this.thread;
  }

  /** True once a call was given up on: the task cannot be given back. */
  get taskAbandoned(): boolean {
    return this.abandoned;
  }

  /**
   * Call the kernel function at `address` with `args`; returns RAX. `name` is for messages and
   * the log. Throws when the call does not return in time (the task is then abandoned).
   */
  async call(name: string, address: bigint, args: readonly CallArg[]): Promise<bigint> {
    if (this.abandoned) throw new TargetError(`cannot call ${name}: an earlier call never returned`);
    const frame = layoutFrame({ rsp: this.point.registers.rsp, args, returnAddress: this.trap });
    if (this.point.registers.rsp - frame.low > MAX_FRAME_BYTES) {
      throw new UsageError(`the arguments of ${name} take ${this.point.registers.rsp - frame.low} bytes of stack; at most ${MAX_FRAME_BYTES} fit`);
    }
    for (const w of frame.writes) this.k.space.write(w.va, w.bytes);
    await this.control.setRegisters(this.thread, { ...frame.registers, rip: address, rsp: frame.rsp });
    await this.control.insertBreakpoint(this.trap);
    const started = Date.now();
    await this.control.resume();
    try {
      return await this.awaitReturn(name, address, args, frame, started);
    } catch (e) {
      // Whatever failed while the function ran, it may run still: its task must not be taken
      // back from under it.
      this.abandoned = true;
      throw e;
    }
  }

  private async awaitReturn(name: string, address: bigint, args: readonly CallArg[], frame: Frame, started: number): Promise<bigint> {
    const deadline = started + (this.opts.returnTimeoutMs ?? DEFAULT_RETURN_TIMEOUT_MS);
    const expectRsp = frame.rsp + 8n;
    let lastNotice = started;
    let giveUp: string | undefined;
    for (;;) {
      // The guest keeps running between waits: a long call is not stopped every second.
      const outcome =
        giveUp === undefined
          ? await this.control.waitForStop(Math.max(1, Math.min(TASK_CHECK_MS, deadline - Date.now())), { keepRunning: true, signalsSeen: this.signalsSeen })
          : undefined;
      let stop = outcome?.kind === 'stop' ? outcome.stop : undefined;
      if (stop === undefined && giveUp === undefined) {
        const now = Date.now();
        // Once a task is borrowed, the work runs to its end: a first signal (also one that came
        // between calls) is told about, a second one gives up on the running call.
        if (outcome?.kind === 'signal' && !this.toldAboutSignal && now < deadline) {
          this.toldAboutSignal = true;
          this.signalsSeen = this.control.signalsReceived;
          this.opts.notice?.(`${name} is running in the guest and cannot be stopped; waiting for it to return (signal again to give up on it)`);
          continue;
        }
        if (outcome?.kind === 'signal') giveUp = 'on request';
        else if (this.taskDied()) giveUp = DIED;
        else if (now >= deadline) giveUp = `after ${Math.round((now - started) / 1000)} s`;
        else {
          if (now - lastNotice >= RETURN_NOTICE_MS) {
            lastNotice = now;
            this.opts.notice?.(`${name} has not returned after ${Math.round((now - started) / 1000)} s (it may be sleeping); waiting`);
          }
          continue;
        }
      }
      // Giving up stops the guest first; a return that raced with that still counts.
      if (stop === undefined) stop = await this.control.stop();
      if (stop !== undefined) {
        const thread = stop.thread ?? this.thread;
        const regs = await this.control.registers(thread);
        if (regs.rip === this.trap && regs.rsp === expectRsp) {
          this.thread = thread;
          await this.control.removeBreakpoint(this.trap);
          const record: CallRecord = { function: name, address, args: argValues(args, frame.placed), result: regs.rax, thread, ms: Date.now() - started };
          this.records.push(record);
          return regs.rax;
        }
        // Someone else at the trap can only be stray code already headed for the int3; any
        // other stop (a pause from elsewhere) needs nothing: run on.
        if (regs.rip === this.trap) {
          this.opts.notice?.(`another context (vCPU ${thread - 1}, rsp ${hex(regs.rsp)}) reached the call trap; letting it pass`);
          await this.control.stepOver(thread, this.trap);
        }
        if (giveUp === undefined) {
          if (VcpuControl.isForeignPause(stop)) await this.control.waitWhilePausedElsewhere(Math.max(0, deadline - Date.now()));
          await this.control.resume();
          continue;
        }
      }
      const task = `task ${this.point.task.pid} (${this.point.task.comm})`;
      if (giveUp === DIED) throw new TargetError(`${name} did not return: ${task} died while running it (an oops in the guest? see its kernel log)`);
      throw new TargetError(
        `${name} did not return; vmlens gave up waiting ${giveUp}. The ${task} cannot be given back: ` +
          `should ${name} ever return, the task hits an int3 at ${hex(this.trap)} and the kernel oopses it`,
      );
    }
  }

  /** Whether the borrowed task is exiting or gone: then the call will never return. */
  private taskDied(): boolean {
    try {
      const flags = this.k.space.readU64Big(this.point.task.task + BigInt(this.k.offsetOf('task_struct', 'flags')));
      return (flags & BigInt(PF_EXITING)) !== 0n;
    } catch {
      return true;
    }
  }

  /** Put the task's registers back. */
  async restore(): Promise<void> {
    await this.control.setRegisters(this.thread, taskState(this.point.registers));
  }
}

function argValues(args: readonly CallArg[], placed: readonly (bigint | undefined)[]): bigint[] {
  return args.map((a, i) => (a.kind === 'value' ? BigInt.asUintN(64, a.value) : (placed[i] ?? 0n)));
}

function interrupted(control: VcpuControl): VmlensError {
  return new VmlensError(`interrupted by ${control.lastSignalReceived ?? 'a signal'} while waiting for a safe point; nothing was changed`);
}

/** Wait for a safe point; the breakpoints are gone again when this returns or throws. */
async function waitForSafePoint(k: Kernel, control: VcpuControl, opts: CallSessionOptions): Promise<SafePoint> {
  const points = safePointAddresses(k);
  if (points.length === 0) throw new UsageError('the kernel has none of the functions vmlens stops at for calls (syscall_exit_to_user_mode, __x64_sys_read…)');
  const percpu = new PerCpuLayout(k);
  const byAddress = new Map(points.map((p) => [p.address, p.name]));
  const timeoutMs = opts.safePointTimeoutMs ?? DEFAULT_SAFE_POINT_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  const rejected = new Map<string, number>();
  const signalsSeen = control.signalsReceived;
  for (const p of points) await control.insertBreakpoint(p.address);
  try {
    for (;;) {
      if (control.signalsReceived !== signalsSeen) throw interrupted(control);
      await control.resume();
      const outcome = await control.waitForStop(Math.max(1, deadline - Date.now()), { signalsSeen });
      if (outcome.kind === 'signal') throw interrupted(control);
      if (outcome.kind === 'timeout') {
        const seen = [...rejected.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([r, n]) => `${r} (${n}×)`);
        throw new TargetError(
          `no task reached a safe point${opts.taskDescription ? ` ${opts.taskDescription}` : ''} within ${timeoutMs / 1000} s; nothing was changed` +
            (seen.length ? `. Stops turned down: ${seen.join(', ')}` : ' (no system call was made meanwhile: is the guest idle?)'),
        );
      }
      const thread = outcome.stop.thread ?? 1;
      const regs = await control.registers(thread);
      const at = byAddress.get(regs.rip);
      if (at === undefined) {
        // Not one of our breakpoints: a pause made elsewhere, to be waited out.
        if (VcpuControl.isForeignPause(outcome.stop)) await control.waitWhilePausedElsewhere(Math.max(0, deadline - Date.now()));
        continue;
      }
      const verdict = checkSafePoint(k, percpu, regs, opts.taskFilter);
      if (verdict.ok) return { thread, registers: regs, task: verdict.task, at };
      rejected.set(verdict.reason, (rejected.get(verdict.reason) ?? 0) + 1);
      await control.stepOver(thread, regs.rip);
    }
  } finally {
    await control.removeAllBreakpoints();
  }
}

/**
 * Borrow a task at a safe point, run `fn` with it, give it back. The guest must be live, running
 * and writable (arguments go into its memory).
 */
export async function withKernelCalls<T>(k: Kernel, opts: CallSessionOptions, fn: (calls: KernelCalls) => Promise<T>): Promise<T> {
  if (!k.machine.live) throw new UsageError('kernel calls need a running guest, not a memory dump');
  if (!k.machine.memory.writable) throw new UsageError(`guest memory of ${k.machine.name} is read-only here: kernel calls put their arguments in it`);
  const trap = findReturnTrap(k);
  const control = await VcpuControl.open(k.machine, { ...opts.vcpu, ...(opts.notice ? { notice: opts.notice } : {}) });
  let calls: KernelCalls | undefined;
  let restored = false;
  let failure: unknown;
  let result: T | undefined;
  try {
    if (!control.wasRunning) throw new UsageError(`${k.machine.name} is paused: kernel calls run guest code, resume it first`);
    const point = await waitForSafePoint(k, control, opts);
    calls = new KernelCalls(k, control, point, trap, opts);
    const session = calls;
    // Registered with the session, so it runs however the session ends (signals included),
    // first thing after the guest is stopped and before breakpoints go and the guest resumes.
    control.onClose(`putting back the registers of task ${point.task.pid}`, async () => {
      if (session.taskAbandoned) return;
      await session.restore();
      restored = true;
    });
    result = await fn(calls);
  } catch (e) {
    failure = e;
  } finally {
    const problems = await control.close();
    if (problems.length > 0 && failure === undefined) failure = new TargetError(`the guest was not left cleanly: ${problems.join('; ')}`);
    if (opts.audit !== false && calls && calls.records.length + (failure ? 1 : 0) > 0) {
      try {
        writeAudit(k, opts.command, calls, restored, failure);
      } catch (e) {
        // The guest is as it is by now; a log that cannot be written must not hide that.
        opts.notice?.(e instanceof Error ? e.message : String(e));
      }
    }
  }
  if (failure !== undefined) throw failure;
  return result as T;
}

function writeAudit(k: Kernel, command: string, calls: KernelCalls, restored: boolean, failure: unknown): void {
  const task = calls.point.task;
  const details: Record<string, AuditValue> = {
    task: { pid: task.pid, comm: task.comm, address: hex(task.task) },
    safePoint: { function: calls.point.at, vcpu: calls.point.thread - 1, rsp: hex(calls.point.registers.rsp) },
    calls: calls.records.map((r) => ({
      function: r.function,
      address: hex(r.address),
      args: r.args.map(hex),
      return: hex(r.result),
      vcpu: r.thread - 1,
      ms: r.ms,
    })),
    registersRestored: restored,
  };
  appendAudit({
    kind: 'call',
    command,
    target: auditTargetOf(k.machine, k.layout.textBase),
    result: failure === undefined ? 'ok' : 'failed',
    ...(failure !== undefined ? { error: failure instanceof Error ? failure.message : String(failure) } : {}),
    details,
  });
}
