/**
 * GdbPhysicalMemory against a real QEMU 7.2 gdbstub, with QEMU's own `xp` as ground truth.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GdbRemote } from '../../../src/source/gdb/rsp.ts';
import { GdbPhysicalMemory } from '../../../src/source/gdb/source.ts';
import type { PhysicalMemory } from '../../../src/source/types.ts';
import { PhysicalAccessError, ReadOnlyError, TargetError, UsageError } from '../../../src/util/errors.ts';
import { freePort, GUEST_RAM, GUEST_RANGES, TestQemu } from './qemu.ts';

/** A byte pattern that differs at every offset within 64 KiB and between seeds. */
function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

describe('GdbPhysicalMemory against QEMU', () => {
  let qemu: TestQemu;
  let mem: GdbPhysicalMemory;
  const base = 0x300000;
  const data = pattern(3 * 4096 + 123, 7);

  beforeAll(async () => {
    qemu = await TestQemu.start();
    mem = GdbPhysicalMemory.open('127.0.0.1', qemu.gdbPort!, { ranges: GUEST_RANGES, writable: true });
    mem.write(base, data);
  });

  afterAll(async () => {
    mem?.close();
    await qemu?.stop();
  });

  it('describes itself as a gdb source with the given map, without windows', () => {
    expect(mem.kind).toBe('gdb');
    expect(mem.description).toMatch(/gdbstub 127\.0\.0\.1:\d+ \(physical mode, 2048-byte reads\)/);
    expect(mem.ranges).toEqual(GUEST_RANGES);
    const asSource: PhysicalMemory = mem;
    expect(asSource.windows).toBeUndefined();
    expect(mem.writable).toBe(true);
  });

  it('writes a pattern that QEMU’s xp reads back word for word', async () => {
    const words = await qemu.physicalWords(base, 64);
    const dv = new DataView(data.buffer);
    expect(words).toEqual(Array.from({ length: 64 }, (_, i) => dv.getBigUint64(i * 8, true)));
    const tail = await qemu.physicalWords(base + 3 * 4096, 8);
    expect(tail).toEqual(Array.from({ length: 8 }, (_, i) => dv.getBigUint64(3 * 4096 + i * 8, true)));
  });

  it('reads 8 bytes, a page, and a span of several packets at odd offsets', () => {
    for (const [off, len] of [
      [0, 8],
      [4096, 4096],
      [5, 2048],
      [1, 2049],
      [17, 3 * 4096 + 100],
    ] as const) {
      const dst = new Uint8Array(len);
      mem.read(base + off, dst);
      expect(Buffer.from(dst).equals(Buffer.from(data.subarray(off, off + len))), `${off}+${len}`).toBe(true);
    }
  });

  it('sends one m packet per 2 KiB', () => {
    const before = mem.requests;
    mem.read(base, new Uint8Array(8));
    expect(mem.requests - before).toBe(1);
    mem.read(base, new Uint8Array(3 * 4096 + 1));
    expect(mem.requests - before).toBe(1 + 7);
  });

  it('readMany fills every destination, in order, across packet boundaries', () => {
    const reqs = [
      { gpa: base + 3, dst: new Uint8Array(8) },
      { gpa: base + 4000, dst: new Uint8Array(5000) },
      { gpa: base, dst: new Uint8Array(0) },
      { gpa: base + 100, dst: new Uint8Array(1) },
      ...Array.from({ length: 40 }, (_, i) => ({ gpa: base + i * 256, dst: new Uint8Array(16) })),
    ];
    mem.readMany(reqs);
    for (const r of reqs) {
      const off = r.gpa - base;
      expect(Buffer.from(r.dst).equals(Buffer.from(data.subarray(off, off + r.dst.length))), `at ${off}`).toBe(true);
    }
  });

  it('gives the same bytes with one request in flight as with a pipeline', () => {
    // QEMU serves one gdb client at a time: hand the stub over to a strictly serial source.
    mem.close();
    const serial = GdbPhysicalMemory.open('127.0.0.1', qemu.gdbPort!, { ranges: GUEST_RANGES, pipelineDepth: 1 });
    try {
      const a = new Uint8Array(data.length);
      serial.read(base, a);
      expect(Buffer.from(a).equals(Buffer.from(data))).toBe(true);
      const reqs = Array.from({ length: 10 }, (_, i) => ({ gpa: base + i * 1000, dst: new Uint8Array(100) }));
      serial.readMany(reqs);
      for (const r of reqs) expect(Buffer.from(r.dst).equals(Buffer.from(data.subarray(r.gpa - base, r.gpa - base + 100)))).toBe(true);
    } finally {
      serial.close();
      mem = GdbPhysicalMemory.open('127.0.0.1', qemu.gdbPort!, { ranges: GUEST_RANGES, writable: true });
    }
  });

  it('refuses holes and the end of RAM without asking the stub', () => {
    const before = mem.requests;
    expect(() => mem.read(0xa0000, new Uint8Array(8))).toThrow(PhysicalAccessError);
    expect(() => mem.read(0x9fffc, new Uint8Array(8))).toThrow(/crosses the end of guest RAM/);
    expect(() => mem.read(GUEST_RAM - 4, new Uint8Array(8))).toThrow(PhysicalAccessError);
    expect(() => mem.readMany([{ gpa: base, dst: new Uint8Array(8) }, { gpa: 0xb8000, dst: new Uint8Array(8) }])).toThrow(PhysicalAccessError);
    expect(() => mem.write(0xc0000, new Uint8Array(8))).toThrow(PhysicalAccessError);
    expect(mem.requests).toBe(before);
  });
});

