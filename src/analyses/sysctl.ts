/**
 * sysctl: every /proc/sys entry read from the kernel's own sysctl tables in guest memory, with
 * its value formatted as /proc/sys shows it (for the handlers understood here).
 *
 * The tree (fs/proc/proc_sysctl.c, 6.1):
 *   sysctl_table_root (struct ctl_table_root) → default_set (struct ctl_table_set) → dir
 *   (struct ctl_dir) → rb_root of struct ctl_node, keyed by name. A ctl_node belongs to a
 *   struct ctl_table_header; its entry is header->ctl_table[node - header->node] (struct
 *   ctl_table: procname, data, maxlen, mode, proc_handler, extra1, extra2).
 *   - A directory entry (S_IFDIR) is the one-entry table of a struct ctl_dir whose header is
 *     that entry's header: the subdirectory is container_of(header, struct ctl_dir, header).
 *   - A link entry (S_IFLNK) stands for an entry of a per-namespace set (net, ipc, mqueue,
 *     user): its data is the struct ctl_table_root, whose lookup picks the reading task's
 *     namespace; the same path is then looked up in that set (sysctl_follow_link, xlate_dir).
 *     vmlens answers for the initial namespaces, the view of the guest's init and its shell.
 *   - Headers being unregistered (unregistering != NULL) are hidden, as use_table() hides them.
 *
 * Values: the handler (a function pointer) says how `data` is formatted. The handlers of
 * kernel/sysctl.c and a few wrappers whose read side is exactly one of them are understood;
 * the rest are listed with their handler's symbol and no value.
 */
import type { Kernel } from '../kernel/kernel.ts';
import { rbtreeInorderForEachEntry } from '../kernel/helpers/rbtree.ts';
import { structReader, type StructReader } from '../kernel/helpers/struct-reader.ts';
import { vaHi, vaLo } from '../mmu/va.ts';
import { UsageError, VmlensError } from '../util/errors.ts';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

/** Guards against a hostile or corrupt tree: deeper, wider or longer than any real kernel's. */
const MAX_DEPTH = 24;
const MAX_ENTRIES_PER_DIR = 100_000;
const MAX_ENTRIES = 500_000;
const MAX_PROCNAME = 256;
/** Entries of one table: real tables have at most a few hundred. */
const MAX_TABLE_INDEX = 65_536;
/** Largest data buffer formatted (a vector of ints/longs, a string): the kernel's own reads stop at a page. */
const MAX_DATA = 65_536;

/** USER_HZ on x86: the unit of clock_t. */
const USER_HZ = 100;
const ULONG_MAX = 2n ** 64n - 1n;

/** Element type of a handler's data. */
export type SysctlElement = 'int' | 'uint' | 'u8' | 'bool' | 'ulong' | 'string' | 'static_key';
/** Unit conversion between what /proc/sys shows and what is stored. */
export type SysctlUnit = 'jiffies' | 'userhz_jiffies' | 'ms_jiffies';

/** What vmlens knows about one proc_handler. */
export interface SysctlHandlerSpec {
  /** The kernel function. */
  readonly name: string;
  readonly element: SysctlElement;
  readonly unit?: SysctlUnit;
  /** Values are bounded by *extra1 (min) and *extra2 (max) when those are non-NULL. */
  readonly minmax: boolean;
  /** The data is an array of maxlen / element-size values (tab-separated); otherwise exactly one value. */
  readonly vector: boolean;
  /**
   * Storing the value is all the kernel's write does (apart from checks and notifications), so a
   * write into memory has the same effect as a write to /proc/sys. Handlers that also
   * recompute other state are readable here but not writable.
   */
  readonly writable: boolean;
  /** The data is reached through a per-namespace hook (proc_do_uts_string's get_uts): vmlens reads init's copy, which is `data` itself. */
  readonly viaNamespace?: boolean;
}

