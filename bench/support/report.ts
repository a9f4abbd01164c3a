/**
 * The benchmark's results: their shape (written as JSON), a table for the terminal, the targets
 * met or missed, and a markdown table for the README.
 */
import Table from 'cli-table3';
import type { AttachResult } from '../sections/attach.ts';
import type { BulkResult } from '../sections/bulk.ts';
import type { ConsistencyResult } from '../sections/consistency.ts';
import type { ReadsResult } from '../sections/reads.ts';
import type { ScanResult } from '../sections/scan.ts';
import type { TransientResult } from '../sections/transient.ts';
import type { SampleClass } from './samples.ts';
import type { Stats } from './timing.ts';
import { type SourceKind, SOURCE_KINDS, SOURCE_LABELS } from './sources.ts';

export interface BenchMeta {
  readonly date: string;
  readonly node: string;
  readonly host: { readonly cpus: number; readonly cpuModel: string; readonly loadBefore: readonly number[]; readonly loadAfter: readonly number[] };
  readonly guest: {
    readonly name: string;
    readonly kernel: string;
    readonly paging: number;
    readonly memoryMiB: number;
    readonly accel: string;
    readonly tasks: number;
    readonly labProcesses: number;
  };
  readonly samples: { readonly addresses: number; readonly pages: number; readonly perClass: Readonly<Record<SampleClass, number>> };
  readonly quick: boolean;
  readonly durationS: number;
}

export interface BenchResults {
  meta: BenchMeta;
  reads: Partial<Record<SourceKind, ReadsResult>>;
  scan: Partial<Record<SourceKind, ScanResult>>;
  bulk: Partial<Record<SourceKind, BulkResult>>;
  attach: Partial<Record<SourceKind, AttachResult>>;
  consistency?: ConsistencyResult;
  transient?: TransientResult;
  errors: { section: string; message: string }[];
}

// ---- formatting -------------------------------------------------------------------------------

function time(ns: number | undefined): string {
  if (ns === undefined || !Number.isFinite(ns)) return '–';
  if (ns < 1_000) return `${ns.toFixed(ns < 10 ? 1 : 0)} ns`;
  if (ns < 1_000_000) return `${(ns / 1e3).toFixed(ns < 10_000 ? 2 : ns < 100_000 ? 1 : 0)} µs`;
  if (ns < 1e9) return `${(ns / 1e6).toFixed(ns < 1e7 ? 2 : ns < 1e8 ? 1 : 0)} ms`;
  return `${(ns / 1e9).toFixed(2)} s`;
}

function ms(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? '–' : time(v * 1e6);
}

function ratio(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return '–';
  const r = a / b;
  if (r >= 100) return `${Math.round(r).toLocaleString('en-US')}×`;
  return `${r.toFixed(r < 10 ? 1 : 0)}×`;
}

function gbs(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? '–' : `${v.toFixed(v < 0.1 ? 3 : 2)} GB/s`;
}

function pct(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? '–' : `${(v * 100).toFixed(1)}%`;
}

/** The host limit for the same bytes: typed-array loads from the shared mapping. */
function limitOf(r: BenchResults) {
  return {
    read: r.reads.file?.physical.medianNs,
    scan: r.scan.file?.physical.medianNs,
    bulk: r.bulk.file?.physicalGBs,
  };
}

interface Row {
  readonly what: string;
  readonly cells: Record<SourceKind, string>;
  readonly limit: string;
  /** shared file relative to the host limit (slowdown), and the gdbstub relative to the shared file (speedup). */
  readonly fileVsLimit: string;
  readonly gdbVsFile: string;
}

/** "median (fastest run)" of a per-operation statistic; `scale` turns ns per op into what is shown. */
function both(st: Stats | undefined, fmt: (ns: number) => string): string {
  if (!st) return '–';
  return `${fmt(st.medianNs)} (${fmt(st.minNs)})`;
}

