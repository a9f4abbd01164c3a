/**
 * Both clients against a scripted stub (fake-stub.mjs, in a worker thread) that misbehaves in
 * the ways QEMU does not: the clients must end each case with a result or a clear TargetError,
 * never a hang or an unbounded allocation.
 */
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockingGdbClient } from '../../../src/source/gdb/blocking-client.ts';
import { GdbRemote } from '../../../src/source/gdb/rsp.ts';
import { GdbPhysicalMemory } from '../../../src/source/gdb/source.ts';
import { PhysicalAccessError, TargetError } from '../../../src/util/errors.ts';

/** The stub's memory over 1 MiB: byte i is (i*31 + (i>>8)) & 0xff, except every other 16 bytes are zero. */
function expected(addr: number, len: number): Buffer {
  const out = Buffer.alloc(len);
  for (let i = 0; i < len; i++) {
    const a = addr + i;
    out[i] = (a >> 4) & 1 ? 0 : (a * 31 + (a >> 8)) & 0xff;
  }
  return out;
}

const RANGES = [{ start: 0, size: 1 << 20 }];
const workers: Worker[] = [];

async function stub(scenario: string): Promise<number> {
  const w = new Worker(new URL('./fake-stub.mjs', import.meta.url), { workerData: { scenario } });
  workers.push(w);
  return new Promise((resolve, reject) => {
    w.once('message', (m: { port: number }) => resolve(m.port));
    w.once('error', reject);
  });
}

afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.terminate()));
});

describe('blocking client and memory source', () => {
  it('reads through a plain stub, pipelined and not', async () => {
    const port = await stub('plain');
    const mem = GdbPhysicalMemory.open('127.0.0.1', port, { ranges: RANGES });
    const dst = new Uint8Array(10_000);
    mem.read(77, dst);
    expect(Buffer.from(dst).equals(expected(77, 10_000))).toBe(true);
    mem.close();
  });

  it('decodes run-length encoded replies', async () => {
    const port = await stub('run-length');
    const mem = GdbPhysicalMemory.open('127.0.0.1', port, { ranges: RANGES });
    // The zero stretches come as run-length codes (32 '0' digits each).
    const dst = new Uint8Array(4096);
    mem.read(0x1000, dst);
    expect(Buffer.from(dst).equals(expected(0x1000, 4096))).toBe(true);
    mem.close();
  });

  it('retransmits after a NAK, and gives up after a bounded number', async () => {
    let port = await stub('nak-once');
    let mem = GdbPhysicalMemory.open('127.0.0.1', port, { ranges: RANGES, pipelineDepth: 1 });
    const dst = new Uint8Array(8);
    mem.read(0x40, dst);
    expect(Buffer.from(dst).equals(expected(0x40, 8))).toBe(true);
    mem.close();

    port = await stub('nak-always');
    mem = GdbPhysicalMemory.open('127.0.0.1', port, { ranges: RANGES, pipelineDepth: 1 });
    expect(() => mem.read(0x40, dst)).toThrow(/rejected request m 0x40,8 5 times/);
    mem.close();
  });

  it('asks again for a reply with a bad checksum', async () => {
    const port = await stub('corrupt-once');
    const mem = GdbPhysicalMemory.open('127.0.0.1', port, { ranges: RANGES, pipelineDepth: 1 });
    const dst = new Uint8Array(100);
    mem.read(0x200, dst);
    expect(Buffer.from(dst).equals(expected(0x200, 100))).toBe(true);
    mem.close();
  });

  it('drops stale replies and stop packets that precede the acknowledgement', async () => {
    const port = await stub('stale-packets');
    const client = BlockingGdbClient.connect('127.0.0.1', port);
    const reply = client.request('m10,4', 'm');
    expect(reply.toString('latin1')).toBe(expected(0x10, 4).toString('hex'));
    expect(client.lastStop?.signal).toBe(5);
    client.close();
  });

  it('turns an error reply into a PhysicalAccessError naming the address, and stays usable', async () => {
    const port = await stub('error-replies');
    const mem = GdbPhysicalMemory.open('127.0.0.1', port, { ranges: RANGES });
    expect(() => mem.read(0x8000, new Uint8Array(8))).toThrow(PhysicalAccessError);
    expect(() => mem.read(0x8000, new Uint8Array(8))).toThrow(/physical 0x8000 \(\+8\) could not be read through the gdbstub \(error 0x14\)/);
    // In a batch, the failing packet is in the middle; the rest are drained and the stream stays in step.
    expect(() => mem.read(0x7000, new Uint8Array(0x3000))).toThrow(/physical 0x8000 \(\+2048\)/);
    const ok = new Uint8Array(16);
    mem.read(0x10, ok);
    expect(Buffer.from(ok).equals(expected(0x10, 16))).toBe(true);
    mem.close();
  });

  it('times out on a silent stub, then fails fast', async () => {
    const port = await stub('silent');
    const mem = GdbPhysicalMemory.open('127.0.0.1', port, { ranges: RANGES, timeoutMs: 300 });
    expect(() => mem.read(0, new Uint8Array(8))).toThrow(/did not answer m 0x0,8 within 300 ms/);
    // The connection is marked broken: the next read fails without sending anything.
    const sent = mem.requests;
    expect(() => mem.read(0, new Uint8Array(8))).toThrow(/did not answer m 0x0,8/);
    expect(mem.requests).toBe(sent);
    mem.close();
  });

  it('stops reading a packet that never ends', async () => {
    const port = await stub('runaway');
    const mem = GdbPhysicalMemory.open('127.0.0.1', port, { ranges: RANGES, timeoutMs: 5000 });
    expect(() => mem.read(0, new Uint8Array(8))).toThrow(/packet larger than 1048576 bytes/);
    mem.close();
  });

  it('keeps requests within a small PacketSize', async () => {
    const port = await stub('small-packets');
    const mem = GdbPhysicalMemory.open('127.0.0.1', port, { ranges: RANGES, writable: true });
    expect(mem.description).toMatch(/128-byte reads/);
    const before = mem.requests;
    const dst = new Uint8Array(1000);
    mem.read(5, dst);
    expect(Buffer.from(dst).equals(expected(5, 1000))).toBe(true);
    expect(mem.requests - before).toBe(8);
    mem.close();
  });
});

