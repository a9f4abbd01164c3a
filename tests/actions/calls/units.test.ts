/**
 * The parts of kernel calls that need no guest: prototypes from BTF, argument parsing and
 * checking, return values, the stack frame, the return trap search, signals, and finding
 * QEMU's gdbstub.
 */
import { describe, expect, it } from 'vitest';
import { parseGdbChardev } from '../../../src/actions/vcpu.ts';
import { bytesLiteral, classify, decodeReturn, formatPrototype, integerValue, parseArgs, prototypeOf, type CallArg, type Prototype } from '../../../src/actions/call/args.ts';
import { describeErrno, errnoName } from '../../../src/actions/call/errno.ts';
import { layoutFrame, STACK_GAP } from '../../../src/actions/call/frame.ts';
import { deadInt3Offset } from '../../../src/actions/call/trap.ts';
import { parseSignal, signalList, signalName } from '../../../src/actions/kill.ts';
import { Btf } from '../../../src/kernel/btf/index.ts';
import { UsageError } from '../../../src/util/errors.ts';
import { BtfWriter } from '../../kernel/btf/writer.ts';

/** A small kernel-like BTF: the types and prototypes the tests call. */
function buildBtf(): { btf: Btf; protos: Record<string, Prototype> } {
  const w = new BtfWriter();
  const int = w.int('int', 4, { signed: true });
  const uint = w.int('unsigned int', 4);
  const ulong = w.int('long unsigned int', 8);
  const long = w.int('long int', 8, { signed: true });
  const char = w.int('char', 1, { signed: true, char: true });
  const bool = w.int('_Bool', 1, { bool: true });
  const sizeT = w.typedef('size_t', ulong);
  const constChar = w.const(char);
  const charPtr = w.ptr(constChar);
  const voidPtr = w.ptr(0);
  const pidType = w.enum('pid_type', 4, [['PIDTYPE_PID', 0], ['PIDTYPE_TGID', 1], ['PIDTYPE_PGID', 2]]);
  const pid = w.struct('pid', 8, [{ name: 'level', type: uint, bitOffset: 0 }]);
  const pidPtr = w.ptr(pid);
  const cbProto = w.funcProto(0, []);
  const cbPtr = w.ptr(cbProto);
  const dbl = w.float('double', 8);
  const defs: [string, number, [string, number][], boolean?][] = [
    ['strlen', sizeT, [['s', charPtr]]],
    ['kill_pid', int, [['pid', pidPtr], ['sig', int], ['priv', int]]],
    ['pid_task', pidPtr, [['pid', pidPtr], ['type', pidType]]],
    ['set_flag', bool, [['on', bool]]],
    ['run_cb', 0, [['cb', cbPtr], ['data', voidPtr]]],
    ['by_value', long, [['p', pid]]],
    ['scale', long, [['f', dbl]]],
    ['printk', int, [['fmt', charPtr]], true],
    ['seven', long, [['a', long], ['b', long], ['c', long], ['d', long], ['e', long], ['f', long], ['g', long]]],
    ['get_uint', uint, []],
  ];
  const ids: Record<string, number> = {};
  for (const [name, ret, params, variadic] of defs) ids[name] = w.func(name, w.funcProto(ret, params, variadic ?? false));
  const btf = Btf.parse(w.build());
  const protos: Record<string, Prototype> = {};
  for (const [name] of defs) protos[name] = prototypeOf(btf, btf.findFunc(name)!);
  return { btf, protos };
}

const { btf, protos } = buildBtf();
const symbols: Record<string, bigint> = { init_pid_ns: 0xffffffff82a5b480n, my_callback: 0xffffffff81234560n };
const ctx = { symbol: (n: string) => symbols[n] };
const parse = (fn: string, args: string[]): CallArg[] => parseArgs(protos[fn]!, args, ctx);
const value = (a: CallArg | undefined): bigint => {
  if (a?.kind !== 'value') throw new Error('not a value');
  return a.value;
};
const text = (a: CallArg | undefined): string => {
  if (a?.kind !== 'bytes') throw new Error('not bytes');
  return Buffer.from(a.bytes).toString('latin1');
};