function rows(r: BenchResults): Row[] {
  const lim = limitOf(r);
  const per = <T>(f: (k: SourceKind) => T): Record<SourceKind, T> => ({ file: f('file'), proc: f('proc'), gdb: f('gdb') });
  const out: Row[] = [];
  const readRow = (what: string, pick: (x: ReadsResult) => Stats) => {
    const st = per((k) => (r.reads[k] ? pick(r.reads[k]!) : undefined));
    const v = per((k) => st[k]?.medianNs);
    out.push({
      what,
      cells: per((k) => both(st[k], time)),
      limit: both(r.reads.file?.physical, time),
      fileVsLimit: ratio(v.file, lim.read),
      gdbVsFile: ratio(v.gdb, v.file),
    });
  };
  readRow('random 8-byte kernel read, hot cache, frozen', (x) => x.hotFrozen);
  readRow('random 8-byte kernel read, hot cache, live-validated', (x) => x.hotLive);
  readRow('random 8-byte kernel read, full page walk', (x) => x.fullWalk);
  const scanRow = (what: string, pick: (x: ScanResult) => Stats) => {
    const st = per((k) => (r.scan[k] ? pick(r.scan[k]!) : undefined));
    const v = per((k) => st[k]?.medianNs);
    const cell = (k: SourceKind): string => {
      const tasks = r.scan[k]?.tasks;
      if (!st[k] || !tasks) return '–';
      return `${both(st[k], time)}/task, ${Math.round(1e9 / (st[k]!.medianNs * tasks)).toLocaleString('en-US')} scans/s`;
    };
    const limit = r.scan.file ? `${both(r.scan.file.physical, time)}/task` : '–';
    out.push({ what, cells: per(cell), limit, fileVsLimit: ratio(v.file, lim.scan), gdbVsFile: ratio(v.gdb, v.file) });
  };
  scanRow('process list scan (pid, ppid, uid, comm, state)', (x) => x.scan);
  scanRow('ps --watch scan (pid, start time; details for new ones)', (x) => x.watchScan);
  scanRow('listTasks (every `vmlens ps` column, rows built)', (x) => x.listTasks);
  {
    const v = per((k) => r.bulk[k]?.virtualGBs);
    const cell = (k: SourceKind): string => {
      const b = r.bulk[k];
      if (!b) return '–';
      return `${gbs(b.virtualGBs)} (${gbs(b.bytes / b.virtual.minNs)})${b.extrapolated ? `, ${(b.bytes / 2 ** 20).toFixed(0)} MiB extrapolated` : ''}`;
    };
    const fb = r.bulk.file;
    out.push({
      what: 'bulk read, 256 MiB of the direct map',
      cells: per(cell),
      limit: fb ? `${gbs(fb.physicalGBs)} (${gbs(fb.bytes / fb.physical.minNs)})` : '–',
      fileVsLimit: ratio(lim.bulk, v.file),
      gdbVsFile: ratio(v.file, v.gdb),
    });
  }
  {
    const v = per((k) => r.attach[k]?.cliFirstLineMs);
    out.push({ what: 'cold `vmlens ps`, spawn → first line', cells: per((k) => ms(v[k])), limit: '–', fileVsLimit: '–', gdbVsFile: ratio(v.gdb, v.file) });
    const w = per((k) => r.attach[k]?.attachToFirstRowMs);
    out.push({ what: 'cold, in process: attach → first row', cells: per((k) => ms(w[k])), limit: '–', fileVsLimit: '–', gdbVsFile: ratio(w.gdb, w.file) });
  }
  return out;
}

const HEAD = ['', ...SOURCE_KINDS.map((k) => SOURCE_LABELS[k]), 'host limit¹', 'file ÷ limit', 'gdbstub ÷ file'];

/** The main table, for a terminal. */
export function terminalReport(r: BenchResults): string {
  const t = new Table({ head: HEAD, style: { head: [], border: [] }, wordWrap: true, colWidths: [34, 22, 22, 22, 14, 9, 11] });
  for (const row of rows(r)) t.push([row.what, row.cells.file, row.cells.proc, row.cells.gdb, row.limit, row.fileVsLimit, row.gdbVsFile]);
  const lines = [t.toString(), ...footnotes(r)];
  const details = detailTable(r);
  if (details) lines.push('', details);
  if (r.consistency) lines.push('', consistencyText(r.consistency));
  if (r.transient) lines.push('', transientTable(r.transient));
  lines.push('', 'targets (✓ met, ~ met by the fastest run only, ✗ missed):', ...targets(r).map((x) => `  ${x.met === undefined ? '?' : x.met === 'fastest' ? '~' : x.met ? '✓' : '✗'} ${x.what}: ${x.value}`));
  if (r.errors.length) lines.push('', 'errors:', ...r.errors.map((e) => `  ${e.section}: ${e.message}`));
  return lines.join('\n');
}

