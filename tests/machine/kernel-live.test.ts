import { ensureKernel } from '../../src/lab/kernels.ts';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDump } from '../../src/machine/dump.ts';
import { parseInfoRegisters } from '../../src/machine/hmp-registers.ts';
import { attachQemu, type QemuMachine } from '../../src/machine/qemu.ts';
import { cr3Root, pagingMode, type VcpuState } from '../../src/machine/types.ts';
import { Warnings } from '../../src/util/warnings.ts';
import { qemuAvailable, type RunningQemu, startQemu } from './support/qemu.ts';

/**
 * A real Debian kernel booted without a root file system: within seconds both vCPUs run the
 * kernel with paging on (5-level with -cpu max), which is what vCPU state and `paging=true`
 * dumps need. The kernel is the lab's default (or $VMLENS_TEST_KERNEL).
 */
/** The lab's default Debian kernel (fetched and cached on first use), or $VMLENS_TEST_KERNEL. */
async function findKernel(): Promise<string> {
  if (process.env.VMLENS_TEST_KERNEL) return process.env.VMLENS_TEST_KERNEL;
  return (await ensureKernel()).vmlinuz;
}

/** Lowest kernel address with 5-level paging (0xffff800000000000 with 4-level). */
const KERNEL_SPACE = 0xff00000000000000n;

async function until<T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

describe.skipIf(!qemuAvailable())('a booting Linux kernel', () => {
  let q: RunningQemu;
  let m: QemuMachine;
  let cpus: VcpuState[];
  const warnings = new Warnings();
  let dir: string;

  beforeAll(async () => {
    const kernel = await findKernel();
    dir = mkdtempSync(join(tmpdir(), 'vmlens-kernel-'));
    q = await startQemu({
      memMiB: 384,
      ramFile: true,
      smp: 2,
      run: true,
      extraArgs: ['-cpu', 'max', '-kernel', kernel, '-append', 'console=ttyS0 panic=0', '-serial', 'null'],
    });
    m = await attachQemu(q.qmpPath, { warnings });
    await until('both vCPUs in the kernel', 120_000, async () => {
      const now = await m.vcpus();
      return now.every((c) => c.rip >= KERNEL_SPACE && pagingMode(c) !== 'none') ? now : undefined;
    });
    await m.pause();
    cpus = await m.vcpus();
  });
  afterAll(async () => {
    await m?.close();
    await q?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('reads long-mode vCPU state with full-width values and the kernel GS base note', async () => {
    expect(warnings.items).toEqual([]);
    expect(cpus).toHaveLength(2);
    for (const c of cpus) {
      expect(pagingMode(c)).toBe('5-level');
      expect(c.efer & 0x500n).toBe(0x500n);
      expect(c.idtBase >= KERNEL_SPACE).toBe(true);
      // The per-CPU base is in GS while in the kernel, in KERNEL_GS_BASE while in user space.
      expect((c.cpl === 0 ? c.gsBase : c.kernelGsBase) >= KERNEL_SPACE).toBe(true);
      // The page-table root is guest RAM.
      m.memory.read(cr3Root(c.cr3), new Uint8Array(4096));
    }
    expect(cpus[0]!.gsBase).not.toBe(cpus[1]!.gsBase);
    // HMP agrees (the vCPUs are paused, so both views are the same instant).
    const hmp = parseInfoRegisters(await q.monitor.hmp('info registers -a'));
    for (const [i, h] of hmp.entries()) {
      expect(h.wide).toBe(true);
      expect(cpus[i]).toMatchObject({ rip: h.regs.rip, rsp: h.regs.rsp, cr3: h.cr3, cr4: h.cr4, efer: h.efer, gsBase: h.segments.gs!.base, gdtBase: h.gdt.base, cpl: h.cpl });
    }
  });

  it('a paging=true ELF dump gives the same physical memory and vCPU state', async () => {
    const path = join(dir, 'paging.core');
    await q.monitor.execute('dump-guest-memory', { paging: true, protocol: `file:${path}` }, { timeoutMs: 300_000 });
    const d = await openDump(path);
    try {
      expect(d.core!.machine).toBe(62);
      expect(d.core!.loadSegments).toBeGreaterThan(1000);
      expect(d.core!.notes.qemuCpus.every((n) => n.kernelGsBase !== undefined)).toBe(true);
      const a = new Uint8Array(1 << 20);
      const b = new Uint8Array(1 << 20);
      let compared = 0;
      // The dump can hold more than the guest's RAM: QEMU dumps every RAM-backed region the
      // guest maps, and below 1 MiB that includes ROM shadows and the VGA window while the
      // firmware has them mapped. The guest's RAM (the machine's backend) is what both have.
      const shared = d.memory.ranges.flatMap((r) =>
        m.memory.ranges
          .map((l) => ({ start: Math.max(r.start, l.start), end: Math.min(r.start + r.size, l.start + l.size) }))
          .filter((x) => x.end > x.start),
      );
      for (const r of shared) {
        for (let at = r.start; at < r.end; at += a.length) {
          const n = Math.min(a.length, r.end - at);
          d.memory.read(at, a.subarray(0, n));
          m.memory.read(at, b.subarray(0, n));
          if (Buffer.compare(a.subarray(0, n), b.subarray(0, n)) !== 0) throw new Error(`dump differs from live RAM in 0x${at.toString(16)}`);
          compared += n;
        }
      }
      expect(compared).toBeGreaterThan(256 * 1024 * 1024);
      const fromDump = await d.vcpus();
      expect(fromDump).toEqual(cpus);
    } finally {
      await d.close();
    }
  });
});
