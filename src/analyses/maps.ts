/**
 * A process's memory areas — /proc/PID/maps, and Volatility's linux.proc.Maps: start, end,
 * permissions, file offset, device, inode and the name the kernel gives the area (a path, or
 * [heap], [stack], [vdso], [vvar], [vsyscall], [anon:NAME]), decided as show_map_vma() does.
 */
import { dPath, readPath, type PathRef } from '../kernel/helpers/fs.ts';
import { forEachVma } from '../kernel/helpers/mm.ts';
import { structReader, type StructReader } from '../kernel/helpers/struct-reader.ts';
import type { Kernel } from '../kernel/kernel.ts';
import type { TaskRow } from './ps.ts';
import { readerRoot, selectProcesses } from './processes.ts';

export interface MapRow {
  readonly pid: number;
  readonly comm: string;
  /** `struct vm_area_struct *` (the gate area is the kernel's static one). */
  readonly vma: bigint;
  readonly start: bigint;
  readonly end: bigint;
  /** "rwxp" / "r--s": read, write, execute, shared (VM_MAYSHARE) or private. */
  readonly perms: string;
  /** The raw vm_flags. */
  readonly vmFlags: bigint;
  /** Offset into the file in bytes (vm_pgoff << 12); 0 for anonymous areas, as /proc shows. */
  readonly offset: bigint;
  readonly major: number;
  readonly minor: number;
  readonly inode: number;
  /** Path of the mapped file, the kernel's name for a special area, or '' for plain anonymous memory. */
  readonly path: string;
  /** True when `path` is a file's path (not a [name]). */
  readonly fileBacked: boolean;
}

const VM_READ = 0x1n;
const VM_WRITE = 0x2n;
const VM_EXEC = 0x4n;
const VM_MAYSHARE = 0x80n;
/** enum { EMULATE, XONLY, NONE } vsyscall_mode. */
const VSYSCALL_NONE = 2;
const MM_CONTEXT_HAS_VSYSCALL = 2;

export interface MapsOptions {
  readonly pids?: ReadonlySet<number>;
  /** Root paths are rendered against; default: pid 1's (see readerRoot). */
  readonly root?: PathRef | null;
}

/** Memory areas of every selected process (kernel threads have none). */
export function listMaps(k: Kernel, opts: MapsOptions = {}): MapRow[] {
  const tasks = selectProcesses(k, opts.pids);
  const root = opts.root !== undefined ? opts.root : readerRoot(k, tasks);
  const rows: MapRow[] = [];
  for (const t of tasks) {
    try {
      rows.push(...processMaps(k, t, root));
    } catch (e) {
      k.warnings.warn('maps', `pid ${t.pid}: ${(e as Error).message}`);
    }
  }
  return rows;
}

/** Memory areas of one process, in address order, the gate area ([vsyscall]) last when the kernel shows it. */
export function processMaps(k: Kernel, task: Pick<TaskRow, 'task' | 'pid' | 'comm'>, root: PathRef | null): MapRow[] {
  const r = structReader(k);
  const mm = r.ptr(task.task, 'task_struct', 'mm');
  if (mm === 0n) return [];
  const mmObj = k.object('struct mm_struct', mm);
  const brk = r.u64(mm, 'mm_struct', 'brk');
  const startBrk = r.u64(mm, 'mm_struct', 'start_brk');
  const startStack = r.u64(mm, 'mm_struct', 'start_stack');
  const rows: MapRow[] = [];
  for (const vma of forEachVma(mmObj, { what: `maps: pid ${task.pid}` })) {
    try {
      rows.push(readVma(k, r, task, vma.address, { brk, startBrk, startStack }, root));
    } catch (e) {
      k.warnings.warn('maps', `pid ${task.pid}: vma at 0x${vma.address.toString(16)}: ${(e as Error).message}`);
    }
  }
  const gate = gateVma(k, r, mm);
  if (gate !== undefined) rows.push(readVma(k, r, task, gate, { brk: 0n, startBrk: 1n, startStack: 0n }, root));
  return rows;
}

interface MmBounds {
  readonly brk: bigint;
  readonly startBrk: bigint;
  readonly startStack: bigint;
}

