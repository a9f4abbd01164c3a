import type { KernelImageReader } from '../kallsyms/reader.ts';

/**
 * What finding the kernel needs of an address space: translation without throwing, and reads.
 * The address-space layer's AddressSpace is one; tests build small synthetic ones.
 */
export interface KernelSpace extends KernelImageReader {
  /** Guest-physical address of `va`, or null when it does not translate. */
  tryTranslate(va: bigint): number | null;
}

/** x86-64 virtual memory layout constants (arch/x86/include/asm/page_64_types.h, pgtable_64_types.h). */
export const START_KERNEL_MAP = 0xffff_ffff_8000_0000n; // __START_KERNEL_map
/** Where the kernel text mapping ends and modules begin with KASLR (KERNEL_IMAGE_SIZE = 1 GiB). */
export const KERNEL_MAP_END = 0xffff_ffff_c000_0000n;
/** The default link address of _text: __START_KERNEL_map + CONFIG_PHYSICAL_START (16 MiB). */
export const DEFAULT_TEXT_BASE = 0xffff_ffff_8100_0000n;
export const PAGE_OFFSET_BASE_L4 = 0xffff_8880_0000_0000n;
export const PAGE_OFFSET_BASE_L5 = 0xff11_0000_0000_0000n;
export const VMALLOC_BASE_L4 = 0xffff_c900_0000_0000n;
export const VMALLOC_BASE_L5 = 0xffa0_0000_0000_0000n;
export const VMEMMAP_BASE_L4 = 0xffff_ea00_0000_0000n;
export const VMEMMAP_BASE_L5 = 0xffd4_0000_0000_0000n;
/** CPU_ENTRY_AREA_BASE: the end of the range memory KASLR places regions in (arch/x86/mm/kaslr.c). */
export const CPU_ENTRY_AREA_BASE = 0xffff_fe00_0000_0000n;
/** KASLR aligns the memory regions to PUD_SIZE (arch/x86/mm/kaslr.c, kernel_randomize_memory). */
export const PUD_SIZE = 1n << 30n;
export const PMD_SIZE = 1n << 21n;
