/**
 * Writing a sysctl from outside the guest: the value is parsed and bounded exactly as the
 * kernel's handler would (kernel/sysctl.c, 6.1), turned into the stored bytes, and written as a
 * transaction. Only handlers whose whole write is "store the value" are written (see
 * SysctlHandlerSpec.writable); for the others a memory write would skip what the kernel does
 * besides (flushing caches, propagating to devices), so vmlens refuses and says so.
 */
import {
  elementCount,
  elementStride,
  findSysctl,
  formatSysctl,
  Jiffies,
  kernelHz,
  readElements,
  type SysctlEntry,
  type SysctlHandlerSpec,
} from '../analyses/sysctl.ts';
import type { Kernel } from '../kernel/kernel.ts';
import { vaHi, vaLo } from '../mmu/va.ts';
import { UsageError } from '../util/errors.ts';
import { runTransaction, type PlannedWrite, type TransactionResult } from './transaction.ts';

const INT_MIN = -(2n ** 31n);
const INT_MAX = 2n ** 31n - 1n;
const UINT_MAX = 2n ** 32n - 1n;
const ULONG_MAX = 2n ** 64n - 1n;
const LONG_MAX = 2n ** 63n - 1n;

export interface SysctlWriteOptions {
  readonly dryRun?: boolean;
  readonly auditPath?: string;
  /** The command for the audit log (default `sysctl NAME=VALUE`). */
  readonly command?: string;
}

export interface SysctlWriteResult extends TransactionResult {
  readonly name: string;
  /** The value as /proc/sys showed it before, and as it shows it now (or would, for a dry run). */
  readonly oldValue: string;
  readonly newValue: string;
}

/** Set sysctl `name` to `value` (the text one would echo into /proc/sys/…). */
export async function setSysctl(kernel: Kernel, name: string, value: string, opts: SysctlWriteOptions = {}): Promise<SysctlWriteResult> {
  let oldValue = '';
  let newValue = '';
  let entryName = name;
  const result = await runTransaction(kernel, {
    command: opts.command ?? `sysctl ${name}=${value}`,
    dryRun: opts.dryRun,
    auditPath: opts.auditPath,
    // Found and checked while the guest is paused: the table, its data and bounds are this instant's.
    plan: () => {
      const entry = findSysctl(kernel, name);
      entryName = entry.name;
      const plan = planSysctlWrite(kernel, entry, value);
      oldValue = formatSysctl(kernel, entry);
      newValue = plan.display;
      return { writes: plan.writes, details: { sysctl: entry.name, old: oldValue, new: newValue, handler: entry.handlerName ?? null } };
    },
  });
  return { ...result, name: entryName, oldValue, newValue };
}

export interface SysctlWritePlan {
  readonly writes: PlannedWrite[];
  /** How /proc/sys will show the value afterwards. */
  readonly display: string;
}

/**
 * The bytes that writing `text` to this sysctl stores, with every check of its handler:
 * writable handler, writable mode, number syntax and range, minmax bounds, string length.
 */
