/**
 * A full process-list scan, per source, on the running guest: every process's pid, ppid, uid,
 * comm and state (TaskScanner, the columns of `ps`); the watch's scan (pid and start time per
 * task, details only for newcomers); and `listTasks`, which builds the rows `vmlens ps` prints.
 *
 * The physical limit reads the very same fields at their guest-physical addresses, found once
 * beforehand, with no translation and no list walk: for the shared file typed-array loads from
 * the mapping, for the other sources one batched read of every distinct page a scan touches
 * (the least any scan through that source must fetch).
 */
import { do_not_optimize } from 'mitata';
import { listTasks, TaskScanner, taskLayout } from '../../src/analyses/ps.ts';
import { ProcessWatch } from '../../src/analyses/watch.ts';
import type { Kernel } from '../../src/kernel/kernel.ts';
import { vaAddHi, vaAddLo } from '../../src/mmu/va.ts';
import type { Progress } from '../support/progress.ts';
import { type OpenSource, physicalIndex, SOURCE_LABELS } from '../support/sources.ts';
import { measure, type Stats } from '../support/timing.ts';

export interface ScanResult {
  readonly tasks: number;
  /** Per task. */
  readonly scan: Stats;
  readonly watchScan: Stats;
  readonly listTasks: Stats;
  readonly physical: Stats;
  /** Of the timed scans, how many tore under a changing list (they are timed all the same). */
  readonly tornFraction: number;
}

const PLAN = {
  file: { runs: 21, maxCaseMs: 5000 },
  proc: { runs: 7, maxCaseMs: 8000 },
  gdb: { runs: 3, maxCaseMs: 15000 },
} as const;

/** Guest-physical addresses of every field a full scan reads, one entry per 4-byte word. */
export function scanFieldAddresses(k: Kernel): number[] {
  const L = taskLayout(k);
  const s = k.space;
  const pas: number[] = [];
  const at = (hi: number, lo: number, off: number, words: number): void => {
    for (let w = 0; w < words; w++) {
      const pa = s.translate(vaAddHi(hi, lo, off + 4 * w), vaAddLo(lo, off + 4 * w));
      if (pa >= 0) pas.push(pa);
    }
  };
  const scanner = new TaskScanner(k);
  const p = { hi: 0, lo: 0 };
  scanner.scan((t) => {
    const { hi, lo } = t;
    at(hi, lo, L.tasks, 4); // next, prev
    at(hi, lo, L.pid, 2); // pid, tgid
    at(hi, lo, L.startBoottime, 2);
    at(hi, lo, L.comm, L.commLen / 4);
    at(hi, lo, L.state, 1);
    at(hi, lo, L.exitState, 1);
    at(hi, lo, L.realParent, 2);
    at(hi, lo, L.cred, 2);
    p.lo = s.readU64(vaAddHi(hi, lo, L.realParent), vaAddLo(lo, L.realParent));
    p.hi = s.hi;
    at(p.hi, p.lo, L.tgid, 1);
    p.lo = s.readU64(vaAddHi(hi, lo, L.cred), vaAddLo(lo, L.cred));
    p.hi = s.hi;
    at(p.hi, p.lo, L.credUid, 1);
  });
  return pas;
}

export function benchScan(src: OpenSource, fieldPas: readonly number[], progress: Progress, quick: boolean): ScanResult {
  const k = src.kernel;
  const plan = PLAN[src.kind];
  const label = SOURCE_LABELS[src.kind];
  const scanner = new TaskScanner(k);
  const comm = new Uint8Array(16 * 8192);
  let i = 0;
  let sum = 0;
  let scans = 0;
  let torn = 0;
  const visit = (t: TaskScanner): void => {
    t.copyComm(comm, 16 * (i++ & 8191));
    sum += t.ppid() + t.uid() + t.state().charCodeAt(0);
  };
  const fullScan = (): void => {
    i = 0;
    scanner.scan(visit);
    scans++;
    if (!scanner.complete) torn++;
    do_not_optimize(sum);
  };
  fullScan();
  const tasks = scanner.count;
  const watch = new ProcessWatch(k);
  watch.scan();

  let physical: () => void;
  if (src.memory.windows) {
    const { words, index } = physicalIndex(src.memory.windows, fieldPas);
    const n = index.length;
    physical = () => {
      let x = 0;
      for (let j = 0; j < n; j++) x += words[j]![index[j]!]!;
      do_not_optimize(x);
    };
  } else {
    const pages = [...new Set(fieldPas.map((pa) => pa - (pa % 4096)))];
    const reqs = pages.map((gpa) => ({ gpa, dst: new Uint8Array(4096) }));
    physical = () => {
      if (src.memory.readMany) src.memory.readMany(reqs);
      else for (const r of reqs) src.memory.read(r.gpa, r.dst);
    };
  }

  progress.step(`scan ${label}`, `${tasks} tasks: full scan, watch scan, listTasks, physical limit`);
  const runs = quick ? 3 : plan.runs;
  const stats = measure(
    [
      { name: 'scan', fn: fullScan, ops: tasks },
      { name: 'watch', fn: () => void watch.scan(), ops: tasks },
      { name: 'list', fn: () => void listTasks(k), ops: tasks },
      { name: 'physical', fn: physical, ops: tasks },
    ],
    { runs, maxCaseMs: plan.maxCaseMs, warmupMs: src.kind === 'file' ? 200 : 1, minRunMs: src.kind === 'file' ? 20 : 1 },
  );
  return {
    tasks,
    scan: stats.get('scan')!,
    watchScan: stats.get('watch')!,
    listTasks: stats.get('list')!,
    physical: stats.get('physical')!,
    tornFraction: scans > 0 ? torn / scans : 0,
  };
}
