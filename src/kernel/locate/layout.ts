import { isVmlensError } from '../../util/errors.ts';
import type { Warnings } from '../../util/warnings.ts';
import type { Kallsyms } from '../kallsyms/kallsyms.ts';
import { hex } from '../kallsyms/reader.ts';
import {
  CPU_ENTRY_AREA_BASE,
  PAGE_OFFSET_BASE_L4,
  PAGE_OFFSET_BASE_L5,
  PUD_SIZE,
  VMALLOC_BASE_L4,
  VMALLOC_BASE_L5,
  VMEMMAP_BASE_L4,
  VMEMMAP_BASE_L5,
  type KernelSpace,
} from './space.ts';

/**
 * The bases of the kernel's big virtual regions. Under CONFIG_RANDOMIZE_MEMORY the kernel
 * picks them at boot (arch/x86/mm/kaslr.c) and keeps them in the variables page_offset_base,
 * vmalloc_base and vmemmap_base; without it they are the compile-time constants.
 */
export interface MemoryLayout {
  /** PAGE_OFFSET: where the direct map of all physical memory starts. */
  readonly pageOffsetBase: bigint;
  readonly vmallocBase: bigint;
  readonly vmemmapBase: bigint;
  /** How pageOffsetBase was learned. */
  readonly pageOffsetSource: 'symbol' | 'gs-base' | 'default';
}

export interface LayoutInputs {
  readonly pagingLevels: 4 | 5;
  /** Physical address of _text, to check a direct-map base against: the image is in the direct map too. */
  readonly physBase: number;
  /** A kernel-mode GS base: the per-CPU area, which lives in the direct map. */
  readonly gsBase?: bigint;
}

const WHERE = 'kernel layout';

export function readU64(space: KernelSpace, va: bigint): bigint | undefined {
  const buf = new Uint8Array(8);
  try {
    space.read(va, buf);
  } catch (e) {
    if (isVmlensError(e)) return undefined;
    throw e;
  }
  return new DataView(buf.buffer).getBigUint64(0, true);
}

/** A direct-map base is right if it is PUD-aligned, in the randomization range, and maps the image at physBase. */
function isDirectMapBase(space: KernelSpace, base: bigint, levels: 4 | 5, physBase: number): boolean {
  const low = levels === 5 ? PAGE_OFFSET_BASE_L5 : PAGE_OFFSET_BASE_L4;
  if (base < low || base >= CPU_ENTRY_AREA_BASE || base % PUD_SIZE !== 0n) return false;
  try {
    return space.tryTranslate(base + BigInt(physBase)) === physBase;
  } catch (e) {
    if (isVmlensError(e)) return false;
    throw e;
  }
}

export function readMemoryLayout(space: KernelSpace, ks: Kallsyms, inputs: LayoutInputs, warnings?: Warnings): MemoryLayout {
  const levels = inputs.pagingLevels;
  const variable = (name: string): bigint | undefined => {
    const va = ks.lookup(name);
    return va === undefined ? undefined : readU64(space, va);
  };

  let pageOffsetBase: bigint | undefined;
  let pageOffsetSource: MemoryLayout['pageOffsetSource'] = 'symbol';
  const fromSymbol = variable('page_offset_base');
  if (fromSymbol !== undefined && isDirectMapBase(space, fromSymbol, levels, inputs.physBase)) pageOffsetBase = fromSymbol;
  else if (fromSymbol !== undefined) warnings?.warn(WHERE, `page_offset_base holds ${hex(fromSymbol)}, which does not map the kernel image`);

  if (pageOffsetBase === undefined && inputs.gsBase !== undefined) {
    // The per-CPU area is allocated from memblock and reached through the direct map, so its
    // virtual address minus its physical address is the direct-map base.
    let pa: number | null = null;
    try {
      pa = space.tryTranslate(inputs.gsBase);
    } catch (e) {
      if (!isVmlensError(e)) throw e;
    }
    if (pa !== null) {
      const candidate = inputs.gsBase - BigInt(pa);
      if (isDirectMapBase(space, candidate, levels, inputs.physBase)) {
        pageOffsetBase = candidate;
        pageOffsetSource = 'gs-base';
      }
    }
  }
  if (pageOffsetBase === undefined) {
    const fallback = levels === 5 ? PAGE_OFFSET_BASE_L5 : PAGE_OFFSET_BASE_L4;
    if (!isDirectMapBase(space, fallback, levels, inputs.physBase)) {
      warnings?.warn(WHERE, `direct map not found; assuming the unrandomized base ${hex(fallback)}`);
    }
    pageOffsetBase = fallback;
    pageOffsetSource = 'default';
  }

  const vmallocBase = checkedBase(variable('vmalloc_base'), levels === 5 ? VMALLOC_BASE_L5 : VMALLOC_BASE_L4, 'vmalloc_base', levels, warnings);
  const vmemmapBase = checkedBase(variable('vmemmap_base'), levels === 5 ? VMEMMAP_BASE_L5 : VMEMMAP_BASE_L4, 'vmemmap_base', levels, warnings);
  return { pageOffsetBase, vmallocBase, vmemmapBase, pageOffsetSource };
}

/** A region base read from the kernel, if it is one KASLR could have chosen; else the default. */
function checkedBase(value: bigint | undefined, fallback: bigint, name: string, levels: 4 | 5, warnings?: Warnings): bigint {
  if (value === undefined) return fallback;
  const low = levels === 5 ? PAGE_OFFSET_BASE_L5 : PAGE_OFFSET_BASE_L4;
  if (value >= low && value < CPU_ENTRY_AREA_BASE && value % PUD_SIZE === 0n) return value;
  warnings?.warn(WHERE, `${name} holds ${hex(value)}, outside the range KASLR uses; assuming ${hex(fallback)}`);
  return fallback;
}
