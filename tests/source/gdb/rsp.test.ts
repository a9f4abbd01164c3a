/**
 * GdbRemote against a real QEMU 7.2 gdbstub: a 2-vCPU pc machine held at reset (-S), so the
 * register state is the architectural reset state and the code we plant in RAM is the only
 * code that runs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GdbRemote } from '../../../src/source/gdb/rsp.ts';
import { X86_64_BUILTIN } from '../../../src/source/gdb/registers.ts';
import { TargetError } from '../../../src/util/errors.ts';
import { freePort, TestQemu } from './qemu.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** vCPU 0's registers from HMP `info registers` (real-mode layout: EAX=…, CS =sel base limit flags). */
async function hmpRegisters(qemu: TestQemu): Promise<Map<string, bigint>> {
  const text = await qemu.hmp('info registers');
  const out = new Map<string, bigint>();
  for (const m of text.matchAll(/\b([A-Z0-9]+)=([0-9a-f]+)\b/g)) out.set(m[1]!, BigInt('0x' + m[2]));
  for (const m of text.matchAll(/^([A-Z]{2}) =([0-9a-f]{4}) ([0-9a-f]+)/gm)) {
    out.set(m[1]!, BigInt('0x' + m[2]));
    out.set(`${m[1]}.base`, BigInt('0x' + m[3]));
  }
  return out;
}

/** 16-bit code at 0x7c00: `inc ax` then `jmp 0x7c00`. */
const LOOP_AT = 0x7c00n;
const LOOP_CODE = Uint8Array.from([0x40, 0xeb, 0xfd]);

