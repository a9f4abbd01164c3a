/**
 * The module census over synthetic memory with the real kernel's types: a module missing from
 * the module list is found through sysfs and by scanning module memory; forged look-alikes in
 * module memory are rejected; corrupt lists end their walk with a warning and the other records
 * still count.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { reportHiddenModules } from '../../src/analyses/checks/hidden-modules.ts';
import { MODULES_VADDR, scanModuleArea, takeModuleCensus } from '../../src/analyses/checks/module-census.ts';
import type { Btf } from '../../src/kernel/btf/index.ts';
import { labBtf, MODULE_OFFSET, SyntheticKernel } from './support/synthetic-kernel.ts';

let btf: Btf;
beforeAll(async () => {
  btf = await labBtf();
});

const M = 'struct module';

/** A guest with the kernel's module records: the list, module_kset, and module memory. */
class ModuleWorld {
  readonly s = new SyntheticKernel(btf);
  readonly modules: bigint;
  readonly kset: bigint;
  /** Next free address in the module area. */
  private nextModule = MODULES_VADDR + MODULE_OFFSET;

  constructor() {
    const s = this.s;
    this.modules = s.alloc(16, 8);
    s.emptyList(this.modules);
    s.symbols.set('modules', this.modules);
    this.kset = s.allocType('struct kset');
    s.emptyList(s.field(this.kset, 'struct kset', 'list'));
    const ksetPtr = s.alloc(8, 8);
    s.u64(ksetPtr, this.kset);
    s.symbols.set('module_kset', ksetPtr);
  }

  /** A struct module in its own 16 KiB of module memory (core data), as the loader places it. */
  module(name: string, state = 0): bigint {
    const s = this.s;
    const base = this.nextModule;
    this.nextModule += 0x4000n;
    s.bytes(base, new Uint8Array(0x4000));
    const mod = base + 0x2040n;
    s.u32(s.field(mod, M, 'state'), state);
    s.bytes(s.field(mod, M, 'name'), `${name}\0`);
    s.emptyList(s.field(mod, M, 'list'));
    s.u64(s.field(mod, M, 'mkobj.mod'), mod);
    s.u64(s.field(mod, M, 'core_layout.base'), base);
    s.u32(s.field(mod, M, 'core_layout.size'), 0x4000);
    s.u32(s.field(mod, M, 'core_layout.text_size'), 0x1000);
    s.u32(s.field(mod, M, 'core_layout.ro_size'), 0x2000);
    s.u32(s.field(mod, M, 'core_layout.ro_after_init_size'), 0x2000);
    s.emptyList(s.field(mod, M, 'source_list'));
    s.emptyList(s.field(mod, M, 'target_list'));
    return mod;
  }

  /** Put `mod` on a circular list after `head` (list_add_tail). */
  private append(head: bigint, node: bigint): void {
    const s = this.s;
    const last = s.kernel.space.readU64Big(head + 8n);
    s.u64(node, head);
    s.u64(node + 8n, last);
    s.u64(last, node);
    s.u64(head + 8n, node);
  }

  listModule(mod: bigint): void {
    this.append(this.modules, this.s.field(mod, M, 'list'));
  }

  /** Its kobject in /sys/module: module_kobject.kobj.entry on the kset's list. */
  sysfs(mod: bigint): void {
    const entry = this.s.field(mod, M, 'mkobj') + this.s.offset('struct module_kobject', 'kobj') + this.s.offset('struct kobject', 'entry');
    this.append(this.s.field(this.kset, 'struct kset', 'list'), entry);
  }
}

describe('module census', () => {
  it('finds a module hidden from the list through sysfs and module memory, and reports it', () => {
    const w = new ModuleWorld();
    const listed = w.module('listed');
    w.listModule(listed);
    w.sysfs(listed);
    const hidden = w.module('ghost');
    w.sysfs(hidden);
    const census = takeModuleCensus(w.s.kernel);
    expect(census.counts['module list']).toBe(1);
    expect(census.counts.sysfs).toBe(2);
    expect(census.counts['memory scan']).toBe(2);
    expect(census.modules.get(listed)?.listed).toBe(true);
    expect(census.modules.get(hidden)?.listed).toBe(false);

    const r = reportHiddenModules(w.s.kernel, census);
    expect(r.findings).toHaveLength(1);
    const f = r.findings[0]!;
    expect(f.severity).toBe('high');
    expect(f.summary).toBe('module ghost is loaded (live) but hidden from the module list');
    expect(f.evidence['struct module']).toBe(hidden);
    expect(f.evidence['found in']).toEqual(['sysfs', 'memory scan']);
    expect(f.evidence['module list']).toBe('absent: mod->list points to itself (unlinked)');
    // Code addresses are attributed to the module and its region.
    const text = census.locate(hidden - 0x2040n + 0x10n);
    expect(text?.module.name).toBe('ghost');
    expect(text?.region.kind).toBe('text');
    expect(w.s.kernel.warnings.items).toEqual([]);
  });

  it('the memory scan alone finds a module that left every list; an unloaded one is only information', () => {
    const w = new ModuleWorld();
    w.module('nowhere');
    w.module('unloaded', 3);
    const r = reportHiddenModules(w.s.kernel, takeModuleCensus(w.s.kernel));
    expect(r.findings.map((f) => [f.severity, f.evidence.name])).toEqual([
      ['high', 'nowhere'],
      ['info', 'unloaded'],
    ]);
  });

  it('rejects look-alikes in module memory: a bad state, a bad name, a structure outside its own memory', () => {
    const w = new ModuleWorld();
    const s = w.s;
    s.u32(s.field(w.module('badstate'), M, 'state'), 9);
    s.bytes(s.field(w.module('x'), M, 'name'), 'bad\x01name\0');
    const elsewhere = w.module('moved');
    s.u64(s.field(elsewhere, M, 'core_layout.base'), MODULES_VADDR);
    const real = w.module('real');
    expect(scanModuleArea(s.kernel)).toEqual([real]);
  });

  it('a corrupt module list ends with a warning; the other records still count', () => {
    const w = new ModuleWorld();
    const a = w.module('a');
    const b = w.module('b');
    w.listModule(a);
    w.listModule(b);
    w.sysfs(a);
    w.sysfs(b);
    // b's next points back to a: a cycle that never reaches the head.
    w.s.u64(w.s.field(b, M, 'list'), w.s.field(a, M, 'list'));
    const census = takeModuleCensus(w.s.kernel);
    expect(w.s.kernel.warnings.items.map((x) => `${x.where}: ${x.message}`).join('\n')).toMatch(/module list: cycle/);
    expect(census.counts.sysfs).toBe(2);
    expect(census.counts['memory scan']).toBe(2);
  });

  it('a kset list that runs into unmapped memory is cut short with a warning', () => {
    const w = new ModuleWorld();
    const a = w.module('a');
    w.listModule(a);
    w.sysfs(a);
    const entry = w.s.field(a, M, 'mkobj') + w.s.offset('struct module_kobject', 'kobj') + w.s.offset('struct kobject', 'entry');
    w.s.u64(entry, 0xffff_9999_0000_0000n);
    const census = takeModuleCensus(w.s.kernel);
    expect(census.counts.sysfs).toBe(1);
    expect(w.s.kernel.warnings.items.map((x) => `${x.where}: ${x.message}`).join('\n')).toMatch(/modules: sysfs: entry at 0x[0-9a-f]+: virtual 0xffff99990000/);
  });
});