describe('asynchronous client', () => {
  it('retransmits, re-requests corrupt replies and decodes run-length replies', async () => {
    for (const scenario of ['nak-once', 'corrupt-once', 'run-length', 'stale-packets']) {
      const gdb = await GdbRemote.connect('127.0.0.1', await stub(scenario));
      expect(Buffer.from(await gdb.readMemory(0x1234n, 3000)).equals(expected(0x1234, 3000)), scenario).toBe(true);
      gdb.close();
    }
  });

  it('names the virtual or physical address of an error reply', async () => {
    const gdb = await GdbRemote.connect('127.0.0.1', await stub('error-replies'));
    await expect(gdb.readMemory(0x8000n, 8)).rejects.toThrow(/virtual 0x8000 \(\+8\) could not be read \(gdbstub error 0x14\)/);
    await gdb.setPhysicalMode(true);
    await expect(gdb.readMemory(0x8000n, 8)).rejects.toThrow(PhysicalAccessError);
    gdb.close();
  });

  it('writes binary X packets with escapes where the stub has them', async () => {
    const gdb = await GdbRemote.connect('127.0.0.1', await stub('binary-writes'));
    // Every byte value, including the four the protocol escapes ($ # * }).
    const data = Uint8Array.from({ length: 512 }, (_, i) => i & 0xff);
    await gdb.writeMemory(0x100n, data);
    expect(Array.from(await gdb.readMemory(0x100n, 512))).toEqual(Array.from(data));
    gdb.close();
  });

  it('falls back to hex M packets where X is missing', async () => {
    const gdb = await GdbRemote.connect('127.0.0.1', await stub('plain'));
    const data = Uint8Array.from([0x24, 0x23, 0x2a, 0x7d, 0, 255]);
    await gdb.writeMemory(0x300n, data);
    expect(Array.from(await gdb.readMemory(0x300n, 6))).toEqual(Array.from(data));
    gdb.close();
  });

  it('times out on a silent stub and closes the connection', async () => {
    const gdb = await GdbRemote.connect('127.0.0.1', await stub('silent'), { timeoutMs: 300 });
    await expect(gdb.readMemory(0n, 8)).rejects.toThrow(/did not answer m 0x0,8 within 300 ms/);
    await expect(gdb.readMemory(0n, 8)).rejects.toThrow(TargetError);
  });

  it('bounds a runaway packet, an endless thread list and an include loop', async () => {
    let gdb = await GdbRemote.connect('127.0.0.1', await stub('runaway'));
    await expect(gdb.readMemory(0n, 8)).rejects.toThrow(/larger than/);
    gdb = await GdbRemote.connect('127.0.0.1', await stub('endless-threads'));
    await expect(gdb.threads()).rejects.toThrow(/malformed thread list|more than/);
    gdb.close();
    gdb = await GdbRemote.connect('127.0.0.1', await stub('xml-loop'));
    await expect(gdb.registerLayout()).rejects.toThrow(/more than 32 documents/);
    gdb.close();
  });

  it('reads registers by the stub’s own description, ignoring commented-out registers', async () => {
    const gdb = await GdbRemote.connect('127.0.0.1', await stub('plain'));
    const layout = await gdb.registerLayout();
    expect(layout.byName.has('ghost')).toBe(false);
    expect(layout.registers.length).toBe(33);
    const r = await gdb.readRegisters();
    expect(r.rax).toBe(0x1111n);
    expect(r.r15).toBe(16n * 0x1111n);
    expect(r.rip).toBe(0xfff0n);
    expect(r.cs).toBe(0xf000n);
    expect(await gdb.threads()).toEqual([1, 2]);
    gdb.close();
  });

  it('rejects a g reply too short for the layout', async () => {
    const gdb = await GdbRemote.connect('127.0.0.1', await stub('short-g'));
    await expect(gdb.readRegisters()).rejects.toThrow(/too short for register/);
    gdb.close();
  });
});
