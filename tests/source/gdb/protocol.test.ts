/**
 * The wire format and the request state machine on synthetic input. Expected checksums are
 * those QEMU and GDB put on the wire (e.g. `$OK#9a`, `$T05thread:01;#07`, seen from QEMU 7.2).
 */
import { describe, expect, it } from 'vitest';
import {
  checksum,
  consoleOutput,
  errorCode,
  Exchange,
  FrameDecoder,
  framePacket,
  hexInto,
  isStopReply,
  leHex,
  leValue,
  MAX_BAD_CHECKSUMS,
  MAX_RETRANSMITS,
  packetSizeFrom,
  parseStopReply,
  parseSupported,
  parseThreadId,
  REQUEST_PREFIX,
  type StopReply,
  unescapeBinary,
  type WireEvent,
} from '../../../src/source/gdb/protocol.ts';
import { decodeX86Registers, layoutFrom, parseTargetXml, X86_64_BUILTIN } from '../../../src/source/gdb/registers.ts';
import { TargetError } from '../../../src/util/errors.ts';

const latin1 = (s: string) => Buffer.from(s, 'latin1');

function decodeAll(wire: string | Uint8Array, max?: number): WireEvent[] {
  const d = new FrameDecoder(max);
  d.push(typeof wire === 'string' ? latin1(wire) : wire);
  const out: WireEvent[] = [];
  for (let e = d.next(); e; e = d.next()) out.push(e);
  return out;
}

const packet = (text: string, checksumOk = true): WireEvent => ({ kind: 'packet', payload: latin1(text), checksumOk });

describe('framing', () => {
  it('frames with the modulo-256 checksum QEMU expects', () => {
    expect(framePacket('OK', false).toString('latin1')).toBe('$OK#9a');
    expect(framePacket('T05thread:01;', false).toString('latin1')).toBe('$T05thread:01;#07');
    expect(framePacket('qSupported:xmlRegisters=i386', false).toString('latin1')).toBe(`$qSupported:xmlRegisters=i386#${checksum(latin1('qSupported:xmlRegisters=i386')).toString(16).padStart(2, '0')}`);
    expect(checksum(latin1('E22'))).toBe(0xa9);
  });

  it('puts the stop-then-ack prefix ahead of requests', () => {
    const f = framePacket('g');
    expect(Array.from(f.subarray(0, 2))).toEqual(Array.from(REQUEST_PREFIX));
    expect(f.subarray(2).toString('latin1')).toBe('$g#67');
  });

  it('escapes $ # * } and checksums the escaped bytes', () => {
    const body = Uint8Array.from([0x58, 0x24, 0x23, 0x2a, 0x7d, 0x41]);
    const f = framePacket(body, false);
    expect(Array.from(f.subarray(1, -3))).toEqual([0x58, 0x7d, 0x04, 0x7d, 0x03, 0x7d, 0x0a, 0x7d, 0x5d, 0x41]);
    expect(f.subarray(-2).toString('latin1')).toBe(checksum(f, 1, f.length - 3).toString(16).padStart(2, '0'));
    expect(Array.from(unescapeBinary(f.subarray(1, -3)))).toEqual(Array.from(body));
  });
});

