/**
 * Catching transient processes: while `vmlens ps --watch --json` runs (a separate process,
 * as a user would run it, reading the shared RAM file), the guest forks children that live a
 * fixed short time — 1, 2, 5, 10, 50 ms of sleep — one after another (bench/support/blip-elf.ts).
 * The guest measures each child's real lifetime itself (fork to reap, CLOCK_MONOTONIC), and
 * reports its pid; the benchmark then counts which of those pids the watch saw start.
 *
 * Requested and real lifetimes differ: fork, exec-less exit and reaping add time, more so in a
 * TCG guest on a loaded host. So the results are given both per requested sleep and per real
 * lifetime, as the guest measured it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { GuestConsole, type LabInfo } from '../../src/lab/index.ts';
import { type BlipRecord, blipElf, installCommand, parseBlipOutput } from '../support/blip-elf.ts';
import type { Progress } from '../support/progress.ts';
import { median } from '../support/timing.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface TransientClass {
  /** Requested sleep of each child, ms. */
  readonly sleepMs: number;
  readonly children: number;
  /** Real lifetimes measured in the guest (fork to reap), ms. */
  readonly lifetimeMedianMs: number;
  readonly lifetimeP10Ms: number;
  readonly lifetimeP90Ms: number;
  readonly seen: number;
  readonly seenFraction: number;
  /** Median of (watch's "lived ~N ms" − guest-measured lifetime) for the children it saw exit. */
  readonly livedErrorMedianMs: number | null;
}

export interface LifetimeBin {
  readonly label: string;
  readonly fromMs: number;
  readonly toMs: number;
  readonly children: number;
  readonly seen: number;
  readonly seenFraction: number;
}

export interface TransientResult {
  readonly classes: readonly TransientClass[];
  readonly bins: readonly LifetimeBin[];
  /** Fraction seen among children whose real lifetime was ≥ 5 ms. */
  readonly seenAtLeast5ms: number;
  readonly watch: {
    readonly scansPerSecond: number;
    readonly scans: number;
    readonly tornScans: number;
    readonly processes: number;
    /** Longest time between two scans: a process living less than that may be missed. */
    readonly longestGapMs: number;
  };
}

const CLASSES = [
  { sleepMs: 1, children: 300 },
  { sleepMs: 2, children: 300 },
  { sleepMs: 5, children: 200 },
  { sleepMs: 10, children: 150 },
  { sleepMs: 50, children: 60 },
] as const;
const GAP_NS = 2_000_000;
const BINS = [
  { label: '< 2 ms', fromMs: 0, toMs: 2 },
  { label: '2–5 ms', fromMs: 2, toMs: 5 },
  { label: '5–10 ms', fromMs: 5, toMs: 10 },
  { label: '10–50 ms', fromMs: 10, toMs: 50 },
  { label: '≥ 50 ms', fromMs: 50, toMs: Infinity },
] as const;

interface WatchLine {
  readonly type: string;
  readonly pid?: number;
  readonly comm?: string;
  readonly livedMs?: number;
  readonly scansPerSecond?: number;
  readonly scans?: number;
  readonly tornScans?: number;
  readonly processes?: number;
  readonly longestGapMs?: number;
}

/** `vmlens ps --watch --json` as a child; its lines as they come. */
class WatchProcess {
  readonly lines: WatchLine[] = [];
  private readonly child: ChildProcess;
  private readonly exited: Promise<number | null>;
  private err = '';

  constructor(labName: string) {
    this.child = spawn(`${ROOT}bin/vmlens`, ['--lab', labName, 'ps', '--watch', '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      if (line.trim()) this.lines.push(JSON.parse(line) as WatchLine);
    });
    this.child.stderr!.setEncoding('utf8');
    this.child.stderr!.on('data', (c: string) => {
      if (this.err.length < 10_000) this.err += c;
    });
    this.exited = new Promise((resolve) => this.child.on('close', (code) => resolve(code)));
  }

