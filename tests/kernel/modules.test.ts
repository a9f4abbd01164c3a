/**
 * Module symbols and module BTF against real lab guests (6.1 with core/init layouts, 6.12 with
 * mem[]): every `[module]` line of the guest's /proc/kallsyms — address, type letter, name,
 * module — and each module's BTF byte for byte as the guest exports it in /sys/kernel/btf.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { idrForEach } from '../../src/kernel/helpers/idr.ts';
import type { Kallsyms } from '../../src/kernel/kallsyms/kallsyms.ts';
import type { Kernel } from '../../src/kernel/kernel.ts';
import { allModuleSymbols, kernelModules, moduleBtfBlobs, moduleExportTable, type SymbolsWithModules } from '../../src/kernel/modules.ts';
import { openKernel } from '../../src/kernel/open.ts';
import { attachQemu } from '../../src/machine/qemu.ts';
import type { Machine } from '../../src/machine/types.ts';
import { labGuest, type LabConfig, type LabGuest } from '../support/lab.ts';

interface GuestModuleSymbol {
  readonly line: string;
  readonly name: string;
  readonly address: bigint;
  readonly type: string;
  readonly module: string;
}

/** The `[module]` lines of /proc/kallsyms, normalised to "address type name [module]". */
async function guestModuleSymbols(guest: LabGuest): Promise<GuestModuleSymbol[]> {
  const out = await guest.console.run('cat /proc/kallsyms');
  const rows: GuestModuleSymbol[] = [];
  for (const l of out.split('\n')) {
    const p = l.trim().split(/\s+/);
    if (p.length !== 4) continue;
    const address = BigInt(`0x${p[0]}`);
    const module = p[3]!.slice(1, -1);
    rows.push({ line: `${address.toString(16)} ${p[1]} ${p[2]} [${module}]`, name: p[2]!, address, type: p[1]!, module });
  }
  return rows;
}

const configs: LabConfig[] = ['default', 'k612'];

