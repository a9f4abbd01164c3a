import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openDump } from '../../src/machine/dump.ts';
import { openElfCore } from '../../src/source/elf-core.ts';
import { PhysicalAccessError, ReadOnlyError, TargetError } from '../../src/util/errors.ts';
import { Warnings } from '../../src/util/warnings.ts';
import { patternBytes } from '../machine/support/qemu.ts';
import { buildCore, qemuCpuNote } from './support/elf-builder.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmlens-elf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function file(bytes: Uint8Array | string): string {
  const p = join(dir, `f${n++}`);
  writeFileSync(p, bytes);
  return p;
}

describe('ELF core parsing', () => {
  it('reads PT_LOAD by p_paddr, with memsz beyond filesz a hole, mapped and with pread alike', async () => {
    const a = patternBytes(0x2000, 1);
    const b = patternBytes(0x1000, 2);
    const path = file(buildCore({ loads: [{ paddr: 0x10000, data: a, memsz: 0x3000 }, { paddr: 0x100000000, data: b }], ehsize: 8 }));
    for (const map of [true, false]) {
      const { memory, info } = await openElfCore(path, { map });
      expect(info.loadSegments).toBe(2);
      expect(memory.ranges).toEqual([
        { start: 0x10000, size: 0x2000 },
        { start: 0x100000000, size: 0x1000 },
      ]);
      const got = new Uint8Array(0x2000);
      memory.read(0x10000, got);
      expect(Buffer.from(got).equals(Buffer.from(a))).toBe(true);
      const hi = new Uint8Array(16);
      memory.read(0x100000ff0, hi);
      expect([...hi]).toEqual([...b.subarray(0xff0)]);
      expect(() => memory.read(0x12000, new Uint8Array(1))).toThrow(PhysicalAccessError);
      expect(() => memory.read(0x11ff8, new Uint8Array(16))).toThrow(PhysicalAccessError);
      expect(() => memory.write(0x10000, new Uint8Array(1))).toThrow(ReadOnlyError);
      expect(memory.windows !== undefined).toBe(map);
      memory.close();
    }
  });

  it('takes the segment count from section 0 when e_phnum is PN_XNUM', async () => {
    // 70,000 one-page segments at every other physical page, as a paging=true dump has.
    const loads = [];
    const page = patternBytes(4096, 3);
    for (let i = 0; i < 70_000; i++) loads.push(i === 0 ? { paddr: 0, data: page } : { paddr: i * 0x2000, sameDataAs: 0 });
    const path = file(buildCore({ loads }));
    const { memory, info } = await openElfCore(path);
    expect(info.loadSegments).toBe(70_000);
    expect(memory.ranges.length).toBe(70_000);
    const got = new Uint8Array(8);
    memory.read(69_999 * 0x2000 + 8, got);
    expect([...got]).toEqual([...page.subarray(8, 16)]);
    expect(() => memory.read(0x1000, got)).toThrow(PhysicalAccessError);
    memory.close();
  });

  it('folds aliases of one physical page (paging=true) and warns on contradictions', async () => {
    const a = patternBytes(0x2000, 4);
    const b = patternBytes(0x1000, 5);
    const path = file(
      buildCore({
        loads: [
          { paddr: 0x1000, data: a, vaddr: 0xffff888000001000n },
          { paddr: 0x1000, sameDataAs: 0, vaddr: 0xffffffff81000000n },
          { paddr: 0x2000, data: b, vaddr: 0xffffffff82000000n },
        ],
      }),
    );
    const w = new Warnings();
    const { memory } = await openElfCore(path, { warnings: w });
    expect(memory.ranges).toEqual([{ start: 0x1000, size: 0x2000 }]);
    const got = new Uint8Array(0x2000);
    memory.read(0x1000, got);
    expect(Buffer.from(got).equals(Buffer.from(a))).toBe(true);
    expect(w.items.length).toBe(1);
    memory.close();
  });

  it('returns QEMU notes, NT_PRSTATUS and VMCOREINFO; vCPUs come from QEMU notes', async () => {
    const prstatus = Buffer.alloc(336);
    prstatus.writeUInt32LE(1, 32);
    prstatus.writeBigUInt64LE(0xffffffff81000010n, 112 + 16 * 8); // rip
    const cr = [0x80050033n, 0n, 0x7f0000001000n, 0x10a3e2000n, 0x350ef0n];
    const notes = [
      { name: 'CORE', type: 1, desc: prstatus },
      qemuCpuNote({ rip: 0xffffffff81000010n, cs: 0x10, gsBase: 0xffff88803ec00000n, cr, kernelGsBase: 0x7f00aa000000n, idtBase: 0xfffffe0000000000n }),
      qemuCpuNote({ rip: 0x401000n, cs: 0x33, gsBase: 0n, cr }),
      { name: 'VMCOREINFO', type: 0, desc: Buffer.from('OSRELEASE=6.1.0-56-amd64\nPAGESIZE=4096\n') },
    ];
    const path = file(buildCore({ loads: [{ paddr: 0, data: patternBytes(4096, 6) }], notes }));
    const m = await openDump(path);
    expect(m.format).toBe('elf-core');
    expect(await m.vmcoreinfo()).toContain('OSRELEASE=6.1.0-56-amd64');
    expect(m.core!.notes.prstatus[0]!.regs.rip).toBe(0xffffffff81000010n);
    const cpus = await m.vcpus();
    expect(cpus).toHaveLength(2);
    expect(cpus[0]).toMatchObject({ index: 0, rip: 0xffffffff81000010n, cr3: 0x10a3e2000n, cpl: 0, gsBase: 0xffff88803ec00000n, kernelGsBase: 0x7f00aa000000n, idtBase: 0xfffffe0000000000n });
    // EFER is reconstructed for a long-mode dump with paging on.
    expect(cpus[0]!.efer & 0x500n).toBe(0x500n);
    expect(cpus[1]).toMatchObject({ index: 1, cpl: 3, kernelGsBase: 0n });
    expect(await m.isPaused()).toBe(true);
    await m.close();
  });
});

describe('bad dumps give one clear error', () => {
  it('truncated data', async () => {
    const whole = buildCore({ loads: [{ paddr: 0, data: patternBytes(0x4000, 7) }] });
    const path = file(whole.subarray(0, whole.length - 100));
    await expect(openDump(path)).rejects.toThrow(/truncated/);
    await expect(openDump(path)).rejects.toBeInstanceOf(TargetError);
  });
  it('truncated program headers', async () => {
    const whole = buildCore({ loads: [{ paddr: 0, data: patternBytes(0x100, 7) }] });
    await expect(openDump(file(whole.subarray(0, 100)))).rejects.toThrow(/program headers/);
  });
  it('an ELF file that is not a core', async () => {
    const exe = buildCore({ loads: [{ paddr: 0, data: patternBytes(0x100, 7) }] });
    exe.writeUInt16LE(2, 16);
    await expect(openDump(file(exe))).rejects.toThrow(/not a core dump/);
  });
  it('a text file', async () => {
    await expect(openDump(file('hello, I am not a memory dump\n'))).rejects.toThrow(/not a memory dump/);
  });
  it('an empty file, and no file', async () => {
    await expect(openDump(file(''))).rejects.toThrow(/empty/);
    await expect(openDump(join(dir, 'missing'))).rejects.toThrow(/no such file/);
  });
  it('PN_XNUM without a section header', async () => {
    const core = buildCore({ loads: [{ paddr: 0, data: patternBytes(0x100, 7) }] });
    core.writeUInt16LE(0xffff, 56);
    await expect(openDump(file(core))).rejects.toThrow(/PN_XNUM/);
  });
});