const spec = (name: string, element: SysctlElement, o: Partial<Omit<SysctlHandlerSpec, 'name' | 'element'>> = {}): SysctlHandlerSpec => ({
  name,
  element,
  minmax: o.minmax ?? false,
  vector: o.vector ?? (element !== 'string' && element !== 'uint' && element !== 'u8' && element !== 'static_key'),
  writable: o.writable ?? true,
  ...(o.unit !== undefined ? { unit: o.unit } : {}),
  ...(o.viaNamespace !== undefined ? { viaNamespace: o.viaNamespace } : {}),
});

/**
 * The handlers understood, by kernel function name (kernel/sysctl.c, kernel/utsname_sysctl.c,
 * and wrappers whose read is a plain call of one of these on table->data).
 */
export const SYSCTL_HANDLERS: readonly SysctlHandlerSpec[] = [
  spec('proc_dostring', 'string'),
  spec('proc_do_uts_string', 'string', { viaNamespace: true }),
  spec('proc_dobool', 'bool'),
  spec('proc_dointvec', 'int'),
  spec('proc_dointvec_minmax', 'int', { minmax: true }),
  spec('proc_douintvec', 'uint'),
  spec('proc_douintvec_minmax', 'uint', { minmax: true }),
  spec('proc_dou8vec_minmax', 'u8', { minmax: true }),
  spec('proc_dointvec_jiffies', 'int', { unit: 'jiffies' }),
  spec('proc_dointvec_userhz_jiffies', 'int', { unit: 'userhz_jiffies' }),
  spec('proc_dointvec_ms_jiffies', 'int', { unit: 'ms_jiffies' }),
  spec('proc_dointvec_ms_jiffies_minmax', 'int', { unit: 'ms_jiffies', minmax: true }),
  spec('proc_doulongvec_minmax', 'ulong', { minmax: true }),
  spec('proc_doulongvec_ms_jiffies_minmax', 'ulong', { unit: 'ms_jiffies', minmax: true }),
  spec('proc_do_static_key', 'static_key', { writable: false }),
  // Wrappers: a capability check, or a warning on PREEMPT_RT, around proc_dointvec_minmax.
  spec('proc_dointvec_minmax_sysadmin', 'int', { minmax: true }),
  spec('proc_dointvec_minmax_warn_RT_change', 'int', { minmax: true }),
  // Wrappers whose write recomputes other state: readable, not writable from outside.
  spec('proc_dointvec_minmax_coredump', 'int', { minmax: true, writable: false }),
  spec('dirty_background_ratio_handler', 'int', { minmax: true, writable: false }),
  spec('dirty_ratio_handler', 'int', { minmax: true, writable: false }),
  spec('dirty_background_bytes_handler', 'ulong', { minmax: true, writable: false }),
  spec('dirty_bytes_handler', 'ulong', { minmax: true, writable: false }),
  spec('dirty_writeback_centisecs_handler', 'int', { writable: false }),
  spec('overcommit_policy_handler', 'int', { minmax: true, writable: false }),
  spec('overcommit_ratio_handler', 'int', { writable: false }),
  spec('overcommit_kbytes_handler', 'ulong', { writable: false }),
  spec('devinet_conf_proc', 'int', { writable: false }),
  spec('devinet_sysctl_forward', 'int', { writable: false }),
  spec('ipv4_doint_and_flush', 'int', { writable: false }),
  spec('ipv4_fwd_update_priority', 'u8', { minmax: true, writable: false }),
];

/** One /proc/sys file. */
export interface SysctlEntry {
  /** Dotted name as sysctl(8) prints it, e.g. `net.ipv4.ip_forward`. */
  readonly name: string;
  /** Path components under /proc/sys (a component may itself contain dots, e.g. `eth0.5`). */
  readonly path: readonly string[];
  /** Address of its struct ctl_table. */
  readonly table: bigint;
  readonly data: bigint;
  readonly maxlen: number;
  /** Permission bits (mode & 0o777). */
  readonly mode: number;
  readonly handler: bigint;
  /** The handler's symbol (`name` or `name+0xoff`), when the kernel has one there. */
  readonly handlerName?: string;
  readonly extra1: bigint;
  readonly extra2: bigint;
  /** The handler understood, or undefined. */
  readonly spec?: SysctlHandlerSpec;
}

