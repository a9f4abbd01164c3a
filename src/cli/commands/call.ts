/**
 * Commands that act on a running guest kernel by calling its own functions from outside:
 * `call` (any function with a BTF prototype), `kill` and `rmmod`. Each borrows a task at a safe
 * point through the gdbstub (src/actions/call), and is logged in the audit log.
 */
import type { Command } from 'commander';
import { callKernelFunction, type CallResult, type ReturnValue } from '../../actions/call/index.ts';
import { inProcess } from '../../actions/call/safe-point.ts';
import type { CallSessionOptions } from '../../actions/call/session.ts';
import { killProcesses, parseSignal, signalList, signalName, type KillResult } from '../../actions/kill.ts';
import { removeModule } from '../../actions/rmmod.ts';
import { listTasks } from '../../analyses/ps.ts';
import type { Kernel } from '../../kernel/kernel.ts';
import { openKernel } from '../../kernel/open.ts';
import { TargetError, UsageError } from '../../util/errors.ts';
import { emit, reportWarnings, withMachine, type GlobalOptions } from '../context.ts';

interface TimingOptions {
  readonly timeout?: string;
  readonly returnTimeout?: string;
  readonly dryRun?: boolean;
}

function notice(message: string): void {
  process.stderr.write(`vmlens: ${message}\n`);
}

function seconds(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined;
  const s = Number(text);
  if (!Number.isFinite(s) || s <= 0 || s > 24 * 3600) throw new UsageError(`${what} must be a number of seconds (got '${text}')`);
  return Math.round(s * 1000);
}

function sessionOptions(o: TimingOptions): Omit<CallSessionOptions, 'command'> {
  const safePointTimeoutMs = seconds(o.timeout, '--timeout');
  const returnTimeoutMs = seconds(o.returnTimeout, '--return-timeout');
  return {
    notice,
    ...(safePointTimeoutMs !== undefined ? { safePointTimeoutMs } : {}),
    ...(returnTimeoutMs !== undefined ? { returnTimeoutMs } : {}),
  };
}

/** Open the target's kernel for a command that runs guest code (never paused by vmlens). */
async function withLiveKernel<T>(cmd: Command, fn: (k: Kernel, opts: GlobalOptions) => Promise<T>): Promise<T> {
  return withMachine(cmd, async (machine, opts) => {
    if (opts.consistent) throw new UsageError('--consistent does not apply here: kernel calls need the guest running');
    if (!machine.live) throw new UsageError(`${machine.name} is a memory dump: kernel calls need a running guest (--qmp or --lab)`);
    const k = await openKernel(machine, { btfFile: opts.btf, systemMapFile: opts.systemMap, frozen: false });
    try {
      return await fn(k, opts);
    } finally {
      reportWarnings(k.warnings);
    }
  });
}

function processId(text: string): number {
  if (!/^[0-9]+$/.test(text) || Number(text) === 0) throw new UsageError(`'${text}' is not a process id (a pid > 0; no process groups)`);
  return Number(text);
}

function addTimingOptions(c: Command): Command {
  return c
    .option('--timeout <seconds>', 'how long to wait for a task to reach a safe point (default 20)')
    .option('--return-timeout <seconds>', 'how long a call may run before vmlens gives up on it (default 60)')
    .option('--dry-run', 'check everything, change nothing');
}

/** Integers as JSON numbers where exact (decimal strings beyond 2^53), pointers as 0x hex. */
function jsonValue(v: ReturnValue): unknown {
  if (v.kind !== 'integer' || typeof v.value !== 'bigint') return v.value ?? null;
  return v.value >= BigInt(Number.MIN_SAFE_INTEGER) && v.value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v.value) : v.value.toString();
}

function callJson(r: CallResult): Record<string, unknown> {
  return {
    function: r.function,
    address: r.address,
    prototype: r.prototype,
    argTexts: r.argTexts,
    ...(r.args ? { args: r.args } : {}),
    ...(r.returned ? { return: jsonValue(r.returned), raw: r.returned.raw, text: r.returned.text, errno: r.returned.errno ?? null } : { dryRun: true }),
    ...(r.task ? { task: r.task, vcpu: r.vcpu, ms: r.ms } : {}),
  };
}