describe('GdbPhysicalMemory lifecycle', () => {
  it('is read-only unless asked, and puts QEMU back in virtual mode on close', async () => {
    const qemu = await TestQemu.start();
    try {
      const mem = GdbPhysicalMemory.open('127.0.0.1', qemu.gdbPort!, { ranges: GUEST_RANGES });
      expect(mem.writable).toBe(false);
      expect(() => mem.write(0x1000, new Uint8Array(1))).toThrow(ReadOnlyError);
      mem.close();
      mem.close(); // twice is harmless
      const gdb = await GdbRemote.connect('127.0.0.1', qemu.gdbPort!);
      expect(await gdb.physicalMode()).toBe(false);
      gdb.close();
      expect(await qemu.status()).toBe('prelaunch');
    } finally {
      await qemu.stop();
    }
  });

  it('resumes a guest that connecting stopped, and leaves a paused one paused', async () => {
    const running = await TestQemu.start({ paused: false });
    try {
      const mem = GdbPhysicalMemory.open('127.0.0.1', running.gdbPort!, { ranges: GUEST_RANGES });
      expect(mem.stoppedOnConnect).toBe(true);
      expect(await running.status()).toBe('paused');
      mem.read(0x1000, new Uint8Array(8));
      mem.close();
      expect(await running.status()).toBe('running');
    } finally {
      await running.stop();
    }
    const paused = await TestQemu.start({ paused: false });
    try {
      await paused.qmp.command('stop');
      const mem = GdbPhysicalMemory.open('127.0.0.1', paused.gdbPort!, { ranges: GUEST_RANGES });
      expect(mem.stoppedOnConnect).toBe(false);
      mem.close();
      expect(await paused.status()).toBe('paused');
    } finally {
      await paused.stop();
    }
  });

  it('reads a guest that was resumed behind its back (and so stops it)', async () => {
    const qemu = await TestQemu.start();
    try {
      const mem = GdbPhysicalMemory.open('127.0.0.1', qemu.gdbPort!, { ranges: GUEST_RANGES });
      await qemu.qmp.command('cont');
      expect(await qemu.status()).toBe('running');
      const dst = new Uint8Array(16);
      mem.read(0x100000, dst); // must not hang: QEMU discards bytes that arrive while it runs
      expect(await qemu.status()).toBe('paused');
      mem.close();
    } finally {
      await qemu.stop();
    }
  });

  it('works with a gdbstub started at run time over QMP', async () => {
    const qemu = await TestQemu.start({ gdb: false });
    try {
      const port = await qemu.startGdbServer();
      const mem = GdbPhysicalMemory.open('127.0.0.1', port, { ranges: GUEST_RANGES, writable: true });
      mem.write(0x5000, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]));
      expect(await qemu.physicalWords(0x5000, 1)).toEqual([0x0807060504030201n]);
      mem.close();
    } finally {
      await qemu.stop();
    }
  });

  it('fails clearly, and fast, when QEMU dies mid-session', async () => {
    const qemu = await TestQemu.start();
    try {
      const mem = GdbPhysicalMemory.open('127.0.0.1', qemu.gdbPort!, { ranges: GUEST_RANGES, timeoutMs: 10_000 });
      mem.read(0x1000, new Uint8Array(8));
      await qemu.kill();
      // The closed connection is seen at once, not after the 10 s request timeout.
      expect(() => mem.read(0x1000, new Uint8Array(8))).toThrow(TargetError);
      expect(() => mem.read(0x1000, new Uint8Array(8))).toThrow(/gdbstub at 127\.0\.0\.1:\d+ (closed the connection|failed: connection reset)/);
      mem.close();
    } finally {
      await qemu.stop();
    }
  });

  it('names the address when nothing listens, and rejects bad arguments', async () => {
    const port = await freePort();
    expect(() => GdbPhysicalMemory.open('127.0.0.1', port, { ranges: GUEST_RANGES })).toThrow(
      new RegExp(`cannot connect to gdbstub at 127\\.0\\.0\\.1:${port}: connection refused`),
    );
    expect(() => GdbPhysicalMemory.open('127.0.0.1', 0, { ranges: GUEST_RANGES })).toThrow(UsageError);
    expect(() => GdbPhysicalMemory.open('127.0.0.1', port, { ranges: [] })).toThrow(UsageError);
    expect(() => GdbPhysicalMemory.open('gdb.example', port, { ranges: GUEST_RANGES })).toThrow(/give an IP address/);
  });
});