describe('prototypes from BTF', () => {
  it('classifies every parameter the way it travels in a register', () => {
    expect(formatPrototype(protos.kill_pid!)).toBe('int kill_pid(struct pid *pid, int sig, int priv)');
    expect(formatPrototype(protos.printk!)).toBe('int printk(const char *fmt, ...)');
    expect(formatPrototype(protos.get_uint!)).toBe('unsigned int get_uint(void)');
    expect(protos.strlen!.params[0]!.cls).toEqual({ kind: 'pointer', pointee: 'bytes' });
    expect(protos.strlen!.returns).toEqual({ kind: 'integer', size: 8, signed: false, bool: false });
    expect(protos.kill_pid!.params[0]!.cls).toEqual({ kind: 'pointer', pointee: 'object' });
    expect(protos.run_cb!.params.map((p) => p.cls)).toEqual([
      { kind: 'pointer', pointee: 'function' },
      { kind: 'pointer', pointee: 'bytes' },
    ]);
    expect(protos.pid_task!.params[1]!.cls.kind).toBe('enum');
    expect(protos.by_value!.params[0]!.cls.kind).toBe('unsupported');
    expect(protos.scale!.params[0]!.cls.kind).toBe('unsupported');
    expect(protos.run_cb!.returns).toEqual({ kind: 'void' });
    expect(classify(btf, 0)).toEqual({ kind: 'void' });
  });
});