export function planSysctlWrite(kernel: Kernel, entry: SysctlEntry, text: string): SysctlWritePlan {
  const s = entry.spec;
  const handler = entry.handlerName ?? `0x${entry.handler.toString(16)}`;
  if (!s) throw new UsageError(`${entry.name}: its handler ${handler} is not one vmlens understands; write it inside the guest`);
  if (!s.writable) {
    throw new UsageError(`${entry.name}: its handler ${handler} does more than store the value, which a memory write would skip; write it inside the guest`);
  }
  if ((entry.mode & 0o200) === 0) throw new UsageError(`${entry.name} is read-only (mode 0${entry.mode.toString(8)})`);
  if (entry.data === 0n) throw new UsageError(`${entry.name} has no data`);
  if (s.element === 'string') return planString(entry, text);

  const e = entry as SysctlEntry & { spec: SysctlHandlerSpec };
  const n = elementCount(e);
  if (n === 0) throw new UsageError(`${entry.name}: ${s.name} with maxlen ${entry.maxlen} holds no values`);
  const words = text.trim().split(/[\s]+/).filter((w) => w.length > 0);
  if (words.length === 0) throw new UsageError(`${entry.name}: no value given`);
  if (words.length > n) throw new UsageError(`${entry.name} takes ${n === 1 ? 'one value' : `at most ${n} values`}, not ${words.length}`);
  const bounds = boundsOf(kernel, e);
  const jiffies = s.unit ? new Jiffies(kernelHz(kernel)) : undefined;
  const stored = words.map((w) => toStored(e, parseKernelInteger(w, entry.name), bounds, jiffies));

  const stride = elementStride(s.element);
  const writes: PlannedWrite[] = [];
  if (s.element === 'bool') {
    // proc_dobool (6.1) stores one bool byte at each int-sized step.
    stored.forEach((v, i) => writes.push({ va: entry.data + BigInt(i * stride), bytes: Uint8Array.of(Number(v)), label: entry.name }));
  } else {
    const bytes = new Uint8Array(stored.length * stride);
    const dv = new DataView(bytes.buffer);
    stored.forEach((v, i) => {
      if (stride === 8) dv.setBigUint64(i * 8, BigInt.asUintN(64, v), true);
      else if (stride === 4) dv.setUint32(i * 4, Number(BigInt.asUintN(32, v)), true);
      else dv.setUint8(i, Number(v));
    });
    writes.push({ va: entry.data, bytes, label: entry.name });
  }
  // The display: the current values with the written ones replaced, formatted as the kernel would.
  const current = readElements(kernel.space, entry.data, s.element, n);
  stored.forEach((v, i) => (current[i] = v));
  const display = current.map((v) => showStored(s, v, jiffies)).join('\t');
  return { writes, display };
}

function planString(entry: SysctlEntry, text: string): SysctlWritePlan {
  const bytes = new TextEncoder().encode(text);
  if (bytes.includes(0) || bytes.includes(0x0a)) throw new UsageError(`${entry.name}: a value cannot contain NUL or newline`);
  // _proc_do_string keeps at most maxlen - 1 bytes and a NUL; longer input would be cut silently.
  const max = entry.maxlen - 1;
  if (max < 0) throw new UsageError(`${entry.name} has no room for a string (maxlen ${entry.maxlen})`);
  if (bytes.length > max) throw new UsageError(`${entry.name}: '${text}' is ${bytes.length} bytes; at most ${max} fit`);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return { writes: [{ va: entry.data, bytes: out, label: entry.name }], display: text };
}

interface Bounds {
  readonly min: bigint;
  readonly max: bigint;
}

/** The range a value may take after conversion, from the type and *extra1 / *extra2. */
function boundsOf(kernel: Kernel, e: SysctlEntry & { spec: SysctlHandlerSpec }): Bounds {
  const s = e.spec;
  const space = kernel.space;
  let min: bigint;
  let max: bigint;
  switch (s.element) {
    case 'int':
      [min, max] = [INT_MIN, INT_MAX];
      break;
    case 'uint':
      [min, max] = [0n, UINT_MAX];
      break;
    case 'u8':
      [min, max] = [0n, 255n];
      break;
    case 'bool':
      [min, max] = [0n, 1n];
      break;
    case 'ulong':
      [min, max] = [0n, ULONG_MAX];
      break;
    default:
      throw new UsageError(`${e.name}: ${s.element} values cannot be written`);
  }
  if (!s.minmax) return { min, max };
  const read = (p: bigint): bigint => {
    switch (s.element) {
      case 'int':
        return BigInt(space.readU32(vaHi(p), vaLo(p)) | 0);
      case 'ulong':
        return space.readU64Big(p);
      default:
        // proc_douintvec_minmax and proc_dou8vec_minmax take unsigned int bounds.
        return BigInt(space.readU32(vaHi(p), vaLo(p)));
    }
  };
  if (e.extra1 !== 0n) {
    const v = read(e.extra1);
    if (s.element === 'u8' && v > 255n) throw new UsageError(`${e.name}: its minimum ${v} exceeds 255; the kernel refuses every write`);
    min = v > min ? v : min;
  }
  if (e.extra2 !== 0n) {
    const v = read(e.extra2);
    if (s.element === 'u8' && v > 255n) throw new UsageError(`${e.name}: its maximum ${v} exceeds 255; the kernel refuses every write`);
    max = v < max ? v : max;
  }
  return { min, max };
}