describe('FrameDecoder', () => {
  it('splits acks, naks and packets, dropping other bytes between packets', () => {
    expect(decodeAll('+$OK#9a\x03junk-$T05thread:01;#07')).toEqual([
      { kind: 'ack' },
      packet('OK'),
      { kind: 'nack' },
      packet('T05thread:01;'),
    ]);
  });

  it('hands out long runs of events in order', () => {
    const d = new FrameDecoder();
    d.push(latin1('+'.repeat(50_000) + '$OK#9a'));
    let acks = 0;
    let ev = d.next();
    for (; ev?.kind === 'ack'; ev = d.next()) acks++;
    expect(acks).toBe(50_000);
    expect(ev).toEqual(packet('OK'));
    expect(d.next()).toBeUndefined();
    d.push(latin1('-'));
    expect(d.next()).toEqual({ kind: 'nack' });
  });

  it('decodes packets split across reads at any byte', () => {
    const wire = latin1('+$m0,4#fd+$0102*"#00');
    for (let cut = 1; cut < wire.length; cut++) {
      const d = new FrameDecoder();
      d.push(wire.subarray(0, cut));
      d.push(wire.subarray(cut));
      const kinds: string[] = [];
      for (let e = d.next(); e; e = d.next()) kinds.push(e.kind === 'packet' ? e.payload.toString('latin1') : e.kind);
      expect(kinds, `cut at ${cut}`).toEqual(['ack', 'm0,4', 'ack', '010222222']);
    }
  });

  it('expands run-length codes: X*c repeats X c-29 more times', () => {
    const events = decodeAll(`$0* 1*!#${checksum(latin1('0* 1*!')).toString(16).padStart(2, '0')}`);
    expect(events).toEqual([packet('000011111')]);
  });

  it('flags a bad checksum without losing the packet boundary', () => {
    expect(decodeAll('$OK#00$OK#9a$OK#zz')).toEqual([packet('OK', false), packet('OK'), packet('OK', false)]);
  });

  it('keeps escapes for the reply parser and does not end a packet on an escaped #', () => {
    const body = latin1('l}\x03}\x04');
    const wire = Buffer.concat([latin1('$'), body, latin1(`#${checksum(body).toString(16).padStart(2, '0')}`)]);
    const [e] = decodeAll(wire);
    expect(e).toEqual({ kind: 'packet', payload: body, checksumOk: true });
    expect(unescapeBinary(body.subarray(1)).toString('latin1')).toBe('#$');
  });

  it('refuses oversized packets and malformed run-length codes', () => {
    expect(() => decodeAll('$' + 'a'.repeat(100), 64)).toThrow(/larger than 64 bytes/);
    expect(() => decodeAll('$a* ' + 'b*~'.repeat(10) + '#00', 64)).toThrow(/larger than 64 bytes/);
    expect(() => decodeAll('$*a#00')).toThrow(/nothing to repeat/);
    expect(() => decodeAll('$a*\x10#00')).toThrow(/run-length count/);
  });
});

describe('hex and values', () => {
  it('decodes hex into a destination and rejects non-hex', () => {
    const dst = new Uint8Array(4);
    expect(hexInto(latin1('deadBEEF'), 0, dst, 0, 4)).toBe(true);
    expect(Array.from(dst)).toEqual([0xde, 0xad, 0xbe, 0xef]);
    expect(hexInto(latin1('zz'), 0, dst, 0, 1)).toBe(false);
  });

  it('converts little-endian register values both ways, at full width', () => {
    expect(leHex(0xfff0n, 8)).toBe('f0ff000000000000');
    expect(leHex(-1n, 4)).toBe('ffffffff');
    expect(leValue(latin1('1000006000000000'), 0, 8)).toBe(0x60000010n);
    expect(leValue(latin1(leHex(0xffff_8880_0000_1234n, 8)), 0, 8)).toBe(0xffff_8880_0000_1234n);
    expect(leValue(latin1('1x'), 0, 1)).toBeUndefined();
  });

  it('recognizes Enn error replies only', () => {
    expect(errorCode(latin1('E14'))).toBe(0x14);
    expect(errorCode(latin1('E1'))).toBeUndefined();
    expect(errorCode(latin1('e14'))).toBeUndefined();
    expect(errorCode(latin1('0e14'))).toBeUndefined();
  });
});

