/**
 * A kernel function's prototype as a caller from outside needs it — the kind of every parameter
 * and of the return value, from the kernel's own BTF — and the checks and conversions between
 * command-line text, System V registers and displayed results.
 *
 * What can be passed: integers (with their width and signedness), enums (by enumerator name or
 * number), booleans, and pointers (an address, `&symbol`, `NULL`, or — for `char *` and `void *`
 * parameters — bytes that vmlens places in guest memory: a string or `hex:…`). Structs and
 * unions by value, floating point and arrays cannot be passed, and say so.
 */
import type { Btf, BtfFuncInfo } from '../../kernel/btf/index.ts';
import { UsageError } from '../../util/errors.ts';
import { describeErrno, MAX_ERRNO } from './errno.ts';

/** How a value of one C type travels in a register. */
export type ValueClass =
  | { readonly kind: 'integer'; readonly size: number; readonly signed: boolean; readonly bool: boolean }
  | { readonly kind: 'enum'; readonly size: number; readonly signed: boolean; readonly enumerators: ReadonlyMap<string, bigint> }
  /** `bytes`: char/void pointee (a string or raw bytes may be passed); `function`: a function pointer. */
  | { readonly kind: 'pointer'; readonly pointee: 'bytes' | 'object' | 'function' }
  | { readonly kind: 'void' }
  | { readonly kind: 'unsupported'; readonly why: string };

export interface ParamInfo {
  /** 1-based, as users count arguments. */
  readonly position: number;
  readonly name: string;
  /** The C type, e.g. `const char *`. */
  readonly type: string;
  readonly cls: ValueClass;
}

export interface Prototype {
  readonly name: string;
  readonly params: readonly ParamInfo[];
  readonly returnType: string;
  readonly returns: ValueClass;
  readonly variadic: boolean;
}

/**
 * An argument ready for a call: a 64-bit register image, or bytes to place in guest memory whose
 * address is then passed.
 */
export type CallArg = { readonly kind: 'value'; readonly value: bigint } | { readonly kind: 'bytes'; readonly bytes: Uint8Array };

/** Bytes one argument may place in guest memory (they go on the interrupted task's kernel stack). */
export const MAX_ARG_BYTES = 4096;

const U64 = (1n << 64n) - 1n;

/** The class of a BTF type (typedefs and qualifiers looked through). */
export function classify(btf: Btf, typeId: number): ValueClass {
  if (typeId === 0) return { kind: 'void' };
  const t = btf.resolved(typeId);
  switch (t.kind) {
    case 'void':
      return { kind: 'void' };
    case 'int':
      if (t.size > 8) return { kind: 'unsupported', why: `${t.size * 8}-bit integers do not fit one register` };
      return { kind: 'integer', size: t.size, signed: t.signed, bool: t.bool };
    case 'enum':
    case 'enum64': {
      const enumerators = new Map<string, bigint>();
      for (const v of t.values) enumerators.set(v.name, BigInt(v.value));
      return { kind: 'enum', size: t.size, signed: t.signed, enumerators };
    }
    case 'ptr': {
      if (t.typeId === 0) return { kind: 'pointer', pointee: 'bytes' };
      const p = btf.resolved(t.typeId);
      if (p.kind === 'void' || (p.kind === 'int' && p.size === 1)) return { kind: 'pointer', pointee: 'bytes' };
      if (p.kind === 'func_proto') return { kind: 'pointer', pointee: 'function' };
      return { kind: 'pointer', pointee: 'object' };
    }
    case 'struct':
    case 'union':
      return { kind: 'unsupported', why: `a ${t.kind} by value` };
    case 'float':
      return { kind: 'unsupported', why: 'floating point (kernel code does not use the FPU)' };
    case 'array':
      return { kind: 'unsupported', why: 'an array' };
    default:
      return { kind: 'unsupported', why: `a ${t.kind}` };
  }
}

/** The prototype of a BTF function, every parameter classified. */
export function prototypeOf(btf: Btf, func: BtfFuncInfo): Prototype {
  return {
    name: func.name,
    params: func.params.map((p, i) => ({ position: i + 1, name: p.name, type: btf.typeName(p.typeId), cls: classify(btf, p.typeId) })),
    returnType: btf.typeName(func.returnTypeId),
    returns: classify(btf, func.returnTypeId),
    variadic: func.variadic,
  };
}

/** `long kill_pid(struct pid *pid, int sig, int priv)`, for messages and help. */
export function formatPrototype(p: Prototype): string {
  const params = p.params.map((q) => (q.name ? `${q.type}${q.type.endsWith('*') ? '' : ' '}${q.name}` : q.type));
  if (p.variadic) params.push('...');
  return `${p.returnType} ${p.name}(${params.length ? params.join(', ') : 'void'})`;
}

export interface ArgContext {
  /** Address of a kernel symbol, or undefined. */
  symbol(name: string): bigint | undefined;
}

