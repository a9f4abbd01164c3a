import { beforeAll, describe, expect, it } from 'vitest';
import { loadKallsyms, type Kallsyms } from '../../../src/kernel/kallsyms/index.ts';
import { Warnings } from '../../../src/util/warnings.ts';
import { FLAVOURS, prepareKernel, readConfig, type PreparedKernel } from './support/kernel-images.ts';
import { Vmlinux } from './support/vmlinux.ts';

/**
 * kallsyms decoded from real Debian kernel images (6.1, its cloud flavour, 6.12), checked
 * against what the ELF itself says: section boundaries, the exported-symbol table, the banner.
 * The images keep their section headers, which is the ground truth here (their symbols are
 * stripped, which is why kallsyms is needed at all).
 */

const U64 = (1n << 64n) - 1n;

describe.each(Object.values(FLAVOURS))('kallsyms of Debian $id', (flavour) => {
  let kernel: PreparedKernel;
  let vmlinux: Vmlinux;
  let ks: Kallsyms;
  const warnings = new Warnings();

  beforeAll(() => {
    kernel = prepareKernel(flavour);
    vmlinux = Vmlinux.open(kernel.vmlinux);
    ks = loadKallsyms(vmlinux, vmlinux.imageRange(), { warnings });
  });

  const sym = (name: string): bigint => {
    const a = ks.lookup(name);
    if (a === undefined) throw new Error(`${name} not decoded`);
    return a;
  };
  const end = (section: string): bigint => {
    const s = vmlinux.section(section);
    return s.addr + BigInt(s.size);
  };

  it('decodes tens of thousands of symbols without warnings', () => {
    expect(ks.count).toBeGreaterThan(50_000);
    expect(warnings.items).toEqual([]);
  });

  it('puts the linker-script symbols on the section boundaries', () => {
    expect(sym('_text')).toBe(vmlinux.section('.text').addr);
    expect(sym('_stext')).toBe(vmlinux.section('.text').addr);
    expect(sym('_etext')).toBe(end('.text'));
    expect(sym('__start_rodata')).toBe(vmlinux.section('.rodata').addr);
    // RO_DATA ends with the BTF sections, then aligns to a page.
    const roEnd = end('.BTF_ids');
    expect(sym('__end_rodata') % 4096n).toBe(0n);
    expect(sym('__end_rodata') >= roEnd && sym('__end_rodata') < roEnd + 4096n).toBe(true);
    expect(sym('_sdata')).toBe(vmlinux.section('.data').addr);
    expect(sym('_sinittext')).toBe(vmlinux.section('.init.text').addr);
    expect(sym('_einittext')).toBe(end('.init.text'));
    expect(sym('__bss_start')).toBe(vmlinux.section('.bss').addr);
    expect(sym('__brk_base')).toBe(vmlinux.section('.brk').addr);
    expect(sym('_end')).toBe(end('.brk'));
    expect(sym('__start___ksymtab')).toBe(vmlinux.section('__ksymtab').addr);
    expect(sym('__stop___ksymtab')).toBe(end('__ksymtab'));
  });

  it('gives per-CPU symbols their offsets in the per-CPU area', () => {
    const percpu = vmlinux.section('.data..percpu');
    expect(readConfig(kernel.config).get('CONFIG_KALLSYMS_ABSOLUTE_PERCPU')).toBe('y');
    expect(ks.layout.addresses).toMatchObject({ kind: 'relative', absolutePercpu: true });
    expect(sym('__per_cpu_start')).toBe(0n);
    expect(sym('__per_cpu_end')).toBe(BigInt(percpu.size));
    const runqueues = sym('runqueues');
    expect(runqueues > 0n && runqueues < BigInt(percpu.size)).toBe(true);
  });

  it('finds linux_banner, naming the package release', () => {
    const release = kernel.package.replace(/^linux-image-/, '').replace(/-unsigned$/, '');
    expect(vmlinux.readString(sym('linux_banner'), 512)).toMatch(new RegExp(`^Linux version ${release.replace(/[.+]/g, '\\$&')} `));
  });

  it('agrees with every entry of the exported-symbol tables', () => {
    // struct kernel_symbol with PREL32 relocations: { int value_offset, name_offset, namespace_offset }.
    let checked = 0;
    const wrong: string[] = [];
    for (const name of ['__ksymtab', '__ksymtab_gpl']) {
      const s = vmlinux.section(name);
      expect(s.size % 12).toBe(0);
      const raw = Buffer.alloc(s.size);
      vmlinux.read(s.addr, raw);
      for (let off = 0; off < s.size; off += 12) {
        const va = s.addr + BigInt(off);
        const value = (va + BigInt(raw.readInt32LE(off))) & U64;
        const symbol = vmlinux.readString(va + 4n + BigInt(raw.readInt32LE(off + 4)));
        if (!ks.lookupAll(symbol).includes(value)) wrong.push(symbol);
        checked++;
      }
    }
    expect(wrong).toEqual([]);
    expect(checked).toBeGreaterThan(5000);
  });

  it('keeps symbols in address order with nm type letters', () => {
    let prev = -1n;
    const unsorted: string[] = [];
    const types = new Set<string>();
    for (const s of ks.symbols()) {
      if (s.address < prev) unsorted.push(s.name);
      prev = s.address;
      types.add(s.type);
    }
    expect(unsorted).toEqual([]);
    for (const t of types) expect('AaBbDdRrTtVvWw').toContain(t);
    expect(types).toContain('T');
    expect(types).toContain('t');
    expect(types).toContain('D');
    expect(types).toContain('b');
  });

  it('symbolizes addresses inside symbols back to them', () => {
    let checked = 0;
    for (let i = ks.count >> 1; i < ks.count - 1; i += 97) {
      const a = ks.address(i);
      const first = ks.symbolize(a);
      expect(first?.address).toBe(a);
      expect(first?.offset).toBe(0n);
      if (first?.size === undefined || first.size < 2n) continue;
      const inside = ks.symbolize(a + first.size - 1n);
      expect(inside).toMatchObject({ name: first.name, address: a, offset: first.size - 1n });
      expect(ks.symbolize(a + first.size)?.address).toBe(a + first.size);
      checked++;
    }
    expect(checked).toBeGreaterThan(100);
    expect(ks.symbolize(sym('_text') - 1n)).toBeUndefined();
  });

  it('finds every copy of a duplicated static name', () => {
    const counts = new Map<string, number>();
    for (const s of ks.symbols()) counts.set(s.name, (counts.get(s.name) ?? 0) + 1);
    const dups = [...counts].filter(([, c]) => c > 1);
    expect(dups.length).toBeGreaterThan(100);
    for (const [name, c] of dups.slice(0, 50)) {
      const all = ks.lookupAll(name);
      expect(all).toHaveLength(c);
      expect(ks.lookup(name)).toBe(all.reduce((a, b) => (b < a ? b : a)));
    }
  });
});

describe('kallsyms table layouts of real kernels', () => {
  it('6.1 keeps kallsyms_offsets before the names; 6.12 after the token index', () => {
    const layoutOf = (f: (typeof FLAVOURS)[keyof typeof FLAVOURS]) => {
      const v = Vmlinux.open(prepareKernel(f).vmlinux);
      return loadKallsyms(v, v.imageRange()).layout;
    };
    const old = layoutOf(FLAVOURS['6.1']);
    const neu = layoutOf(FLAVOURS['6.12']);
    if (old.addresses.kind !== 'relative' || neu.addresses.kind !== 'relative') throw new Error('expected relative tables');
    expect(old.addresses.offsetsVa < old.namesVa).toBe(true);
    expect(old.numSymsVa).toBe(old.namesVa - 8n);
    expect(neu.addresses.offsetsVa > neu.tokenIndexVa).toBe(true);
    expect(neu.numSymsVa).toBe(neu.namesVa - 8n);
    for (const l of [old, neu]) {
      expect(l.markerWidth).toBe(4);
      expect(l.tokenTableVa < l.tokenIndexVa).toBe(true);
    }
  });
});
