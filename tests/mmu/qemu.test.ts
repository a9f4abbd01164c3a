/**
 * Translation against QEMU's own page walker on real lab guests: a Debian kernel under 5-level
 * paging (LA57, `-cpu max`) and under 4-level paging. For addresses sampled from our walk() of
 * the vCPU's page tables — inside mapped ranges and just past their ends — translate() must
 * give exactly what the monitor's `gva2gpa` gives, "Unmapped" included.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachQemu, type QemuMachine } from '../../src/machine/qemu.ts';
import type { MappedRange } from '../../src/mmu/address-space.ts';
import { AddressSpace } from '../../src/mmu/address-space.ts';
import { PhysReader } from '../../src/mmu/phys-reader.ts';
import { vaHi, vaLo } from '../../src/mmu/va.ts';
import { labGuest, type LabConfig, type LabGuest } from '../support/lab.ts';

const configs: LabConfig[] = ['default', '4level'];

/** QEMU's answer for one virtual address: the physical address, or -1 for "Unmapped". */
async function qemuTranslate(machine: QemuMachine, va: bigint): Promise<number> {
  const out = (await machine.qmp.hmp(`gva2gpa 0x${va.toString(16)}`)).trim();
  if (out === 'Unmapped') return -1;
  const m = /^gpa: (0x[0-9a-f]+)$/.exec(out);
  if (!m) throw new Error(`unexpected gva2gpa output: ${out}`);
  return Number(m[1]);
}

/** __START_KERNEL_map: the kernel image lives in its first GiB (KASLR picks where). */
const inKernelImage = (r: MappedRange): boolean => r.va >= 0xffffffff80000000n && r.va < 0xffffffffc0000000n;

/** Random mapped addresses compared per guest, beside the edges of sampled ranges. */
const RANDOM_SAMPLES = 3000;

/** A deterministic spread of samples: first, last and a middle byte of a range. */
function samplesOf(r: MappedRange, salt: number): bigint[] {
  const mid = BigInt(Math.floor(((salt * 2654435761) % 2 ** 32) / 2 ** 32 * r.size) & ~7);
  return [r.va, r.va + mid, r.va + BigInt(r.size - 1)];
}

describe.each(configs)('translation on the %s lab guest, compared with QEMU gva2gpa', (config) => {
  let guest: LabGuest;
  let machine: QemuMachine;
  let space: AddressSpace;
  let ranges: MappedRange[];
  const compared: { va: bigint; ours: number; qemu: number }[] = [];

  beforeAll(async () => {
    guest = await labGuest(config);
    machine = await attachQemu(guest.info.qmpSocket, { source: 'file' });
    // Paused for the comparison: CR3 and the tables must not change between our walk and QEMU's.
    await machine.pause();
    try {
      const [cpu] = await machine.vcpus();
      space = AddressSpace.forVcpu(new PhysReader(machine.memory, { frozen: true }), cpu!);
      ranges = [...space.walk()];
      const vas: bigint[] = [];
      const step = Math.max(1, Math.floor(ranges.length / 150));
      for (let i = 0; i < ranges.length; i++) {
        if (i % step !== 0 && !inKernelImage(ranges[i]!)) continue;
        const r = ranges[i]!;
        vas.push(...samplesOf(r, i));
        // Just past the end: unmapped unless the next range starts there.
        const next = ranges[i + 1];
        const after = r.va + BigInt(r.size);
        if (after < 1n << 64n && (!next || next.va !== after)) vas.push(after);
      }
      vas.push(0n, 0xffffffff81000000n, 0xffffffffff600000n, 0xfffffe0000000000n, 0x0000800000000000n, 0xff00000000000000n);
      // And thousands of random mapped addresses (a fixed-seed generator: a failure reproduces).
      let seed = 0x9e3779b9;
      const rand = (): number => {
        seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
        return seed / 2 ** 32;
      };
      for (let k = 0; k < RANDOM_SAMPLES; k++) {
        const r = ranges[Math.floor(rand() * ranges.length)]!;
        vas.push(r.va + BigInt(Math.floor(rand() * r.size)));
      }
      for (const va of vas) {
        compared.push({ va, ours: space.translate(vaHi(va), vaLo(va)), qemu: await qemuTranslate(machine, va) });
      }
    } finally {
      await machine.resume();
    }
  });
  afterAll(async () => {
    await machine?.close();
  });

  it('runs in the paging mode the lab asked for', () => {
    expect(space.levels).toBe(guest.info.paging);
  });

  it('finds the kernel mappings: text, the direct map, with large pages', () => {
    const kernelHalf = ranges.filter((r) => r.va >= 0xff00000000000000n);
    expect(kernelHalf.length).toBeGreaterThan(10);
    // The kernel image, wherever KASLR put it in __START_KERNEL_map … +1 GiB.
    expect(ranges.filter(inKernelImage).length, 'mappings of the kernel image').toBeGreaterThan(2);
    expect(ranges.some((r) => r.pageSize === 2 ** 21)).toBe(true);
    // The direct map maps physical 0 at page_offset_base: 0xff11… (LA57) or 0xffff888… (4-level),
    // moved up by KASLR (RANDOMIZE_MEMORY) by a random amount.
    const lowest = config === 'default' ? 0xff11000000000000n : 0xffff888000000000n;
    expect(kernelHalf.some((r) => r.pa === 0 && r.va >= lowest && r.va < 0xffffffff80000000n)).toBe(true);
  });

  it('agrees with QEMU on every sampled address, mapped and unmapped', () => {
    expect(compared.length).toBeGreaterThan(RANDOM_SAMPLES);
    const mapped = compared.filter((c) => c.qemu >= 0).length;
    expect(mapped).toBeGreaterThan(50);
    expect(compared.length - mapped).toBeGreaterThan(10);
    expect(compared.filter((c) => c.va >= 0xffffffff80000000n && c.va < 0xffffffffc0000000n && c.qemu >= 0).length).toBeGreaterThan(5);
    const wrong = compared.filter((c) => c.ours !== c.qemu).slice(0, 10);
    expect(wrong.map((c) => `0x${c.va.toString(16)}: ours ${c.ours.toString(16)}, qemu ${c.qemu.toString(16)}`)).toEqual([]);
  });
});
