/**
 * A process's own memory, read through its page tables: its command line and environment (what
 * /proc/PID/cmdline and /proc/PID/environ return; Volatility's linux.psaux and linux.envars),
 * and a dump of every memory area to files (dump-proc).
 *
 * Pages that are not present (never touched, swapped out, or file data not yet faulted in) cannot
 * be faulted in from outside: strings stop there with a warning; dumps take file pages from the
 * page cache when it holds them (what the process would see on first touch), and write zeros for
 * the rest and list them.
 */
import { closeSync, mkdirSync, openSync, ftruncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { filemapPagePhys } from '../kernel/helpers/filemap.ts';
import { accessRemoteVm, mmAddressSpace } from '../kernel/helpers/mm.ts';
import { structReader } from '../kernel/helpers/struct-reader.ts';
import type { Kernel } from '../kernel/kernel.ts';
import type { AddressSpace } from '../mmu/address-space.ts';
import { UsageError } from '../util/errors.ts';
import { processMaps, type MapRow } from './maps.ts';
import { readerRoot, selectProcesses } from './processes.ts';
import type { TaskRow } from './ps.ts';

/** /proc reads these through one page at a time; a longer argument area is still read whole, but bounded. */
const MAX_STRING_AREA = 16 * 1024 * 1024;

export interface ProcBytes {
  readonly pid: number;
  readonly comm: string;
  /** Exactly what the /proc file would return (when `complete`). */
  readonly bytes: Uint8Array;
  /** False when a page was not present and the result stops early. */
  readonly complete: boolean;
}

const utf8 = new TextDecoder('utf-8');

/** NUL-separated strings; the last one need not end in NUL. */
export function splitNul(bytes: Uint8Array): string[] {
  if (bytes.length === 0) return [];
  const end = bytes[bytes.length - 1] === 0 ? bytes.length - 1 : bytes.length;
  return utf8.decode(bytes.subarray(0, end)).split('\0');
}

interface MmArea {
  readonly space: AddressSpace;
  readonly argStart: bigint;
  readonly argEnd: bigint;
  readonly envStart: bigint;
  readonly envEnd: bigint;
}

function mmArea(k: Kernel, task: bigint): MmArea | undefined {
  const r = structReader(k);
  const mm = r.ptr(task, 'task_struct', 'mm');
  if (mm === 0n) return undefined;
  const M = 'mm_struct';
  const area = {
    argStart: r.u64(mm, M, 'arg_start'),
    argEnd: r.u64(mm, M, 'arg_end'),
    envStart: r.u64(mm, M, 'env_start'),
    envEnd: r.u64(mm, M, 'env_end'),
  };
  // Check: "the process spawned far enough to have a command line" (env_end set by exec).
  if (area.envEnd === 0n) return undefined;
  return { ...area, space: mmAddressSpace(k.object('struct mm_struct', mm), { tlbEntries: 64 }) };
}

function readArea(k: Kernel, t: Pick<TaskRow, 'pid'>, what: string, space: AddressSpace, start: bigint, len: bigint): { bytes: Uint8Array; complete: boolean } {
  if (len <= 0n) return { bytes: new Uint8Array(0), complete: true };
  if (len > BigInt(MAX_STRING_AREA)) {
    k.warnings.warn(what, `pid ${t.pid}: area of ${len} bytes; reading the first ${MAX_STRING_AREA}`);
    len = BigInt(MAX_STRING_AREA);
  }
  const got = accessRemoteVm(space, start, Number(len));
  if (got.contiguous < got.bytes.length) {
    k.warnings.warn(what, `pid ${t.pid}: page at 0x${(start + BigInt(got.contiguous)).toString(16)} is not present; ${got.contiguous} of ${got.bytes.length} bytes read`);
    return { bytes: got.bytes.subarray(0, got.contiguous), complete: false };
  }
  return { bytes: got.bytes, complete: true };
}

/**
 * get_mm_cmdline(): the argument area [arg_start, arg_end), or — when the process rewrote its
 * title past argv's end (setproctitle: the last byte of the area is not NUL) — the string at
 * arg_start up to its NUL (within a page), the way the kernel decides it.
 */
export function readCmdline(k: Kernel, t: Pick<TaskRow, 'task' | 'pid' | 'comm'>): ProcBytes {
  const none = { pid: t.pid, comm: t.comm, bytes: new Uint8Array(0), complete: true };
  const a = mmArea(k, t.task);
  if (!a || a.argStart >= a.argEnd) return none;
  // setproctitle() may run past argv into the environment, and only there.
  const envEnd = a.envStart !== a.argEnd || a.envEnd < a.envStart ? a.argEnd : a.envEnd;
  const last = accessRemoteVm(a.space, a.argEnd - 1n, 1);
  if (last.contiguous === 1 && last.bytes[0] !== 0) {
    const page = readArea(k, t, 'cmdline', a.space, a.argStart, envEnd - a.argStart < 4096n ? envEnd - a.argStart : 4096n);
    const nul = page.bytes.indexOf(0);
    return { pid: t.pid, comm: t.comm, bytes: nul >= 0 ? page.bytes.subarray(0, nul + 1) : page.bytes, complete: page.complete };
  }
  const got = readArea(k, t, 'cmdline', a.space, a.argStart, a.argEnd - a.argStart);
  return { pid: t.pid, comm: t.comm, ...got };
}

/** environ_read(): the environment area [env_start, env_end). */
export function readEnviron(k: Kernel, t: Pick<TaskRow, 'task' | 'pid' | 'comm'>): ProcBytes {
  const a = mmArea(k, t.task);
  if (!a) return { pid: t.pid, comm: t.comm, bytes: new Uint8Array(0), complete: true };
  const got = readArea(k, t, 'environ', a.space, a.envStart, a.envEnd - a.envStart);
  return { pid: t.pid, comm: t.comm, ...got };
}

export interface CmdlineRow {
  readonly pid: number;
  readonly ppid: number;
  readonly comm: string;
  /** Arguments; empty for kernel threads and processes without a command line. */
  readonly args: readonly string[];
  readonly complete: boolean;
}

/** Command lines of the selected processes (Volatility's linux.psaux). */
export function listCmdlines(k: Kernel, opts: { pids?: ReadonlySet<number> } = {}): CmdlineRow[] {
  const rows: CmdlineRow[] = [];
  for (const t of selectProcesses(k, opts.pids)) {
    try {
      const c = readCmdline(k, t);
      rows.push({ pid: t.pid, ppid: t.ppid, comm: t.comm, args: splitNul(c.bytes), complete: c.complete });
    } catch (e) {
      k.warnings.warn('cmdline', `pid ${t.pid}: ${(e as Error).message}`);
    }
  }
  return rows;
}

export interface EnvironRow {
  readonly pid: number;
  readonly comm: string;
  readonly key: string;
  readonly value: string;
}

/** Environment variables of the selected processes, one row per variable (Volatility's linux.envars). */
export function listEnviron(k: Kernel, opts: { pids?: ReadonlySet<number> } = {}): EnvironRow[] {
  const rows: EnvironRow[] = [];
  for (const t of selectProcesses(k, opts.pids)) {
    try {
      const e = readEnviron(k, t);
      for (const entry of splitNul(e.bytes)) {
        if (entry === '') continue;
        const eq = entry.indexOf('=');
        rows.push({ pid: t.pid, comm: t.comm, key: eq < 0 ? entry : entry.slice(0, eq), value: eq < 0 ? '' : entry.slice(eq + 1) });
      }
    } catch (e) {
      k.warnings.warn('environ', `pid ${t.pid}: ${(e as Error).message}`);
    }
  }
  return rows;
}

// ---- dump-proc ----------------------------------------------------------------------------------

export interface DumpedArea {
  readonly start: bigint;
  readonly end: bigint;
  readonly perms: string;
  readonly offset: bigint;
  readonly path: string;
  /** File name inside the output directory. */
  readonly file: string;
  /** Bytes written from memory (the rest of the area reads as zeros). */
  readonly presentBytes: number;
  /** Of those, bytes of file pages the process had not mapped, taken from the page cache. */
  readonly pageCacheBytes: number;
  /** Address ranges filled from the page cache. */
  readonly pageCache: readonly { readonly start: bigint; readonly end: bigint }[];
  /** Address ranges inside the area whose pages were not present: written as zeros. */
  readonly missing: readonly { readonly start: bigint; readonly end: bigint }[];
}

export interface DumpIndex {
  readonly pid: number;
  readonly comm: string;
  readonly areas: readonly DumpedArea[];
  readonly totalBytes: number;
  readonly presentBytes: number;
  readonly pageCacheBytes: number;
}

export interface DumpProgress {
  /** Called as bytes of areas are covered (present or not); `total` is the sum of area sizes. */
  (done: number, total: number): void;
}

export interface DumpOptions {
  readonly progress?: DumpProgress;
  /** Skip areas larger than this many bytes (listed with presentBytes 0 and no file). Default 64 GiB. */
  readonly maxAreaBytes?: number;
  /**
   * Fill file-backed pages the process has not faulted in from the file's page cache, as the
   * process would see them on first touch (default true).
   */
  readonly pageCache?: boolean;
}

/** Areas bigger than this are not dumped: a guard against hostile or reserved-but-empty giants. */
const DEFAULT_MAX_AREA = 64 * 2 ** 30;
const COPY_CHUNK = 1 << 20;

/**
 * Write each memory area of process `pid` to `outDir` as `<start>-<end>_<name>.bin` (sparse
 * files: pages not present are holes that read as zeros) plus `index.json` describing them.
 */
export function dumpProcess(k: Kernel, pid: number, outDir: string, opts: DumpOptions = {}): DumpIndex {
  const [task] = selectProcesses(k, new Set([pid]));
  const t = task!;
  const r = structReader(k);
  const mm = r.ptr(t.task, 'task_struct', 'mm');
  if (mm === 0n) throw new UsageError(`pid ${pid} (${t.comm}) is a kernel thread: it has no user memory to dump`);
  const space = mmAddressSpace(k.object('struct mm_struct', mm), { tlbEntries: 4096 });
  const maps = processMaps(k, t, readerRoot(k)).filter((m) => m.start < 0xffff_8000_0000_0000n); // the gate area is kernel memory
  mkdirSync(outDir, { recursive: true });
  const maxArea = opts.maxAreaBytes ?? DEFAULT_MAX_AREA;
  const total = maps.reduce((s, m) => s + Number(m.end - m.start), 0);
  let covered = 0; // bytes of the areas already finished
  let presentTotal = 0;
  let cacheTotal = 0;
  const areas: DumpedArea[] = [];
  const buf = new Uint8Array(COPY_CHUNK);
  for (const m of maps) {
    const size = Number(m.end - m.start);
    const file = areaFileName(m);
    if (size > maxArea) {
      k.warnings.warn('dump-proc', `pid ${pid}: area 0x${m.start.toString(16)}-0x${m.end.toString(16)} (${size} bytes) is larger than ${maxArea}; skipped`);
      areas.push({ start: m.start, end: m.end, perms: m.perms, offset: m.offset, path: m.path, file: '', presentBytes: 0, pageCacheBytes: 0, pageCache: [], missing: [{ start: m.start, end: m.end }] });
      covered += size;
      opts.progress?.(covered, total);
      continue;
    }
    const fd = openSync(join(outDir, file), 'w');
    let missing: { start: bigint; end: bigint }[] = [];
    let present = 0;
    let fromCache = 0;
    let cached: { start: bigint; end: bigint }[] = [];
    try {
      ftruncateSync(fd, size);
      let cursor = m.start;
      for (const run of space.walk({ start: m.start, end: m.end, warnings: k.warnings })) {
        const runEnd = run.va + BigInt(run.size);
        if (run.va > cursor) missing.push({ start: cursor, end: run.va });
        for (let off = 0; off < run.size; off += COPY_CHUNK) {
          const n = Math.min(COPY_CHUNK, run.size - off);
          const dst = buf.subarray(0, n);
          try {
            space.reader.read(run.pa + off, dst);
          } catch (e) {
            k.warnings.warn('dump-proc', `pid ${pid}: physical 0x${(run.pa + off).toString(16)}: ${(e as Error).message}`);
            missing.push({ start: run.va + BigInt(off), end: run.va + BigInt(off + n) });
            continue;
          }
          writeSync(fd, dst, 0, n, Number(run.va - m.start) + off);
          present += n;
          opts.progress?.(covered + Number(run.va - m.start) + off + n, total);
        }
        cursor = runEnd;
      }
      if (cursor < m.end) missing.push({ start: cursor, end: m.end });
      if (m.fileBacked && (opts.pageCache ?? true) && missing.length > 0) {
        const filled = fillFromPageCache(k, m, missing, (va, page) => writeSync(fd, page, 0, 4096, Number(va - m.start)));
        fromCache = filled.bytes;
        present += filled.bytes;
        missing = filled.missing;
        cached = filled.filled;
      }
    } finally {
      closeSync(fd);
    }
    covered += size;
    opts.progress?.(covered, total);
    presentTotal += present;
    cacheTotal += fromCache;
    areas.push({ start: m.start, end: m.end, perms: m.perms, offset: m.offset, path: m.path, file, presentBytes: present, pageCacheBytes: fromCache, pageCache: cached, missing: mergeRanges(missing) });
  }
  const index: DumpIndex = { pid, comm: t.comm, areas, totalBytes: total, presentBytes: presentTotal, pageCacheBytes: cacheTotal };
  writeFileSync(join(outDir, 'index.json'), JSON.stringify(index, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v), 2));
  return index;
}