function footnotes(r: BenchResults): string[] {
  const m = r.meta;
  return [
    `¹ the host reading the same bytes from the same shared mapping, no translation (typed-array loads; for the bulk read one copy).`,
    `  ${m.guest.tasks} tasks, ${m.guest.paging}-level paging, ${m.guest.memoryMiB} MiB ${m.guest.accel.toUpperCase()} guest (${m.guest.kernel}); ${m.samples.addresses} sampled addresses on ${m.samples.pages} pages (${Object.entries(m.samples.perClass).map(([c, n]) => `${n} ${c}`).join(', ')}).`,
    `  Median of interleaved runs (fastest run in parentheses), wall clock; ratios from the medians. Host: ${m.host.cpus} × ${m.host.cpuModel}, load average ${m.host.loadBefore.map((x) => x.toFixed(1)).join('/')} before, ${m.host.loadAfter.map((x) => x.toFixed(1)).join('/')} after.`,
  ];
}

/** Per source: each measurement next to that source's own physical read, and CPU time. */
function detailTable(r: BenchResults): string {
  const t = new Table({ head: ['per source', 'vmlens (wall)', 'vmlens (CPU)', 'same source, no translation', 'ratio'], style: { head: [], border: [] } });
  for (const k of SOURCE_KINDS) {
    const x = r.reads[k];
    if (x) {
      for (const [what, s] of [
        ['hot, frozen', x.hotFrozen],
        ['hot, live', x.hotLive],
        ['full walk', x.fullWalk],
      ] as const) {
        t.push([`${SOURCE_LABELS[k]}: read ${what}`, time(s.medianNs), time(s.cpuNs), time(x.physical.medianNs), ratio(s.medianNs, x.physical.medianNs)]);
      }
    }
    const sc = r.scan[k];
    if (sc) {
      t.push([`${SOURCE_LABELS[k]}: scan per task`, time(sc.scan.medianNs), time(sc.scan.cpuNs), time(sc.physical.medianNs), ratio(sc.scan.medianNs, sc.physical.medianNs)]);
      t.push([`${SOURCE_LABELS[k]}: scans that tore`, pct(sc.tornFraction), '', '', '']);
    }
    const b = r.bulk[k];
    if (b) t.push([`${SOURCE_LABELS[k]}: bulk`, gbs(b.virtualGBs), time(b.virtual.cpuNs), gbs(b.physicalGBs), ratio(b.physicalGBs, b.virtualGBs)]);
    if (b?.zeroCopyGBs !== undefined) t.push([`${SOURCE_LABELS[k]}: bulk, zero-copy view`, gbs(b.zeroCopyGBs), '', '', '']);
    const a = r.attach[k];
    if (a) {
      t.push([
        `${SOURCE_LABELS[k]}: cold attach, in process`,
        `load ${ms(a.loadMs)}, attach ${ms(a.attachMs)}, kernel ${ms(a.kernelMs)}, first row ${ms(a.attachToFirstRowMs)}, all rows ${ms(a.attachToListMs)}`,
        '',
        '',
        '',
      ]);
    }
  }
  return t.toString();
}

function consistencyText(c: ConsistencyResult): string {
  return [
    'consistency (time the guest is stopped):',
    `  vmlens --consistent ps (finds the kernel, then pauses to list):  ${ms(c.cliPauseMs)}`,
    `  in process, kernel already found: stop, list frozen, cont:         ${ms(c.scanPauseMs)}`,
    `  QMP stop + cont alone:                                              ${ms(c.stopContMs)}`,
  ].join('\n');
}

function transientTable(x: TransientResult): string {
  const t = new Table({
    head: ['child sleeps', 'children', 'real lifetime in guest (p10 / median / p90)', 'seen by ps --watch', '"lived ~" − real (median)'],
    style: { head: [], border: [] },
  });
  for (const c of x.classes) {
    t.push([
      `${c.sleepMs} ms`,
      c.children,
      `${ms(c.lifetimeP10Ms)} / ${ms(c.lifetimeMedianMs)} / ${ms(c.lifetimeP90Ms)}`,
      `${c.seen} (${pct(c.seenFraction)})`,
      c.livedErrorMedianMs === null ? '–' : `${c.livedErrorMedianMs >= 0 ? '+' : ''}${c.livedErrorMedianMs.toFixed(1)} ms`,
    ]);
  }
  const b = new Table({ head: ['real lifetime', 'children', 'seen'], style: { head: [], border: [] } });
  for (const bin of x.bins) b.push([bin.label, bin.children, `${bin.seen} (${pct(bin.seenFraction)})`]);
  return [
    `transient processes (ps --watch --json in its own process, shared file; ${Math.round(x.watch.scansPerSecond)} scans/s, longest gap between scans ${ms(x.watch.longestGapMs)}, ${x.watch.tornScans} of ${x.watch.scans} scans torn and retried):`,
    t.toString(),
    b.toString(),
  ].join('\n');
}

