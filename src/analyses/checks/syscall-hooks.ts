/**
 * syscall-hooks: handler tables whose entries no longer point where the kernel put them.
 *
 * - `sys_call_table` (and the ia32/x32 tables where this kernel has them): entry N must be the
 *   kernel's own handler for system call N. The kernel recorded at boot which handler each
 *   number had, by name, in `syscalls_metadata[N]` (ftrace's syscall tracing); entries without
 *   a record must still be the start of a `__x64_sys_*` handler (or `sys_ni_syscall`) in the
 *   kernel's text.
 * - the IDT (`idt_table`, and the table each vCPU's IDTR points to): every present gate must
 *   lead into the kernel's entry code.
 * - function-pointer tables that rootkits redirect to hide files, processes, sockets and
 *   modules (/proc's directory operations, the seq_operations behind /proc/net/tcp and
 *   /proc/modules, the protocol tables of TCP and UDP): every pointer must lead into the
 *   kernel's text or a listed module's text.
 *
 * Each entry that fails is a finding with the table, the slot, the value, where it lands
 * (a hidden module is named, with its own symbol for the address) and what was expected.
 */
import type { Kernel } from '../../kernel/kernel.ts';
import { BtfKind } from '../../kernel/btf/index.ts';
import { readCString } from '../../kernel/object.ts';
import { codeMap, lookupAll, namesAt, symbolSize, symbolType, type CodeMap, type CodeTarget } from './code-map.ts';
import { moduleCensus } from './hidden-modules.ts';
import { CheckReport, guestDataError, type Check, type CheckContext, type CheckResult } from './types.ts';

const NAME = 'syscall-hooks';
/** More entries than any system call table has (x86-64 has ~460). */
const MAX_SYSCALLS = 1024;
const IDT_ENTRIES = 256;
const GATE_SIZE = 16;

export const syscallHooks: Check = {
  name: NAME,
  description: 'system call tables, the IDT and kernel function-pointer tables pointing outside the kernel\'s own handlers',
  run: (ctx: CheckContext): CheckResult => {
    const k = ctx.kernel;
    const report = new CheckReport(NAME);
    const map = codeMap(k, moduleCensus(ctx));
    const guard = (what: string, fn: () => void): void => {
      try {
        fn();
      } catch (e) {
        k.warnings.warn(`${NAME}: ${what}`, guestDataError(e).message);
        report.count(what, `unreadable (${guestDataError(e).message})`);
      }
    };
    guard('sys_call_table', () => checkSyscallTable(k, map, report, 'sys_call_table', '__x64_'));
    for (const [table, prefix] of [
      ['ia32_sys_call_table', '__ia32_'],
      ['x32_sys_call_table', '__x32_'],
    ] as const) {
      if (k.hasSymbol(table)) guard(table, () => checkSyscallTable(k, map, report, table, prefix));
    }
    guard('idt', () => checkIdt(k, map, report, ctx));
    guard('operation tables', () => checkOperationTables(k, map, report));
    return report.result();
  },
};

// ---- system call tables -----------------------------------------------------------------------

