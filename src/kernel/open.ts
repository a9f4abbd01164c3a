/**
 * Opening a kernel: from a machine's vCPU state (or a scan, for snapshots without one) to a
 * Kernel with symbols and types — no profile, no debug file: kallsyms and BTF come from the
 * guest's own memory.
 */
import { readFileSync } from 'node:fs';
import { cr3Root, pagingMode, type Machine, type VcpuState } from '../machine/types.ts';
import { AddressSpace } from '../mmu/address-space.ts';
import { readerFor } from '../mmu/from-vcpu.ts';
import type { PhysReader } from '../mmu/phys-reader.ts';
import { GuestDataError, UsageError, VmlensError } from '../util/errors.ts';
import { Warnings } from '../util/warnings.ts';
import { Btf, btfBlobFromFile } from './btf/index.ts';
import { findKernelRoots, KERNEL_IMAGE_MAP, KERNEL_IMAGE_MAP_END, mapsKernelImage } from './find-root.ts';
import { loadKallsyms } from './kallsyms/index.ts';
import { Kernel, type KernelLayout, type SymbolTable } from './kernel.ts';
import { loadSystemMap } from './system-map.ts';

export interface OpenKernelOptions {
  /** BTF from a file, for kernels built without CONFIG_DEBUG_INFO_BTF. */
  readonly btfFile?: string;
  /** Symbols from a System.map, for kernels without kallsyms. */
  readonly systemMapFile?: string;
  /** The guest is stopped (paused or a dump): cached translations need no validation. */
  readonly frozen?: boolean;
  readonly warnings?: Warnings;
}

/** Link-time address of _text without KASLR (__START_KERNEL on x86-64). */
const LINK_TEXT = 0xffff_ffff_8100_0000n;
const TWO_MIB = 2n ** 21n;
/** BTF blobs larger than this are not plausible for one kernel. */
const MAX_BTF = 64 * 2 ** 20;

export async function openKernel(machine: Machine, opts: OpenKernelOptions = {}): Promise<Kernel> {
  const warnings = opts.warnings ?? new Warnings();
  const reader = readerFor(machine);
  if (opts.frozen !== undefined) reader.setFrozen(opts.frozen);
  const vcpus = await machine.vcpus();
  let space = kernelSpace(reader, vcpus);
  const image = kernelImageRange(space);

  let symbols: SymbolTable;
  if (opts.systemMapFile !== undefined) {
    symbols = loadSystemMap(opts.systemMapFile, image.start);
  } else {
    try {
      symbols = loadKallsyms(space, image, { warnings });
    } catch (e) {
      if (e instanceof VmlensError) {
        throw new GuestDataError(`${e.message}; give the kernel's symbols with --system-map FILE`);
      }
      throw e;
    }
  }
  space = kernelRootSpace(space, symbols) ?? space;
  const textBase = symbols.lookup('_text') ?? symbols.lookup('_stext') ?? image.start;
  const btf = loadBtf(space, symbols, opts.btfFile);
  // Every analysis looks types up by name; the first lookup builds the name index (tens of ms).
  // Build it here, while finding the kernel, so that no command pays it with the guest paused.
  btf.findTypeId('struct task_struct');
  const readVar = (name: string): bigint | undefined => {
    const a = symbols.lookup(name);
    return a === undefined ? undefined : space.readU64Big(a);
  };
  const layout: KernelLayout = {
    levels: space.levels,
    root: space.root,
    textBase,
    physBase: space.translateVa(textBase),
    kaslrOffset: textBase - LINK_TEXT,
    pageOffsetBase: readVar('page_offset_base'),
    vmallocBase: readVar('vmalloc_base'),
    vmemmapBase: readVar('vmemmap_base'),
  };
  return new Kernel({ machine, space, btf, symbols, layout, warnings });
}

/**
 * The kernel's address space. A vCPU in kernel mode gives its CR3 directly; one in user mode
 * under PTI runs on the user copy of the page tables, whose kernel twin is the page below
 * (the kernel allocates PGDs as 8 KiB pairs, kernel half first): we take whichever of the two
 * maps the kernel image. Snapshots without vCPU state are scanned.
 */
