/**
 * `vmlens kill [-SIG] PID…`: a signal sent as kill(2) sends it. In a task borrowed at a safe
 * point (root, in the initial pid namespace), vmlens calls
 *
 *   pid = find_get_pid(nr);  kill_pid(pid, sig, 0);  put_pid(pid);
 *
 * `priv = 0` makes the signal a user's (SEND_SIG_NOINFO, si_code SI_USER) with the kernel's
 * permission checks and its protection of pid namespace inits — exactly what kill(2) from a root
 * process gets (SIGKILL to init is ignored). find_get_pid() holds a reference on the struct pid
 * across the call, so a process reaped meanwhile cannot be freed under it.
 */
import { listTasks } from '../analyses/ps.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { UsageError } from '../util/errors.ts';
import type { CallSessionOptions } from './call/session.ts';
import { withKernelCalls } from './call/session.ts';
import { describeErrno } from './call/errno.ts';
import { requireFunction } from './call/index.ts';
import { allOf, inInitialPidNamespace, withCapability } from './call/safe-point.ts';

/** Signal numbers of x86-64 Linux by name (without SIG). */
const SIGNAL_NUMBERS: Readonly<Record<string, number>> = {
  HUP: 1, INT: 2, QUIT: 3, ILL: 4, TRAP: 5, ABRT: 6, IOT: 6, BUS: 7, FPE: 8, KILL: 9, USR1: 10,
  SEGV: 11, USR2: 12, PIPE: 13, ALRM: 14, TERM: 15, STKFLT: 16, CHLD: 17, CONT: 18, STOP: 19,
  TSTP: 20, TTIN: 21, TTOU: 22, URG: 23, XCPU: 24, XFSZ: 25, VTALRM: 26, PROF: 27, WINCH: 28,
  IO: 29, POLL: 29, PWR: 30, SYS: 31,
};
/** Real-time signals as C libraries number them (glibc keeps 32 and 33 for itself). */
const SIGRTMIN = 34;
/** _NSIG: the kernel's highest signal. */
const SIGRTMAX = 64;
/** PID_MAX_LIMIT on 64-bit kernels. */
const PID_MAX = 4 * 1024 * 1024;
/** CAP_KILL: what kill(2) checks when sender and target users differ. */
const CAP_KILL = 5;

/** `KILL`, `SIGKILL`, `kill`, `9`, `RTMIN+2` → number; UsageError otherwise. Signal 0 checks existence only. */
export function parseSignal(text: string): number {
  const t = text.trim().toUpperCase().replace(/^SIG/, '');
  if (/^[0-9]+$/.test(t)) {
    const n = Number(t);
    if (n <= SIGRTMAX) return n;
    throw new UsageError(`signal ${text} out of range (0..${SIGRTMAX})`);
  }
  const named = SIGNAL_NUMBERS[t];
  if (named !== undefined) return named;
  const rt = /^RT(MIN|MAX)(?:([+-])([0-9]+))?$/.exec(t);
  if (rt) {
    const off = rt[3] === undefined ? 0 : Number(rt[3]) * (rt[2] === '-' ? -1 : 1);
    const n = (rt[1] === 'MIN' ? SIGRTMIN : SIGRTMAX) + off;
    if (n >= SIGRTMIN && n <= SIGRTMAX) return n;
  }
  throw new UsageError(`unknown signal '${text}' (kill -l lists them)`);
}

/** `SIGKILL` for 9, `SIGRTMIN+2` for 36, `0` for 0. */
export function signalName(n: number): string {
  if (n === 0) return '0';
  for (const [name, num] of Object.entries(SIGNAL_NUMBERS)) if (num === n && name !== 'IOT' && name !== 'POLL') return `SIG${name}`;
  if (n >= SIGRTMIN && n <= SIGRTMAX) return n - SIGRTMIN <= (SIGRTMAX - SIGRTMIN) / 2 ? `SIGRTMIN${n > SIGRTMIN ? `+${n - SIGRTMIN}` : ''}` : `SIGRTMAX${n < SIGRTMAX ? `-${SIGRTMAX - n}` : ''}`;
  return `signal ${n}`;
}

