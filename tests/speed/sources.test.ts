/**
 * The three ways of reading a live guest's RAM — the shared RAM file, the QEMU process's memory
 * (/proc/PID/mem) and QEMU's gdbstub — give the very same process list. The guest is paused
 * for the comparison, so all three read one instant.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listTasks, type TaskRow } from '../../src/analyses/ps.ts';
import { Kernel } from '../../src/kernel/kernel.ts';
import { openKernel } from '../../src/kernel/open.ts';
import type { QemuMachine } from '../../src/machine/qemu.ts';
import { AddressSpace } from '../../src/mmu/address-space.ts';
import { PhysReader } from '../../src/mmu/phys-reader.ts';
import type { Extent } from '../../src/source/extents.ts';
import { GdbPhysicalMemory } from '../../src/source/gdb/source.ts';
import { openProcMem } from '../../src/source/proc-mem.ts';
import type { PhysicalMemory } from '../../src/source/types.ts';
import { labGuest, type LabGuest } from '../support/lab.ts';
import { attachWaiting } from './support.ts';

/** Guest-physical → QEMU host-virtual layout, from where QEMU maps its RAM file (/proc/PID/maps). */
function hostLayout(pid: number, ramFile: string, fileLayout: readonly Extent[]): Extent[] {
  const line = readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .find((l) => l.endsWith(ramFile));
  if (!line) throw new Error(`QEMU ${pid} does not map ${ramFile}`);
  const [range, , offset] = line.split(/\s+/);
  const start = parseInt(range!.split('-')[0]!, 16);
  const mapOffset = parseInt(offset!, 16);
  return fileLayout.map((e) => ({ gpa: e.gpa, size: e.size, offset: start + (e.offset - mapOffset) }));
}

async function gdbWhenFree(port: number, ranges: PhysicalMemory['ranges']): Promise<GdbPhysicalMemory> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      return GdbPhysicalMemory.open('127.0.0.1', port, { ranges, timeoutMs: 10_000 });
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

describe('the three memory sources', () => {
  let guest: LabGuest;
  let machine: QemuMachine;
  let base: Kernel;
  const extra: PhysicalMemory[] = [];

  beforeAll(async () => {
    guest = await labGuest('default');
    machine = await attachWaiting(guest.info.qmpSocket, 'file');
    base = await openKernel(machine);
  });
  afterAll(async () => {
    for (const m of extra) m.close();
    await machine?.resume().catch(() => undefined);
    await machine?.close();
  });

  it('give identical process lists', async () => {
    expect(machine.memory.kind).toBe('shared-file');
    const proc = await openProcMem({ pid: guest.info.pid, layout: hostLayout(guest.info.pid, guest.info.ramFile, machine.layout), writable: false });
    extra.push(proc);
    await machine.pause();
    let lists: TaskRow[][];
    try {
      const gdb = await gdbWhenFree(guest.info.gdbPort, machine.memory.ranges);
      extra.push(gdb);
      lists = [machine.memory, proc, gdb].map((memory) => {
        const space = new AddressSpace(new PhysReader(memory, { frozen: true }), base.layout.root, base.layout.levels);
        return listTasks(new Kernel({ machine, space, btf: base.btf, symbols: base.symbols, layout: base.layout }));
      });
      gdb.close();
    } finally {
      await machine.resume();
    }
    const [file, viaProc, viaGdb] = lists;
    expect(file!.filter((t) => t.comm.startsWith('lab-worker-')).length).toBe(16);
    expect(viaProc).toEqual(file);
    expect(viaGdb).toEqual(file);
  });
});