/**
 * Pages of `missing` inside a file-backed area, read from the file's page cache: page p of the
 * area is page vm_pgoff + p of the file. Returns the bytes filled and what is still missing.
 */
function fillFromPageCache(
  k: Kernel,
  m: MapRow,
  missing: readonly { start: bigint; end: bigint }[],
  write: (va: bigint, page: Uint8Array) => void,
): { bytes: number; missing: { start: bigint; end: bigint }[]; filled: { start: bigint; end: bigint }[] } {
  const r = structReader(k);
  const file = r.ptr(m.vma, 'vm_area_struct', 'vm_file');
  const mapping = file === 0n ? 0n : r.ptr(file, 'file', 'f_mapping');
  if (mapping === 0n) return { bytes: 0, missing: [...missing], filled: [] };
  const page = new Uint8Array(4096);
  const still: { start: bigint; end: bigint }[] = [];
  const filled: { start: bigint; end: bigint }[] = [];
  let bytes = 0;
  const firstIndex = Number(m.offset >> 12n);
  for (const gap of missing) {
    for (let va = gap.start; va < gap.end; va += 4096n) {
      let pa: number | undefined;
      try {
        pa = filemapPagePhys(k, mapping, firstIndex + Number((va - m.start) >> 12n));
      } catch (e) {
        k.warnings.warn('dump-proc', `page cache of ${m.path} at 0x${va.toString(16)}: ${(e as Error).message}`);
      }
      if (pa === undefined) {
        still.push({ start: va, end: va + 4096n });
        continue;
      }
      k.space.reader.read(pa, page);
      write(va, page);
      filled.push({ start: va, end: va + 4096n });
      bytes += 4096;
    }
  }
  return { bytes, missing: mergeRanges(still), filled: mergeRanges(filled) };
}

function mergeRanges(ranges: { start: bigint; end: bigint }[]): { start: bigint; end: bigint }[] {
  const out: { start: bigint; end: bigint }[] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last && last.end === r.start) last.end = r.end;
    else out.push({ ...r });
  }
  return out;
}

/** `<start>-<end>_<name>.bin`, the name made safe for a file system (no slashes, spaces or brackets). */
export function areaFileName(m: Pick<MapRow, 'start' | 'end' | 'path'>): string {
  const name = m.path === '' ? 'anon' : m.path.replace(/^\//, '').replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^_+|_+$/g, '').slice(0, 100) || 'anon';
  return `${m.start.toString(16).padStart(12, '0')}-${m.end.toString(16).padStart(12, '0')}_${name}.bin`;
}