  async ready(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.lines.some((l) => l.type === 'ready')) {
      if (this.child.exitCode !== null) throw new Error(`ps --watch exited early: ${this.err.trim().slice(0, 300)}`);
      if (Date.now() > deadline) throw new Error('ps --watch did not become ready');
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Ctrl-C, and wait for the summary. */
  async stop(): Promise<WatchLine> {
    this.child.kill('SIGINT');
    const code = await this.exited;
    const summary = this.lines.find((l) => l.type === 'summary');
    if (code !== 0 || !summary) throw new Error(`ps --watch ended with ${code}: ${this.err.trim().slice(0, 300)}`);
    return summary;
  }

  kill(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

function percentile(values: readonly number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? NaN;
}

export async function benchTransient(lab: LabInfo, progress: Progress, quick: boolean): Promise<TransientResult> {
  const con = await GuestConsole.forLab(lab);
  const watch = new WatchProcess(lab.name);
  try {
    const plan = CLASSES.map((c) => ({ ...c, children: quick ? Math.ceil(c.children / 3) : c.children, path: `/tmp/vmlens-blip-${c.sleepMs}` }));
    for (const c of plan) {
      await con.run(installCommand(blipElf({ count: c.children, sleepNs: c.sleepMs * 1e6, gapNs: GAP_NS }), c.path));
    }
    progress.step('transient', 'waiting for ps --watch');
    await watch.ready(120_000);
    const records = new Map<number, BlipRecord[]>();
    for (const c of plan) {
      progress.step('transient', `${c.children} children sleeping ${c.sleepMs} ms each`);
      const out = await con.run(`${c.path} | od -An -v -tx1`, 600_000);
      const recs = parseBlipOutput(out).filter((r) => r.pid > 0 && r.pid < 4 * 1024 * 1024);
      if (recs.length !== c.children) throw new Error(`blip ${c.sleepMs} ms reported ${recs.length} of ${c.children} children`);
      records.set(c.sleepMs, recs);
    }
    // Let the last exits reach the watch.
    await new Promise((r) => setTimeout(r, 500));
    const summary = await watch.stop();

    const started = new Map<number, WatchLine>();
    const exited = new Map<number, WatchLine>();
    for (const l of watch.lines) {
      if (l.type === 'start' && l.pid !== undefined && l.comm?.startsWith('vmlens-blip-')) started.set(l.pid, l);
      if (l.type === 'exit' && l.pid !== undefined && l.comm?.startsWith('vmlens-blip-')) exited.set(l.pid, l);
    }
    const all: { lifetimeMs: number; seen: boolean }[] = [];
    const classes: TransientClass[] = plan.map((c) => {
      const recs = records.get(c.sleepMs)!;
      const lifetimes = recs.map((r) => r.lifetimeNs / 1e6);
      const seen = recs.filter((r) => started.has(r.pid)).length;
      for (const r of recs) all.push({ lifetimeMs: r.lifetimeNs / 1e6, seen: started.has(r.pid) });
      const errors = recs.flatMap((r) => {
        const e = exited.get(r.pid);
        return e?.livedMs !== undefined ? [e.livedMs - r.lifetimeNs / 1e6] : [];
      });
      return {
        sleepMs: c.sleepMs,
        children: recs.length,
        lifetimeMedianMs: median(lifetimes),
        lifetimeP10Ms: percentile(lifetimes, 0.1),
        lifetimeP90Ms: percentile(lifetimes, 0.9),
        seen,
        seenFraction: seen / recs.length,
        livedErrorMedianMs: errors.length ? median(errors) : null,
      };
    });
    const bins = BINS.map((b) => {
      const inBin = all.filter((x) => x.lifetimeMs >= b.fromMs && x.lifetimeMs < b.toMs);
      const seen = inBin.filter((x) => x.seen).length;
      return { ...b, children: inBin.length, seen, seenFraction: inBin.length ? seen / inBin.length : NaN };
    });
    const long = all.filter((x) => x.lifetimeMs >= 5);
    return {
      classes,
      bins,
      seenAtLeast5ms: long.length ? long.filter((x) => x.seen).length / long.length : NaN,
      watch: {
        scansPerSecond: summary.scansPerSecond ?? NaN,
        scans: summary.scans ?? 0,
        tornScans: summary.tornScans ?? 0,
        processes: summary.processes ?? 0,
        longestGapMs: summary.longestGapMs ?? NaN,
      },
    };
  } finally {
    watch.kill();
    con.close();
  }
}
