/**
 * Extra inputs for kernels that lack what vmlens normally reads from memory: `--btf FILE` (a raw
 * BTF blob, or a vmlinux carrying .BTF) and `--system-map FILE`, on the default lab guest, must
 * give the same answers as the guest's own kallsyms and BTF; and a kernel without BTF is refused
 * with an error that says what is missing and how to supply it.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listModules } from '../../src/analyses/lsmod.ts';
import { listTasks } from '../../src/analyses/ps.ts';
import { uname } from '../../src/analyses/uname.ts';
import { extractBtfFromElf } from '../../src/kernel/btf/index.ts';
import type { Kernel, SymbolTable } from '../../src/kernel/kernel.ts';
import { loadBtf, openKernel } from '../../src/kernel/open.ts';
import { attachQemu, type QemuMachine } from '../../src/machine/qemu.ts';
import { GuestDataError, UsageError } from '../../src/util/errors.ts';
import { readFileSync } from 'node:fs';
import { labVmlinux } from './btf/fixtures.ts';
import { labGuest, type LabGuest } from '../support/lab.ts';

const vmlinux = labVmlinux();

/** What a kernel handle answers, for comparing two ways of opening one guest. */
function view(k: Kernel): string[] {
  return [
    uname(k).release,
    ...listTasks(k, { threads: true }).map((t) => `${t.pid} ${t.ppid} ${t.name}`),
    ...listModules(k).map((m) => `${m.name} ${m.size} ${m.base}`),
  ];
}