describe('arguments', () => {
  it('checks the argument count, naming the prototype', () => {
    expect(() => parse('strlen', [])).toThrow(/strlen takes 1 argument, 0 given: size_t strlen\(const char \*s\)/);
    expect(() => parse('kill_pid', ['0', '9'])).toThrow(UsageError);
    expect(() => parse('kill_pid', ['0', '9', '0', '1'])).toThrow(/takes 3 arguments, 4 given/);
    expect(() => parse('printk', [])).toThrow(/at least 1/);
    expect(parse('printk', ['"x=%d\\n"', '5', 'str:y', '&init_pid_ns'])).toHaveLength(4);
  });

  it('takes integers within the range of their C type, sign-extended to 64 bits', () => {
    expect(value(parse('kill_pid', ['0', '-9', '0x7fffffff'])[1])).toBe(0xffff_ffff_ffff_fff7n);
    expect(value(parse('kill_pid', ['0', '-2147483648', '0'])[1])).toBe(0xffff_ffff_8000_0000n);
    expect(() => parse('kill_pid', ['0', '2147483648', '0'])).toThrow(/out of range for a signed 32-bit value/);
    expect(() => parse('kill_pid', ['0', 'nine', '0'])).toThrow(/argument 2 \(int sig\): 'nine' is not a number/);
    expect(integerValue('4294967295', 4, false, 'x')).toBe(0xffff_ffffn);
    expect(() => integerValue('-1', 4, false, 'x')).toThrow(/out of range for an unsigned 32-bit value \(0..4294967295\)/);
    expect(integerValue('1_000', 8, true, 'x')).toBe(1000n);
  });

  it('takes enums by enumerator name or number, and booleans', () => {
    expect(value(parse('pid_task', ['0', 'PIDTYPE_PGID'])[1])).toBe(2n);
    expect(value(parse('pid_task', ['0', '1'])[1])).toBe(1n);
    expect(() => parse('pid_task', ['0', 'PIDTYPE_SID'])).toThrow(/neither a number nor one of its enumerators \(PIDTYPE_PID/);
    expect(value(parse('set_flag', ['true'])[0])).toBe(1n);
    expect(value(parse('set_flag', ['0'])[0])).toBe(0n);
    expect(() => parse('set_flag', ['2'])).toThrow(/not a boolean/);
  });

  it('places strings and bytes for char and void pointers, NUL-terminated strings', () => {
    expect(text(parse('strlen', ['hello'])[0])).toBe('hello\0');
    expect(text(parse('strlen', ['"tab\\there\\x41"'])[0])).toBe('tab\thereA\0');
    expect(text(parse('strlen', ['str:0x10'])[0])).toBe('0x10\0');
    expect(text(parse('run_cb', ['NULL', 'hex:00ff41'])[1])).toBe('\x00\xffA');
    // A number is an address, even for char pointers.
    expect(value(parse('strlen', ['0xffff888000001000'])[0])).toBe(0xffff888000001000n);
    expect(value(parse('strlen', ['NULL'])[0])).toBe(0n);
    expect(() => bytesLiteral('hex:0')).toThrow(/not hex bytes/);
    expect(() => parse('strlen', [`str:${'x'.repeat(5000)}`])).toThrow(/more than the 4096 vmlens places/);
  });

  it('takes other pointers as addresses, &symbol or NULL only', () => {
    expect(value(parse('kill_pid', ['&init_pid_ns', '9', '0'])[0])).toBe(symbols.init_pid_ns);
    expect(value(parse('kill_pid', ['NULL', '9', '0'])[0])).toBe(0n);
    expect(() => parse('kill_pid', ['init_pid_ns', '9', '0'])).toThrow(/not an address: give a number, &symbol or NULL/);
    expect(() => parse('kill_pid', ['"x"', '9', '0'])).toThrow(/only char and void pointers take a string/);
    expect(() => parse('kill_pid', ['&no_such_symbol', '9', '0'])).toThrow(/no symbol 'no_such_symbol'/);
    expect(value(parse('run_cb', ['my_callback', 'NULL'])[0])).toBe(symbols.my_callback);
  });

  it('refuses what cannot come from a command line, saying why', () => {
    expect(() => parse('by_value', ['1'])).toThrow(/cannot be given from the command line: a struct by value/);
    expect(() => parse('scale', ['1.5'])).toThrow(/floating point/);
  });
});

describe('return values', () => {
  it('decodes by the return type: width, sign, errno, ERR_PTR, NULL, symbols, bool, enum', () => {
    const int = protos.kill_pid!.returns;
    expect(decodeReturn(int, 0xdead_beef_ffff_fffen)).toMatchObject({ value: -2n, text: '-2 (-ENOENT?)', errno: 2 });
    expect(decodeReturn(int, 3n)).toMatchObject({ value: 3n, text: '3' });
    expect(decodeReturn(protos.get_uint!.returns, 0xffff_ffff_ffff_ffffn)).toMatchObject({ value: 0xffff_ffffn, text: '4294967295' });
    expect(decodeReturn(protos.strlen!.returns, 5n).text).toBe('5');
    const ptr = protos.pid_task!.returns;
    expect(decodeReturn(ptr, 0n).text).toBe('NULL');
    expect(decodeReturn(ptr, 0xffff_ffff_ffff_fff4n)).toMatchObject({ text: 'ERR_PTR(-ENOMEM)', errno: 12 });
    expect(decodeReturn(ptr, 0xffffffff82a5b480n, () => 'init_pid_ns').text).toBe('0xffffffff82a5b480 (init_pid_ns)');
    expect(decodeReturn(protos.set_flag!.returns, 0x100n)).toMatchObject({ value: false, text: 'false' });
    expect(decodeReturn(protos.run_cb!.returns, 7n)).toMatchObject({ value: undefined, text: 'void' });
    const e = classify(btf, btf.findTypeId('enum pid_type')!);
    expect(decodeReturn(e, 1n).text).toBe('1 (PIDTYPE_TGID)');
  });

  it('names errnos, kernel-internal ones too', () => {
    expect(errnoName(11)).toBe('EAGAIN');
    expect(errnoName(512)).toBe('ERESTARTSYS');
    expect(describeErrno(-16)).toBe('-EBUSY');
    expect(describeErrno(-4000)).toBe('-4000');
  });
});

describe('the call frame', () => {
  const rsp = 0xffffc90000abfe58n;
  const trap = 0xffffffff81abc123n;

  it('aligns the stack as the ABI wants and puts the return address at [rsp]', () => {
    const f = layoutFrame({ rsp, args: [{ kind: 'value', value: 1n }, { kind: 'value', value: 2n }], returnAddress: trap });
    expect((f.rsp + 8n) % 16n).toBe(0n);
    expect(f.rsp).toBeLessThanOrEqual(rsp - STACK_GAP - 8n);
    expect(f.registers).toMatchObject({ rdi: 1n, rsi: 2n, rax: 0n });
    expect(f.writes).toHaveLength(1);
    expect(f.writes[0]!.va).toBe(f.rsp);
    expect(new DataView(f.writes[0]!.bytes.buffer).getBigUint64(0, true)).toBe(trap);
  });

  it('places bytes below the gap, aligned and apart, and passes their addresses', () => {
    const a = new Uint8Array(Buffer.from('hello\0'));
    const b = new Uint8Array(40).fill(7);
    const f = layoutFrame({ rsp, args: [{ kind: 'bytes', bytes: a }, { kind: 'value', value: 5n }, { kind: 'bytes', bytes: b }], returnAddress: trap });
    const [pa, , pb] = f.placed;
    expect(pa! % 16n).toBe(0n);
    expect(pb! % 16n).toBe(0n);
    expect(pa! + BigInt(a.length)).toBeLessThanOrEqual(rsp - STACK_GAP);
    expect(pb! + BigInt(b.length)).toBeLessThanOrEqual(pa!);
    expect(f.rsp + 8n).toBeLessThanOrEqual(pb!);
    expect(f.registers).toMatchObject({ rdi: pa, rsi: 5n, rdx: pb });
    // Writes never overlap, lowest first.
    for (let i = 1; i < f.writes.length; i++) expect(f.writes[i - 1]!.va + BigInt(f.writes[i - 1]!.bytes.length)).toBeLessThanOrEqual(f.writes[i]!.va);
    expect(f.low).toBe(f.rsp);
  });

  it('passes arguments beyond the sixth on the stack above the return address', () => {
    const args: CallArg[] = [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n].map((v) => ({ kind: 'value', value: v }));
    const f = layoutFrame({ rsp, args, returnAddress: trap });
    expect((f.rsp + 8n) % 16n).toBe(0n);
    expect(f.registers).toMatchObject({ rdi: 1n, rsi: 2n, rdx: 3n, rcx: 4n, r8: 5n, r9: 6n });
    const frame = f.writes.find((w) => w.va === f.rsp)!;
    const view = new DataView(frame.bytes.buffer);
    expect([0, 8, 16].map((o) => view.getBigUint64(o, true))).toEqual([trap, 7n, 8n]);
  });
});

describe('the return trap', () => {
  const bytes = (hex: string) => new Uint8Array(Buffer.from(hex.replace(/\s/g, ''), 'hex'));

  it('prefers the int3 padding of a patched return, then SLS padding after a ret', () => {
    // strlen of the lab kernel: `mov %rdi,%rax; ret; int3 ×4`, nop padding, next function.
    expect(deadInt3Offset(bytes('4889f8 c3cccccccc 0f1f840000000000'))).toBe(4);
    expect(deadInt3Offset(bytes('c3cc 90 c3cccccccc'))).toBe(4);
    expect(deadInt3Offset(bytes('5d c3cc 0f1f00'))).toBe(2);
  });

  it('finds nothing where there is no ret followed by int3, or only at a symbol start', () => {
    expect(deadInt3Offset(bytes('4889c3 4889f8 c3 0f1f00'))).toBe(-1);
    expect(deadInt3Offset(bytes('c3cc'), (i) => i === 1)).toBe(-1);
    expect(deadInt3Offset(bytes(''))).toBe(-1);
  });
});

describe('signals', () => {
  it('parses names and numbers as kill(1) does', () => {
    expect(parseSignal('9')).toBe(9);
    expect(parseSignal('KILL')).toBe(9);
    expect(parseSignal('sigterm')).toBe(15);
    expect(parseSignal('SIGUSR1')).toBe(10);
    expect(parseSignal('0')).toBe(0);
    expect(parseSignal('RTMIN')).toBe(34);
    expect(parseSignal('RTMIN+3')).toBe(37);
    expect(parseSignal('RTMAX-1')).toBe(63);
    expect(() => parseSignal('65')).toThrow(/out of range/);
    expect(() => parseSignal('NOPE')).toThrow(/unknown signal 'NOPE'/);
  });

  it('names every signal so that the name parses back to it', () => {
    const list = signalList();
    expect(list).toHaveLength(31 + 31);
    for (const s of list) expect(parseSignal(s.name)).toBe(s.number);
    expect(signalName(9)).toBe('SIGKILL');
    expect(signalName(29)).toBe('SIGIO');
    expect(signalName(50)).toBe('SIGRTMAX-14');
  });
});

describe('finding the gdbstub', () => {
  it('reads the stub QEMU already has from info chardev', () => {
    const info = [
      'compat_monitor0: filename=unix:/run/x/qmp.sock,server=on',
      '#chr051: filename=gdb',
      'gdb: filename=disconnected:tcp:127.0.0.1:44311,server=on',
    ].join('\n');
    expect(parseGdbChardev(info)).toEqual({ host: '127.0.0.1', port: 44311 });
    expect(parseGdbChardev('gdb: filename=tcp:0.0.0.0:1234,server=on <-> 127.0.0.1:50000')).toEqual({ host: '127.0.0.1', port: 1234 });
    expect(parseGdbChardev('gdb: filename=tcp:[::1]:1234,server=on')).toEqual({ host: '::1', port: 1234 });
  });

  it('has nothing without one, and refuses a stub it cannot reach', () => {
    expect(parseGdbChardev('compat_monitor0: filename=unix:/run/x/qmp.sock,server=on\n')).toBeUndefined();
    expect(() => parseGdbChardev('gdb: filename=disconnected:unix:/tmp/gdb.sock,server=on')).toThrow(/over TCP only/);
  });
});