describe('GdbRemote against QEMU', () => {
  let qemu: TestQemu;
  let gdb: GdbRemote;

  beforeAll(async () => {
    qemu = await TestQemu.start({ smp: 2 });
    gdb = await GdbRemote.connect('127.0.0.1', qemu.gdbPort!);
  });

  afterAll(async () => {
    gdb?.close();
    await qemu?.stop();
  });

  it('negotiates QEMU’s packet size and reports a guest that was already stopped', () => {
    expect(gdb.packetSize).toBe(0x1000);
    expect(gdb.maxReadBytes).toBe(2048);
    expect(gdb.stoppedOnConnect).toBe(false);
    expect(gdb.running).toBe(false);
  });

  it('reads the x86 reset state from g, as QEMU’s own info registers shows it', async () => {
    const r = await gdb.readRegisters();
    expect(r.rip).toBe(0xfff0n);
    expect(r.cs).toBe(0xf000n);
    expect(r.cr0).toBe(0x60000010n);
    expect(r.eflags).toBe(0x2n);
    expect(r.efer).toBe(0n);
    expect(r.cr3).toBe(0n);
    expect(r.rsp).toBe(0n);
    // EDX holds the processor signature (CPUID leaf 1 EAX) after reset.
    expect(r.rdx).not.toBe(0n);
    const hmp = await hmpRegisters(qemu);
    expect(r.rip).toBe(hmp.get('EIP'));
    expect(r.rdx).toBe(hmp.get('EDX'));
    expect(r.eflags).toBe(hmp.get('EFL'));
    expect(r.cr0).toBe(hmp.get('CR0'));
    expect(r.cs).toBe(hmp.get('CS'));
    // The gdbstub has no segment bases; the CS base shows in where the first instruction is fetched.
    expect(hmp.get('CS.base')).toBe(0xffff0000n);
  });

  it('takes its register layout from QEMU’s target description, matching the built-in table', async () => {
    const layout = await gdb.registerLayout();
    expect(layout.origin).toBe('target-description');
    const strip = (l: typeof layout) => l.registers.map((r) => [r.name, r.regnum, r.bits, r.offset]);
    expect(strip(layout)).toEqual(strip(X86_64_BUILTIN));
  });

  it('reads single registers with p, by name and number, matching g', async () => {
    expect(await gdb.readRegister('cr0')).toBe(0x60000010n);
    expect(await gdb.readRegister(16)).toBe(0xfff0n);
    expect(await gdb.readRegister('mxcsr')).toBe(0x1f80n);
    await expect(gdb.readRegister('no-such-register')).rejects.toThrow(/no register/);
  });

  it('writes registers and reads them back', async () => {
    await gdb.writeRegister('rbx', 0x1234n);
    expect(await gdb.readRegister('rbx')).toBe(0x1234n);
    await gdb.writeRegisters({ rsi: 0xabcdn, rdi: 0x55n });
    const r = await gdb.readRegisters();
    expect([r.rbx, r.rsi, r.rdi]).toEqual([0x1234n, 0xabcdn, 0x55n]);
    const hmp = await hmpRegisters(qemu);
    expect([hmp.get('EBX'), hmp.get('ESI'), hmp.get('EDI')]).toEqual([0x1234n, 0xabcdn, 0x55n]);
    await gdb.writeRegisters({ rbx: 0n, rsi: 0n, rdi: 0n });
  });

  it('lists one thread per vCPU and selects them', async () => {
    expect(await gdb.threads()).toEqual([1, 2]);
    await gdb.selectThread(2);
    expect((await gdb.readRegisters()).rip).toBe(0xfff0n);
    await gdb.selectThread(1);
    await expect(gdb.selectThread(9)).rejects.toThrow(TargetError);
  });

  it('writes guest-physical memory in physical mode; QEMU’s xp sees the same bytes', async () => {
    await gdb.setPhysicalMode(true);
    expect(await gdb.physicalMode()).toBe(true);
    const pattern = new Uint8Array(5000);
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7 + 3) & 0xff;
    await gdb.writeMemory(0x200000n, pattern);
    const back = await gdb.readMemory(0x200000n, pattern.length);
    expect(Buffer.from(back).equals(Buffer.from(pattern))).toBe(true);
    const words = await qemu.physicalWords(0x200000 + 4096, 4);
    const dv = new DataView(pattern.buffer);
    expect(words).toEqual([0, 1, 2, 3].map((i) => dv.getBigUint64(4096 + i * 8, true)));
  });

  it('reads the reset vector through the BIOS mapping in virtual mode', async () => {
    await gdb.setPhysicalMode(false);
    // Linear 0xfffffff0 holds `ljmp f000:e05b` in SeaBIOS.
    const bytes = await gdb.readMemory(0xfffffff0n, 5);
    expect(Array.from(bytes)).toEqual([0xea, 0x5b, 0xe0, 0x00, 0xf0]);
  });

  it('single-steps the reset vector’s far jump', async () => {
    const stop = await gdb.step();
    expect(stop.kind).toBe('signal');
    expect(stop.signal).toBe(5);
    expect(stop.thread).toBe(1);
    const r = await gdb.readRegisters();
    expect(r.rip).toBe(0xe05bn);
    expect(r.cs).toBe(0xf000n);
  });

  describe('running planted code', () => {
    beforeAll(async () => {
      await gdb.setPhysicalMode(true);
      await gdb.writeMemory(LOOP_AT, LOOP_CODE);
      await gdb.setPhysicalMode(false);
      // Real mode: loading CS with 0 gives base 0, so CS:IP = 0:7c00 is linear 0x7c00.
      await gdb.writeRegisters({ cs: 0n, rip: LOOP_AT, rax: 0n });
      const r = await gdb.readRegisters();
      expect([r.cs, r.rip]).toEqual([0n, LOOP_AT]);
    });

    it('steps instruction by instruction', async () => {
      await gdb.step();
      let r = await gdb.readRegisters();
      expect([r.rip, r.rax]).toEqual([LOOP_AT + 1n, 1n]);
      await gdb.step();
      r = await gdb.readRegisters();
      expect([r.rip, r.rax]).toEqual([LOOP_AT, 1n]);
    });

    it('stops at a hardware breakpoint', async () => {
      await gdb.insertBreakpoint(LOOP_AT + 1n, 'hw');
      try {
        // The stop may come in the same read as the stub's ack of `c`; waitForStop() still gets it.
        await gdb.cont();
        const stop = await gdb.waitForStop();
        expect(stop.signal).toBe(5);
        expect(gdb.running).toBe(false);
        expect(await gdb.readRegister('rip')).toBe(LOOP_AT + 1n);
      } finally {
        await gdb.removeBreakpoint(LOOP_AT + 1n, 'hw');
      }
    });

    it('stops at a software breakpoint, every time round the loop', async () => {
      const before = await gdb.readRegister('rax');
      for (let i = 0; i < 3; i++) {
        await gdb.insertBreakpoint(LOOP_AT, 'sw');
        try {
          await gdb.cont();
          expect((await gdb.waitForStop()).signal).toBe(5);
          expect(await gdb.readRegister('rip')).toBe(LOOP_AT);
          // Stopped before `inc ax` ran: one increment per completed round.
          expect(await gdb.readRegister('rax')).toBe(before + BigInt(i));
        } finally {
          // QEMU stops again at once when resumed on a breakpoint: step past it without the breakpoint, as GDB does.
          await gdb.removeBreakpoint(LOOP_AT, 'sw');
        }
        await gdb.step();
      }
    });

    it('refuses requests while the target runs, and interrupts it', async () => {
      const before = await gdb.readRegister('rax');
      await gdb.cont();
      await expect(gdb.readRegisters()).rejects.toThrow(/while the target runs/);
      await sleep(200);
      expect(await qemu.status()).toBe('running');
      const stop = await gdb.interrupt();
      expect(stop?.signal).toBe(2);
      expect(await qemu.status()).not.toBe('running');
      const r = await gdb.readRegisters();
      expect(r.rip === LOOP_AT || r.rip === LOOP_AT + 1n).toBe(true);
      expect(r.rax - before).toBeGreaterThan(1000n);
      expect(await gdb.interrupt()).toBeUndefined();
      await expect(gdb.waitForStop()).rejects.toThrow(/not running/);
    });

    it('gets its reply even when the guest was resumed behind its back', async () => {
      // QEMU discards bytes that arrive while the guest runs; the request prefix makes it stop first.
      await qemu.qmp.command('cont');
      expect(await qemu.status()).toBe('running');
      expect(await gdb.readRegister('cs')).toBe(0n);
      expect(await qemu.status()).not.toBe('running');
      expect(gdb.lastStop?.signal).toBe(2);
    });

    it('times out waiting for a stop that does not come, leaving the target running', async () => {
      await gdb.cont();
      await expect(gdb.waitForStop(300)).rejects.toThrow(/did not stop within 300 ms/);
      expect(gdb.running).toBe(true);
      expect((await gdb.interrupt())?.signal).toBe(2);
    });
  });

  it('runs monitor commands through qRcmd', async () => {
    expect(await gdb.monitor('info status')).toMatch(/VM status: paused/);
  });
});