describe('extra inputs on the default lab guest', () => {
  let guest: LabGuest;
  let machine: QemuMachine;
  let kernel: Kernel;
  let dir: string;
  let kallsyms: string;

  beforeAll(async () => {
    guest = await labGuest('default');
    // The guest's own view first: its console answers only while it runs.
    kallsyms = await guest.console.run('cat /proc/kallsyms');
    machine = await attachQemu(guest.info.qmpSocket);
    await machine.pause();
    kernel = await openKernel(machine, { frozen: true });
    dir = mkdtempSync(join(tmpdir(), 'vmlens-inputs-'));
  }, 300_000);
  afterAll(async () => {
    await machine?.resume();
    await machine?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it.skipIf(!vmlinux)('--btf with the vmlinux (its .BTF section): the same types as the guest carries', async () => {
    const k = await openKernel(machine, { frozen: true, btfFile: vmlinux! });
    expect(k.btf.typeCount).toBe(kernel.btf.typeCount);
    for (const [s, m] of [['task_struct', 'pid'], ['task_struct', 'comm'], ['module', 'list'], ['printk_ringbuffer', 'desc_ring']] as const) {
      expect(k.offsetOf(s, m)).toBe(kernel.offsetOf(s, m));
    }
    expect(view(k)).toEqual(view(kernel));
  });

  it.skipIf(!vmlinux)('--btf with a raw BTF blob: byte for byte the BTF in guest memory', async () => {
    const blob = extractBtfFromElf(readFileSync(vmlinux!));
    const start = kernel.symbol('__start_BTF');
    const inGuest = kernel.space.readBytes(start, Number(kernel.symbol('__stop_BTF') - start));
    expect(Buffer.compare(Buffer.from(blob), Buffer.from(inGuest))).toBe(0);
    const file = join(dir, 'vmlinux.btf');
    writeFileSync(file, blob);
    const k = await openKernel(machine, { frozen: true, btfFile: file });
    expect(k.btf.typeCount).toBe(kernel.btf.typeCount);
    expect(view(k)).toEqual(view(kernel));
  });

  it('--btf with a file that is not BTF, or missing: one clear line naming the file', async () => {
    const junk = join(dir, 'junk.bin');
    writeFileSync(junk, Buffer.from('this is not BTF at all'));
    await expect(openKernel(machine, { frozen: true, btfFile: junk })).rejects.toThrow(UsageError);
    await expect(openKernel(machine, { frozen: true, btfFile: junk })).rejects.toThrow(`--btf ${junk}: neither a BTF blob`);
    await expect(openKernel(machine, { frozen: true, btfFile: join(dir, 'absent') })).rejects.toThrow(/cannot read .*absent: ENOENT/);
  });

  it("--system-map built from the guest's /proc/kallsyms (at link-time addresses): same symbols and answers", async () => {
    const out = kallsyms;
    const slide = kernel.layout.kaslrOffset;
    const lines: string[] = [];
    const truth = new Map<string, bigint>();
    for (const l of out.split('\n')) {
      const p = l.trim().split(/\s+/);
      if (p.length !== 3) continue;
      const runtime = BigInt(`0x${p[0]}`);
      if (!truth.has(p[2]!)) truth.set(p[2]!, runtime);
      // A System.map is written before KASLR moves the image; per-CPU offsets do not move.
      const link = runtime >= 0xffff_ffff_8000_0000n ? runtime - slide : runtime;
      lines.push(`${link.toString(16).padStart(16, '0')} ${p[1]} ${p[2]}`);
    }
    expect(lines.length).toBeGreaterThan(50_000);
    const file = join(dir, 'System.map');
    writeFileSync(file, `${lines.join('\n')}\n`);
    const k = await openKernel(machine, { frozen: true, systemMapFile: file });
    const wrong: string[] = [];
    for (const [name, address] of truth) if (k.symbols.lookup(name) !== address && wrong.length < 10) wrong.push(name);
    expect(wrong).toEqual([]);
    expect(k.layout.textBase).toBe(kernel.layout.textBase);
    expect(view(k)).toEqual(view(kernel));
    // Module symbols come from guest memory whatever the core symbols came from.
    const tun = kernel.symbols.lookup('tun_chr_open');
    expect(tun).toBeDefined();
    expect(k.symbols.lookup('tun_chr_open')).toBe(tun);
    expect(k.symbolize(tun! + 4n)).toBe('tun_chr_open+0x4');
  });

  it('--system-map with a file that is not one: a clear error', async () => {
    const file = join(dir, 'not-a-map');
    writeFileSync(file, 'hello\n');
    await expect(openKernel(machine, { frozen: true, systemMapFile: file })).rejects.toThrow(/is not a System.map \(no _text symbol\)/);
  });

  describe('a kernel without BTF (the symbols that bracket it missing or absurd)', () => {
    const table = (extra: Record<string, bigint>): SymbolTable => ({
      count: Object.keys(extra).length,
      lookup: (name) => extra[name],
      symbolize: () => undefined,
    });

    it('says what is missing and how to supply it', () => {
      let error: unknown;
      try {
        loadBtf(kernel.space, table({ _text: kernel.layout.textBase }), undefined);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(GuestDataError);
      const message = (error as Error).message;
      expect(message).not.toContain('\n');
      expect(message).toContain('no __start_BTF/__stop_BTF symbols');
      expect(message).toContain('CONFIG_DEBUG_INFO_BTF');
      expect(message).toContain('--btf FILE');
    });

    it('refuses a BTF section of 2^31 bytes or a reversed one without reading it', () => {
      const start = kernel.symbol('__start_BTF');
      expect(() => loadBtf(kernel.space, table({ __start_BTF: start, __stop_BTF: start + 2n ** 31n }), undefined)).toThrow(/2147483648 bytes .* implausible/);
      expect(() => loadBtf(kernel.space, table({ __start_BTF: start, __stop_BTF: start - 8n }), undefined)).toThrow(/__stop_BTF is not above __start_BTF/);
    });

    it.skipIf(!vmlinux)('is opened with --btf when its own BTF is missing', () => {
      const btf = loadBtf(kernel.space, table({}), vmlinux!);
      expect(btf.typeCount).toBe(kernel.btf.typeCount);
    });
  });
});
