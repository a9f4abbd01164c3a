import { mkdtempSync, rmSync, statSync, truncateSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDump } from '../../src/machine/dump.ts';
import { attachQemu, type QemuMachine } from '../../src/machine/qemu.ts';
import { writeLime } from '../../src/source/lime.ts';
import type { PhysicalMemory } from '../../src/source/types.ts';
import { PhysicalAccessError, TargetError } from '../../src/util/errors.ts';
import { patternBytes, qemuAvailable, type RunningQemu, startQemu } from '../machine/support/qemu.ts';

const MiB = 1024 * 1024;

/** Every byte of `live`'s RAM reads the same from `dump`. */
function expectSameRam(live: PhysicalMemory, dump: PhysicalMemory): void {
  const a = new Uint8Array(16 * MiB);
  const b = new Uint8Array(16 * MiB);
  for (const r of live.ranges) {
    for (let at = r.start; at < r.start + r.size; at += a.length) {
      const n = Math.min(a.length, r.start + r.size - at);
      live.read(at, a.subarray(0, n));
      dump.read(at, b.subarray(0, n));
      if (Buffer.compare(a.subarray(0, n), b.subarray(0, n)) !== 0) throw new Error(`${dump.kind} differs from live RAM in 0x${at.toString(16)} (+${n})`);
    }
  }
}

const BLOB = patternBytes(1 * MiB, 31);

describe.skipIf(!qemuAvailable())('dumps of a real QEMU read like the live guest', () => {
  let q: RunningQemu;
  let live: QemuMachine;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vmlens-dumps-'));
    q = await startQemu({ memMiB: 128, ramFile: true, smp: 2, blobs: [{ gpa: 0x1000000, bytes: BLOB }] });
    live = await attachQemu(q.qmpPath, { source: 'file' });
    // Let SeaBIOS run a moment so RAM and vCPU state hold more than the loader's blob.
    await live.resume();
    await new Promise((r) => setTimeout(r, 700));
    await live.pause();
  });
  afterAll(async () => {
    await live?.close();
    await q?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('ELF core, paging=false (QMP dump-guest-memory)', async () => {
    const path = join(dir, 'guest.core');
    await q.monitor.execute('dump-guest-memory', { paging: false, protocol: `file:${path}` }, { timeoutMs: 120_000 });
    const d = await openDump(path);
    try {
      expect(d.format).toBe('elf-core');
      expect(d.memory.kind).toBe('elf-core');
      expectSameRam(live.memory, d.memory);
      // The dump also holds QEMU's ROMs, the BIOS at the top of the first MiB among them.
      const reset = new Uint8Array(16);
      d.memory.read(0xffff0, reset);
      expect(Buffer.compare(reset, await q.xp(0xffff0, 16))).toBe(0);
      const cpus = await d.vcpus();
      const now = await live.vcpus();
      expect(cpus).toHaveLength(2);
      for (let i = 0; i < 2; i++) {
        expect(cpus[i]).toMatchObject({ index: i, rip: now[i]!.rip, cr0: now[i]!.cr0, cr3: now[i]!.cr3, gdtBase: now[i]!.gdtBase, cpl: now[i]!.cpl });
      }
      expect(d.core!.notes.qemuCpus[0]!.size).toBeGreaterThanOrEqual(440);
    } finally {
      await d.close();
    }
  });

  it('ELF core truncated in its data: one clear error', async () => {
    const path = join(dir, 'cut.core');
    copyFileSync(join(dir, 'guest.core'), path);
    truncateSync(path, Math.floor(statSync(path).size / 2));
    const e = await openDump(path).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TargetError);
    expect((e as Error).message).toMatch(/truncated/);
  });

  it('raw image (HMP pmemsave from physical 0)', async () => {
    const path = join(dir, 'guest.raw');
    await q.monitor.execute('pmemsave', { val: 0, size: 128 * MiB, filename: path });
    const d = await openDump(path);
    try {
      expect(d.format).toBe('raw');
      expect(await d.vcpus()).toEqual([]);
      expectSameRam(live.memory, d.memory);
    } finally {
      await d.close();
    }
  });

  it('LiME image written from the live source', async () => {
    const path = join(dir, 'guest.lime');
    await writeLime(path, live.memory);
    const d = await openDump(path);
    try {
      expect(d.format).toBe('lime');
      expect(d.memory.ranges).toEqual(live.memory.ranges);
      expectSameRam(live.memory, d.memory);
      expect(() => d.memory.read(0xc0000, new Uint8Array(1))).toThrow(PhysicalAccessError);
    } finally {
      await d.close();
    }
  });
});

describe.skipIf(!qemuAvailable())('a filtered ELF dump above 4 GiB', () => {
  let q: RunningQemu;
  let dir: string;
  const high = patternBytes(0x3000, 32);
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vmlens-dumps-'));
    q = await startQemu({ memMiB: 4608, blobs: [{ gpa: 0x1000ff000, bytes: high }] });
  });
  afterAll(async () => {
    await q?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('places segments at their p_paddr above the PCI hole', async () => {
    const path = join(dir, 'high.core');
    await q.monitor.execute('dump-guest-memory', { paging: false, protocol: `file:${path}`, begin: 0x100000000, length: 0x200000 });
    const d = await openDump(path);
    try {
      expect(d.memory.ranges).toEqual([{ start: 0x100000000, size: 0x200000 }]);
      const got = new Uint8Array(high.length);
      d.memory.read(0x1000ff000, got);
      expect(Buffer.compare(got, high)).toBe(0);
      expect(() => d.memory.read(0xfffff000, new Uint8Array(8))).toThrow(PhysicalAccessError);
    } finally {
      await d.close();
    }
  });
});
