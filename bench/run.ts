/**
 * `npm run bench`: how fast vmlens reads a live guest, through each memory source, next to the
 * physical limit — the host copying the same bytes from the same mapping with no translation —
 * and next to the gdbstub path.
 *
 *   npm run bench [-- --out FILE] [--lab NAME] [--processes N] [--quick] [--only SECTIONS] [--keep]
 *
 * It uses the lab guest NAME (default `bench`), booting it with N long-lived processes (default
 * 1000) when it is not running, and stops it at the end if it booted it (unless --keep). It
 * prints a table (progress on a terminal, nothing else when piped), writes every figure to
 * bench/results.json (or FILE), and prints a markdown table for the README.
 *
 * Sections (--only takes a comma-separated list): reads, scan, bulk, attach, consistency,
 * transient. See bench/sections/*.ts for what each measures and how.
 */
import { writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { findLab, labDown, labUp, type LabInfo } from '../src/lab/index.ts';
import { silentProgress } from '../src/lab/progress.ts';
import { benchAttach } from './sections/attach.ts';
import { benchBulk } from './sections/bulk.ts';
import { benchConsistencyCli, benchConsistencyInProcess } from './sections/consistency.ts';
import { benchReads } from './sections/reads.ts';
import { benchScan, scanFieldAddresses } from './sections/scan.ts';
import { benchTransient } from './sections/transient.ts';
import { terminalProgress } from './support/progress.ts';
import { type BenchResults, markdownReport, terminalReport } from './support/report.ts';
import { sampleKernelAddresses } from './support/samples.ts';
import { openSource, SOURCE_KINDS, SOURCE_LABELS, type OpenSource } from './support/sources.ts';

const SECTIONS = ['reads', 'scan', 'bulk', 'attach', 'consistency', 'transient'] as const;
type Section = (typeof SECTIONS)[number];

const { values: args } = parseArgs({
  options: {
    out: { type: 'string', default: fileURLToPath(new URL('./results.json', import.meta.url)) },
    lab: { type: 'string', default: 'bench' },
    processes: { type: 'string', default: '1000' },
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  process.stdout.write('usage: npm run bench -- [--out FILE] [--lab NAME] [--processes N] [--quick] [--only reads,scan,bulk,attach,consistency,transient] [--keep]\n');
  process.exit(0);
}
const only = new Set<Section>(args.only ? (args.only.split(',').map((s) => s.trim()) as Section[]) : SECTIONS);
for (const s of only) if (!SECTIONS.includes(s)) throw new Error(`unknown section '${s}' (${SECTIONS.join(', ')})`);
const processes = Number(args.processes);
if (!Number.isInteger(processes) || processes < 0 || processes > 1000) throw new Error('--processes must be 0 … 1000');
const quick = args.quick;
const progress = terminalProgress();
const startedAt = Date.now();
const loadBefore = loadavg();

// ---- the guest ----------------------------------------------------------------------------------

let lab: LabInfo;
let booted = false;
try {
  lab = await findLab(args.lab);
} catch {
  progress.step('guest', `booting lab guest '${args.lab}' with ${processes} processes (a few minutes under TCG)`);
  lab = await labUp({ name: args.lab, processes, progress: silentProgress });
  booted = true;
}

const results: BenchResults = { meta: undefined!, reads: {}, scan: {}, bulk: {}, attach: {}, errors: [] };
const attempt = async <T>(section: string, fn: () => Promise<T> | T): Promise<T | undefined> => {
  try {
    return await fn();
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    results.errors.push({ section, message });
    progress.note(`bench: ${section}: ${message}`);
    return undefined;
  }
};

try {
  // Command-line measurements first, while no source holds the guest's QMP socket.
  let cliPauses: number[] = [];
  if (only.has('consistency')) cliPauses = (await attempt('consistency', () => benchConsistencyCli(lab.name, progress, quick ? 1 : 3))) ?? [];
  if (only.has('attach')) {
    for (const kind of SOURCE_KINDS) {
      const a = await attempt(`attach ${SOURCE_LABELS[kind]}`, () => benchAttach(lab.name, lab.qmpSocket, kind, progress, quick));
      if (a) results.attach[kind] = a;
    }
  }

  // The kernel, found through the shared file; what to read in it.
  progress.step('setup', 'attaching through the shared RAM file, finding the kernel');
  const file = await openSource(lab.qmpSocket, 'file');
  const base = file.kernel;
  progress.step('setup', 'sampling mapped kernel addresses');
  const sample = sampleKernelAddresses(base, 1000, 20261121);
  const fieldPas = scanFieldAddresses(base);
  const bulkBuffer = only.has('bulk') ? new Uint8Array(256 * 1024 * 1024) : new Uint8Array(0);
  let tasks = 0;

  const runSource = async (src: OpenSource): Promise<void> => {
    const label = SOURCE_LABELS[src.kind];
    if (only.has('reads')) {
      const r = await attempt(`reads ${label}`, () => benchReads(src, sample, progress, quick));
      if (r) results.reads[src.kind] = r;
    }
    if (only.has('scan')) {
      const r = await attempt(`scan ${label}`, () => benchScan(src, fieldPas, progress, quick));
      if (r) {
        results.scan[src.kind] = r;
        tasks = Math.max(tasks, r.tasks);
      }
    }
    if (only.has('bulk')) {
      const r = await attempt(`bulk ${label}`, () => benchBulk(src, bulkBuffer, progress, quick));
      if (r) results.bulk[src.kind] = r;
    }
  };

  try {
    await runSource(file);
    if (only.has('consistency') && cliPauses.length > 0) {
      results.consistency = await attempt('consistency', () => benchConsistencyInProcess(file, cliPauses, progress, quick ? 2 : 5));
    }
  } finally {
    await file.machine.close();
  }
  for (const kind of ['proc', 'gdb'] as const) {
    if (!only.has('reads') && !only.has('scan') && !only.has('bulk')) break;
    progress.step('setup', `attaching through ${SOURCE_LABELS[kind]}`);
    const src = await attempt(`attach ${SOURCE_LABELS[kind]}`, () => openSource(lab.qmpSocket, kind, base));
    if (!src) continue;
    try {
      await runSource(src);
    } finally {
      await src.machine.close();
    }
  }

  if (only.has('transient')) {
    const t = await attempt('transient', () => benchTransient(lab, progress, quick));
    if (t) results.transient = t;
  }

  const cpu = cpus();
  results.meta = {
    date: new Date().toISOString(),
    node: process.version,
    host: { cpus: cpu.length, cpuModel: cpu[0]?.model.trim() ?? 'unknown', loadBefore, loadAfter: loadavg() },
    guest: {
      name: lab.name,
      kernel: lab.kernelRelease,
      paging: lab.paging,
      memoryMiB: lab.memoryMiB,
      accel: lab.accel,
      tasks,
      labProcesses: lab.processes.filter((p) => p.comm.startsWith('lab-worker-')).length,
    },
    samples: { addresses: sample.count, pages: sample.pages, perClass: sample.perClass },
    quick,
    durationS: (Date.now() - startedAt) / 1000,
  };
} finally {
  progress.done();
  if (booted && !args.keep) await labDown(lab.name).catch(() => undefined);
}

writeFileSync(args.out, `${JSON.stringify(results, null, 2)}\n`);
process.stdout.write(`${terminalReport(results)}\n\nresults: ${args.out}\n\nmarkdown for the README:\n\n${markdownReport(results)}\n`);