/**
 * Parse an integer the way proc_get_long does: optional '-', then decimal, 0x hex or leading-0
 * octal (kstrtoul base 0), within unsigned long.
 */
export function parseKernelInteger(word: string, name: string): bigint {
  const m = /^(-?)(0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*)$/i.exec(word);
  if (!m) throw new UsageError(`${name}: '${word}' is not an integer`);
  const digits = m[2]!;
  const magnitude = /^0x/i.test(digits) ? BigInt(digits) : digits.length > 1 && digits.startsWith('0') ? BigInt(`0o${digits.slice(1)}`) : BigInt(digits);
  if (magnitude > ULONG_MAX) throw new UsageError(`${name}: '${word}' does not fit in 64 bits`);
  return m[1] === '-' ? -magnitude : magnitude;
}

/** From the number a user writes to the value stored, checked as the handler checks it. */
function toStored(e: SysctlEntry & { spec: SysctlHandlerSpec }, v: bigint, b: Bounds, jiffies: Jiffies | undefined): bigint {
  const s = e.spec;
  const range = (): string => `${e.name}: ${v} is out of range ${showStored(s, b.min, jiffies)} … ${showStored(s, b.max, jiffies)}`;
  let stored = v;
  switch (s.unit) {
    case undefined:
      break;
    case 'jiffies': {
      // do_proc_dointvec_jiffies_conv: |seconds| ≤ INT_MAX / HZ, stored × HZ.
      const hz = BigInt(jiffies!.hz);
      const mag = v < 0n ? -v : v;
      if (mag > INT_MAX / hz) throw new UsageError(`${e.name}: ${v} seconds is out of range (at most ${INT_MAX / hz})`);
      stored = v * hz;
      break;
    }
    case 'userhz_jiffies': {
      if (v < 0n) throw new UsageError(`${e.name}: negative values are not written by vmlens`);
      if (v > (LONG_MAX / BigInt(jiffies!.hz)) * 100n) throw new UsageError(`${e.name}: ${v} is out of range`);
      stored = jiffies!.fromClockT(v);
      break;
    }
    case 'ms_jiffies': {
      if (v < 0n) throw new UsageError(`${e.name}: ${v} is out of range (milliseconds are not negative)`);
      if (s.element === 'ulong') stored = BigInt.asUintN(64, BigInt(jiffies!.hz) * v) / 1000n;
      else {
        stored = jiffies!.fromMsecs(v);
        if (stored > INT_MAX) throw new UsageError(`${e.name}: ${v} ms is out of range`);
      }
      break;
    }
  }
  if (stored < b.min || stored > b.max) throw new UsageError(range());
  return stored;
}

/** A stored value as /proc/sys prints it (for messages and the dry-run display). */
function showStored(s: SysctlHandlerSpec, v: bigint, jiffies: Jiffies | undefined): string {
  if (!s.unit || !jiffies) return v.toString();
  const neg = v < 0n;
  const m = neg ? -v : v;
  let shown: bigint;
  switch (s.unit) {
    case 'jiffies':
      shown = m / BigInt(jiffies.hz);
      break;
    case 'userhz_jiffies':
      shown = jiffies.toClockT(m);
      break;
    case 'ms_jiffies':
      shown = s.element === 'ulong' ? BigInt.asUintN(64, 1000n * m) / BigInt(jiffies.hz) : jiffies.toMsecs(m);
      break;
  }
  return `${neg ? '-' : ''}${shown}`;
}