/** Check the count and convert every argument text to a CallArg. */
export function parseArgs(proto: Prototype, texts: readonly string[], ctx: ArgContext): CallArg[] {
  const n = proto.params.length;
  if (texts.length < n || (!proto.variadic && texts.length > n)) {
    const want = proto.variadic ? `at least ${n}` : String(n);
    throw new UsageError(`${proto.name} takes ${want} argument${n === 1 && !proto.variadic ? '' : 's'}, ${texts.length} given: ${formatPrototype(proto)}`);
  }
  return texts.map((text, i) => {
    const param: ParamInfo = proto.params[i] ?? { position: i + 1, name: '', type: '...', cls: { kind: 'integer', size: 8, signed: true, bool: false } };
    return parseArg(param.cls, text, ctx, argumentLabel(proto, i), i >= n);
  });
}

/** `strlen: argument 1 (const char *s)`, for messages about one argument. */
export function argumentLabel(proto: Prototype, index: number): string {
  const param = proto.params[index];
  const decl = param === undefined ? '...' : param.name ? `${param.type}${param.type.endsWith('*') ? '' : ' '}${param.name}` : param.type;
  return `${proto.name}: argument ${index + 1} (${decl})`;
}

function parseArg(cls: ValueClass, text: string, ctx: ArgContext, where: string, variadicExtra: boolean): CallArg {
  const t = text.trim();
  switch (cls.kind) {
    case 'unsupported':
      throw new UsageError(`${where}: cannot be given from the command line: ${cls.why}`);
    case 'void':
      throw new UsageError(`${where}: a void parameter`);
    case 'integer': {
      if (cls.bool) {
        if (/^(true|1)$/i.test(t)) return { kind: 'value', value: 1n };
        if (/^(false|0)$/i.test(t)) return { kind: 'value', value: 0n };
        throw new UsageError(`${where}: '${text}' is not a boolean (true, false, 1, 0)`);
      }
      if (variadicExtra) {
        // Variadic arguments have no declared type: a string or an address is as plausible as a number.
        const bytes = bytesLiteral(t);
        if (bytes) return checkedBytes(bytes, where);
        if (t.startsWith('&')) return { kind: 'value', value: symbolAddress(t.slice(1), ctx, where) };
      }
      return { kind: 'value', value: integerValue(t, cls.size, cls.signed, where) };
    }
    case 'enum': {
      const named = cls.enumerators.get(t);
      if (named !== undefined) return { kind: 'value', value: BigInt.asUintN(64, named) };
      if (!isNumber(t)) {
        const some = [...cls.enumerators.keys()].slice(0, 6).join(', ');
        throw new UsageError(`${where}: '${text}' is neither a number nor one of its enumerators (${some}${cls.enumerators.size > 6 ? ', …' : ''})`);
      }
      return { kind: 'value', value: integerValue(t, cls.size, cls.signed, where) };
    }
    case 'pointer': {
      if (/^null$/i.test(t)) return { kind: 'value', value: 0n };
      if (t.startsWith('&')) return { kind: 'value', value: symbolAddress(t.slice(1), ctx, where) };
      const literal = bytesLiteral(t);
      if (literal) {
        if (cls.pointee !== 'bytes') throw new UsageError(`${where}: only char and void pointers take a string or bytes; give an address, &symbol or NULL`);
        return checkedBytes(literal, where);
      }
      if (isNumber(t)) return { kind: 'value', value: integerValue(t, 8, false, where) };
      if (cls.pointee === 'bytes') return checkedBytes(cString(text), where);
      if (cls.pointee === 'function') return { kind: 'value', value: symbolAddress(t, ctx, where) };
      throw new UsageError(`${where}: '${text}' is not an address: give a number, &symbol or NULL`);
    }
  }
}

function checkedBytes(bytes: Uint8Array, where: string): CallArg {
  if (bytes.length > MAX_ARG_BYTES) throw new UsageError(`${where}: ${bytes.length} bytes is more than the ${MAX_ARG_BYTES} vmlens places for one argument`);
  return { kind: 'bytes', bytes };
}

function symbolAddress(name: string, ctx: ArgContext, where: string): bigint {
  if (!/^[A-Za-z_.$][\w.$]*$/.test(name)) throw new UsageError(`${where}: '${name}' is not a symbol name`);
  const a = ctx.symbol(name);
  if (a === undefined) throw new UsageError(`${where}: the kernel has no symbol '${name}'`);
  return a;
}

const NUMBER = /^[-+]?(0x[0-9a-f]+|[0-9]+)$/i;

function isNumber(t: string): boolean {
  return NUMBER.test(t.replace(/_/g, ''));
}