export interface Target {
  readonly what: string;
  readonly value: string;
  /** 'fastest': met only by the least disturbed run, not by the median. */
  readonly met: boolean | 'fastest' | undefined;
}

export function targets(r: BenchResults): Target[] {
  const f = r.reads.file;
  const lim = limitOf(r);
  const out: Target[] = [];
  const add = (what: string, value: number | undefined, fmt: (v: number) => string, ok: (v: number) => boolean) =>
    out.push({ what, value: value === undefined || !Number.isFinite(value) ? '–' : fmt(value), met: value === undefined || !Number.isFinite(value) ? undefined : ok(value) });
  /** A timing target: met by the median, or (noted) only by the fastest run. */
  const addTime = (what: string, st: Stats | undefined, limitNs: number) =>
    out.push({
      what,
      value: st ? `${time(st.medianNs)} median, ${time(st.minNs)} fastest run` : '–',
      met: st ? st.medianNs <= limitNs || (st.minNs <= limitNs ? 'fastest' : false) : undefined,
    });
  addTime('shared file, hot read ≤ 60 ns (frozen)', f?.hotFrozen, 60);
  addTime('shared file, hot read ≤ 60 ns (live-validated)', f?.hotLive, 60);
  addTime('shared file, full walk ≤ 150 ns', f?.fullWalk, 150);
  addTime('shared file, process list ≤ 1 µs per task', r.scan.file?.scan, 1000);
  add('shared file, bulk ≥ 3 GB/s', r.bulk.file?.virtualGBs, gbs, (v) => v >= 3);
  add('shared file, bulk within 3× of the host copy', lim.bulk !== undefined && r.bulk.file ? lim.bulk / r.bulk.file.virtualGBs : undefined, (v) => `${v.toFixed(2)}×`, (v) => v <= 3);
  add(
    'shared file ≥ 100× faster than gdbstub, reads (hot, live)',
    r.reads.gdb && f ? r.reads.gdb.hotLive.medianNs / f.hotLive.medianNs : undefined,
    (v) => `${Math.round(v).toLocaleString('en-US')}×`,
    (v) => v >= 100,
  );
  add(
    'shared file ≥ 100× faster than gdbstub, process scans',
    r.scan.gdb && r.scan.file ? r.scan.gdb.scan.medianNs / r.scan.file.scan.medianNs : undefined,
    (v) => `${Math.round(v).toLocaleString('en-US')}×`,
    (v) => v >= 100,
  );
  add('ps --watch sees ≥ 99% of processes living ≥ 5 ms', r.transient?.seenAtLeast5ms, pct, (v) => v >= 0.99);
  return out;
}

/** The table for the README: the same rows, in markdown. */
export function markdownReport(r: BenchResults): string {
  const m = r.meta;
  const lines = [
    `| ${HEAD.map((h) => h || 'measurement').join(' | ')} |`,
    `|${HEAD.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`,
    ...rows(r).map((row) => `| ${[row.what, row.cells.file, row.cells.proc, row.cells.gdb, row.limit, row.fileVsLimit, row.gdbVsFile].join(' | ')} |`),
    '',
    `¹ The host reading the same bytes from the same shared mapping with no translation. Measured by \`npm run bench\` on ${m.date.slice(0, 10)}: ${m.guest.tasks} tasks in a ${m.guest.memoryMiB} MiB ${m.guest.accel.toUpperCase()} guest (${m.guest.kernel}, ${m.guest.paging}-level paging), a shared ${m.host.cpus}-core host (load average ${m.host.loadBefore[0]?.toFixed(1)}); median of interleaved runs with the fastest run in parentheses, wall clock; ratios from the medians.`,
  ];
  if (r.consistency) {
    lines.push('', `\`--consistent\` stops the guest for ${ms(r.consistency.cliPauseMs)} per \`vmlens ps\` (the kernel is found first, then the guest is paused for the listing); a tool that keeps the kernel open pauses it ${ms(r.consistency.scanPauseMs)} per process list (QMP stop + cont alone: ${ms(r.consistency.stopContMs)}).`);
  }
  if (r.transient) {
    const x = r.transient;
    lines.push(
      '',
      `| real lifetime (guest-measured) | ${x.bins.map((b) => b.label).join(' | ')} |`,
      `|---|${x.bins.map(() => '---:').join('|')}|`,
      `| seen by \`ps --watch\` (${Math.round(x.watch.scansPerSecond)} scans/s) | ${x.bins.map((b) => `${pct(b.seenFraction)} of ${b.children}`).join(' | ')} |`,
    );
  }
  return lines.join('\n');
}
