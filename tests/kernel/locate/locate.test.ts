import { beforeAll, describe, expect, it } from 'vitest';
import { loadKallsyms, type Kallsyms } from '../../../src/kernel/kallsyms/index.ts';
import { findKernelImage, idtHandlers, locateKernel, type KernelSpace } from '../../../src/kernel/locate/index.ts';
import { GuestDataError, TranslationError, UsageError } from '../../../src/util/errors.ts';
import { Warnings } from '../../../src/util/warnings.ts';
import { FLAVOURS, prepareKernel } from '../kallsyms/support/kernel-images.ts';
import { Vmlinux } from '../kallsyms/support/vmlinux.ts';
import { SyntheticGuest, type GuestLayout } from './support/synthetic-guest.ts';

/**
 * Finding real Debian kernels (6.1 and 6.12) in guest address spaces laid out as booted kernels
 * lay themselves out: relocated by a KASLR slide with the kernel's own relocation table, loaded
 * at a random physical base, the direct map at a random base, init memory unmapped.
 */

const L4 = { pob: 0xffff_8880_0000_0000n, vmalloc: 0xffff_c900_0000_0000n, vmemmap: 0xffff_ea00_0000_0000n };
const L5 = { pob: 0xff11_0000_0000_0000n, vmalloc: 0xffa0_0000_0000_0000n, vmemmap: 0xffd4_0000_0000_0000n };
const GiB = 1n << 30n;
const MiB2 = 2n << 20n;

