/**
 * Kernel page tables for a snapshot with no vCPU state (raw and LiME dumps): scan physical
 * memory for a page that looks like an x86-64 Linux top-level table and prove it by walking.
 *
 * A kernel PGD maps the kernel image through its last entry (0xffffffff80000000 lives in slot
 * 511 at the top level) and the direct map, vmalloc and vmemmap areas through other kernel-half
 * slots. A process PGD copies the same kernel half, so any of them serves. Under PTI the user
 * copy maps only the entry trampoline and cpu_entry_area, so requiring several kernel-half
 * slots rules it out.
 */
import { AddressSpace } from '../mmu/address-space.ts';
import type { PhysReader } from '../mmu/phys-reader.ts';
import { VmlensError } from '../util/errors.ts';

/** Start of the kernel-image mapping (__START_KERNEL_map) and its 1 GiB extent. */
export const KERNEL_IMAGE_MAP = 0xffff_ffff_8000_0000n;
export const KERNEL_IMAGE_MAP_END = 0xffff_ffff_c000_0000n;
const TWO_MIB = 2n ** 21n;

export interface RootCandidate {
  readonly root: number;
  readonly levels: 4 | 5;
}

function present(reader: PhysReader, entryPa: number): boolean {
  return (reader.u32(entryPa) & 1) === 1;
}

function looksLikeKernelTop(reader: PhysReader, page: number): boolean {
  if (!present(reader, page + 511 * 8)) return false;
  let kernelHalf = 0;
  for (let i = 256; i < 511; i++) if (present(reader, page + i * 8)) kernelHalf++;
  // Every present entry must point into RAM, or this is not a page table at all.
  if (kernelHalf < 2 || kernelHalf > 200) return false;
  return true;
}

/** Whether the kernel image region has mapped 2 MiB steps through this root. */
export function mapsKernelImage(space: AddressSpace): boolean {
  let mapped = 0;
  for (let va = KERNEL_IMAGE_MAP; va < KERNEL_IMAGE_MAP_END; va += TWO_MIB) {
    if (space.tryTranslate(va) !== null) mapped++;
    if (mapped >= 4) return true;
  }
  return false;
}

/**
 * Page-table roots that map a kernel image, in physical-address order. Bounded: stops after
 * `max` proven candidates; a full scan of 1 GiB takes a few hundred milliseconds.
 */
export function findKernelRoots(reader: PhysReader, max = 4): RootCandidate[] {
  const found: RootCandidate[] = [];
  for (const range of reader.ranges) {
    for (let page = range.start; page + 4096 <= range.start + range.size; page += 4096) {
      if (!looksLikeKernelTop(reader, page)) continue;
      for (const levels of [5, 4] as const) {
        const space = new AddressSpace(reader, page, levels);
        if (mapsKernelImage(space)) {
          found.push({ root: page, levels });
          break;
        }
      }
      if (found.length >= max) return found;
    }
  }
  return found;
}

export function findKernelRoot(reader: PhysReader): RootCandidate {
  const [first] = findKernelRoots(reader, 1);
  if (!first) throw new VmlensError('no kernel page tables found in this memory (is it an x86-64 Linux guest?)');
  return first;
}