function checkSyscallTable(k: Kernel, map: CodeMap, report: CheckReport, table: string, prefix: string): void {
  const base = k.symbol(table);
  const extent = symbolSize(k, base);
  const size = extent === undefined ? MAX_SYSCALLS * 8 : Number(extent);
  let n = Math.min(Math.floor(size / 8), MAX_SYSCALLS);
  const entries: bigint[] = [];
  for (let i = 0; i < n; i++) entries.push(k.space.readU64Big(base + BigInt(i * 8)));
  // The symbol's extent runs to the next symbol: zero entries at its end are padding.
  while (n > 0 && entries[n - 1] === 0n) n--;
  const names = table === 'sys_call_table' ? bootNames(k, n) : [];
  const dispatch = k.hasSymbol('x64_sys_call') ? 'x64_sys_call' : undefined;
  let checked = 0;
  for (let nr = 0; nr < n; nr++) {
    checked++;
    const value = entries[nr]!;
    const bootName = names[nr];
    const target = value === 0n ? undefined : map.classify(value);
    const problem = syscallProblem(k, target, value, bootName, prefix);
    if (!problem) continue;
    const evidence: Record<string, string | number | bigint> = {
      table,
      'table address': base,
      nr,
      ...(bootName ? { syscall: bootName.replace(/^sys_/, '') } : {}),
      'entry address': base + BigInt(nr * 8),
      'points to': value,
      'lands in': target?.describe ?? 'NULL',
    };
    if (bootName) {
      const expected = prefix + bootName;
      evidence.expected = expected;
      const at = k.symbols.lookup(expected);
      if (at !== undefined) evidence['expected address'] = at;
    }
    if (dispatch && table === 'sys_call_table') {
      evidence.dispatch = `${dispatch}() dispatches on this kernel, so calls still reach the kernel's own handler; the table was changed all the same`;
    }
    const severity = target && target.where === 'kernel text' ? 'medium' : 'high';
    const label = bootName ? `${bootName.replace(/^sys_/, '')} (${nr})` : `${nr}`;
    report.add(severity, `${table}[${label}] points to ${target?.describe ?? 'NULL'} ${problem}`, evidence);
  }
  report.count(table, checked);
}

/** Why an entry is wrong, or undefined if it is right. */
function syscallProblem(k: Kernel, target: CodeTarget | undefined, value: bigint, bootName: string | undefined, prefix: string): string | undefined {
  if (!target) return 'instead of a handler';
  if (target.where !== 'kernel text') return 'instead of the kernel\'s handler';
  if (bootName) {
    const expected = k.symbols.lookup(prefix + bootName);
    if (expected !== undefined && !lookupAll(k, prefix + bootName).includes(value)) return `instead of ${prefix}${bootName}`;
    if (expected !== undefined) return undefined;
  }
  // No boot record for this number: it must be the start of some system call handler (under
  // any of the names at that address).
  if (target.offset !== 0n) return 'which is not the start of a handler';
  const handler = (n: string): boolean => n.startsWith(prefix + 'sys_') || n.startsWith(prefix + 'compat_sys_') || n === 'sys_ni_syscall';
  if (namesAt(k, value).some(handler)) return undefined;
  // Holes: the "not implemented" handler, whichever of its aliases the symbol table lists first.
  if ([`${prefix}sys_ni_syscall`, 'sys_ni_syscall'].some((n) => lookupAll(k, n).includes(value))) return undefined;
  return 'which is not a system call handler';
}

/**
 * The name each system call number had at boot, from ftrace's `syscalls_metadata` (filled by
 * init_ftrace_syscalls() from the table as it was then): "sys_read" for 0… Entries without a
 * record are undefined (holes, and handlers without metadata).
 */
function bootNames(k: Kernel, n: number): (string | undefined)[] {
  const out: (string | undefined)[] = [];
  const sym = k.symbols.lookup('syscalls_metadata');
  if (sym === undefined || !k.btf.findType('struct syscall_metadata')) return out;
  try {
    const array = k.space.readU64Big(sym);
    if (array === 0n) return out;
    const nameOff = BigInt(k.offsetOf('syscall_metadata', 'name'));
    const nrOff = BigInt(k.offsetOf('syscall_metadata', 'syscall_nr'));
    for (let nr = 0; nr < n; nr++) {
      const meta = k.space.readU64Big(array + BigInt(nr * 8));
      if (meta === 0n) {
        out.push(undefined);
        continue;
      }
      const namePtr = k.space.readU64Big(meta + nameOff);
      const recordedNr = k.space.readU32(Number((meta + nrOff) >> 32n) >>> 0, Number((meta + nrOff) & 0xffff_ffffn)) | 0;
      const name = namePtr === 0n ? '' : readCString(k.space, Number(namePtr >> 32n) >>> 0, Number(namePtr & 0xffff_ffffn), 64);
      out.push(/^sys_[a-z0-9_]+$/.test(name) && recordedNr === nr ? name : undefined);
    }
  } catch (e) {
    k.warnings.warn(`${NAME}: syscalls_metadata`, guestDataError(e).message);
  }
  return out;
}

