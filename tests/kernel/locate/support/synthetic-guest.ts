import type { KernelSpace } from '../../../../src/kernel/locate/index.ts';
import { TranslationError } from '../../../../src/util/errors.ts';
import type { Vmlinux } from '../../kallsyms/support/vmlinux.ts';

/**
 * A guest's kernel address space built around a real kernel image, laid out as a booted x86-64
 * kernel lays itself out: the image relocated by a KASLR slide (with the kernel's own
 * relocation table) and mapped in 2 MiB slots of the kernel text mapping from _text, loaded at
 * a physical base; the direct map of all RAM at a randomized base; the variables KASLR sets at
 * boot written into the image; and the pieces a booted kernel unmaps (freed init memory, the
 * gaps after text and rodata) left unmapped.
 */
export interface GuestLayout {
  /** Virtual KASLR slide, a multiple of 2 MiB. */
  readonly slide: bigint;
  /** Physical address of _text, a multiple of 2 MiB. */
  readonly physBase: number;
  readonly ramSize: number;
  readonly pageOffsetBase: bigint;
  readonly vmallocBase: bigint;
  readonly vmemmapBase: bigint;
  /** Link-time addresses of symbols the layout needs (from kallsyms of the unrelocated image). */
  readonly symbols: (name: string) => bigint;
}

const PMD = 2n << 20n;
const PAGE = 4096n;

export class SyntheticGuest implements KernelSpace {
  readonly image: Vmlinux;
  readonly textBase: bigint;
  readonly imageEnd: bigint;
  /** Unmapped [start, end) ranges of the image mapping. */
  readonly holes: [bigint, bigint][];
  /** Extra mapped pages (VA of the page → its bytes), for an IDT and the like. */
  readonly extraPages = new Map<bigint, Uint8Array>();
  /** Extra 2 MiB slots mapped in the kernel text mapping, to confuse the search. */
  readonly strayMappings: bigint[] = [];
  /** When set, only this much of the image is mapped (a user page table under PTI). */
  mappedLimit: bigint | undefined;

  constructor(
    link: Vmlinux,
    readonly layout: GuestLayout,
  ) {
    const sym = (n: string) => layout.symbols(n) + layout.slide;
    this.image = link.relocated(layout.slide);
    this.textBase = sym('_text');
    this.imageEnd = sym('_end');
    // What KASLR of memory writes at boot (arch/x86/mm/kaslr.c).
    this.poke64(sym('page_offset_base'), layout.pageOffsetBase);
    this.poke64(sym('vmalloc_base'), layout.vmallocBase);
    this.poke64(sym('vmemmap_base'), layout.vmemmapBase);
    const up = (a: bigint) => (a + PAGE - 1n) & ~(PAGE - 1n);
    this.holes = [
      [up(sym('_etext')), sym('__start_rodata')],
      [up(sym('__end_rodata')), sym('_sdata')],
      [sym('__init_begin'), up(sym('__init_end'))],
    ];
  }

  poke64(va: bigint, value: bigint): void {
    this.image.data.writeBigUInt64LE(value, this.image.fileOffset(va));
  }

  private imageSlotsEnd(): bigint {
    return (this.imageEnd + PMD - 1n) & ~(PMD - 1n);
  }

  tryTranslate(va: bigint): number | null {
    const page = va & ~(PAGE - 1n);
    if (this.extraPages.has(page)) return 0x1000 + Number(va & (PAGE - 1n)); // any page; reads go to extraPages
    for (const slot of this.strayMappings) if (va >= slot && va < slot + PMD) return 0x200000 + Number(va - slot);
    if (va >= this.textBase && va < this.imageSlotsEnd()) {
      if (this.mappedLimit !== undefined && va >= this.textBase + this.mappedLimit) return null;
      for (const [s, e] of this.holes) if (va >= s && va < e) return null;
      return this.layout.physBase + Number(va - this.textBase);
    }
    const pob = this.layout.pageOffsetBase;
    if (va >= pob && va < pob + BigInt(this.layout.ramSize)) return Number(va - pob);
    return null;
  }

  read(va: bigint, dst: Uint8Array): void {
    let off = 0;
    while (off < dst.length) {
      const cur = va + BigInt(off);
      const inPage = Number(PAGE - (cur & (PAGE - 1n)));
      const len = Math.min(inPage, dst.length - off);
      const piece = dst.subarray(off, off + len);
      const extra = this.extraPages.get(cur & ~(PAGE - 1n));
      const pa = this.tryTranslate(cur);
      if (pa === null) throw new TranslationError(cur, 1, 'not present');
      if (extra) piece.set(extra.subarray(Number(cur & (PAGE - 1n)), Number(cur & (PAGE - 1n)) + len));
      else this.readPhys(pa, piece);
      off += len;
    }
  }

  /** Physical memory: the image where it was loaded, zeros elsewhere. */
  private readPhys(pa: number, dst: Uint8Array): void {
    const rel = pa - this.layout.physBase;
    if (rel >= 0 && BigInt(rel) < this.imageEnd - this.textBase) this.image.readLoose(this.textBase + BigInt(rel), dst);
    else dst.fill(0);
  }
}
