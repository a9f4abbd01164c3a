/**
 * Cold attach to the first `ps` line, per source, from fresh processes:
 * - the command line: `bin/vmlens --lab NAME --source S ps`, timed from spawn to the first line
 *   on its stdout (Node start, loading the CLI's bundle, attach, kernel, scan, output);
 * - in-process: a fresh Node process timing itself from attach to the first task row (see
 *   bench/support/cold-attach.ts).
 */
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Progress } from '../support/progress.ts';
import { type SourceKind, SOURCE_LABELS } from '../support/sources.ts';
import { median } from '../support/timing.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const TSX = fileURLToPath(new URL('../../node_modules/tsx/dist/esm/index.mjs', import.meta.url));

export interface AttachResult {
  /** Spawn of `vmlens ps` to its first stdout line, ms (median of runs). */
  readonly cliFirstLineMs: number;
  readonly cliRuns: number;
  /** In a fresh process: Node + module loading, attach, kernel, attach→first row, attach→all rows (ms, median). */
  readonly loadMs: number;
  readonly attachMs: number;
  readonly kernelMs: number;
  readonly attachToFirstRowMs: number;
  readonly attachToListMs: number;
}

interface ChildTimes {
  readonly loadMs: number;
  readonly attachMs: number;
  readonly kernelMs: number;
  readonly attachToFirstRowMs: number;
  readonly attachToListMs: number;
}

/** Run a command; resolve with ms from spawn to the first stdout line, and its whole stdout. */
function timeToFirstLine(cmd: string, args: string[], timeoutMs: number): Promise<{ firstLineMs: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let first = 0;
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      if (first === 0 && chunk.includes('\n')) first = performance.now() - t0;
      out += chunk;
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      if (err.length < 10_000) err += chunk;
    });
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0 || first === 0) reject(new Error(`${cmd} ${args.join(' ')} failed (exit ${code}): ${err.trim().slice(0, 300)}`));
      else resolve({ firstLineMs: first, stdout: out });
    });
  });
}

export async function benchAttach(labName: string, qmpSocket: string, kind: SourceKind, progress: Progress, quick: boolean): Promise<AttachResult> {
  const runs = kind === 'gdb' || quick ? 1 : 3;
  const timeout = kind === 'gdb' ? 600_000 : 120_000;
  const cli: number[] = [];
  const inproc: ChildTimes[] = [];
  // The first command after a change to the sources rebuilds the CLI's bundle: not part of a start.
  spawnSync(`${ROOT}bin/vmlens`, ['--help'], { stdio: 'ignore' });
  for (let i = 0; i < runs; i++) {
    progress.step(`attach ${SOURCE_LABELS[kind]}`, `vmlens ps from a fresh process (${i + 1}/${runs})`);
    const r = await timeToFirstLine(`${ROOT}bin/vmlens`, ['--lab', labName, '--source', kind, 'ps'], timeout);
    cli.push(r.firstLineMs);
    progress.step(`attach ${SOURCE_LABELS[kind]}`, `in-process timing in a fresh process (${i + 1}/${runs})`);
    const c = await timeToFirstLine(process.execPath, ['--import', TSX, `${ROOT}bench/support/cold-attach.ts`, qmpSocket, kind], timeout);
    inproc.push(JSON.parse(c.stdout.trim().split('\n').pop()!) as ChildTimes);
  }
  const med = (f: (t: ChildTimes) => number): number => median(inproc.map(f));
  return {
    cliFirstLineMs: median(cli),
    cliRuns: runs,
    loadMs: med((t) => t.loadMs),
    attachMs: med((t) => t.attachMs),
    kernelMs: med((t) => t.kernelMs),
    attachToFirstRowMs: med((t) => t.attachToFirstRowMs),
    attachToListMs: med((t) => t.attachToListMs),
  };
}
