/**
 * vCPU control against a bare QEMU (no kernel, no gdbstub of its own): the stub is started over
 * QMP and stopped again, breakpoints stop the vCPU and are stepped over, and closing a session
 * leaves the guest running or paused as it found it, with no breakpoint behind — which a
 * running guest would show at once by stopping on it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VcpuControl } from '../../../src/actions/vcpu.ts';
import { attachQemu, type QemuMachine } from '../../../src/machine/qemu.ts';
import { qemuAvailable, startQemu, type RunningQemu } from '../../machine/support/qemu.ts';

/** A real-mode program at 0x7000: `jmp $`, a vCPU that spins in place. */
const LOOP = 0x7000;
const LOOP_VA = BigInt(LOOP);

describe.skipIf(!qemuAvailable())('vCPU control of a bare QEMU', () => {
  let q: RunningQemu;
  let machine: QemuMachine;

  const status = async (): Promise<string> => ((await q.monitor.execute('query-status')) as { status: string }).status;
  const hasGdbChardev = async (): Promise<boolean> => /^gdb:/m.test(await q.monitor.hmp('info chardev'));
  const settle = () => new Promise((r) => setTimeout(r, 400));

  beforeAll(async () => {
    q = await startQemu({ memMiB: 64, ramFile: true, smp: 2, blobs: [{ gpa: LOOP, bytes: new Uint8Array([0xeb, 0xfe]) }] });
    machine = await attachQemu(q.qmpPath, { source: 'file' });
  });
  afterAll(async () => {
    await machine?.close();
    await q?.stop();
  });

  it('starts a gdbstub over QMP for a QEMU without one, points a vCPU at the loop, and leaves it paused as found', async () => {
    expect(await hasGdbChardev()).toBe(false);
    expect(await status()).toBe('prelaunch');
    const control = await VcpuControl.open(machine);
    expect(control.endpoint.startedHere).toBe(true);
    expect(control.wasRunning).toBe(false);
    expect(await hasGdbChardev()).toBe(true);
    expect(await control.threads()).toEqual([1, 2]);
    const before = await control.registers(1);
    expect(before.rip).toBe(0xfff0n); // the reset vector
    await control.setRegisters(1, { cs: 0n, rip: LOOP_VA });
    expect((await control.registers(1)).rip).toBe(LOOP_VA);
    expect((await control.registers(2)).rip).toBe(0xfff0n);
    expect(await control.close()).toEqual([]);
    expect(await hasGdbChardev()).toBe(false);
    expect(await status()).toBe('prelaunch');
    await q.monitor.execute('cont');
    await settle();
    expect(await status()).toBe('running');
  });

  it('stops at a breakpoint, steps over it, stops there again; closing resumes the guest with nothing left behind', async () => {
    const control = await VcpuControl.open(machine);
    try {
      expect(control.wasRunning).toBe(true);
      expect(await status()).not.toBe('running');
      await control.insertBreakpoint(LOOP_VA);
      expect(control.activeBreakpoints).toEqual([LOOP_VA]);
      await control.resume();
      const hit = await control.waitForStop(5000);
      expect(hit).toMatchObject({ kind: 'stop', stop: { signal: 5, thread: 1 } });
      expect((await control.registers(1)).rip).toBe(LOOP_VA);
      // `jmp $` comes back to itself: one step executes it and ends on the breakpoint's address.
      const step = await control.stepOver(1, LOOP_VA);
      expect(step).toMatchObject({ signal: 5, thread: 1 });
      expect(control.activeBreakpoints).toEqual([LOOP_VA]);
      await control.resume();
      expect(await control.waitForStop(5000)).toMatchObject({ kind: 'stop', stop: { signal: 5 } });
      // Nothing else stops the guest: a wait runs out and takes it back.
      await control.removeBreakpoint(LOOP_VA);
      await control.resume();
      expect(await control.waitForStop(300)).toEqual({ kind: 'timeout' });
      await control.insertBreakpoint(LOOP_VA);
    } finally {
      expect(await control.close()).toEqual([]);
    }
    await settle();
    expect(await status()).toBe('running');
    expect(await hasGdbChardev()).toBe(false);
  });

  it('removes its breakpoints itself when it leaves a paused guest paused', async () => {
    await q.monitor.execute('stop');
    const control = await VcpuControl.open(machine);
    expect(control.wasRunning).toBe(false);
    await control.insertBreakpoint(LOOP_VA);
    expect(await control.close()).toEqual([]);
    expect(await status()).toBe('paused');
    await q.monitor.execute('cont');
    await settle();
    // A breakpoint left at the loop would have stopped the vCPU there ('debug').
    expect(await status()).toBe('running');
  });
});