/** Every signal, for `kill -l`. */
export function signalList(): { number: number; name: string }[] {
  const out: { number: number; name: string }[] = [];
  for (let n = 1; n <= SIGRTMAX; n++) if (n < 32 || n >= SIGRTMIN) out.push({ number: n, name: signalName(n) });
  return out;
}

export interface KillResult {
  readonly pid: number;
  /** The process's name when the signal was sent. */
  readonly comm: string;
  readonly signal: number;
  /** 0, or the error the kernel returned (positive errno: ESRCH when it exited meanwhile). */
  readonly errno: number;
  readonly error?: string;
}

export interface KillOptions extends Omit<CallSessionOptions, 'command' | 'taskFilter'> {
  readonly command?: string;
  /** Check everything, send nothing. */
  readonly dryRun?: boolean;
}

/**
 * Send `signal` to each pid (a process or any of its threads: the whole process gets it, as with
 * kill(2)). Every pid is checked first: if one does not exist, nothing is sent to any.
 */
export async function killProcesses(k: Kernel, pids: readonly number[], signal: number, opts: KillOptions = {}): Promise<KillResult[]> {
  if (pids.length === 0) throw new UsageError('no pid given');
  if (!Number.isInteger(signal) || signal < 0 || signal > SIGRTMAX) throw new UsageError(`bad signal number ${signal}`);
  for (const p of pids) {
    if (!Number.isInteger(p) || p <= 0 || p > PID_MAX) throw new UsageError(`not a process id: ${p} (vmlens kill takes pids > 0)`);
  }
  const tasks = new Map(listTasks(k, { threads: true }).map((t) => [t.pid, t]));
  const missing = pids.filter((p) => !tasks.has(p));
  if (missing.length > 0) {
    throw new UsageError(`no process with pid ${missing.join(', ')} in the guest; nothing was sent`);
  }
  const comms = pids.map((p) => tasks.get(p)!.comm);
  if (opts.dryRun) return pids.map((pid, i) => ({ pid, comm: comms[i]!, signal, errno: 0 }));

  const findGetPid = requireFunction(k, 'find_get_pid', ['integer']).address;
  const killPid = requireFunction(k, 'kill_pid', ['pointer', 'integer', 'integer']).address;
  const putPid = requireFunction(k, 'put_pid', ['pointer']).address;
  const command = opts.command ?? `kill -${signalName(signal).replace(/^SIG/, '')} ${pids.join(' ')}`;
  return withKernelCalls(
    k,
    {
      ...opts,
      command,
      taskFilter: allOf(inInitialPidNamespace, withCapability(CAP_KILL, 'CAP_KILL')),
      taskDescription: 'in a root task of the initial pid namespace',
    },
    async (calls) => {
      const results: KillResult[] = [];
      for (const [i, pid] of pids.entries()) {
        const comm = comms[i]!;
        const ref = await calls.call('find_get_pid', findGetPid, [{ kind: 'value', value: BigInt(pid) }]);
        if (ref === 0n) {
          results.push({ pid, comm, signal, errno: 3, error: 'exited before the signal was sent' });
          continue;
        }
        try {
          const rax = await calls.call('kill_pid', killPid, [{ kind: 'value', value: ref }, { kind: 'value', value: BigInt(signal) }, { kind: 'value', value: 0n }]);
          const ret = Number(BigInt.asIntN(32, rax));
          results.push(ret === 0 ? { pid, comm, signal, errno: 0 } : { pid, comm, signal, errno: -ret, error: `the kernel answered ${describeErrno(ret)}` });
        } finally {
          if (!calls.taskAbandoned) await calls.call('put_pid', putPid, [{ kind: 'value', value: ref }]);
        }
      }
      return results;
    },
  );
}
