import type { Command } from 'commander';
import type { Kernel } from '../kernel/kernel.ts';
import { openKernel } from '../kernel/open.ts';
import { pauseForCommand, type PauseHandle } from '../machine/pause.ts';
import type { Machine } from '../machine/types.ts';
import { readerFor } from '../mmu/from-vcpu.ts';
import { UsageError } from '../util/errors.ts';
import type { Warnings } from '../util/warnings.ts';
import { toJson } from './render.ts';
import { openTarget, type TargetOptions } from './target.ts';

/** Options every command sees (declared on the root program). */
export interface GlobalOptions extends TargetOptions {
  readonly json?: boolean;
  readonly debug?: boolean;
}

export function globalOptions(cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals<GlobalOptions>();
}

/**
 * An open target shared by many commands (the interactive shell): the machine stays attached
 * and the kernel's symbols, types and layout — which cannot change while the guest runs — are
 * found once. Per-command state (warnings, the frozen flag of translations) is reset by each
 * command.
 */
export interface Session {
  readonly machine: Machine;
  kernel?: Kernel;
}

let session: Session | undefined;

/** Run the commands issued inside `fn` against one open target. */
export function setSession(s: Session | undefined): void {
  session = s;
}

export function currentSession(): Session | undefined {
  return session;
}

/** Open the target machine (or take the session's), run `fn`, close what was opened. */
export async function withMachine<T>(cmd: Command, fn: (machine: Machine, opts: GlobalOptions) => Promise<T>): Promise<T> {
  const opts = globalOptions(cmd);
  if (session) {
    try {
      return await fn(session.machine, opts);
    } finally {
      await session.machine.releaseMonitor?.();
    }
  }
  const machine = await openTarget(opts);
  try {
    return await fn(machine, opts);
  } finally {
    await machine.close();
  }
}

/** Print a result: JSON when --json, otherwise the text rendering. */
export function emit(opts: GlobalOptions, json: () => unknown, text: () => string): void {
  const out = opts.json ? toJson(json()) : text();
  if (out.length > 0) process.stdout.write(out.endsWith('\n') ? out : `${out}\n`);
}

/** Warnings go to stderr, one line each, so stdout stays clean data. */
export function reportWarnings(warnings: Warnings): void {
  for (const w of warnings.items) process.stderr.write(`vmlens: warning: ${w.where}: ${w.message}\n`);
  if (warnings.droppedCount > 0) process.stderr.write(`vmlens: warning: ${warnings.droppedCount} more warnings not shown\n`);
}

/** Parse a user-given number or address: decimal, 0x hex, or a bare hex string with a-f. */
export function parseAddress(text: string, what = 'address'): bigint {
  const t = text.trim().replace(/_/g, '');
  try {
    if (/^0x[0-9a-f]+$/i.test(t)) return BigInt(t);
    if (/^[0-9]+$/.test(t)) return BigInt(t);
    if (/^[0-9a-f]+$/i.test(t)) return BigInt(`0x${t}`);
  } catch {
    /* fall through to the error below */
  }
  throw new UsageError(`not a valid ${what}: '${text}'`);
}

export function parseCount(text: string, what: string, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(parseAddress(text, what));
  if (!Number.isSafeInteger(n) || n < 0 || n > max) throw new UsageError(`${what} out of range: '${text}' (at most ${max})`);
  return n;
}

/**
 * Pause a live guest for a command (pauseForCommand) so that no interrupt leaves it paused:
 * Ctrl-C or SIGTERM while the pause is held runs `onInterrupt` (e.g. remove a half-written
 * file), resumes the guest and ends the process with 130 or 143. Inside the shell the command
 * runs on to its end instead, since the shell must go on; its pause ends with it.
 */
export async function holdPause(machine: Machine, onInterrupt?: () => Promise<void> | void): Promise<PauseHandle | undefined> {
  const handle = await pauseForCommand(machine);
  if (!handle || session) return handle;
  let resumed: Promise<number> | undefined;
  const resumeOnce = (): Promise<number> => (resumed ??= handle.resume());
  const onSignal = (signal: NodeJS.Signals): void => {
    void (async () => {
      try {
        await onInterrupt?.();
      } catch (e) {
        process.stderr.write(`vmlens: ${e instanceof Error ? e.message : String(e)}\n`);
      }
      try {
        await resumeOnce();
        process.stderr.write('vmlens: interrupted; the guest runs again\n');
      } catch (e) {
        process.stderr.write(`vmlens: interrupted, and the guest could not be resumed: ${e instanceof Error ? e.message : String(e)}\n`);
      }
      process.exit(signal === 'SIGTERM' ? 143 : 130);
    })();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return {
    startedAt: handle.startedAt,
    resume(): Promise<number> {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      return resumeOnce();
    },
  };
}

/** Open the target and find its kernel (kallsyms, BTF) — the start of every kernel command. */
export async function withKernel<T>(
  cmd: Command,
  fn: (kernel: Kernel, opts: GlobalOptions) => Promise<T> | T,
  how: { readonly pause?: boolean } = {},
): Promise<T> {
  return withMachine(cmd, async (machine, opts) => {
    // The kernel's symbols, types and layout do not change while it runs: find them first, and
    // stop the guest (--consistent) only for the command itself.
    let kernel: Kernel;
    if (session?.kernel) {
      kernel = session.kernel;
      kernel.warnings.clear();
    } else {
      kernel = await openKernel(machine, { btfFile: opts.btf, systemMapFile: opts.systemMap, frozen: !machine.live });
      if (session) session.kernel = kernel;
    }
    const paused = opts.consistent || how.pause ? await holdPause(machine) : undefined;
    readerFor(machine).setFrozen(paused !== undefined || !machine.live);
    try {
      const result = await fn(kernel, opts);
      reportWarnings(kernel.warnings);
      return result;
    } finally {
      // Translations cached while the guest stood still must be validated once it runs again.
      if (machine.live) readerFor(machine).setFrozen(false);
      if (paused) await paused.resume();
    }
  });
}

let exitCode = 0;

/**
 * The exit status a command asks for without failing (e.g. `check` with findings); main()
 * returns it and resets it, so one command's status never leaks into the next in the shell.
 */
export function setExitCode(code: number): void {
  exitCode = code;
}

export function takeExitCode(): number {
  const c = exitCode;
  exitCode = 0;
  return c;
}