/** A decimal or 0x number in the range of a C integer of `size` bytes, as a 64-bit register image. */
export function integerValue(text: string, size: number, signed: boolean, where: string): bigint {
  const t = text.trim().replace(/_/g, '');
  if (!NUMBER.test(t)) throw new UsageError(`${where}: '${text}' is not a number`);
  const negative = t.startsWith('-');
  const digits = t.replace(/^[-+]/, '');
  let v = BigInt(digits);
  if (negative) v = -v;
  const bits = BigInt(size * 8);
  const min = signed ? -(1n << (bits - 1n)) : 0n;
  const max = signed ? (1n << (bits - 1n)) - 1n : (1n << bits) - 1n;
  if (v < min || v > max) {
    throw new UsageError(`${where}: ${text} is out of range for ${signed ? 'a signed' : 'an unsigned'} ${size * 8}-bit value (${min}..${max})`);
  }
  // Signed values are sign-extended to the full register, unsigned ones zero-extended.
  return v & U64;
}

/** `"text"` (C escapes allowed), `str:text` or `hex:00ff…` as bytes; undefined for anything else. */
export function bytesLiteral(t: string): Uint8Array | undefined {
  if (t.length >= 2 && t.startsWith('"') && t.endsWith('"')) return cString(unescapeC(t.slice(1, -1)));
  if (t.startsWith('str:')) return cString(t.slice(4));
  if (t.startsWith('hex:')) {
    const h = t.slice(4).replace(/[\s_]/g, '');
    if (!/^(?:[0-9a-f]{2})*$/i.test(h)) throw new UsageError(`'${t}' is not hex bytes`);
    return new Uint8Array(Buffer.from(h, 'hex'));
  }
  return undefined;
}

/** UTF-8 bytes with the terminating NUL C strings carry. */
function cString(text: string): Uint8Array {
  const b = Buffer.from(text, 'utf8');
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

function unescapeC(s: string): string {
  return s.replace(/\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)/g, (_m, e: string) => {
    if (e[0] === 'x') return String.fromCharCode(parseInt(e.slice(1), 16));
    if (/^[0-7]/.test(e)) return String.fromCharCode(parseInt(e, 8));
    const simple: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', '"': '"', "'": "'", a: '\x07', b: '\b', f: '\f', v: '\v' };
    return simple[e] ?? e;
  });
}

/** A function's result as shown to a user. */
export interface ReturnValue {
  /** What the C value is. */
  readonly kind: 'integer' | 'bool' | 'pointer' | 'void';
  /** RAX as the function left it. */
  readonly raw: bigint;
  /** The C value: sign-extended integer, boolean, pointer, or undefined for void. */
  readonly value: bigint | boolean | undefined;
  /** `5`, `-2 (-ENOENT?)`, `0xffff… (init_task)`, `ERR_PTR(-ENOMEM)`, `NULL`, `true`, `void`. */
  readonly text: string;
  /**
   * The error an ERR_PTR stands for, or a small negative integer would if it is an error code
   * (positive errno).
   */
  readonly errno?: number;
}

/** Decode RAX by the return type. `symbolize` names pointers into the kernel. */
export function decodeReturn(returns: ValueClass, rax: bigint, symbolize?: (addr: bigint) => string | undefined): ReturnValue {
  const raw = rax & U64;
  switch (returns.kind) {
    case 'void':
    case 'unsupported':
      return { kind: 'void', raw, value: undefined, text: 'void' };
    case 'integer':
    case 'enum': {
      const bits = returns.size * 8;
      if (returns.kind === 'integer' && returns.bool) {
        const b = (raw & 0xffn) !== 0n;
        return { kind: 'bool', raw, value: b, text: String(b) };
      }
      const v = returns.signed ? BigInt.asIntN(bits, raw) : BigInt.asUintN(bits, raw);
      if (returns.kind === 'enum') {
        for (const [name, value] of returns.enumerators) if (BigInt.asUintN(bits, value) === BigInt.asUintN(bits, v)) return { kind: 'integer', raw, value: v, text: `${v} (${name})` };
      }
      if (returns.signed && v < 0n && v >= -BigInt(MAX_ERRNO)) {
        // Most kernel functions return -errno on error, but not all (strcmp): the name is a reading.
        return { kind: 'integer', raw, value: v, text: `${v} (${describeErrno(Number(v))}?)`, errno: Number(-v) };
      }
      return { kind: 'integer', raw, value: v, text: v.toString() };
    }
    case 'pointer': {
      if (raw === 0n) return { kind: 'pointer', raw, value: raw, text: 'NULL' };
      if (raw > U64 - BigInt(MAX_ERRNO)) {
        const err = Number(BigInt.asIntN(64, raw));
        return { kind: 'pointer', raw, value: raw, text: `ERR_PTR(${describeErrno(err)})`, errno: -err };
      }
      const name = symbolize?.(raw);
      return { kind: 'pointer', raw, value: raw, text: name ? `0x${raw.toString(16)} (${name})` : `0x${raw.toString(16)}` };
    }
  }
}
