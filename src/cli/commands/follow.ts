/**
 * `dmesg --follow`: the kernel log as it grows, like `dmesg -w` inside the guest. The ring is
 * read every interval from its newest record back to the last one printed, so a quiet log costs
 * one record's read per poll. Records the guest overwrote between two polls are counted, not
 * silently skipped.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Command } from 'commander';
import { formatRecord, readLog, readLogAfter, type LogRecord } from '../../analyses/dmesg.ts';
import { UsageError } from '../../util/errors.ts';
import { reportWarnings, withKernel } from '../context.ts';

export async function followLog(cmd: Command, level: number, intervalMs: number): Promise<void> {
  const global = cmd.optsWithGlobals<{ consistent?: boolean; dump?: string }>();
  if (global.consistent) throw new UsageError('--follow reads a running guest; --consistent would stop it for as long as it follows');
  if (global.dump !== undefined) throw new UsageError('--follow needs a live guest: a dump never changes');
  await withKernel(cmd, async (k, opts) => {
    // Only guest memory is needed from here on: free the QMP monitor for other commands.
    await k.machine.releaseMonitor?.();
    const print = (r: LogRecord): void => {
      if (r.level <= level) process.stdout.write(`${opts.json ? JSON.stringify(r) : formatRecord(r)}\n`);
    };
    const abort = new AbortController();
    const stop = (): void => abort.abort();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    try {
      const first = readLog(k);
      first.forEach(print);
      let last = first.at(-1)?.seq ?? -1;
      while (!abort.signal.aborted) {
        // Rejects when aborted: then the follow ends.
        await sleep(intervalMs, undefined, { signal: abort.signal }).catch(() => undefined);
        if (abort.signal.aborted) break;
        const { records, lost } = readLogAfter(k, last);
        if (lost > 0) process.stderr.write(`vmlens: ${lost} log record${lost === 1 ? ' was' : 's were'} overwritten before they could be read\n`);
        records.forEach(print);
        if (records.length > 0) last = records.at(-1)!.seq;
        reportWarnings(k.warnings);
        k.warnings.clear();
      }
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
  });
}
