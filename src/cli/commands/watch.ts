/**
 * `vmlens ps --watch`: processes as they appear and exit, scanned continuously (see
 * src/analyses/watch.ts). Text: `+ pid comm …`, `~ pid comm (was …)` and `- pid comm …, lived ~N ms` lines on stdout,
 * the scan rate on a status line when stderr is a terminal, a summary at the end (Ctrl-C, or
 * --duration). JSON: one object per line — `ready` once the baseline scan is taken, then the
 * events (`start`, `exit`, `torn`), then `summary`.
 */
import type { Command } from 'commander';
import { watchProcesses, type WatchEvent, type WatchStats } from '../../analyses/watch.ts';
import { UsageError } from '../../util/errors.ts';
import { parseCount, withKernel } from '../context.ts';

/** The options `ps` takes for watching (added to it by the kernel command module). */
export interface WatchFlags {
  readonly watch?: boolean;
  readonly duration?: string;
  readonly interval?: string;
  readonly threads?: boolean;
}

/** The options `ps` takes for watching: flags and help text, for `.option(...)`. */
export const WATCH_OPTIONS = {
  watch: ['-w, --watch', 'scan continuously: print processes as they start (+) and exit (-), until Ctrl-C'],
  duration: ['--duration <seconds>', 'with --watch: stop after this many seconds'],
  interval: ['--interval <ms>', 'with --watch: least time between scans (default 0: back to back)'],
} as const satisfies Record<string, readonly [string, string]>;

/** Run the watch for `ps --watch`; `pids` narrows what is printed. */
export async function runWatch(cmd: Command, flags: WatchFlags, pids?: ReadonlySet<number>): Promise<void> {
  if (flags.threads) throw new UsageError('--watch follows processes; it cannot be combined with --threads');
  const durationMs = flags.duration === undefined ? undefined : parseSeconds(flags.duration);
  const intervalMs = flags.interval === undefined ? 0 : parseCount(flags.interval, 'interval (ms)', 3_600_000);
  const global = cmd.optsWithGlobals<{ consistent?: boolean; dump?: string }>();
  if (global.consistent) throw new UsageError('--watch reads a running guest; --consistent would stop it for the whole watch');
  if (global.dump !== undefined) throw new UsageError('--watch needs a live guest: a dump never changes');

  await withKernel(cmd, async (kernel, opts) => {
    // The watch needs only guest memory from here on: free the QMP monitor for other commands.
    await kernel.machine.releaseMonitor?.();
    const json = opts.json === true;
    const status = !json && process.stderr.isTTY === true ? new StatusLine() : undefined;
    const abort = new AbortController();
    const stop = (): void => abort.abort();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    const wanted = (e: WatchEvent): boolean => e.type === 'torn' || !pids || pids.has(e.process.pid) || pids.has(e.process.tgid);
    let stats: WatchStats;
    try {
      stats = await watchProcesses(kernel, {
        signal: abort.signal,
        ...(durationMs !== undefined ? { durationMs } : {}),
        intervalMs,
        onEvent: (e) => {
          if (!wanted(e)) return;
          if (json) {
            process.stdout.write(`${jsonLine(eventJson(e))}\n`);
            return;
          }
          if (e.type === 'torn') {
            status?.clear();
            process.stderr.write(
              `vmlens: the task list kept changing under the walk (${e.scans} torn scans, ${Math.round(e.sinceMs)} ms): exits are held back until a complete scan\n`,
            );
            return;
          }
          status?.clear();
          process.stdout.write(`${formatEvent(e)}\n`);
        },
        onReady: (s) => {
          if (json) process.stdout.write(`${jsonLine({ type: 'ready', processes: s.processes, source: kernel.machine.memory.kind })}\n`);
          else status?.show(progressText(s));
        },
        onProgress: status ? (s) => status.show(progressText(s)) : undefined,
      });
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      status?.clear();
    }
    if (json) process.stdout.write(`${jsonLine({ type: 'summary', ...stats })}\n`);
    else process.stderr.write(`vmlens: ${summaryText(stats)}\n`);
  });
}

function parseSeconds(text: string): number {
  const s = Number(text);
  if (!Number.isFinite(s) || s <= 0 || s > 31 * 24 * 3600) throw new UsageError(`--duration must be a positive number of seconds, not '${text}'`);
  return s * 1000;
}

function name(p: { comm: string; kthread: boolean }): string {
  return p.kthread ? `[${p.comm}]` : p.comm;
}

function at(ms: number): string {
  return `${(ms / 1000).toFixed(3)}s`;
}

/**
 * One event as a line: `+ pid comm ppid=… uid=… state t=…` (start), `~ pid comm (was …) t=…`
 * (exec) or `- pid comm, lived ~N ms t=…` (exit).
 */
export function formatEvent(e: Exclude<WatchEvent, { type: 'torn' }>): string {
  const p = e.process;
  if (e.type === 'start') return `+ ${p.pid} ${name(p)} ppid=${p.ppid} uid=${p.uid} ${p.state} t=${at(e.atMs)}`;
  if (e.type === 'exec') return `~ ${p.pid} ${name(p)} (was ${e.previousComm}) t=${at(e.atMs)}`;
  const reused = e.reason === 'pid-reused' ? ' (pid reused)' : '';
  return `- ${p.pid} ${name(p)}, lived ~${formatMs(e.livedMs)}${reused} t=${at(e.atMs)}`;
}

function formatMs(ms: number): string {
  if (ms < 10) return `${Math.max(0, ms).toFixed(1)} ms`;
  if (ms < 10_000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

function eventJson(e: WatchEvent): Record<string, unknown> {
  if (e.type === 'torn') return { ...e };
  const { process: p, ...rest } = e;
  return { ...rest, ...p };
}

/** Compact JSON (one line); bigint addresses as "0x…" strings. */
function jsonLine(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v));
}

function progressText(s: WatchStats): string {
  return `watching ${s.processes} processes: ${Math.round(s.scansPerSecond)} scans/s, ${s.started} started, ${s.exited} exited, ${s.tornScans} torn scans retried (Ctrl-C to stop)`;
}

function summaryText(s: WatchStats): string {
  return `watched ${(s.elapsedMs / 1000).toFixed(1)} s: ${s.scans} scans (${Math.round(s.scansPerSecond)}/s, longest gap ${Math.round(s.longestGapMs)} ms), ${s.processes} processes now, ${s.started} started, ${s.exited} exited; ${s.tornScans} scans tore under a changing list and were retried (longest run ${s.longestTornRun})`;
}

/** One status line on a terminal's stderr, redrawn in place. */
class StatusLine {
  private shown = false;
  show(text: string): void {
    const width = process.stderr.columns ?? 100;
    process.stderr.write(`\r\x1b[K${text.length > width - 1 ? text.slice(0, width - 1) : text}`);
    this.shown = true;
  }
  clear(): void {
    if (!this.shown) return;
    process.stderr.write('\r\x1b[K');
    this.shown = false;
  }
}