// ---- the interrupt descriptor table ----------------------------------------------------------

/** Entry code the IDT may lead to: exception and system-vector stubs, the IRQ stub arrays, int 0x80. */
const IDT_HANDLER = /^(asm_|irq_entries_start$|spurious_entries_start$|entry_INT80|xen_asm_)/;
/** Exception vectors 0-31: the early boot handlers cover them all. */
const NUM_EXCEPTION_VECTORS = 32;
/**
 * Size of one early exception stub (EARLY_IDT_HANDLER_SIZE: 9 bytes, 13 with an ENDBR64 in
 * front under IBT): the array's extent over its 32 stubs, or 9 when the extent is unknown.
 */
function earlyStubSize(k: Kernel, array: bigint): bigint {
  const size = symbolSize(k, array);
  return size !== undefined && size > 0n && size % BigInt(NUM_EXCEPTION_VECTORS) === 0n ? size / BigInt(NUM_EXCEPTION_VECTORS) : 9n;
}

function checkIdt(k: Kernel, map: CodeMap, report: CheckReport, ctx: CheckContext): void {
  const idt = k.symbol('idt_table');
  const raw = k.space.readBytes(idt, IDT_ENTRIES * GATE_SIZE);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  let present = 0;
  let earlyStubs = 0;
  const early = k.symbols.lookup('early_idt_handler_array');
  const earlyStub = early === undefined ? 0n : earlyStubSize(k, early);
  for (let v = 0; v < IDT_ENTRIES; v++) {
    const p = v * GATE_SIZE;
    const bits = dv.getUint16(p + 4, true);
    if ((bits & 0x8000) === 0) continue;
    present++;
    const handler = BigInt(dv.getUint16(p, true)) | (BigInt(dv.getUint16(p + 6, true)) << 16n) | (BigInt(dv.getUint32(p + 8, true)) << 32n);
    const target = map.classify(handler);
    // At boot every exception vector gets a stub of early_idt_handler_array; vectors this CPU
    // and configuration never raise (#VE without TDX, #CP without IBT…) keep it, in init text.
    if (early !== undefined && v < NUM_EXCEPTION_VECTORS && handler === early + BigInt(v) * earlyStub) {
      earlyStubs++;
      continue;
    }
    const evidence = {
      table: 'idt_table',
      'table address': idt,
      vector: `0x${v.toString(16)}`,
      'gate address': idt + BigInt(p),
      handler,
      'lands in': target.describe,
    };
    if (target.where !== 'kernel text') {
      report.add('high', `IDT vector 0x${v.toString(16)} leads to ${target.describe}, outside the kernel's entry code`, evidence);
    } else if (!IDT_HANDLER.test(target.symbol ?? '')) {
      report.add('medium', `IDT vector 0x${v.toString(16)} leads to ${target.describe}, which is not interrupt entry code`, evidence);
    }
  }
  report.count('IDT gates', present);
  if (earlyStubs > 0) report.count('IDT gates left on early boot stubs', earlyStubs);

  // Each vCPU must use that table (directly, or through its read-only alias in the CPU entry area).
  const idtPa = k.space.tryTranslate(idt);
  for (const vcpu of ctx.vcpus) {
    if (vcpu.idtBase === 0n) continue;
    const pa = k.space.tryTranslate(vcpu.idtBase);
    if (pa !== null && pa === idtPa) continue;
    report.add('high', `vCPU ${vcpu.index} uses an IDT at 0x${vcpu.idtBase.toString(16)}, not the kernel's idt_table`, {
      vcpu: vcpu.index,
      idtr: vcpu.idtBase,
      'idtr physical': pa === null ? 'not mapped' : `0x${pa.toString(16)}`,
      idt_table: idt,
      'idt_table physical': idtPa === null ? 'not mapped' : `0x${idtPa.toString(16)}`,
    });
  }
}