export function register(program: Command): void {
  addTimingOptions(
    program
      .command('call')
      .description('call a kernel function in the running guest, as a process at a system call exit would (prototype checked against BTF)')
      .argument('<function>', 'kernel function name, e.g. strlen')
      .argument('[args...]', 'numbers, enumerator names, &symbol, NULL, strings for char/void pointers ("text", str:text, hex:00ff)')
      .option('--task <pid>', 'make the call in this process (when it next exits a system call): its `current`'),
  ).action(async (name: string, args: string[], o: TimingOptions & { task?: string }, cmd: Command) => {
    const task = o.task === undefined ? undefined : processId(o.task);
    await withLiveKernel(cmd, async (k, opts) => {
      if (task !== undefined && !listTasks(k).some((t) => t.tgid === task)) throw new UsageError(`no process with pid ${task} in the guest`);
      const r = await callKernelFunction(k, name, args, {
        ...sessionOptions(o),
        dryRun: o.dryRun,
        ...(task !== undefined ? { taskFilter: inProcess(task), taskDescription: `in process ${task}` } : {}),
      });
      if (r.returned === undefined) {
        emit(opts, () => callJson(r), () => `dry run: would call ${r.prototype} at 0x${r.address.toString(16)} with (${args.join(', ')})`);
        return;
      }
      emit(opts, () => callJson(r), () => `${name}(${args.join(', ')}) = ${r.returned!.text}`);
    });
  });

  addTimingOptions(
    program
      .command('kill')
      .description('send a signal to guest processes, as kill(2) from a root process would (default SIGTERM)')
      .argument('[args...]', '[-SIGNAL] PID…  (signal by name or number: -9, -KILL, -SIGKILL)')
      .option('-s, --signal <signal>', 'the signal to send')
      .option('-l, --list', 'list signal names')
      .allowUnknownOption(),
  ).action(async (args: string[], o: TimingOptions & { signal?: string; list?: boolean }, cmd: Command) => {
    if (o.list) {
      const list = signalList();
      emit(cmd.optsWithGlobals<GlobalOptions>(), () => list, () => list.map((s) => `${String(s.number).padStart(2)}) ${s.name}`).join('\n'));
      return;
    }
    let rest = args;
    let signal = o.signal === undefined ? undefined : parseSignal(o.signal);
    if (rest[0]?.startsWith('-') && rest[0] !== '--') {
      if (signal !== undefined) throw new UsageError('give the signal once (-SIGNAL or --signal)');
      signal = parseSignal(rest[0].slice(1));
      rest = rest.slice(1);
    }
    if (rest[0] === '--') rest = rest.slice(1);
    if (rest.length === 0) throw new UsageError('give at least one pid');
    const pids = rest.map(processId);
    const sig = signal ?? 15;
    await withLiveKernel(cmd, async (k, opts) => {
      const results = await killProcesses(k, pids, sig, { ...sessionOptions(o), dryRun: o.dryRun });
      const failed = results.filter((r) => r.errno !== 0);
      const line = (r: KillResult) =>
        r.errno === 0 ? `${o.dryRun ? 'would send' : 'sent'} ${signalName(r.signal)} to ${r.pid} (${r.comm})` : `${r.pid} (${r.comm}): ${r.error}`;
      emit(opts, () => results, () => results.map(line).join('\n'));
      if (failed.length > 0) throw new TargetError(`${failed.length} of ${results.length} signals not delivered`);
    });
  });

  addTimingOptions(
    program
      .command('rmmod')
      .description('unload a kernel module through delete_module(2), its exit function run (refused when in use)')
      .argument('<module>', 'module name as lsmod shows it'),
  ).action(async (name: string, o: TimingOptions, cmd: Command) => {
    await withLiveKernel(cmd, async (k, opts) => {
      const r = await removeModule(k, name, { ...sessionOptions(o), dryRun: o.dryRun });
      emit(opts, () => r, () => (r.unloaded ? `unloaded ${r.name}` : `dry run: ${r.name} is loaded; would call delete_module("${r.name}", O_NONBLOCK)`));
    });
  });
}
