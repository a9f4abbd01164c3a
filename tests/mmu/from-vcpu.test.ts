import { describe, expect, it } from 'vitest';
import type { Machine, VcpuState } from '../../src/machine/types.ts';
import { addressSpaceFor, readerFor } from '../../src/mmu/from-vcpu.ts';
import { vaHi, vaLo } from '../../src/mmu/va.ts';
import { UsageError } from '../../src/util/errors.ts';
import { PageTableBuilder, SIZE_4K, SyntheticMemory } from '../support/synthetic-memory.ts';

const MiB = 1024 * 1024;

function vcpu(index: number, cr3: bigint, la57: boolean): VcpuState {
  return {
    index,
    cr0: 0x80050033n,
    cr2: 0n,
    cr3,
    cr4: 0x3606f0n | (la57 ? 1n << 12n : 0n),
    efer: 0xd01n,
    rip: 0xffffffff81000000n,
    rsp: 0n,
    gsBase: 0n,
    kernelGsBase: 0n,
    idtBase: 0n,
    gdtBase: 0n,
    cpl: 0,
    regs: {},
  };
}

/** A machine over synthetic memory with two sets of 5-level tables: vCPU 0 uses A, vCPU 1 uses B. */
function machine(live: boolean, cpus = true): { m: Machine; a: PageTableBuilder; b: PageTableBuilder } {
  const memory = new SyntheticMemory({ ranges: [{ start: 0, size: 32 * MiB }] });
  const a = new PageTableBuilder(memory, { levels: 5, tableArea: { start: 1 * MiB, size: 1 * MiB } });
  const b = new PageTableBuilder(memory, { levels: 5, tableArea: { start: 2 * MiB, size: 1 * MiB } });
  a.map(0xffffffff81000000n, 0x400000, SIZE_4K);
  b.map(0xffffffff81000000n, 0x800000, SIZE_4K);
  const list = cpus ? [vcpu(0, BigInt(a.root) | 0x5n, true), vcpu(1, BigInt(b.root), true)] : [];
  const m: Machine = {
    memory,
    live,
    name: 'synthetic',
    vcpus: () => Promise.resolve(list),
    isPaused: () => Promise.resolve(!live),
    close: () => Promise.resolve(),
  };
  return { m, a, b };
}

const TEXT = 0xffffffff81000000n;
const tr = (s: { translate(hi: number, lo: number): number }, va: bigint): number => s.translate(vaHi(va), vaLo(va));

describe('address spaces of a machine', () => {
  it('takes root and levels from the chosen vCPU, or a given CR3', async () => {
    const { m, b } = machine(true);
    const s0 = await addressSpaceFor(m);
    expect(s0.levels).toBe(5);
    expect(tr(s0, TEXT)).toBe(0x400000);
    expect(tr(await addressSpaceFor(m, { cpu: 1 }), TEXT)).toBe(0x800000);
    expect(tr(await addressSpaceFor(m, { cr3: BigInt(b.root) | 0x8000_0000_0000_0fffn }), TEXT)).toBe(0x800000);
    await expect(addressSpaceFor(m, { cpu: 7 })).rejects.toThrow(/no vCPU 7 \(the guest has 2\)/);
    await expect(addressSpaceFor(m, { cr3: -1n })).rejects.toThrow(UsageError);
  });

  it('needs CR3 and levels where there is no vCPU state', async () => {
    const { m, a } = machine(false, false);
    await expect(addressSpaceFor(m)).rejects.toThrow(/no vCPU state: give both a CR3 value and the paging levels/);
    const s = await addressSpaceFor(m, { cr3: BigInt(a.root), levels: 5 });
    expect(tr(s, TEXT)).toBe(0x400000);
  });

  it('shares one reader per memory: frozen for dumps, running for live guests', () => {
    const live = machine(true).m;
    const dump = machine(false).m;
    expect(readerFor(live)).toBe(readerFor(live));
    expect(readerFor(live).frozen).toBe(false);
    expect(readerFor(dump).frozen).toBe(true);
  });
});