function readVma(k: Kernel, r: StructReader, task: Pick<TaskRow, 'pid' | 'comm'>, vma: bigint, mm: MmBounds, root: PathRef | null): MapRow {
  const V = 'vm_area_struct';
  const start = r.u64(vma, V, 'vm_start');
  const end = r.u64(vma, V, 'vm_end');
  const flags = r.u64(vma, V, 'vm_flags');
  const file = r.ptr(vma, V, 'vm_file');
  const perms =
    (flags & VM_READ ? 'r' : '-') + (flags & VM_WRITE ? 'w' : '-') + (flags & VM_EXEC ? 'x' : '-') + (flags & VM_MAYSHARE ? 's' : 'p');
  let offset = 0n;
  let major = 0;
  let minor = 0;
  let inode = 0;
  let path = '';
  if (file !== 0n) {
    const ino = r.ptr(file, 'file', 'f_inode');
    const sb = r.ptr(ino, 'inode', 'i_sb');
    const dev = r.u32(sb, 'super_block', 's_dev');
    major = dev >>> 20;
    minor = dev & 0xfffff;
    inode = r.num64(ino, 'inode', 'i_ino');
    offset = r.u64(vma, V, 'vm_pgoff') << 12n;
    path = dPath(k, readPath(k, r.at(file, 'file', 'f_path')), root);
  } else {
    path = specialName(k, r, vma, start, end, mm) ?? '';
  }
  return { pid: task.pid, comm: task.comm, vma, start, end, perms, vmFlags: flags, offset, major, minor, inode, path, fileBacked: file !== 0n };
}

/** The name show_map_vma() gives an area without a file, or undefined for none. */
function specialName(k: Kernel, r: StructReader, vma: bigint, start: bigint, end: bigint, mm: MmBounds): string | undefined {
  const V = 'vm_area_struct';
  const ops = r.ptr(vma, V, 'vm_ops');
  if (ops !== 0n) {
    const fn = r.ptr(ops, 'vm_operations_struct', 'name');
    if (fn !== 0n) {
      const sym = k.symbols.symbolize(fn);
      const name = sym && sym.offset === 0n ? sym.name : undefined;
      if (name === 'special_mapping_name') {
        // vm_private_data is the struct vm_special_mapping that installed the area.
        const sm = r.ptr(vma, V, 'vm_private_data');
        if (sm !== 0n) return r.cstr(sm, 'vm_special_mapping', 'name', 64);
      } else if (name === 'gate_vma_name') {
        return '[vsyscall]';
      } else {
        k.warnings.warn('maps', `vma 0x${vma.toString(16)} is named by an unknown function ${name ?? `0x${fn.toString(16)}`}`);
      }
    }
  }
  if (start <= mm.brk && end >= mm.startBrk) return '[heap]';
  if (start <= mm.startStack && end >= mm.startStack) return '[stack]';
  if (r.has(V, 'anon_name')) {
    const anon = r.ptr(vma, V, 'anon_name');
    if (anon !== 0n) return `[anon:${r.cstrAt(r.at(anon, 'anon_vma_name', 'name'), 256)}]`;
  }
  return undefined;
}

/**
 * get_gate_vma(): the vsyscall page, shown after the real areas unless the kernel runs with
 * vsyscall=none or the process is a 32-bit one without it (MM_CONTEXT_HAS_VSYSCALL).
 */
function gateVma(k: Kernel, r: StructReader, mm: bigint): bigint | undefined {
  const gate = k.symbols.lookup('gate_vma');
  const modeSym = k.symbols.lookup('vsyscall_mode');
  if (gate === undefined || modeSym === undefined) return undefined;
  const mode = k.space.readU32(Number(modeSym >> 32n) >>> 0, Number(modeSym & 0xffff_ffffn));
  if (mode === VSYSCALL_NONE) return undefined;
  if (r.has('mm_struct', 'context.flags') && (r.u16(mm, 'mm_struct', 'context.flags') & MM_CONTEXT_HAS_VSYSCALL) === 0) return undefined;
  return gate;
}

/** One line of /proc/PID/maps, byte for byte (paths with a newline escape it as \012). */
export function formatMapLine(m: MapRow): string {
  const hex = (v: bigint | number, w: number) => v.toString(16).padStart(w, '0');
  const head = `${hex(m.start, 8)}-${hex(m.end, 8)} ${m.perms} ${hex(m.offset, 8)} ${hex(m.major, 2)}:${hex(m.minor, 2)} ${m.inode} `;
  if (m.path === '') return head;
  // seq_pad(): the name starts at column 73 (25 + 6 * sizeof(void *)), after at least one space.
  const name = m.fileBacked ? m.path.replace(/\n/g, '\\012') : m.path;
  return `${head.padEnd(72, ' ')} ${name}`;
}
