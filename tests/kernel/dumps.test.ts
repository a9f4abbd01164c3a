/**
 * Dumps see what the live guest saw at the same instant: the guest is paused, read live, dumped
 * by QEMU in every format vmlens reads (ELF with and without paging, raw, LiME), and each dump
 * must give the same processes, modules, release and log — with no vCPU state at all for raw
 * and LiME, where the kernel's page tables are found by scanning.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLog } from '../../src/analyses/dmesg.ts';
import { listModules } from '../../src/analyses/lsmod.ts';
import { listTasks } from '../../src/analyses/ps.ts';
import { uname } from '../../src/analyses/uname.ts';
import type { Kernel } from '../../src/kernel/kernel.ts';
import { openKernel } from '../../src/kernel/open.ts';
import { openDump } from '../../src/machine/dump.ts';
import { attachQemu, type QemuMachine } from '../../src/machine/qemu.ts';
import { writeLime } from '../../src/source/lime.ts';
import { labGuest } from '../support/lab.ts';

interface View {
  release: string;
  tasks: string[];
  modules: string[];
  log: number;
  textBase: bigint;
}

function view(k: Kernel): View {
  return {
    release: uname(k).release,
    tasks: listTasks(k, { threads: true }).map((t) => `${t.pid} ${t.ppid} ${t.uid} ${t.state} ${t.name}`),
    modules: listModules(k).map((m) => `${m.name} ${m.size} ${m.refcount} ${m.base}`),
    log: readLog(k).length,
    textBase: k.layout.textBase,
  };
}

describe('dumps of a lab guest read like the paused guest', () => {
  let machine: QemuMachine;
  let live: View;
  let dir: string;
  const files: Record<string, string> = {};

  beforeAll(async () => {
    const guest = await labGuest('default');
    machine = await attachQemu(guest.info.qmpSocket);
    dir = mkdtempSync(join(tmpdir(), 'vmlens-dumps-'));
    await machine.pause();
    try {
      live = view(await openKernel(machine, { frozen: true }));
      for (const paging of [false, true]) {
        const file = join(dir, `elf-${paging ? 'paging' : 'plain'}.core`);
        await machine.qmp.execute('dump-guest-memory', { paging, protocol: `file:${file}` }, { timeoutMs: 120_000 });
        files[`elf paging=${paging}`] = file;
      }
      const ram = machine.memory.ranges.reduce((n, r) => Math.max(n, r.start + r.size), 0);
      files.raw = join(dir, 'memory.raw');
      const said = await machine.qmp.hmp(`pmemsave 0 ${ram} "${files.raw}"`);
      expect(said.trim()).toBe("");
      files.lime = join(dir, 'memory.lime');
      await writeLime(files.lime, machine.memory);
    } finally {
      await machine.resume();
    }
  }, 300_000);

  afterAll(async () => {
    await machine?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const kind of ['elf paging=false', 'elf paging=true', 'raw', 'lime']) {
    it(`${kind}: same kernel, processes, modules and log`, async () => {
      const dump = await openDump(files[kind]!);
      try {
        expect(dump.live).toBe(false);
        const k = await openKernel(dump);
        const v = view(k);
        expect(v.release).toBe(live.release);
        expect(v.textBase).toBe(live.textBase);
        expect(v.tasks).toEqual(live.tasks);
        expect(v.modules).toEqual(live.modules);
        expect(v.log).toBe(live.log);
        expect(k.warnings.items).toEqual([]);
      } finally {
        await dump.close();
      }
    }, 120_000);
  }

  it('a dump is read-only', async () => {
    const dump = await openDump(files['elf paging=false']!);
    try {
      expect(dump.memory.writable).toBe(false);
      expect(() => dump.memory.write(0x1000, new Uint8Array(8))).toThrow(/read-only|cannot be written|dump/i);
    } finally {
      await dump.close();
    }
  });
});