// ---- function-pointer tables -------------------------------------------------------------------

/**
 * Tables hooked to hide things from the guest's own tools, by symbol and C type. Symbols this
 * kernel lacks (a protocol built as a module, a renamed table) are skipped.
 */
const OPERATION_TABLES: readonly (readonly [string, string])[] = [
  ['proc_root_operations', 'struct file_operations'],
  ['proc_root_inode_operations', 'struct inode_operations'],
  ['proc_tgid_base_operations', 'struct file_operations'],
  ['proc_dir_operations', 'struct file_operations'],
  ['kernfs_dir_fops', 'struct file_operations'],
  ['modules_op', 'struct seq_operations'],
  ['kallsyms_op', 'struct seq_operations'],
  ['tcp4_seq_ops', 'struct seq_operations'],
  ['tcp6_seq_ops', 'struct seq_operations'],
  ['udp_seq_ops', 'struct seq_operations'],
  ['udp6_seq_ops', 'struct seq_operations'],
  ['raw_seq_ops', 'struct seq_operations'],
  ['unix_seq_ops', 'struct seq_operations'],
  ['packet_seq_ops', 'struct seq_operations'],
  ['inet_stream_ops', 'struct proto_ops'],
  ['inet_dgram_ops', 'struct proto_ops'],
  ['inet6_stream_ops', 'struct proto_ops'],
  ['inet6_dgram_ops', 'struct proto_ops'],
  ['tcp_prot', 'struct proto'],
  ['udp_prot', 'struct proto'],
  ['tcpv6_prot', 'struct proto'],
  ['udpv6_prot', 'struct proto'],
];

function checkOperationTables(k: Kernel, map: CodeMap, report: CheckReport): void {
  let tables = 0;
  let pointers = 0;
  for (const [symbol, type] of OPERATION_TABLES) {
    const typeId = k.btf.findTypeId(type);
    if (typeId === undefined) continue;
    const members = functionPointerMembers(k, typeId);
    for (const base of lookupAll(k, symbol)) {
      // A function of that name is not the table (some names are shared).
      if (/^[tTwW]$/.test(symbolType(k, base) ?? '')) continue;
      tables++;
      for (const { name, offset } of members) {
        let value: bigint;
        try {
          value = k.space.readU64Big(base + BigInt(offset));
        } catch (e) {
          k.warnings.warn(`${NAME}: ${symbol}`, `${name}: ${guestDataError(e).message}`);
          continue;
        }
        if (value === 0n) continue;
        pointers++;
        const target = map.classify(value);
        if (target.where === 'kernel text' || target.where === 'module text') continue;
        report.add('high', `${symbol}.${name} points to ${target.describe}`, {
          table: symbol,
          type,
          'table address': base,
          member: name,
          'member address': base + BigInt(offset),
          'points to': value,
          'lands in': target.describe,
        });
      }
    }
  }
  report.count('operation tables', tables);
  report.count('operation pointers', pointers);
}

/** Members of a struct that are pointers to functions, with their byte offsets. */
function functionPointerMembers(k: Kernel, typeId: number): { name: string; offset: number }[] {
  const btf = k.btf;
  const out: { name: string; offset: number }[] = [];
  for (const m of btf.members(typeId)) {
    if (m.bitfieldSize !== 0 || m.bitOffset % 8 !== 0) continue;
    const t = btf.resolve(m.typeId);
    if (btf.table.kindOf(t) !== BtfKind.PTR) continue;
    const pointee = btf.resolve(btf.table.sizeOrTypeOf(t));
    if (btf.table.kindOf(pointee) === BtfKind.FUNC_PROTO) out.push({ name: m.name, offset: m.bitOffset / 8 });
  }
  return out;
}
