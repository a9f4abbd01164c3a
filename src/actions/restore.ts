/**
 * Putting a hooked kernel pointer back: a function-pointer slot (a syscall-table entry, an ops
 * table member) gets its original value again, as a transaction. The value must point at the
 * start of a function in the kernel's own text: restoring is for undoing hooks, and a pointer
 * into a module or into the middle of a function is what a hook looks like.
 *
 *   vmlens restore sys_call_table+8*62 --symbol __x64_sys_kill
 */
import type { Kernel } from '../kernel/kernel.ts';
import { UsageError } from '../util/errors.ts';
import { runTransaction, type TransactionResult } from './transaction.ts';

const U64 = 2n ** 64n;

export interface RestoreOptions {
  readonly dryRun?: boolean;
  readonly auditPath?: string;
  /** The command for the audit log. */
  readonly command?: string;
}

export interface RestoreResult extends TransactionResult {
  readonly address: bigint;
  readonly oldValue: bigint;
  readonly newValue: bigint;
  /** symbol(+offset) of the old value, if any: where the hook pointed. */
  readonly oldSymbol?: string;
  readonly newSymbol: string;
}

/**
 * An address expression: numbers (decimal or 0x hex) and kernel symbols joined by `+`, `-` and
 * `*` (products bind tighter), e.g. `sys_call_table+8*62` or `0xffffffff81000000+0x40`.
 */
export function evaluateAddress(kernel: Kernel, text: string): bigint {
  const tokens = text.replace(/\s+/g, '').match(/0x[0-9a-f]+|[0-9]+|[A-Za-z_.$][A-Za-z0-9_.$]*|[+\-*]|./gi) ?? [];
  if (tokens.length === 0) throw new UsageError('empty address expression');
  let pos = 0;
  const factor = (): bigint => {
    const t = tokens[pos++];
    if (t === undefined) throw new UsageError(`'${text}': expression ends too early`);
    if (/^0x[0-9a-f]+$/i.test(t) || /^[0-9]+$/.test(t)) return BigInt(t);
    if (/^[A-Za-z_.$]/.test(t)) {
      const a = kernel.symbols.lookup(t);
      if (a === undefined) throw new UsageError(`'${text}': the kernel has no symbol '${t}'`);
      return a;
    }
    throw new UsageError(`'${text}': unexpected '${t}'`);
  };
  const term = (): bigint => {
    let v = factor();
    while (tokens[pos] === '*') {
      pos++;
      v *= factor();
    }
    return v;
  };
  let v = term();
  while (tokens[pos] === '+' || tokens[pos] === '-') {
    const op = tokens[pos++];
    const t = term();
    v = op === '+' ? v + t : v - t;
  }
  if (pos !== tokens.length) throw new UsageError(`'${text}': unexpected '${tokens[pos]}'`);
  if (v < 0n || v >= U64) throw new UsageError(`'${text}' is not a 64-bit address`);
  return v;
}

/**
 * Check that `value` is the start of a symbol in the kernel's text (_stext … _etext) and return
 * that symbol's name (`preferred` when it is an alias at the same address).
 */
export function kernelTextSymbolAt(kernel: Kernel, value: bigint, preferred?: string): string {
  const start = kernel.symbols.lookup('_stext') ?? kernel.layout.textBase;
  const end = kernel.symbols.lookup('_etext');
  if (end === undefined) throw new UsageError('the kernel has no _etext symbol: its text range is unknown');
  if (value < start || value >= end) {
    const where = kernel.symbolize(value);
    throw new UsageError(`0x${value.toString(16)}${where ? ` (${where})` : ''} is not in the kernel's text (0x${start.toString(16)}-0x${end.toString(16)})`);
  }
  if (preferred !== undefined && kernel.symbols.lookup(preferred) === value) return preferred;
  const s = kernel.symbols.symbolize(value);
  if (!s || s.offset !== 0n) {
    throw new UsageError(`0x${value.toString(16)} is not the start of a kernel function${s ? ` (it is ${s.name}+0x${s.offset.toString(16)})` : ''}`);
  }
  return s.name;
}

/**
 * Put the 8-byte pointer at `address` back to `expected` — an address, or a kernel function's
 * name — which must be the start of a function in the kernel's text. A slot that already holds
 * it is left alone (`unchanged`).
 */
export async function restorePointer(kernel: Kernel, address: bigint, expected: bigint | string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  if (address % 8n !== 0n) throw new UsageError(`0x${address.toString(16)} is not 8-byte aligned: not a pointer slot`);
  const value = typeof expected === 'string' ? kernel.symbol(expected) : expected;
  if (value < 0n || value >= U64) throw new UsageError(`0x${value.toString(16)} is not a 64-bit value`);
  const newSymbol = kernelTextSymbolAt(kernel, value, typeof expected === 'string' ? expected : undefined);
  const where = kernel.symbolize(address);
  let oldValue = 0n;
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value, true);
  const result = await runTransaction(kernel, {
    command: opts.command ?? `restore ${where ?? `0x${address.toString(16)}`} --to ${newSymbol}`,
    dryRun: opts.dryRun,
    auditPath: opts.auditPath,
    plan: () => {
      oldValue = kernel.space.readU64Big(address);
      const oldWhere = kernel.symbolize(oldValue);
      return {
        writes: [{ va: address, bytes, label: where ?? 'pointer' }],
        details: { slot: where ?? `0x${address.toString(16)}`, old: oldWhere ?? `0x${oldValue.toString(16)}`, new: newSymbol },
      };
    },
  });
  const oldSymbol = kernel.symbolize(oldValue);
  return { ...result, address, oldValue, newValue: value, ...(oldSymbol !== undefined ? { oldSymbol } : {}), newSymbol };
}