describe('replies', () => {
  it('parses stop replies as QEMU sends them', () => {
    expect(parseStopReply(latin1('T05thread:01;'))).toEqual({ kind: 'signal', signal: 5, thread: 1, raw: 'T05thread:01;' });
    expect(parseStopReply(latin1('T02thread:p01.02;')).thread).toBe(2);
    expect(parseStopReply(latin1('T05thread:01;watch:ffff888000001000;')).watch).toEqual({ kind: 'write', address: 0xffff888000001000n });
    expect(parseStopReply(latin1('T05thread:01;awatch:10;')).watch?.kind).toBe('access');
    expect(parseStopReply(latin1('S02'))).toMatchObject({ kind: 'signal', signal: 2 });
    expect(parseStopReply(latin1('W00'))).toMatchObject({ kind: 'exited', signal: 0 });
    expect(parseStopReply(latin1('X09'))).toMatchObject({ kind: 'terminated', signal: 9 });
    expect(isStopReply(latin1('OK'))).toBe(false);
    expect(isStopReply(latin1('T'))).toBe(false);
    expect(() => parseStopReply(latin1('Txx'))).toThrow(TargetError);
  });

  it('parses thread ids in plain and multiprocess form', () => {
    expect(parseThreadId('0a')).toBe(10);
    expect(parseThreadId('p01.03')).toBe(3);
    expect(parseThreadId('p01')).toBeUndefined();
    expect(parseThreadId('')).toBeUndefined();
    expect(parseThreadId('123456789')).toBeUndefined();
  });

  it('decodes console output packets but not OK', () => {
    expect(consoleOutput(latin1('O' + Buffer.from('VM status: paused\n').toString('hex')))).toBe('VM status: paused\n');
    expect(consoleOutput(latin1('OK'))).toBeUndefined();
  });

  it('reads qSupported features and bounds PacketSize', () => {
    const f = parseSupported('PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess-;');
    expect(f.get('PacketSize')).toBe('1000');
    expect(f.get('qXfer:features:read')).toBe('+');
    expect(f.get('multiprocess')).toBe('-');
    expect(packetSizeFrom(f, 400)).toBe(4096);
    expect(packetSizeFrom(parseSupported(''), 400)).toBe(400);
    expect(packetSizeFrom(parseSupported('PacketSize=1'), 400)).toBe(64);
    expect(packetSizeFrom(parseSupported('PacketSize=ffffffff'), 400)).toBe(1 << 20);
    expect(packetSizeFrom(parseSupported('PacketSize=zz'), 400)).toBe(400);
  });
});

describe('Exchange', () => {
  function exchange(completion: 'reply' | 'ack' = 'reply') {
    const stops: StopReply[] = [];
    const console: string[] = [];
    const ex = new Exchange(framePacket('m0,8'), completion, 'm 0x0,8', (s) => stops.push(s), (t) => console.push(t));
    return { ex, stops, console };
  }

  it('completes with the first packet after the ack', () => {
    const { ex } = exchange();
    expect(ex.onEvent({ kind: 'ack' })).toEqual({ kind: 'wait' });
    expect(ex.onEvent(packet('0011223344556677'))).toEqual({ kind: 'done', payload: latin1('0011223344556677') });
  });

  it('treats stop replies before the ack as asynchronous and drops stale replies', () => {
    const { ex, stops } = exchange();
    expect(ex.onEvent(packet('T02thread:01;')).kind).toBe('wait');
    expect(ex.onEvent(packet('OK')).kind).toBe('wait');
    expect(stops.map((s) => s.signal)).toEqual([2]);
    ex.onEvent({ kind: 'ack' });
    expect(ex.onEvent(packet('T05thread:01;'))).toEqual({ kind: 'done', payload: latin1('T05thread:01;') });
  });

  it('collects console output after the ack', () => {
    const { ex, console } = exchange();
    ex.onEvent({ kind: 'ack' });
    expect(ex.onEvent(packet('O6869')).kind).toBe('wait');
    expect(ex.onEvent(packet('OK')).kind).toBe('done');
    expect(console).toEqual(['hi']);
  });

  it('completes c/s on the ack; later packets are not its reply', () => {
    const { ex, stops } = exchange('ack');
    expect(ex.onEvent({ kind: 'ack' }).kind).toBe('done');
    const e2 = exchange('ack');
    e2.ex.onEvent(packet('T02thread:01;'));
    expect(e2.stops.length).toBe(1);
    expect(stops.length).toBe(0);
  });

  it('retransmits on NAK without the prefix, a bounded number of times', () => {
    const { ex } = exchange();
    for (let i = 0; i < MAX_RETRANSMITS; i++) {
      const step = ex.onEvent({ kind: 'nack' });
      expect(step.kind).toBe('send');
      if (step.kind === 'send') expect(step.bytes.toString('latin1')).toBe('$m0,8#' + checksum(latin1('m0,8')).toString(16).padStart(2, '0'));
    }
    const last = ex.onEvent({ kind: 'nack' });
    expect(last.kind).toBe('fail');
    if (last.kind === 'fail') expect(last.error.message).toMatch(/rejected request m 0x0,8 5 times/);
  });

  it('waits through corrupt replies a bounded number of times', () => {
    const { ex } = exchange();
    ex.onEvent({ kind: 'ack' });
    for (let i = 0; i < MAX_BAD_CHECKSUMS; i++) expect(ex.onEvent(packet('00', false)).kind).toBe('wait');
    expect(ex.onEvent(packet('00', false)).kind).toBe('fail');
  });
});

