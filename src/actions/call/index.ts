/**
 * `vmlens call FUNC ARG…`: one kernel function, by name, with its prototype checked against the
 * kernel's BTF, called from outside in a borrowed task (session.ts).
 */
import type { Kernel } from '../../kernel/kernel.ts';
import { UsageError } from '../../util/errors.ts';
import { argumentLabel, decodeReturn, formatPrototype, parseArgs, prototypeOf, type CallArg, type Prototype, type ReturnValue } from './args.ts';
import { withKernelCalls, type CallSessionOptions } from './session.ts';

export { describeErrno, errnoName } from './errno.ts';
export { formatPrototype, type Prototype, type ReturnValue } from './args.ts';
export { withKernelCalls, KernelCalls, type CallSessionOptions, type CallRecord } from './session.ts';

/** A kernel function vmlens can call: its one address and its prototype. */
export interface KernelFunction {
  readonly name: string;
  readonly address: bigint;
  readonly prototype: Prototype;
}

interface SymbolsWithAll {
  lookupAll(name: string): bigint[];
}

function hasLookupAll(s: unknown): s is SymbolsWithAll {
  return typeof (s as Partial<SymbolsWithAll>).lookupAll === 'function';
}

/**
 * The function `name`: exactly one text symbol of that name, and a BTF prototype. Static
 * functions of the same name in several files are refused as ambiguous.
 */
export function resolveFunction(k: Kernel, name: string): KernelFunction {
  if (!/^[A-Za-z_][\w.]*$/.test(name)) throw new UsageError(`'${name}' is not a function name`);
  const funcs = k.btf.findFuncs(name);
  if (funcs.length === 0) {
    throw new UsageError(
      k.hasSymbol(name)
        ? `the kernel's BTF has no prototype for ${name} (inlined, or not a function): vmlens calls only functions whose arguments it can check`
        : `the kernel has no function '${name}'`,
    );
  }
  const prototypes = funcs.map((f) => prototypeOf(k.btf, f));
  const shapes = new Set(prototypes.map(formatPrototype));
  if (shapes.size > 1) throw new UsageError(`${name} is ambiguous: the kernel has ${shapes.size} different functions of that name (${[...shapes].join('; ')})`);
  const addresses = hasLookupAll(k.symbols) ? [...new Set(k.symbols.lookupAll(name))] : [k.symbols.lookup(name)].filter((a): a is bigint => a !== undefined);
  if (addresses.length === 0) throw new UsageError(`${name} has a prototype in BTF but no address in kallsyms (inlined everywhere?)`);
  if (addresses.length > 1) throw new UsageError(`${name} is ambiguous: ${addresses.length} functions of that name at ${addresses.map((a) => `0x${a.toString(16)}`).join(', ')}`);
  const address = addresses[0]!;
  const returns = prototypes[0]!.returns;
  if (returns.kind === 'unsupported') {
    // A struct returned in memory would be written through a hidden first argument.
    throw new UsageError(`${name} returns ${prototypes[0]!.returnType} (${returns.why}): vmlens takes results from RAX only and cannot call it`);
  }
  const sym = k.symbols.symbolize(address) as { type?: string } | undefined;
  if (sym?.type !== undefined && !/^[tTwW]$/.test(sym.type)) throw new UsageError(`${name} is not in kernel text (symbol type ${sym.type})`);
  return { name, address, prototype: prototypes[0]! };
}

/**
 * A function vmlens itself calls (kill_pid, vm_mmap…), checked against the running kernel's
 * prototype: parameter count and, per parameter, pointer or integer. A kernel whose function
 * changed shape is refused rather than called wrongly.
 */
export function requireFunction(k: Kernel, name: string, params: readonly ('pointer' | 'integer')[]): KernelFunction {
  const fn = resolveFunction(k, name);
  const got = fn.prototype.params.map((p) => (p.cls.kind === 'pointer' ? 'pointer' : p.cls.kind === 'integer' || p.cls.kind === 'enum' ? 'integer' : p.cls.kind));
  if (got.length !== params.length || got.some((g, i) => g !== params[i])) {
    throw new UsageError(`this kernel's ${formatPrototype(fn.prototype)} is not the (${params.join(', ')}) vmlens knows how to call`);
  }
  return fn;
}

/** Lowest address that can be mapped: the first page never is (mmap_min_addr is larger still). */
const FIRST_VALID_ADDRESS = 4096n;

/**
 * Pointers given as numbers must be plausible: never in the first page, and a kernel address
 * must be mapped. (User addresses are the borrowed task's and cannot be checked beforehand;
 * functions that take them handle faults.) A wrong pointer would oops the borrowed task.
 */
export function checkPointers(k: Kernel, proto: Prototype, args: readonly CallArg[]): void {
  const userEnd = 1n << (k.layout.levels === 5 ? 56n : 47n);
  args.forEach((a, i) => {
    const p = proto.params[i];
    if (p === undefined || p.cls.kind !== 'pointer' || a.kind !== 'value' || a.value === 0n) return;
    const v = a.value;
    const shown = `0x${v.toString(16)}`;
    if (v < FIRST_VALID_ADDRESS) throw new UsageError(`${argumentLabel(proto, i)}: ${shown} is not a valid pointer (the first page is never mapped)`);
    if (v < userEnd) return;
    if (v < 1n << 63n || v < (1n << 64n) - userEnd) throw new UsageError(`${argumentLabel(proto, i)}: ${shown} is not a canonical address`);
    if (k.space.tryTranslate(v) === null) throw new UsageError(`${argumentLabel(proto, i)}: ${shown} is not mapped in the kernel`);
  });
}

export interface CallOptions extends Omit<CallSessionOptions, 'command'> {
  /** For the audit log; default `call NAME ARG…`. */
  readonly command?: string;
  /** Check everything, call nothing. */
  readonly dryRun?: boolean;
}

export interface CallResult {
  readonly function: string;
  readonly address: bigint;
  readonly prototype: string;
  /** The arguments as given. */
  readonly argTexts: readonly string[];
  /** Each argument as passed (register image; placed bytes by their guest address); absent for a dry run. */
  readonly args?: readonly bigint[];
  /** undefined for a dry run. */
  readonly returned?: ReturnValue;
  /** The task whose context the call ran in. */
  readonly task?: { readonly pid: number; readonly comm: string };
  readonly vcpu?: number;
  readonly ms?: number;
}

/** Parse, check and (unless a dry run) make one call. */
export async function callKernelFunction(k: Kernel, name: string, argTexts: readonly string[], opts: CallOptions = {}): Promise<CallResult> {
  const fn = resolveFunction(k, name);
  const args: CallArg[] = parseArgs(fn.prototype, argTexts, { symbol: (s) => k.symbols.lookup(s) });
  checkPointers(k, fn.prototype, args);
  const base = { function: name, address: fn.address, prototype: formatPrototype(fn.prototype), argTexts: [...argTexts] };
  if (opts.dryRun) return base;
  const command = opts.command ?? ['call', name, ...argTexts].join(' ');
  return withKernelCalls(k, { ...opts, command }, async (calls) => {
    opts.notice?.(`calling ${name} in task ${calls.point.task.pid} (${calls.point.task.comm}) on vCPU ${calls.point.thread - 1}`);
    const rax = await calls.call(name, fn.address, args);
    const rec = calls.records[calls.records.length - 1]!;
    return {
      ...base,
      args: rec.args,
      returned: decodeReturn(fn.prototype.returns, rax, (a) => k.symbolize(a)),
      task: { pid: calls.point.task.pid, comm: calls.point.task.comm },
      vcpu: rec.thread - 1,
      ms: rec.ms,
    };
  });
}
