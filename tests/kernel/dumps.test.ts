/**
 * Dumps see what the live guest saw at the same instant: the guest is paused, read live, dumped
 * by QEMU in every format vmlens reads (ELF with and without paging, raw, LiME), and each dump
 * must give the same processes, modules, release and log — with no vCPU state at all for raw
 * and LiME, where the kernel's page tables are found by scanning. `vmlens dump` writes its three
 * formats in the same pause, and each holds byte for byte what QEMU's own `pmemsave` wrote.
 */
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
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
import type { PhysicalMemory } from '../../src/source/types.ts';
import { labGuest } from '../support/lab.ts';
import { runCli, type CliResult } from '../speed/support.ts';

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
  const cli: Record<string, CliResult> = {};
  let stillPaused = false;

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
      // The command line takes the monitor for itself: let go of it meanwhile.
      await machine.releaseMonitor();
      for (const format of ['lime', 'raw', 'elf']) {
        files[`vmlens dump ${format}`] = join(dir, `vmlens.${format}`);
        cli[format] = await runCli(['--qmp', guest.info.qmpSocket, '--json', 'dump', '--format', format, files[`vmlens dump ${format}`]!]);
      }
      stillPaused = await machine.isPaused();
    } finally {
      await machine.resume();
    }
  }, 300_000);

  afterAll(async () => {
    await machine?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const kind of ['elf paging=false', 'elf paging=true', 'raw', 'lime', 'vmlens dump lime', 'vmlens dump raw', 'vmlens dump elf']) {
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

  it('vmlens dump: each format holds every RAM byte QEMU\'s pmemsave wrote, and a paused guest stays paused', async () => {
    const truth = await openDump(files.raw!);
    try {
      for (const format of ['lime', 'raw', 'elf']) {
        const r = cli[format]!;
        expect(r.code, `${format}: ${r.stderr}`).toBe(0);
        const out = JSON.parse(r.stdout) as { format: string; ramBytes: number; file: string };
        expect(out.format).toBe(format);
        expect(out.ramBytes).toBe(machine.memory.ranges.reduce((n, x) => n + x.size, 0));
        // It was paused already: no pause of its own to report.
        expect(r.stderr).not.toMatch(/guest paused for/);
        const dump = await openDump(out.file);
        try {
          // LiME keeps exactly the guest's RAM ranges; a raw image is everything from 0 to the
          // end of RAM; QEMU's core adds its ROM blocks (the BIOS) to the RAM ranges.
          const end = Math.max(...machine.memory.ranges.map((x) => x.start + x.size));
          if (format === 'lime') expect(dump.memory.ranges).toEqual(machine.memory.ranges);
          if (format === 'raw') expect(dump.memory.ranges).toEqual([{ start: 0, size: end }]);
          if (format === 'elf') expect(dump.memory.ranges).toEqual(expect.arrayContaining([...machine.memory.ranges]));
          expect(firstDifference(dump.memory, truth.memory, machine.memory.ranges), format).toBeUndefined();
        } finally {
          await dump.close();
        }
      }
    } finally {
      await truth.close();
    }
    expect(stillPaused).toBe(true);
  }, 120_000);

  it('vmlens dump refuses to overwrite a file, an ELF core of a dump, and an unknown format', async () => {
    const existing = files['vmlens dump lime']!;
    const size = statSync(existing).size;
    const again = await runCli(['--dump', files.lime!, 'dump', existing]);
    expect(again.code).toBe(2);
    expect(again.stderr.trim()).toBe(`vmlens: ${existing} exists (use --force to overwrite it)`);
    expect(statSync(existing).size).toBe(size);
    const elf = await runCli(['--dump', files.lime!, 'dump', join(dir, 'x.core')]);
    expect(elf.code).toBe(2);
    expect(elf.stderr).toMatch(/not a live QEMU guest/);
    expect(existsSync(join(dir, 'x.core'))).toBe(false);
    const bad = await runCli(['--dump', files.lime!, 'dump', '--format', 'zip', join(dir, 'x.zip')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim()).toBe("vmlens: unknown dump format 'zip' (lime, raw, elf)");
    // From a dump to another format: the same bytes.
    const copy = join(dir, 'copy.raw');
    const r = await runCli(['--dump', files.lime!, 'dump', copy]);
    expect(r.code, r.stderr).toBe(0);
    const [a, b] = [await openDump(copy), await openDump(files.raw!)];
    try {
      expect(firstDifference(a.memory, b.memory, machine.memory.ranges)).toBeUndefined();
    } finally {
      await a.close();
      await b.close();
    }
  }, 120_000);

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

/** The first guest-physical address in `ranges` where the two memories differ, if any. */
function firstDifference(a: PhysicalMemory, b: PhysicalMemory, ranges: PhysicalMemory['ranges']): number | undefined {
  const CHUNK = 16 * 2 ** 20;
  const x = Buffer.alloc(CHUNK);
  const y = Buffer.alloc(CHUNK);
  for (const r of ranges) {
    for (let off = 0; off < r.size; off += CHUNK) {
      const n = Math.min(CHUNK, r.size - off);
      a.read(r.start + off, x.subarray(0, n));
      b.read(r.start + off, y.subarray(0, n));
      if (!x.subarray(0, n).equals(y.subarray(0, n))) {
        for (let i = 0; i < n; i++) if (x[i] !== y[i]) return r.start + off + i;
      }
    }
  }
  return undefined;
}