/** A sysctl with its value as /proc/sys shows it (without the final newline). */
export interface SysctlValue extends SysctlEntry {
  /** undefined when the handler is not understood or the data could not be read (see `error`). */
  readonly value?: string;
  readonly error?: string;
}

export interface SysctlListOptions {
  /** Only names equal to this or under it (dotted or slashed), e.g. `net.ipv4`. */
  readonly prefix?: string;
}

/** Split a user's sysctl name: slashes when it has any (names of interfaces with dots), else dots. */
export function splitSysctlName(name: string): string[] {
  const t = name.trim().replace(/^\/?proc\/sys\//, '').replace(/^\/+|\/+$/g, '');
  const parts = t.includes('/') ? t.split('/') : t.split('.');
  if (t === '' || parts.some((p) => p === '')) throw new UsageError(`not a sysctl name: '${name}'`);
  return parts;
}

/** Every sysctl under `prefix` (all by default), in /proc/sys order (sorted per directory). */
export function listSysctls(k: Kernel, opts: SysctlListOptions = {}): SysctlEntry[] {
  const tree = new SysctlTree(k);
  const prefix = opts.prefix !== undefined ? splitSysctlName(opts.prefix) : [];
  const out: SysctlEntry[] = [];
  const start = tree.resolve(prefix);
  if (!start) throw new UsageError(`no sysctl '${prefix.join('.')}'`);
  if (start.kind === 'file') return [tree.entryOf(start.ref, prefix)];
  tree.walk(start.dir, prefix, out);
  return out;
}

/** One sysctl by name; UsageError when there is none or the name is a directory. */
export function findSysctl(k: Kernel, name: string): SysctlEntry {
  const parts = splitSysctlName(name);
  const tree = new SysctlTree(k);
  const found = tree.resolve(parts);
  if (!found) throw new UsageError(`unknown sysctl '${name}'`);
  if (found.kind === 'dir') throw new UsageError(`sysctl '${name}' is a directory, not a value`);
  return tree.entryOf(found.ref, parts);
}

/** Values of entries (a fault or an oddity in one entry is recorded in it, not thrown). */
export function readSysctlValues(k: Kernel, entries: readonly SysctlEntry[]): SysctlValue[] {
  const fmt = new SysctlFormatter(k);
  return entries.map((e) => {
    if (!e.spec) return e;
    try {
      return { ...e, value: fmt.format(e) };
    } catch (err) {
      if (err instanceof VmlensError) return { ...e, error: err.message };
      throw err;
    }
  });
}

/** The /proc/sys text of one entry; throws a VmlensError when it cannot be read. */
export function formatSysctl(k: Kernel, e: SysctlEntry): string {
  return new SysctlFormatter(k).format(e);
}

// ---- the tree ---------------------------------------------------------------------------------

/** An entry of a directory: the header it belongs to and its struct ctl_table. */
interface EntryRef {
  readonly name: string;
  readonly header: bigint;
  readonly table: bigint;
  readonly mode: number;
}

type Resolved = { kind: 'dir'; dir: bigint } | { kind: 'file'; ref: EntryRef };

class SysctlTree {
  private readonly r: StructReader;
  private readonly listings = new Map<bigint, Map<string, EntryRef>>();
  /** struct ctl_table_root → the set of the initial namespace it serves. */
  private rootSets: Map<bigint, bigint> | undefined;
  private entries = 0;
  private readonly tableSize: number;
  private readonly nodeSize: number;
  private readonly dirRootOff: number;
  private readonly setDirOff: number;
  readonly rootDir: bigint;

  constructor(private readonly k: Kernel) {
    this.r = structReader(k);
    this.tableSize = k.btf.sizeof('struct ctl_table');
    this.nodeSize = k.btf.sizeof('struct ctl_node');
    this.dirRootOff = this.r.off('ctl_dir', 'root');
    this.setDirOff = this.r.off('ctl_table_set', 'dir');
    const root = k.symbol('sysctl_table_root');
    this.rootDir = root + BigInt(this.r.off('ctl_table_root', 'default_set') + this.setDirOff);
  }

  /** The entries of a directory by name, as proc_sys_readdir sees them (usable headers only). */
  list(dir: bigint): Map<string, EntryRef> {
    const cached = this.listings.get(dir);
    if (cached) return cached;
    const k = this.k;
    const r = this.r;
    const byName = new Map<string, EntryRef>();
    this.listings.set(dir, byName);
    const what = 'sysctl: directory tree';
    const rbRoot = k.object('struct rb_root', dir + BigInt(this.dirRootOff));
    for (const node of rbtreeInorderForEachEntry(rbRoot, 'struct ctl_node', 'node', { what, limit: MAX_ENTRIES_PER_DIR })) {
      if (++this.entries > MAX_ENTRIES) {
        k.warnings.warn(what, `more than ${MAX_ENTRIES} entries; stopped`);
        break;
      }
      try {
        const nodeAddr = node.address;
        const header = r.ptr(nodeAddr, 'ctl_node', 'header');
        if (r.ptr(header, 'ctl_table_header', 'unregistering') !== 0n) continue;
        const nodes = r.ptr(header, 'ctl_table_header', 'node');
        const delta = nodeAddr - nodes;
        const index = delta / BigInt(this.nodeSize);
        if (delta < 0n || delta % BigInt(this.nodeSize) !== 0n || index >= BigInt(MAX_TABLE_INDEX)) {
          k.warnings.warn(what, `ctl_node 0x${nodeAddr.toString(16)} is not in its header's node array; skipped`);
          continue;
        }
        const table = r.ptr(header, 'ctl_table_header', 'ctl_table') + index * BigInt(this.tableSize);
        const procname = r.ptr(table, 'ctl_table', 'procname');
        if (procname === 0n) continue;
        const name = r.cstrAt(procname, MAX_PROCNAME);
        if (name === '' || name.includes('/')) {
          k.warnings.warn(what, `entry 0x${table.toString(16)} has an impossible name '${name}'; skipped`);
          continue;
        }
        byName.set(name, { name, header, table, mode: r.u16(table, 'ctl_table', 'mode') });
      } catch (e) {
        if (!(e instanceof VmlensError)) throw e;
        k.warnings.warn(what, `${e.message}; entry skipped`);
      }
    }
    return byName;
  }

  /** Follow a link entry found at `path` (its own name included) to the entry of its namespace set. */
  private follow(link: EntryRef, path: readonly string[]): EntryRef | undefined {
    const root = this.r.ptr(link.table, 'ctl_table', 'data');
    const set = this.setOf(root);
    if (set === undefined) {
      this.k.warnings.warn('sysctl', `${path.join('.')}: link to an unknown sysctl root 0x${root.toString(16)}; skipped`);
      return undefined;
    }
    let dir = set + BigInt(this.setDirOff);
    for (const part of path.slice(0, -1)) {
      const e = this.list(dir).get(part);
      if (!e || (e.mode & S_IFMT) !== S_IFDIR) return undefined;
      dir = e.header;
    }
    const target = this.list(dir).get(path[path.length - 1]!);
    // A link to a link would loop; the kernel never makes one.
    return target && (target.mode & S_IFMT) !== S_IFLNK ? target : undefined;
  }

  /** Entry `ref` at `path`, links followed (undefined when the link leads nowhere). */
  private resolveEntry(ref: EntryRef, path: readonly string[]): EntryRef | undefined {
    return (ref.mode & S_IFMT) === S_IFLNK ? this.follow(ref, path) : ref;
  }

  /**
   * The sets of the initial namespaces, by the root they belong to (`set->dir.header.root`),
   * as each root's lookup() returns them for a task in those namespaces.
   */
  private setOf(root: bigint): bigint | undefined {
    if (!this.rootSets) {
      this.rootSets = new Map();
      const candidates: [string, string, string][] = [
        ['init_net', 'net', 'sysctls'],
        ['init_ipc_ns', 'ipc_namespace', 'ipc_set'],
        ['init_ipc_ns', 'ipc_namespace', 'mq_set'],
        ['init_user_ns', 'user_namespace', 'set'],
      ];
      for (const [symbol, struct, member] of candidates) {
        if (!this.k.hasSymbol(symbol) || !this.r.has(struct, member)) continue;
        try {
          const set = this.r.at(this.k.symbol(symbol), struct, member);
          const owner = this.r.ptr(set + BigInt(this.setDirOff), 'ctl_table_header', 'root');
          if (owner !== 0n && !this.rootSets.has(owner)) this.rootSets.set(owner, set);
        } catch (e) {
          if (!(e instanceof VmlensError)) throw e;
          this.k.warnings.warn('sysctl', `${symbol}.${member}: ${e.message}`);
        }
      }
    }
    const set = this.rootSets.get(root);
    if (set !== undefined) return set;
    // A root without lookup() always answers with its own default set (lookup_header_set).
    try {
      if (this.r.ptr(root, 'ctl_table_root', 'lookup') === 0n) return root + BigInt(this.r.off('ctl_table_root', 'default_set'));
    } catch (e) {
      if (!(e instanceof VmlensError)) throw e;
    }
    return undefined;
  }

  /** A path from /proc/sys to a directory or a file, links followed. */
  resolve(path: readonly string[]): Resolved | undefined {
    let dir = this.rootDir;
    for (let i = 0; i < path.length; i++) {
      const raw = this.list(dir).get(path[i]!);
      if (!raw) return undefined;
      const ref = this.resolveEntry(raw, path.slice(0, i + 1));
      if (!ref) return undefined;
      if ((ref.mode & S_IFMT) === S_IFDIR) dir = ref.header;
      else if (i === path.length - 1) return { kind: 'file', ref };
      else return undefined;
    }
    return { kind: 'dir', dir };
  }

  /** Every file under `dir` (at `path`), depth first in name order. */
  walk(dir: bigint, path: readonly string[], out: SysctlEntry[], depth = 0, seen = new Set<bigint>()): void {
    if (depth > MAX_DEPTH) {
      this.k.warnings.warn('sysctl', `${path.join('.')}: deeper than ${MAX_DEPTH} levels; not descended`);
      return;
    }
    if (seen.has(dir)) {
      this.k.warnings.warn('sysctl', `${path.join('.')}: directory reached twice (a cycle); not descended`);
      return;
    }
    seen.add(dir);
    const names = [...this.list(dir).keys()].sort(compareNames);
    for (const name of names) {
      const p = [...path, name];
      const ref = this.resolveEntry(this.list(dir).get(name)!, p);
      if (!ref) continue;
      if ((ref.mode & S_IFMT) === S_IFDIR) this.walk(ref.header, p, out, depth + 1, seen);
      else {
        try {
          out.push(this.entryOf(ref, p));
        } catch (e) {
          if (!(e instanceof VmlensError)) throw e;
          this.k.warnings.warn('sysctl', `${p.join('.')}: ${e.message}; skipped`);
        }
      }
    }
    seen.delete(dir);
  }

  entryOf(ref: EntryRef, path: readonly string[]): SysctlEntry {
    const r = this.r;
    const t = ref.table;
    const handler = r.ptr(t, 'ctl_table', 'proc_handler');
    const handlerName = handler === 0n ? undefined : this.k.symbolize(handler);
    const s = handlerName !== undefined ? handlerSpec(handlerName) : undefined;
    return {
      name: path.join('.'),
      path: [...path],
      table: t,
      data: r.ptr(t, 'ctl_table', 'data'),
      maxlen: r.i32(t, 'ctl_table', 'maxlen'),
      mode: ref.mode & 0o777,
      handler,
      ...(handlerName !== undefined ? { handlerName } : {}),
      extra1: r.ptr(t, 'ctl_table', 'extra1'),
      extra2: r.ptr(t, 'ctl_table', 'extra2'),
      ...(s ? { spec: s } : {}),
    };
  }
}

/** The kernel's order of names in a directory (namecmp: bytes, then length). */
function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

const specsByName = new Map(SYSCTL_HANDLERS.map((s) => [s.name, s]));

/** The spec of a handler by its symbol; only an exact function start counts. */
export function handlerSpec(symbol: string): SysctlHandlerSpec | undefined {
  return specsByName.get(symbol);
}

// ---- values -----------------------------------------------------------------------------------

/** Byte size of one stored element. bool is stored in a byte but strided like int (6.1 proc_dobool). */
export function elementStride(e: SysctlElement): number {
  switch (e) {
    case 'int':
    case 'uint':
    case 'bool':
      return 4;
    case 'u8':
      return 1;
    case 'ulong':
      return 8;
    case 'string':
    case 'static_key':
      return 1;
  }
}

/** Number of values the handler reads or writes: maxlen / stride, or 1 for the single-value handlers (which demand exactly that). */
export function elementCount(e: SysctlEntry & { spec: SysctlHandlerSpec }): number {
  const s = e.spec;
  if (e.maxlen <= 0 || e.maxlen > MAX_DATA) throw new UsageError(`${e.name}: maxlen ${e.maxlen} is not plausible`);
  const n = Math.floor(e.maxlen / elementStride(s.element));
  // proc_douintvec(_minmax) and proc_dou8vec_minmax refuse anything but one value (-EINVAL).
  if (!s.vector && s.element !== 'string' && s.element !== 'static_key' && n !== 1) {
    throw new UsageError(`${e.name}: ${s.name} with maxlen ${e.maxlen} fails with EINVAL in the kernel too`);
  }
  return n;
}

/** The guest's jiffies rate: HZ is compile-time, but tick_nsec (≈ 10^9 / HZ) is in memory. */
export function kernelHz(k: Kernel): number {
  const a = k.symbols.lookup('tick_nsec');
  if (a === undefined) throw new UsageError('the kernel has no tick_nsec: its HZ is unknown');
  const tick = Number(k.space.readU64Big(a));
  if (!(tick > 0)) throw new UsageError(`tick_nsec is ${tick}: its HZ is unknown`);
  const hz = Math.round(1e9 / tick);
  if (![100, 250, 300, 1000].includes(hz)) throw new UsageError(`tick_nsec ${tick} gives HZ ${hz}, not a kernel HZ`);
  return hz;
}

/** Conversions of kernel/time/time.c for the guest's HZ (USER_HZ is 100 on x86). */
export class Jiffies {
  /** TICK_NSEC: nanoseconds per jiffy, rounded as the kernel rounds it. */
  readonly tickNsec: number;
  constructor(readonly hz: number) {
    this.tickNsec = Math.floor((1e9 + Math.floor(hz / 2)) / hz);
  }

  /** jiffies_to_msecs: unsigned int result. */
  toMsecs(j: bigint): bigint {
    if (1000 % this.hz === 0) return ((BigInt(1000 / this.hz) * j) & 0xffff_ffffn);
    // HZ 300: DIV_ROUND_UP(j * HZ_TO_MSEC_NUM, HZ_TO_MSEC_DEN) with NUM/DEN = 10/3.
    return ((j * 10n + 2n) / 3n) & 0xffff_ffffn;
  }

  /** msecs_to_jiffies for m ≥ 0 (rounds up, as _msecs_to_jiffies does). */
  fromMsecs(m: bigint): bigint {
    if (1000 % this.hz === 0) {
      const per = BigInt(1000 / this.hz);
      return (m + per - 1n) / per;
    }
    return (m * 3n + 9n) / 10n;
  }

  /** jiffies_to_clock_t. */
  toClockT(j: bigint): bigint {
    const perClock = 1e9 / USER_HZ;
    if (this.tickNsec % perClock === 0) return this.hz < USER_HZ ? j * BigInt(USER_HZ / this.hz) : j / BigInt(this.hz / USER_HZ);
    return (j * BigInt(this.tickNsec)) / BigInt(perClock);
  }

  /** clock_t_to_jiffies for x ≥ 0. */
  fromClockT(x: bigint): bigint {
    if (this.hz % USER_HZ === 0) return x * BigInt(this.hz / USER_HZ);
    return (x * BigInt(this.hz)) / BigInt(USER_HZ);
  }
}

class SysctlFormatter {
  private jiffies: Jiffies | undefined;
  constructor(private readonly k: Kernel) {}

  private get jf(): Jiffies {
    this.jiffies ??= new Jiffies(kernelHz(this.k));
    return this.jiffies;
  }

  format(e: SysctlEntry): string {
    const s = e.spec;
    if (!s) throw new UsageError(`${e.name}: handler ${e.handlerName ?? `0x${e.handler.toString(16)}`} is not understood`);
    if (e.data === 0n) return '';
    const space = this.k.space;
    if (s.element === 'string') {
      // _proc_do_string: strlen(data), capped at maxlen.
      if (e.maxlen <= 0) return '';
      const bytes = space.readBytes(e.data, Math.min(e.maxlen, MAX_DATA));
      const nul = bytes.indexOf(0);
      return decodeGuestString(nul >= 0 ? bytes.subarray(0, nul) : bytes);
    }
    if (s.element === 'static_key') {
      // static_key_enabled(): atomic_read(&key->enabled) > 0, printed as an int.
      const enabled = space.readU32(vaHi(e.data), vaLo(e.data)) | 0;
      return enabled > 0 ? '1' : '0';
    }
    if (e.maxlen <= 0) return '';
    const n = elementCount(e as SysctlEntry & { spec: SysctlHandlerSpec });
    if (n === 0) return '';
    const raw = readElements(space, e.data, s.element, n);
    return raw.map((v) => this.show(s, v)).join('\t');
  }

  /** One stored value as the handler prints it. */
  private show(s: SysctlHandlerSpec, v: bigint): string {
    switch (s.unit) {
      case undefined:
        return v.toString();
      case 'jiffies':
        return signed(v, (m) => m / BigInt(this.jf.hz));
      case 'userhz_jiffies':
        return signed(v, (m) => this.jf.toClockT(m));
      case 'ms_jiffies':
        if (s.element === 'ulong') return ((1000n * v) & ULONG_MAX) / BigInt(this.jf.hz) + '';
        return signed(v, (m) => this.jf.toMsecs(m));
    }
  }
}

/** The kernel prints negative ints as '-' and the conversion of their magnitude. */
function signed(v: bigint, conv: (magnitude: bigint) => bigint): string {
  return v < 0n ? `-${conv(-v)}` : conv(v).toString();
}

/** Read `n` stored elements; ints come back signed, the others unsigned. */
export function readElements(space: Kernel['space'], data: bigint, element: SysctlElement, n: number): bigint[] {
  const stride = elementStride(element);
  const bytes = space.readBytes(data, stride * n);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: bigint[] = [];
  for (let i = 0; i < n; i++) {
    const at = i * stride;
    switch (element) {
      case 'int':
        out.push(BigInt(dv.getInt32(at, true)));
        break;
      case 'uint':
        out.push(BigInt(dv.getUint32(at, true)));
        break;
      case 'bool':
      case 'u8':
        out.push(BigInt(dv.getUint8(at)));
        break;
      case 'ulong':
        out.push(dv.getBigUint64(at, true));
        break;
      default:
        throw new UsageError(`${element} values are not numbers`);
    }
  }
  return out;
}

/** Guest strings are bytes; UTF-8 is what a guest shell would show (malformed bytes become U+FFFD). */
export function decodeGuestString(bytes: Uint8Array): string {
  return new TextDecoder('utf-8').decode(bytes);
}