describe.each(configs)('module symbols and BTF on the %s lab guest', (config) => {
  let guest: LabGuest;
  let machine: Machine;
  let kernel: Kernel;
  let truth: GuestModuleSymbol[];

  beforeAll(async () => {
    guest = await labGuest(config);
    machine = await attachQemu(guest.info.qmpSocket);
    kernel = await openKernel(machine);
    truth = await guestModuleSymbols(guest);
  }, 300_000);
  afterAll(async () => {
    await machine?.close();
  });

  it('reads no module symbols while opening the kernel (they load on first need)', () => {
    const core = (kernel.symbols as SymbolsWithModules).core as Kallsyms;
    expect(core.moduleNames).toEqual([]);
    // A module-only name is the first need.
    const dummy = truth.find((s) => s.module === 'dummy' && s.type.toLowerCase() === 't');
    expect(dummy).toBeDefined();
    expect(kernel.symbols.lookup(dummy!.name)).toBeDefined();
    expect(core.moduleNames.length).toBeGreaterThan(5);
  });

  it("gives every [module] line of the guest's /proc/kallsyms: address, type letter, name, module", () => {
    expect(truth.length).toBeGreaterThan(500);
    const ours = allModuleSymbols(kernel).flatMap((m) => m.symbols.map((s) => `${s.address.toString(16)} ${s.type} ${s.name} [${s.module}]`));
    expect(ours.sort()).toEqual(truth.map((t) => t.line).sort());
    expect(kernel.warnings.items).toEqual([]);
  });

  it('decodes the export tables: every EXPORT_SYMBOL_GPL entry is a symbol of its module, at its address', () => {
    // The lab's modules export only through EXPORT_SYMBOL_GPL, which /proc/kallsyms prints in
    // lower case (is_exported() looks in `syms` alone): the GPL table checks the same decoding.
    const symbols = new Set(truth.map((t) => `${t.module} ${t.name} ${t.address}`));
    let checked = 0;
    for (const mod of kernelModules(kernel)) {
      const name = mod.member('name').str();
      for (const table of ['syms', 'gpl_syms'] as const) {
        for (const [sym, value] of moduleExportTable(kernel, mod, table)) {
          expect(symbols.has(`${name} ${sym} ${value}`), `${table} of ${name}: ${sym}`).toBe(true);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(10);
  });

  it('looks up every module symbol by name and names every module text address', () => {
    const coreNames = new Set<string>();
    const core = (kernel.symbols as SymbolsWithModules).core as Kallsyms;
    for (let i = 0; i < core.count; i++) coreNames.add(core.name(i));
    const byName = new Map<string, bigint[]>();
    for (const t of truth) byName.set(t.name, [...(byName.get(t.name) ?? []), t.address]);
    const wrong: string[] = [];
    let named = 0;
    for (const t of truth) {
      // Names the core kernel also has resolve to the kernel's symbol, as kallsyms_lookup_name().
      if (!coreNames.has(t.name) && byName.get(t.name)!.length === 1) {
        const a = kernel.symbols.lookup(t.name);
        if (a !== t.address) wrong.push(`lookup ${t.line}: got ${a?.toString(16)}`);
      }
      if (t.type.toLowerCase() !== 't' || t.name.startsWith('__pfx_')) continue;
      // One byte into each function: symbolize names that function in that module (aliases at the
      // same address may name another symbol of the same address).
      const s = kernel.symbols.symbolize(t.address + 1n) as { name: string; address: bigint; offset: bigint; module?: string } | undefined;
      if (!s || s.address !== t.address || s.offset !== 1n || s.module !== t.module) wrong.push(`symbolize ${t.line}: got ${JSON.stringify(s && { ...s, address: s.address.toString(16), offset: String(s.offset) })}`);
      named++;
    }
    expect(wrong.slice(0, 10)).toEqual([]);
    expect(named).toBeGreaterThan(100);
    // lookupAll: the core kernel's addresses, and with modules every module's too.
    const symbols = kernel.symbols as SymbolsWithModules;
    for (const name of ['init_once', 'uni2char', 'char2uni']) {
      const inModules = truth.filter((t) => t.name === name).map((t) => t.address);
      expect(inModules.length).toBeGreaterThan(0);
      const core = symbols.lookupAll(name);
      expect(core.every((a) => !inModules.includes(a))).toBe(true);
      expect(symbols.lookupAll(name, true).sort()).toEqual([...core, ...inModules].sort());
    }
    expect(kernel.symbolize(truth.find((t) => t.module === 'loop' && t.type === 't')!.address + 2n)).toMatch(/\+0x2$/);
  });

  it("reads each module's BTF byte for byte as the guest exports it (/sys/kernel/btf)", async () => {
    const sums = await guest.console.run('cd /sys/kernel/btf && md5sum $(ls | grep -v "^vmlinux$")');
    const want = new Map(
      sums
        .split('\n')
        .map((l) => l.trim().split(/\s+/))
        .filter((p) => p.length === 2)
        .map(([sum, name]) => [name!, sum!]),
    );
    expect(want.size).toBeGreaterThan(5);
    const blobs = moduleBtfBlobs(kernel);
    const got = new Map([...blobs].map(([name, blob]) => [name, createHash('md5').update(blob).digest('hex')]));
    expect(got).toEqual(want);
    for (const name of want.keys()) expect(kernel.moduleBtf(name)?.firstId).toBe(kernel.btf.typeCount);
  });

  it('types a module defines are found in its BTF: loop devices through loop_index_idr', async () => {
    expect(kernel.btf.findType('struct loop_device')).toBeUndefined();
    expect(kernel.findModuleType('struct loop_device')?.module).toBe('loop');
    const idr = kernel.object('struct idr', kernel.symbol('loop_index_idr'));
    const numbers: number[] = [];
    for (const { id, entry } of idrForEach(idr)) {
      const lo = kernel.object('struct loop_device', entry);
      expect(lo.member('lo_number').num()).toBe(id);
      numbers.push(id);
      // A member typed with a vmlinux type works through the split BTF.
      expect(lo.member('lo_disk').member('disk_name').str()).toBe(`loop${id}`);
    }
    const guestLoops = (await guest.console.run('ls /sys/block'))
      .split(/\s+/)
      .filter((n) => /^loop\d+$/.test(n))
      .map((n) => Number(n.slice(4)))
      .sort((a, b) => a - b);
    expect(numbers).toEqual(guestLoops);
    expect(kernel.moduleBtf('no_such_module')).toBeUndefined();
    expect(() => kernel.object('struct no_such_type_anywhere', 0n)).toThrow(/no type 'struct no_such_type_anywhere'/);
  });
});