describe('target description', () => {
  it('numbers registers in order, continues across documents, and skips comments', () => {
    const core = parseTargetXml(
      '<feature><reg name="a" bitsize="64" regnum="0"/><!-- <reg name="hidden" bitsize="8"/> --><reg name="b" bitsize="32"/>' +
        "<reg name='c' bitsize='128' regnum='5'/><reg name=\"d\" bitsize=\"80\"/></feature>",
      0,
    );
    expect(core.regs).toEqual([
      { name: 'a', regnum: 0, bits: 64 },
      { name: 'b', regnum: 1, bits: 32 },
      { name: 'c', regnum: 5, bits: 128 },
      { name: 'd', regnum: 6, bits: 80 },
    ]);
    expect(core.next).toBe(7);
    const top = parseTargetXml('<target><xi:include href="one.xml"/><xi:include href="two.xml"/></target>', 0);
    expect(top.includes).toEqual(['one.xml', 'two.xml']);
    expect(top.regs).toEqual([]);
  });

  it('rejects malformed registers and unbounded lists', () => {
    expect(() => parseTargetXml('<reg name="x" bitsize="0"/>', 0)).toThrow(TargetError);
    expect(() => parseTargetXml('<reg name="x" bitsize="999999"/>', 0)).toThrow(TargetError);
    expect(() => parseTargetXml('<reg bitsize="8"/>', 0)).toThrow(TargetError);
    expect(() => parseTargetXml('<reg name="x" bitsize="8" regnum="-1"/>', 0)).toThrow(TargetError);
    expect(() => parseTargetXml('<reg name="x" bitsize="8"/>'.repeat(5000), 0)).toThrow(/more than 4096 registers/);
  });

  it('places registers in g by number; after a gap they are reachable only by p', () => {
    const l = layoutFrom(
      [
        { name: 'b', regnum: 1, bits: 32 },
        { name: 'a', regnum: 0, bits: 64 },
        { name: 'late', regnum: 9, bits: 64 },
      ],
      'target-description',
    );
    expect(l.registers.map((r) => [r.name, r.offset])).toEqual([
      ['a', 0],
      ['b', 8],
      ['late', -1],
    ]);
  });

  it('has QEMU’s x86-64 core layout built in: 66 registers, 608 bytes of g', () => {
    const regs = X86_64_BUILTIN.registers;
    expect(regs.length).toBe(66);
    const by = (n: string) => X86_64_BUILTIN.byName.get(n)!;
    expect([by('rip').regnum, by('eflags').regnum, by('cs').regnum, by('fs_base').regnum, by('cr0').regnum, by('efer').regnum, by('mxcsr').regnum]).toEqual([16, 17, 18, 24, 27, 32, 65]);
    const lastReg = regs[regs.length - 1]!;
    expect(lastReg.offset + lastReg.bits / 8).toBe(608);
  });

  it('decodes a g packet into the x86-64 record', () => {
    const g = Buffer.alloc(608);
    const at = (name: string) => X86_64_BUILTIN.byName.get(name)!.offset;
    g.writeBigUInt64LE(0xffffffff81000000n, at('rip'));
    g.writeUInt32LE(0x246, at('eflags'));
    g.writeUInt32LE(0x10, at('cs'));
    g.writeBigUInt64LE(0x1234000n, at('cr3'));
    g.writeBigUInt64LE(0xffff888000000000n, at('k_gs_base'));
    g.writeBigUInt64LE(7n, at('r15'));
    const r = decodeX86Registers(X86_64_BUILTIN, latin1(g.toString('hex')));
    expect(r).toMatchObject({ rip: 0xffffffff81000000n, eflags: 0x246n, cs: 0x10n, cr3: 0x1234000n, kernelGsBase: 0xffff888000000000n, r15: 7n, rax: 0n });
    expect(() => decodeX86Registers(X86_64_BUILTIN, latin1(g.subarray(0, 200).toString('hex')))).toThrow(/too short/);
    const notX86 = layoutFrom([{ name: 'pc', regnum: 0, bits: 32 }], 'target-description');
    expect(() => decodeX86Registers(notX86, latin1('00000000'))).toThrow(/not an x86-64 target/);
  });
});
