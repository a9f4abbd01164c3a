/**
 * What consistency costs the guest: how long `--consistent` keeps it stopped.
 * - `vmlens --consistent ps` from the command line: the pause it reports on stderr (the command
 *   finds the kernel first and pauses only for the listing itself);
 * - in-process, with the kernel already found (a long-running tool): QMP stop, the process list
 *   read frozen, QMP cont;
 * - QMP stop + cont alone.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { listTasks } from '../../src/analyses/ps.ts';
import { pauseForCommand } from '../../src/machine/pause.ts';
import { readerFor } from '../../src/mmu/from-vcpu.ts';
import type { Progress } from '../support/progress.ts';
import type { OpenSource } from '../support/sources.ts';
import { median } from '../support/timing.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface ConsistencyResult {
  /** Pause reported by `vmlens --consistent ps`, ms (median). */
  readonly cliPauseMs: number;
  /** Pause for one frozen process list with the kernel already open, ms (median). */
  readonly scanPauseMs: number;
  /** QMP stop + cont with nothing in between, ms (median). */
  readonly stopContMs: number;
  readonly runs: number;
}

function cliPause(labName: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(`${ROOT}bin/vmlens`, ['--lab', labName, '--consistent', 'ps'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (c: string) => (err += c));
    child.on('error', reject);
    child.on('close', (code) => {
      const m = /guest paused for ([0-9.]+) ms/.exec(err);
      if (code !== 0 || !m) reject(new Error(`vmlens --consistent ps: exit ${code}: ${err.trim().slice(0, 300)}`));
      else resolve(Number(m[1]));
    });
  });
}

/** The command-line part; needs the QMP socket free (no source attached). */
export async function benchConsistencyCli(labName: string, progress: Progress, runs: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < runs; i++) {
    progress.step('consistency', `vmlens --consistent ps (${i + 1}/${runs})`);
    out.push(await cliPause(labName));
  }
  return out;
}

/** The in-process part, through an attached source. */
export async function benchConsistencyInProcess(src: OpenSource, cli: number[], progress: Progress, runs: number): Promise<ConsistencyResult> {
  const scan: number[] = [];
  const stopCont: number[] = [];
  const reader = readerFor(src.machine);
  for (let i = 0; i < runs; i++) {
    progress.step('consistency', `pause, frozen process list, resume (${i + 1}/${runs})`);
    const handle = await pauseForCommand(src.machine, () => undefined);
    if (!handle) throw new Error('the guest cannot be paused');
    reader.setFrozen(true);
    try {
      listTasks(src.kernel);
    } finally {
      reader.setFrozen(false);
      scan.push(await handle.resume());
    }
    const t0 = performance.now();
    await src.machine.pause();
    await src.machine.resume();
    stopCont.push(performance.now() - t0);
  }
  return { cliPauseMs: median(cli), scanPauseMs: median(scan), stopContMs: median(stopCont), runs };
}