export function kernelSpace(reader: PhysReader, vcpus: readonly VcpuState[]): AddressSpace {
  const ordered = [...vcpus].sort((a, b) => (a.cpl === 0 ? 0 : 1) - (b.cpl === 0 ? 0 : 1));
  for (const v of ordered) {
    const mode = pagingMode(v);
    if (mode !== '4-level' && mode !== '5-level') continue;
    const levels = mode === '5-level' ? 5 : 4;
    const root = cr3Root(v.cr3);
    // In user mode under PTI, the user copy maps a sliver of the image (the entry text):
    // mapsKernelImage asks for more than that sliver.
    const candidates = v.cpl === 0 ? [root, root & ~0x1000] : [root & ~0x1000, root];
    for (const candidate of candidates) {
      const space = new AddressSpace(reader, candidate, levels);
      if (mapsKernelImage(space)) return space;
    }
  }
  if (vcpus.length > 0 && !vcpus.some((v) => pagingMode(v) === '4-level' || pagingMode(v) === '5-level')) {
    throw new GuestDataError(`no vCPU is in 64-bit long mode (paging: ${vcpus.map((v) => pagingMode(v)).join(', ')}); is the guest still booting?`);
  }
  const [found] = findKernelRoots(reader, 1);
  if (!found) throw new GuestDataError('no kernel page tables found in guest memory');
  return new AddressSpace(reader, found.root, found.levels);
}

/**
 * The kernel's own top-level page table, init_mm's (init_top_pgt on x86-64), as the space's root.
 * A vCPU's CR3 is seldom it: a CPU running a process uses that process's table, and an idle CPU
 * keeps the last process's one loaded (lazy TLB). Such a table maps the kernel the same way, but
 * it belongs to a process: when the process exits, its page is freed and reused — for the next
 * process's table, which the kernel fills afresh (zeroes, then the kernel half) — and a space
 * rooted there reads zeros or garbage for a while. init_top_pgt lives as long as the kernel.
 * Undefined when the symbol is missing or does not map the kernel image (then CR3 stays).
 */
function kernelRootSpace(space: AddressSpace, symbols: SymbolTable): AddressSpace | undefined {
  const top = symbols.lookup('init_top_pgt');
  if (top === undefined) return undefined;
  const pa = space.tryTranslate(top);
  if (pa === null || pa % 4096 !== 0) return undefined;
  if (pa === space.root) return space;
  const candidate = new AddressSpace(space.reader, pa, space.levels);
  return mapsKernelImage(candidate) ? candidate : undefined;
}

function firstMappedImagePage(space: AddressSpace): bigint | undefined {
  for (let va = KERNEL_IMAGE_MAP; va < KERNEL_IMAGE_MAP_END; va += TWO_MIB) {
    if (space.tryTranslate(va) !== null) return va;
  }
  return undefined;
}

/**
 * The kernel image under KASLR: the first mapped 2 MiB step of the image region is _text's
 * page, and the image runs while the steps stay mapped (text, rodata, data, bss).
 */
export function kernelImageRange(space: AddressSpace): { start: bigint; end: bigint } {
  const start = firstMappedImagePage(space);
  if (start === undefined) throw new GuestDataError('the kernel image is not mapped at 0xffffffff80000000-0xffffffffc0000000');
  let end = start;
  while (end < KERNEL_IMAGE_MAP_END && space.tryTranslate(end) !== null) end += TWO_MIB;
  return { start, end };
}

/**
 * The kernel's BTF: vmlinux keeps it in its own image between __start_BTF and __stop_BTF
 * (CONFIG_DEBUG_INFO_BTF). A file given by the user wins.
 */
export function loadBtf(space: AddressSpace, symbols: SymbolTable, file: string | undefined): Btf {
  if (file !== undefined) {
    const bytes = readFileChecked(file);
    try {
      return Btf.parse(btfBlobFromFile(bytes));
    } catch (e) {
      // Name the file: the user gave it, and the parser's message alone does not say which.
      if (e instanceof VmlensError) throw new UsageError(`--btf ${file}: ${e.message}`);
      throw e;
    }
  }
  const start = symbols.lookup('__start_BTF');
  const stop = symbols.lookup('__stop_BTF');
  if (start === undefined || stop === undefined || stop <= start) {
    const why = start === undefined || stop === undefined ? 'no __start_BTF/__stop_BTF symbols' : '__stop_BTF is not above __start_BTF';
    throw new GuestDataError(
      `the guest kernel carries no BTF (${why}: built without CONFIG_DEBUG_INFO_BTF?): give its types with --btf FILE (a raw BTF blob, or a vmlinux with a .BTF section)`,
    );
  }
  const size = Number(stop - start);
  if (size > MAX_BTF) throw new GuestDataError(`BTF of ${size} bytes between __start_BTF and __stop_BTF is implausible`);
  return Btf.parse(space.readBytes(start, size));
}

function readFileChecked(path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}
