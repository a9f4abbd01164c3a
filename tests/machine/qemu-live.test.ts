import { closeSync, openSync, readSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachQemu, type QemuMachine } from '../../src/machine/qemu.ts';
import { pagingMode } from '../../src/machine/types.ts';
import type { PhysicalMemory } from '../../src/source/types.ts';
import { PhysicalAccessError, TargetError } from '../../src/util/errors.ts';
import { Warnings } from '../../src/util/warnings.ts';
import { patternBytes, qemuAvailable, type RunningQemu, startQemu } from './support/qemu.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

function read(m: PhysicalMemory, gpa: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  m.read(gpa, b);
  return b;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/** Compare all RAM of two sources in 16 MiB pieces. */
function compareAll(a: PhysicalMemory, b: PhysicalMemory): void {
  expect(a.ranges).toEqual(b.ranges);
  const x = new Uint8Array(16 * MiB);
  const y = new Uint8Array(16 * MiB);
  for (const r of a.ranges) {
    for (let at = r.start; at < r.start + r.size; at += x.length) {
      const n = Math.min(x.length, r.start + r.size - at);
      a.read(at, x.subarray(0, n));
      b.read(at, y.subarray(0, n));
      if (!same(x.subarray(0, n), y.subarray(0, n))) throw new Error(`sources differ in 0x${at.toString(16)} (+${n})`);
    }
  }
}

const LOW_BLOB = patternBytes(64 * 1024, 21); // at 0x200000
const EDGE_BLOB = patternBytes(4096, 22); // at 0x9f000, the last page below the VGA window

describe.skipIf(!qemuAvailable())('live QEMU, 256 MiB in a shared file, with VGA', () => {
  let q: RunningQemu;
  let m: QemuMachine;
  const warnings = new Warnings();
  beforeAll(async () => {
    q = await startQemu({
      memMiB: 256,
      ramFile: true,
      smp: 2,
      extraArgs: ['-vga', 'std'],
      blobs: [
        { gpa: 0x200000, bytes: LOW_BLOB },
        { gpa: 0x9f000, bytes: EDGE_BLOB },
      ],
    });
    m = await attachQemu(q.qmpPath, { source: 'file', warnings });
  });
  afterAll(async () => {
    await m?.close();
    await q?.stop();
  });

  it('maps the RAM file along the guest-physical map, the VGA window and ROMs left out', () => {
    expect(m.memory.kind).toBe('shared-file');
    expect(m.memory.writable).toBe(true);
    expect(m.backend).toMatchObject({ id: 'ram', type: 'memory-backend-file', memPath: q.ramPath, share: true });
    expect(m.memory.ranges).toEqual([
      { start: 0, size: 0xa0000 },
      { start: 0x100000, size: 256 * MiB - 0x100000 },
    ]);
    expect(m.memory.windows?.length).toBeGreaterThan(0);
    expect(m.process?.pid).toBe(q.pid);
  });

  it('reads what QEMU put in guest RAM, as QEMU reads it', async () => {
    expect(same(read(m.memory, 0x200000, LOW_BLOB.length), LOW_BLOB)).toBe(true);
    expect(same(read(m.memory, 0x9f000, 4096), EDGE_BLOB)).toBe(true);
    expect(same(read(m.memory, 0x20fff0, 64), await q.xp(0x20fff0, 64))).toBe(true);
    const w = m.memory.windows!.find((x) => x.start <= 0x200000 && 0x200000 < x.start + x.size)!;
    expect(w.u32[(0x200000 - w.start) / 4]).toBe(Buffer.from(LOW_BLOB).readUInt32LE(0));
  });

  it('writes reach the guest (seen by xp), through write() and through a window', async () => {
    const marker = patternBytes(40, 23);
    m.memory.write(0x300010, marker);
    expect(same(await q.xp(0x300010, 40), marker)).toBe(true);
    const w = m.memory.windows!.find((x) => x.start <= 0x400000 && 0x400000 < x.start + x.size)!;
    w.u32[(0x400000 - w.start) / 4] = 0xfeedf00d;
    expect([...(await q.xp(0x400000, 4))]).toEqual([0x0d, 0xf0, 0xed, 0xfe]);
  });

  it('refuses holes', () => {
    expect(() => read(m.memory, 0xa0000, 8)).toThrow(PhysicalAccessError);
    expect(() => read(m.memory, 0x9fff8, 16)).toThrow(PhysicalAccessError);
    expect(() => read(m.memory, 256 * MiB, 8)).toThrow(PhysicalAccessError);
    expect(() => m.memory.write(0xc0000, new Uint8Array(1))).toThrow(PhysicalAccessError);
  });

  it('reads the same bytes through the QEMU process (/proc/PID/mem) as through the file', async () => {
    const p = await attachQemu(q.qmpPath2, { source: 'proc' });
    try {
      expect(p.memory.kind).toBe('proc-mem');
      compareAll(m.memory, p.memory);
    } finally {
      await p.close();
    }
  });

  it('reads the same bytes through a gdbstub it starts, and stops the stub on close', async () => {
    const g = await attachQemu(q.qmpPath2, { source: 'gdb' });
    try {
      expect(g.memory.kind).toBe('gdb');
      expect(g.memory.ranges).toEqual(m.memory.ranges);
      expect(same(read(g.memory, 0x200000, LOW_BLOB.length), LOW_BLOB)).toBe(true);
      expect(same(read(g.memory, 0x9f000, 4096), read(m.memory, 0x9f000, 4096))).toBe(true);
      expect(() => read(g.memory, 0xa0000, 8)).toThrow(PhysicalAccessError);
    } finally {
      await g.close();
    }
    expect(await q.monitor.hmp('info status')).toMatch(/paused|prelaunch/);
  });

  it('gives vCPU state at the reset vector for both vCPUs', async () => {
    const cpus = await m.vcpus();
    expect(cpus).toHaveLength(2);
    for (const c of cpus) {
      expect(c).toMatchObject({ rip: 0xfff0n, cr0: 0x60000010n, cr3: 0n, efer: 0n, cpl: 0 });
      expect(pagingMode(c)).toBe('none');
    }
    expect(cpus.map((c) => c.index)).toEqual([0, 1]);
    // QEMU's notes were read (they carry the kernel GS base): nothing to warn about.
    expect(warnings.items).toEqual([]);
  });

  it('pauses and resumes', async () => {
    expect(await m.isPaused()).toBe(true);
    await m.resume();
    expect(await m.isPaused()).toBe(false);
    await m.pause();
    expect(await m.isPaused()).toBe(true);
    // SeaBIOS ran: it wrote the BIOS data area; we read what QEMU reads.
    expect(same(read(m.memory, 0x400, 0x100), await q.xp(0x400, 0x100))).toBe(true);
  });
});

describe.skipIf(!qemuAvailable())('live QEMU, 256 MiB anonymous RAM', () => {
  let q: RunningQemu;
  let m: QemuMachine;
  beforeAll(async () => {
    q = await startQemu({ memMiB: 256, blobs: [{ gpa: 0x200000, bytes: LOW_BLOB }] });
    m = await attachQemu(q.qmpPath);
  });
  afterAll(async () => {
    await m?.close();
    await q?.stop();
  });

  it('falls back to /proc/PID/mem and reads what QEMU reads', async () => {
    expect(m.memory.kind).toBe('proc-mem');
    expect(m.backend.type).toBe('memory-backend-ram');
    expect(m.memory.ranges).toEqual([
      { start: 0, size: 0xc0000 }, // no VGA: RAM runs up to the option ROM area
      { start: 0x100000, size: 256 * MiB - 0x100000 },
    ]);
    expect(same(read(m.memory, 0x200000, LOW_BLOB.length), LOW_BLOB)).toBe(true);
    expect(same(read(m.memory, 0x20ff00, 0x100), await q.xp(0x20ff00, 0x100))).toBe(true);
  });

  it('batches reads (readMany) with the same result as single reads', () => {
    const reqs = [];
    for (let i = 0; i < 3000; i++) reqs.push({ gpa: 0x200000 + ((i * 7919) % 0x10000) - ((i * 7919) % 8), dst: new Uint8Array(8) });
    m.memory.readMany!(reqs);
    for (const r of reqs) expect(same(r.dst, read(m.memory, r.gpa, 8))).toBe(true);
    expect(same(reqs[0]!.dst, LOW_BLOB.subarray(0, 8))).toBe(true);
  });

  it('writes reach the guest', async () => {
    const marker = patternBytes(24, 24);
    m.memory.write(0x500000, marker);
    expect(same(await q.xp(0x500000, 24), marker)).toBe(true);
  });

  it('the file source is refused with the reason', async () => {
    const e = await attachQemu(q.qmpPath2, { source: 'file' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TargetError);
    expect((e as Error).message).toMatch(/memory-backend-ram, not a file/);
  });

  it('a dead QEMU gives one clear error', async () => {
    q.child.kill('SIGKILL');
    await new Promise((r) => q.child.once('exit', r));
    expect(() => read(m.memory, 0x200000, 8)).toThrow(/QEMU process \d+ is gone/);
    await expect(m.vcpus()).rejects.toThrow(TargetError);
  });
});

const HIGH_BLOB = patternBytes(8192, 25);

describe.skipIf(!qemuAvailable())('live QEMU with 4.5 GiB: RAM on both sides of the PCI hole', () => {
  let q: RunningQemu;
  let file: QemuMachine;
  let proc: QemuMachine;
  beforeAll(async () => {
    q = await startQemu({
      memMiB: 4608,
      ramFile: true,
      blobs: [
        { gpa: 0x140000000, bytes: HIGH_BLOB },
        { gpa: 0xbffff000, bytes: EDGE_BLOB },
      ],
    });
    file = await attachQemu(q.qmpPath, { source: 'file' });
    proc = await attachQemu(q.qmpPath2, { source: 'proc' });
  });
  afterAll(async () => {
    await file?.close();
    await proc?.close();
    await q?.stop();
  });

  it('knows the layout: 3 GiB low, the rest above 4 GiB, contiguous in the file', () => {
    for (const m of [file, proc]) {
      expect(m.memory.ranges).toEqual([
        { start: 0, size: 0xc0000 },
        { start: 0x100000, size: 3 * GiB - 0x100000 },
        { start: 4 * GiB, size: 1536 * MiB },
      ]);
    }
    expect(file.layout.at(-1)).toEqual({ gpa: 4 * GiB, size: 1536 * MiB, offset: 3 * GiB });
    // No window crosses a 1 GiB boundary.
    for (const w of file.memory.windows!) expect(Math.floor(w.start / GiB)).toBe(Math.floor((w.start + w.size - 1) / GiB));
  });

  it('reads below and above the hole, through both sources', async () => {
    for (const m of [file, proc]) {
      expect(same(read(m.memory, 0x140000000, HIGH_BLOB.length), HIGH_BLOB)).toBe(true);
      expect(same(read(m.memory, 0xbffff000, 4096), EDGE_BLOB)).toBe(true);
      expect(() => read(m.memory, 0xbffffff8, 16)).toThrow(PhysicalAccessError);
      expect(() => read(m.memory, 0xc0000000, 8)).toThrow(PhysicalAccessError);
    }
    expect(same(read(file.memory, 0x13ffffff0, 32), await q.xp(0x13ffffff0, 32))).toBe(true);
  });

  it('a marker written above 4 GiB lands at that guest-physical address (and at file offset 3 GiB + …)', async () => {
    const marker = patternBytes(32, 26);
    file.memory.write(0x100001000, marker);
    expect(same(await q.xp(0x100001000, 32), marker)).toBe(true);
    expect(same(read(proc.memory, 0x100001000, 32), marker)).toBe(true);
    const fd = openSync(q.ramPath!, 'r');
    const raw = Buffer.alloc(32);
    readSync(fd, raw, 0, 32, 3 * GiB + 0x1000);
    closeSync(fd);
    expect(same(raw, marker)).toBe(true);
    const back = patternBytes(32, 27);
    proc.memory.write(0x15ffffff0 - 16, back);
    expect(same(await q.xp(0x15ffffff0 - 16, 32), back)).toBe(true);
    expect(same(read(file.memory, 0x15ffffff0 - 16, 32), back)).toBe(true);
    expect(() => file.memory.write(0x160000000, marker)).toThrow(PhysicalAccessError);
  });
});

describe.skipIf(!qemuAvailable())('live QEMU with RAM in a shared memfd', () => {
  let q: RunningQemu;
  let m: QemuMachine;
  beforeAll(async () => {
    q = await startQemu({ memMiB: 128, memfd: true, blobs: [{ gpa: 0x200000, bytes: LOW_BLOB }] });
    m = await attachQemu(q.qmpPath);
  });
  afterAll(async () => {
    await m?.close();
    await q?.stop();
  });

  it("maps QEMU's memfd through /proc/PID/map_files, zero-copy and writable", async () => {
    expect(m.backend.type).toBe('memory-backend-memfd');
    expect(m.memory.kind).toBe('shared-file');
    expect(m.memory.description).toContain(`/proc/${q.pid}/map_files/`);
    expect(m.memory.windows?.length).toBeGreaterThan(0);
    expect(same(read(m.memory, 0x200000, LOW_BLOB.length), LOW_BLOB)).toBe(true);
    const marker = patternBytes(16, 28);
    m.memory.write(0x7000000, marker);
    expect(same(await q.xp(0x7000000, 16), marker)).toBe(true);
  });
});