describe.each([
  { id: '6.1', flavour: FLAVOURS['6.1'], levels: 4 as const, slide: 0x2c400000n, physBase: 0x1e600000, randomized: 37n },
  { id: '6.12', flavour: FLAVOURS['6.12'], levels: 5 as const, slide: 0x0ba00000n, physBase: 0x05000000, randomized: 123n },
])('locating Debian $id ($levels-level paging)', ({ flavour, levels, slide, physBase, randomized }) => {
  let link: Vmlinux;
  let linkSyms: Kallsyms;
  let guest: SyntheticGuest;
  let layout: GuestLayout;

  beforeAll(() => {
    link = Vmlinux.open(prepareKernel(flavour).vmlinux);
    linkSyms = loadKallsyms(link, link.imageRange());
    const base = levels === 5 ? L5 : L4;
    layout = {
      slide,
      physBase,
      ramSize: 1 << 30,
      // KASLR puts the regions at PUD (1 GiB) steps above the unrandomized bases.
      pageOffsetBase: base.pob + randomized * GiB,
      vmallocBase: base.vmalloc + (randomized + 7n) * GiB,
      vmemmapBase: base.vmemmap + (randomized + 3n) * GiB,
      symbols: (n) => {
        const a = linkSyms.lookup(n);
        if (a === undefined) throw new Error(`no ${n}`);
        return a;
      },
    };
    guest = new SyntheticGuest(link, layout);
  });

  it('finds the image, its KASLR offset and its physical base', () => {
    const warnings = new Warnings();
    const k = locateKernel(guest, { pagingLevels: levels, warnings });
    expect(k.textBase).toBe(layout.symbols('_text') + slide);
    expect(k.kaslrOffset).toBe(slide);
    expect(k.physBase).toBe(physBase);
    expect(k.imageEnd).toBe(layout.symbols('_end') + slide);
    expect(k.mapped.start).toBe(k.textBase);
    expect(k.mapped.end).toBe((k.imageEnd + MiB2 - 1n) & ~(MiB2 - 1n));
    expect(warnings.items).toEqual([]);
  });

  it('reads the randomized region bases the kernel chose', () => {
    const k = locateKernel(guest, { pagingLevels: levels });
    expect(k.layout).toEqual({
      pageOffsetBase: layout.pageOffsetBase,
      vmallocBase: layout.vmallocBase,
      vmemmapBase: layout.vmemmapBase,
      pageOffsetSource: 'symbol',
    });
  });

  it('reads the banner and the uname fields', () => {
    const k = locateKernel(guest, { pagingLevels: levels });
    const release = link.readString(layout.symbols('linux_banner') , 512).split(' ')[2]!;
    expect(k.banner).toMatch(new RegExp(`^Linux version ${release.replace(/[.+]/g, '\\$&')} \\(`));
    expect(k.banner).not.toContain('\n');
    expect(k.uts).toMatchObject({ sysname: 'Linux', release, machine: 'x86_64', nodename: '(none)' });
    expect(k.banner).toContain(k.uts!.version);
  });

  it('relocates every symbol by the slide, per-CPU offsets excepted', () => {
    const k = locateKernel(guest, { pagingLevels: levels });
    const ks = k.kallsyms;
    expect(ks.count).toBe(linkSyms.count);
    let moved = 0;
    const wrong: string[] = [];
    for (let i = 0; i < ks.count; i++) {
      const a = linkSyms.address(i);
      const expected = a < 0x1_0000_0000n ? a : a + slide;
      if (ks.address(i) !== expected || ks.name(i) !== linkSyms.name(i)) wrong.push(ks.name(i));
      else if (expected !== a) moved++;
    }
    expect(wrong).toEqual([]);
    expect(moved).toBeGreaterThan(50_000);
  });

  it('falls back to the GS base for the direct map when page_offset_base is garbage', () => {
    const g = new SyntheticGuest(link, layout);
    g.poke64(layout.symbols('page_offset_base') + slide, 0x1234n);
    const warnings = new Warnings();
    const perCpuArea = layout.pageOffsetBase + 0x3fe0_0000n;
    const k = locateKernel(g, { pagingLevels: levels, gsBase: perCpuArea, warnings });
    expect(k.layout.pageOffsetBase).toBe(layout.pageOffsetBase);
    expect(k.layout.pageOffsetSource).toBe('gs-base');
    expect(warnings.items.map((w) => w.message).join('\n')).toMatch(/page_offset_base holds 0x1234/);
  });

  it('picks the image the IDT points into over a larger stray mapping', () => {
    const g = new SyntheticGuest(link, layout);
    // A stray run of mapped slots in the kernel text mapping, larger than the image.
    const stray = 0xffff_ffff_a000_0000n;
    for (let s = 0n; s < 40n; s++) g.strayMappings.push(stray + s * MiB2);
    expect(findKernelImage(g).start).toBe(stray);
    // An IDT (as the CPU entry area holds it) whose gates point into the real image's text.
    const idtVa = 0xffff_fe00_0000_0000n;
    const idt = new Uint8Array(4096);
    const handler = g.textBase + 0x1234_5678n % 0x80_0000n;
    for (let gate = 0; gate < 32; gate++) {
      const o = gate * 16;
      const h = handler + BigInt(gate * 16);
      idt[o] = Number(h & 0xffn);
      idt[o + 1] = Number((h >> 8n) & 0xffn);
      idt[o + 5] = 0x8e; // present, interrupt gate
      idt[o + 6] = Number((h >> 16n) & 0xffn);
      idt[o + 7] = Number((h >> 24n) & 0xffn);
      new DataView(idt.buffer).setUint32(o + 8, Number(h >> 32n), true);
    }
    g.extraPages.set(idtVa, idt);
    expect(idtHandlers(g, idtVa)[3]).toBe(handler + 48n);
    const k = locateKernel(g, { pagingLevels: levels, idtBase: idtVa });
    expect(k.textBase).toBe(g.textBase);
    expect(locateKernel(g, { pagingLevels: levels, rip: g.textBase + 0x100n }).textBase).toBe(g.textBase);
  });

  it('says so when only a sliver of the kernel is mapped (a user page table under PTI)', () => {
    const g = new SyntheticGuest(link, layout);
    g.mappedLimit = 2n << 20n;
    expect(() => locateKernel(g, { pagingLevels: levels })).toThrow(/page-table isolation/);
  });
});

describe('locating a kernel that is not there', () => {
  const empty: KernelSpace = {
    tryTranslate: () => null,
    read(va) {
      throw new TranslationError(va, 4, 'not present');
    },
  };

  it('reports an address space with no kernel image', () => {
    expect(() => locateKernel(empty, { pagingLevels: 4 })).toThrow(GuestDataError);
    expect(() => locateKernel(empty, { pagingLevels: 4 })).toThrow(/no kernel image mapped/);
  });

  it('reports a mapped region with no symbol table in it', () => {
    const zeros: KernelSpace = {
      tryTranslate: (va) => (va >= 0xffff_ffff_8100_0000n && va < 0xffff_ffff_8200_0000n ? Number(va - 0xffff_ffff_8000_0000n) : null),
      read(va, dst) {
        if (this.tryTranslate(va) === null) throw new TranslationError(va, 1, 'not present');
        dst.fill(0);
      },
    };
    expect(() => locateKernel(zeros, { pagingLevels: 4 })).toThrow(/^kallsyms: no symbol table found/);
  });

  it('refuses paging levels other than 4 and 5', () => {
    expect(() => locateKernel(empty, { pagingLevels: 3 as 4 })).toThrow(UsageError);
  });

  it('treats an IDT that cannot be read as no hint at all', () => {
    expect(idtHandlers(empty, 0xffff_fe00_0000_0000n)).toEqual([]);
  });
});
