import { freeLoopbackPort } from '../util/net.ts';
import { chownSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { type Extent, rangesOf } from '../source/extents.ts';
import { EM_X86_64, type ElfCoreInfo, readElfCoreFile } from '../source/elf-core.ts';
import { GdbPhysicalMemory } from '../source/gdb/source.ts';
import { openProcMem } from '../source/proc-mem.ts';
import { openSharedFile } from '../source/shared-file.ts';
import type { PhysicalMemory } from '../source/types.ts';
import { TargetError, UsageError } from '../util/errors.ts';
import type { Warnings } from '../util/warnings.ts';
import { parseInfoRegisters } from './hmp-registers.ts';
import { type FlatRange, largestRamRegion, parseFlatView, regionExtents } from './mtree.ts';
import { findQemuProcess, type QemuProcess, sharedMappingOf } from './qemu-process.ts';
import { QmpClient, QmpError, QmpLink } from './qmp.ts';
import type { Machine, VcpuState } from './types.ts';
import { mergeHmpAndNote } from './vcpu-state.ts';

/**
 * A live QEMU guest found from its QMP socket alone.
 *
 * Guest RAM: the machine's memory backend (QOM `memory-backend` of /machine) and QEMU's flat
 * view of physical memory give where each piece of RAM sits in the RAM block. When QEMU maps
 * that block shared, we map the same file (zero-copy): by its mem-path, or — for a memfd or a
 * file QEMU created and unlinked — through /proc/PID/map_files. Otherwise the QEMU process's
 * memory is read through /proc/PID/mem at the host addresses HMP `gpa2hva` gives.
 *
 * vCPU state: HMP `info registers -a`, completed by the notes of a one-page
 * `dump-guest-memory` (full-width registers and IA32_KERNEL_GS_BASE, which HMP does not print).
 *
 * The physical map is read once, at attach: a guest that remaps RAM later (memory hotplug)
 * needs a new attach.
 */

/**
 * Where guest RAM is read: the shared RAM file, the QEMU process (/proc/PID/mem), a gdbstub
 * that vmlens starts in QEMU for itself (slow; for a QEMU on another host's file system or in
 * another pid namespace), or the first of file and proc that works (default).
 */
export type LiveSourceKind = 'auto' | 'file' | 'proc' | 'gdb';

export interface AttachOptions {
  readonly source?: LiveSourceKind;
  /** Name shown to users (default: the socket path). */
  readonly name?: string;
  /** 'auto' (default): writable when the source can be opened for writing. */
  readonly writable?: boolean | 'auto';
  /** Where the machine records what it could not do (e.g. no IA32_KERNEL_GS_BASE). */
  readonly warnings?: Warnings;
  /** QMP connect timeout (ms). */
  readonly timeoutMs?: number;
}

/** The machine's RAM backend as QOM describes it. */
export interface RamBackend {
  /** QOM path, e.g. /objects/pc.ram. */
  readonly path: string;
  readonly id: string;
  /** memory-backend-file, memory-backend-ram, memory-backend-memfd… */
  readonly type: string;
  readonly size: number;
  /** For memory-backend-file. */
  readonly memPath?: string;
  /** Whether QEMU maps the RAM shared (then its file, named or not, can be mapped by us). */
  readonly share?: boolean;
  readonly readonly?: boolean;
  /** File offset of the RAM block (QEMU 8.1+ `offset`; 0 before). */
  readonly fileOffset: number;
}

/** Time allowed for the one-page dump that carries the vCPU notes. */
const NOTES_DUMP_TIMEOUT_MS = 30_000;
/** How often `query-dump` is asked while QEMU writes a whole-guest core. */
const ELF_DUMP_POLL_MS = 100;
/** A core dump whose byte count has not moved for this long has stalled. */
const ELF_DUMP_STALL_MS = 60_000;

export class QemuMachine implements Machine {
  readonly live = true;
  private closed = false;

  constructor(
    /** QEMU's monitor, connected on demand (see QmpLink). */
    readonly qmp: QmpLink,
    readonly memory: PhysicalMemory,
    readonly name: string,
    readonly backend: RamBackend,
    /** Guest-physical → RAM-block offset, from QEMU's flat view. */
    readonly layout: readonly Extent[],
    readonly process: QemuProcess | undefined,
    private readonly warnings: Warnings | undefined,
  ) {}

  async vcpus(): Promise<VcpuState[]> {
    const hmp = parseInfoRegisters(await this.qmp.hmp('info registers -a'));
    if (hmp.length === 0) throw new TargetError(`${this.name}: QEMU printed no vCPU registers`);
    const notes = await this.readNotes();
    const longMode = notes?.machine === EM_X86_64;
    return hmp.map((h, i) => mergeHmpAndNote(h, notes?.notes.qemuCpus[i], longMode));
  }

  /**
   * The guest kernel's VMCOREINFO text, which QEMU holds when started with `-device vmcoreinfo`
   * and the guest has loaded qemu_fw_cfg; undefined otherwise.
   */
  async vmcoreinfo(): Promise<string | undefined> {
    return (await this.readNotes())?.notes.vmcoreinfo;
  }

  /**
   * QEMU's own ELF core of the whole guest (`dump-guest-memory`, paging off): each RAM block a
   * PT_LOAD, with the per-vCPU notes and VMCOREINFO that vmlens reads back from dumps. QEMU
   * writes the file itself, in the background (it stops a running guest meanwhile); `query-dump`
   * reports the progress. A dump that stops progressing is an error, not a hang.
   */
  async writeElfCore(path: string, progress?: (done: number, total: number) => void): Promise<void> {
    const file = resolve(path);
    try {
      await this.qmp.execute('dump-guest-memory', { paging: false, protocol: `file:${file}`, detach: true });
    } catch (e) {
      if (e instanceof QmpError) throw new TargetError(`QEMU could not write ${file}: ${e.message}`);
      throw e;
    }
    let last = -1;
    let lastChange = Date.now();
    for (;;) {
      const q = await this.qmp.execute<{ status: string; completed: number; total: number }>('query-dump');
      if (q.status === 'completed') {
        progress?.(q.total, q.total);
        return;
      }
      if (q.status === 'failed') throw new TargetError(`QEMU failed writing the dump to ${file} (see QEMU's log)`);
      if (q.completed !== last) {
        last = q.completed;
        lastChange = Date.now();
        progress?.(q.completed, q.total);
      } else if (Date.now() - lastChange > ELF_DUMP_STALL_MS) {
        throw new TargetError(`QEMU's dump to ${file} made no progress for ${ELF_DUMP_STALL_MS / 1000} s`);
      }
      await new Promise((r) => setTimeout(r, ELF_DUMP_POLL_MS));
    }
  }

  async pause(): Promise<void> {
    await this.qmp.execute('stop');
  }

  async resume(): Promise<void> {
    await this.qmp.execute('cont');
  }

  async isPaused(): Promise<boolean> {
    const status = await this.qmp.execute<{ running?: unknown }>('query-status');
    return status.running !== true;
  }

  /**
   * Let go of the QMP monitor while keeping guest memory readable: QEMU serves one QMP client at
   * a time, so a long reader of memory (ps --watch, the shell) would otherwise lock every other
   * tool out of the guest. The next call that needs the monitor connects again. False, and
   * nothing done, while the monitor must stay ours: to stop a gdbstub this machine started.
   */
  async releaseMonitor(): Promise<boolean> {
    if (startedGdbStubs.has(this.memory)) return false;
    await this.qmp.release();
    return true;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.memory.close();
    // A gdbstub started for this machine is stopped again; one QEMU already had is left alone.
    if (startedGdbStubs.has(this.memory)) await this.qmp.hmp('gdbserver none').catch(() => undefined);
    await this.qmp.close();
  }

  /**
   * QEMU's notes (per-vCPU state, VMCOREINFO) from a dump of one page of RAM into a private
   * temporary directory. undefined (and a warning) when QEMU cannot write there or refuses to
   * dump. A running guest is stopped by QEMU for the few milliseconds this takes.
   */
  private async readNotes(): Promise<ElfCoreInfo | undefined> {
    const first = this.layout[0];
    if (!first) return undefined;
    const dir = mkdtempSync(join(tmpdir(), 'vmlens-notes-'));
    try {
      // QEMU writes the file itself: give it the directory when it runs as another user.
      if (this.process && process.getuid?.() === 0 && this.process.uid !== 0) chownSync(dir, this.process.uid, this.process.gid);
      const file = join(dir, 'notes.core');
      await this.qmp.execute(
        'dump-guest-memory',
        { paging: false, protocol: `file:${file}`, begin: first.gpa, length: 4096 },
        { timeoutMs: NOTES_DUMP_TIMEOUT_MS },
      );
      return readElfCoreFile(file, this.warnings);
    } catch (e) {
      this.warnings?.warn(this.name, `QEMU's vCPU notes unavailable (kernel GS base unknown): ${e instanceof Error ? e.message : String(e)}`);
      return undefined;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

async function qomGet<T>(qmp: QmpClient, path: string, property: string): Promise<T | undefined> {
  try {
    return await qmp.execute<T>('qom-get', { path, property });
  } catch (e) {
    if (e instanceof QmpError) return undefined;
    throw e;
  }
}

/** The backend the machine's RAM comes from (`memory-backend` of /machine), if QOM names one. */
async function findRamBackend(qmp: QmpClient, flat: readonly FlatRange[]): Promise<RamBackend> {
  let path = await qomGet<string>(qmp, '/machine', 'memory-backend');
  if (typeof path !== 'string' || path === '') {
    // Older machines: the region with the most RAM is main RAM; its backend, if any, is /objects/<name>.
    const region = largestRamRegion(flat);
    if (!region) throw new TargetError("cannot find the guest's RAM in QEMU's memory tree");
    path = region.startsWith('/') ? region : `/objects/${region}`;
  }
  const id = path.slice(path.lastIndexOf('/') + 1);
  const type = (await qomGet<string>(qmp, path, 'type')) ?? 'unknown';
  const size = (await qomGet<number>(qmp, path, 'size')) ?? 0;
  if (type !== 'memory-backend-file') return { path, id, type, size, share: await qomGet<boolean>(qmp, path, 'share'), fileOffset: 0 };
  return {
    path,
    id,
    type,
    size,
    memPath: await qomGet<string>(qmp, path, 'mem-path'),
    share: await qomGet<boolean>(qmp, path, 'share'),
    readonly: await qomGet<boolean>(qmp, path, 'readonly'),
    fileOffset: (await qomGet<number>(qmp, path, 'offset')) ?? 0,
  };
}

/** Why the shared file cannot serve, or undefined when it can be tried. */
function fileUnusable(b: RamBackend): string | undefined {
  if (b.type !== 'memory-backend-file') return `the RAM backend ${b.path} is ${b.type}, not a file`;
  if (!b.share) return `the RAM file of ${b.path} is not shared (share=off): the guest's writes never reach it`;
  if (!b.memPath) return `QEMU does not say which file backs ${b.path}`;
  try {
    if (!statSync(b.memPath).isFile()) return `${b.memPath} is not a regular file (a directory of per-backend files?)`;
  } catch {
    return `${b.memPath} is not visible from here`;
  }
  return undefined;
}

const GPA2HVA = /Host virtual address for 0x[0-9a-f]+ \((.*)\) is 0x([0-9a-f]+)/;

/** Host virtual address of every extent, from HMP gpa2hva (one call per extent). */
async function hostLayout(qmp: QmpClient, layout: readonly Extent[]): Promise<Extent[]> {
  const out: Extent[] = [];
  for (const e of layout) {
    const text = await qmp.hmp(`gpa2hva 0x${e.gpa.toString(16)}`);
    const m = GPA2HVA.exec(text);
    if (!m) throw new TargetError(`QEMU cannot give the host address of guest physical 0x${e.gpa.toString(16)}: ${text.trim()}`);
    out.push({ gpa: e.gpa, size: e.size, offset: parseInt(m[2]!, 16) });
  }
  return out;
}

/** gdbstubs vmlens started itself (and so stops again on close), as opposed to one QEMU already had. */
const startedGdbStubs = new WeakSet<PhysicalMemory>();

/**
 * The TCP gdbstub QEMU already serves (`-gdb tcp:…` or an earlier `gdbserver`), from its
 * chardev, which QEMU labels "gdb". QEMU 7.2 refuses a second one ("duplicate yank instance"),
 * so an existing stub is used rather than replaced. Undefined when there is none.
 */
async function existingGdbStub(qmp: QmpClient): Promise<{ host: string; port: number; connected: boolean } | undefined> {
  let chardevs: unknown;
  try {
    chardevs = await qmp.execute('query-chardev');
  } catch (e) {
    if (e instanceof QmpError) return undefined;
    throw e;
  }
  if (!Array.isArray(chardevs)) return undefined;
  for (const c of chardevs as { label?: unknown; filename?: unknown }[]) {
    if (c.label !== 'gdb' || typeof c.filename !== 'string') continue;
    // e.g. "disconnected:tcp:127.0.0.1:34193,server=on" or "tcp::1234,server=on"
    const m = /^(disconnected:)?tcp:([^,]*):(\d+)(,|$)/.exec(c.filename);
    if (!m) continue;
    const host = m[2] === '' || m[2] === '0.0.0.0' || m[2] === '::' ? '127.0.0.1' : m[2]!;
    return { host, port: Number(m[3]), connected: m[1] === undefined };
  }
  return undefined;
}

/**
 * Read guest RAM through QEMU's gdbstub: the one QEMU already serves, or one started on a
 * free loopback port (and stopped again when the machine is closed).
 */
async function openGdbSource(qmp: QmpClient, layout: readonly Extent[], writable: boolean | 'auto'): Promise<PhysicalMemory> {
  const ranges = rangesOf(layout);
  const existing = await existingGdbStub(qmp);
  if (existing) {
    if (existing.connected) throw new TargetError(`QEMU's gdbstub at ${existing.host}:${existing.port} is in use by another debugger`);
    return GdbPhysicalMemory.open(existing.host, existing.port, { ranges, writable: writable !== false });
  }
  const port = await freeLoopbackPort();
  const reply = await qmp.hmp(`gdbserver tcp:127.0.0.1:${port}`);
  if (!/Waiting for gdb connection/i.test(reply)) throw new TargetError(`QEMU did not start a gdbstub: ${reply.trim()}`);
  try {
    const memory = GdbPhysicalMemory.open('127.0.0.1', port, { ranges, writable: writable !== false });
    startedGdbStubs.add(memory);
    return memory;
  } catch (e) {
    await qmp.hmp('gdbserver none').catch(() => undefined);
    throw e;
  }
}

/** Guest RAM through the source asked for; 'auto' tries the file, then the process. */
async function openLiveMemory(
  qmp: QmpClient,
  want: LiveSourceKind,
  backend: RamBackend,
  layout: readonly Extent[],
  process: QemuProcess | undefined,
  writable: boolean | 'auto',
): Promise<PhysicalMemory> {
  if (want === 'gdb') return openGdbSource(qmp, layout, writable);
  const reasons: string[] = [];
  const fileWritable = backend.readonly ? false : writable;
  let hvas: Extent[] | undefined;
  if (want === 'file' || want === 'auto') {
    const why = fileUnusable(backend);
    if (!why) {
      try {
        return await openSharedFile(backend.memPath!, { layout, writable: fileWritable });
      } catch (e) {
        reasons.push(e instanceof Error ? e.message : String(e));
      }
    } else reasons.push(why);
    // A shared file without a usable name (memfd, hugetlbfs directory): map it from QEMU's side.
    if (process && backend.share) {
      hvas = await hostLayout(qmp, layout);
      const shared = sharedMappingOf(process.pid, hvas);
      if (shared) {
        try {
          return await openSharedFile(shared.path, { layout: shared.layout, writable: fileWritable });
        } catch (e) {
          reasons.push(e instanceof Error ? e.message : String(e));
        }
      }
    }
    if (want === 'file') throw new TargetError(`${qmp.path}: cannot use the RAM file: ${reasons.join('; ')}`);
  }
  if (!process) {
    reasons.push('the QEMU process is not visible from here (another pid namespace?)');
    throw new TargetError(`${qmp.path}: no way to read guest memory: ${reasons.join('; ')}`);
  }
  return openProcMem({ pid: process.pid, layout: hvas ?? (await hostLayout(qmp, layout)), writable });
}

/** Connect to QEMU's QMP socket and build a Machine over its guest. */
export async function attachQemu(qmpPath: string, opts: AttachOptions = {}): Promise<QemuMachine> {
  const want = opts.source ?? 'auto';
  if (!['auto', 'file', 'proc', 'gdb'].includes(want)) throw new UsageError(`unknown memory source '${String(want)}' (auto, file, proc, gdb)`);
  const qmp = await QmpClient.connect(qmpPath, { timeoutMs: opts.timeoutMs });
  try {
    const status = await qmp.execute<{ status?: unknown }>('query-status');
    if (status.status === 'shutdown' || status.status === 'guest-panicked' || status.status === 'internal-error') {
      // Still readable: a panicked guest is exactly what one wants to look at.
      opts.warnings?.warn(qmpPath, `guest state is ${String(status.status)}`);
    }
    const flat = parseFlatView(await qmp.hmp('info mtree -f'));
    const backend = await findRamBackend(qmp, flat);
    const layout = regionExtents(flat, [backend.id, backend.path]).map((e) => ({ ...e, offset: e.offset + backend.fileOffset }));
    if (layout.length === 0) throw new TargetError(`${qmpPath}: the guest sees none of ${backend.path} as RAM`);
    const process = await findQemuProcess(qmp);
    const memory = await openLiveMemory(qmp, want, backend, layout, process, opts.writable ?? 'auto');
    return new QemuMachine(new QmpLink(qmpPath, { timeoutMs: opts.timeoutMs }, qmp), memory, opts.name ?? qmpPath, backend, layout, process, opts.warnings);
  } catch (e) {
    await qmp.close();
    throw e;
  }
}
