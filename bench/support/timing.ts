/**
 * Careful hand timing for a noisy, shared machine: warm-up first, then many timed runs of a
 * batch of operations, each run long enough to dwarf the clock's overhead; the median run is
 * the figure, the fastest run the least disturbed one. Wall time is what a user waits; CPU time
 * (user + system of this process) is what the work cost us, and is less sensitive to other
 * processes competing for the two cores. Cases compared with each other are run interleaved
 * (A B C A B C …), so a burst of load from elsewhere hits all of them alike and their ratios
 * hold even when absolute figures drift.
 */

export interface Stats {
  /** Per operation, nanoseconds: median and fastest run, wall clock. */
  readonly medianNs: number;
  readonly minNs: number;
  /** Per operation, nanoseconds of CPU (user + system), median run. */
  readonly cpuNs: number;
  /** Timed runs and operations per run. */
  readonly runs: number;
  readonly opsPerRun: number;
}

export interface Case {
  readonly name: string;
  /** One call performs `ops` operations. */
  readonly fn: () => void;
  readonly ops: number;
}

export interface TimingOptions {
  /** Timed runs per case (default 15). */
  readonly runs?: number;
  /** Least wall time of one run (default 20 ms): calls per run are calibrated to reach it. */
  readonly minRunMs?: number;
  /** Time spent warming each case up before calibration (default 100 ms, at least one call). */
  readonly warmupMs?: number;
  /** Stop adding runs once a case has used this much time (default 10 s); at least 3 runs. */
  readonly maxCaseMs?: number;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function cpuNow(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) * 1000; // ns
}

/** Time several cases interleaved; returns their statistics by name. */
export function measure(cases: readonly Case[], opts: TimingOptions = {}): Map<string, Stats> {
  const runs = opts.runs ?? 15;
  const minRunNs = (opts.minRunMs ?? 20) * 1e6;
  const warmupNs = (opts.warmupMs ?? 100) * 1e6;
  const maxCaseNs = (opts.maxCaseMs ?? 10_000) * 1e6;
  const calls: number[] = [];
  // Warm up (JIT, caches) and calibrate: calls per run so that a run lasts about minRunMs.
  for (const c of cases) {
    let n = 0;
    const t0 = process.hrtime.bigint();
    let elapsed = 0;
    do {
      c.fn();
      n++;
      elapsed = Number(process.hrtime.bigint() - t0);
    } while (elapsed < warmupNs);
    const perCall = elapsed / n;
    calls.push(Math.max(1, Math.ceil(minRunNs / perCall)));
  }
  const wall: number[][] = cases.map(() => []);
  const cpu: number[][] = cases.map(() => []);
  const spent = cases.map(() => 0);
  for (let r = 0; r < runs; r++) {
    let ran = false;
    cases.forEach((c, i) => {
      if (r >= 3 && spent[i]! > maxCaseNs) return;
      ran = true;
      const n = calls[i]!;
      const c0 = cpuNow();
      const t0 = process.hrtime.bigint();
      for (let k = 0; k < n; k++) c.fn();
      const dt = Number(process.hrtime.bigint() - t0);
      const dc = cpuNow() - c0;
      spent[i]! += dt;
      wall[i]!.push(dt / (n * c.ops));
      cpu[i]!.push(dc / (n * c.ops));
    });
    if (!ran) break;
  }
  const out = new Map<string, Stats>();
  cases.forEach((c, i) => {
    out.set(c.name, {
      medianNs: median(wall[i]!),
      minNs: Math.min(...wall[i]!),
      cpuNs: median(cpu[i]!),
      runs: wall[i]!.length,
      opsPerRun: calls[i]! * c.ops,
    });
  });
  return out;
}

/** Time one slow operation `times` times (no batching): for things that take milliseconds or more. */
export async function measureSlow(fn: () => Promise<void> | void, times: number): Promise<Stats> {
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let i = 0; i < times; i++) {
    const c0 = cpuNow();
    const t0 = process.hrtime.bigint();
    await fn();
    wall.push(Number(process.hrtime.bigint() - t0));
    cpu.push(cpuNow() - c0);
  }
  return { medianNs: median(wall), minNs: Math.min(...wall), cpuNs: median(cpu), runs: times, opsPerRun: 1 };
}