describe('GdbRemote connections', () => {
  it('names the address when nothing listens', async () => {
    const port = await freePort();
    await expect(GdbRemote.connect('127.0.0.1', port, { timeoutMs: 2000 })).rejects.toThrow(
      new RegExp(`cannot connect to gdbstub at 127\\.0\\.0\\.1:${port}: connection refused`),
    );
  });

  it('reports a guest that connecting stopped, and detach resumes it', async () => {
    const qemu = await TestQemu.start({ paused: false });
    try {
      expect(await qemu.status()).toBe('running');
      const gdb = await GdbRemote.connect('127.0.0.1', qemu.gdbPort!);
      expect(gdb.stoppedOnConnect).toBe(true);
      expect(gdb.lastStop?.signal).toBe(2);
      expect(await qemu.status()).toBe('paused');
      await gdb.detach();
      expect(await qemu.status()).toBe('running');
    } finally {
      await qemu.stop();
    }
  });

  it('connects to a gdbstub started at run time over QMP', async () => {
    const qemu = await TestQemu.start({ gdb: false });
    try {
      const port = await qemu.startGdbServer();
      const gdb = await GdbRemote.connect('127.0.0.1', port);
      expect((await gdb.readRegisters()).rip).toBe(0xfff0n);
      gdb.close();
    } finally {
      await qemu.stop();
    }
  });

  it('fails pending and later requests clearly when QEMU dies mid-session', async () => {
    const qemu = await TestQemu.start();
    try {
      const gdb = await GdbRemote.connect('127.0.0.1', qemu.gdbPort!, { timeoutMs: 10_000 });
      await gdb.setPhysicalMode(true);
      // A long read keeps requests in flight while the process goes away. The error must be the
      // closed connection, seen at once, not the 10 s request timeout.
      const pending = gdb.readMemory(0n, 64 << 20).then(
        () => undefined,
        (e: unknown) => e,
      );
      await sleep(50);
      await qemu.kill();
      const error = await pending;
      expect(error).toBeInstanceOf(TargetError);
      expect(String(error)).toMatch(/closed the connection|connection to .* lost/);
      await expect(gdb.readRegisters()).rejects.toThrow(TargetError);
    } finally {
      await qemu.stop();
    }
  });

  it('rejects a waitForStop when QEMU dies while the guest runs', async () => {
    const qemu = await TestQemu.start();
    try {
      const gdb = await GdbRemote.connect('127.0.0.1', qemu.gdbPort!);
      await gdb.cont();
      const waiting = gdb.waitForStop(30_000).then(
        () => undefined,
        (e: unknown) => e,
      );
      await qemu.kill();
      expect(await waiting).toBeInstanceOf(TargetError);
    } finally {
      await qemu.stop();
    }
  });

});
